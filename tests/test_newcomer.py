"""A newcomer's first hour (issue 18, "done when"): the models a beginner writes or copies, each
converted, run under CPU bfloat16 autocast, trained a few steps, and unconverted back to the
user's own classes."""

import copy

import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_close
from torch import nn

import fastops
from fastops.models import NAMES, RECIPES, build


class BeginnerNet(nn.Module):
    """The CIFAR-10 ``Net`` of PyTorch's 60-minute blitz, with a method and an attribute of the
    user's own. Input [N, 3, 32, 32] -> logits [N, 10]."""

    classes = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.epochs_seen = 0

    def forward(self, x):
        x = self.pool(TF.relu(self.conv1(x)))
        x = self.pool(TF.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = TF.relu(self.fc1(x))
        x = TF.relu(self.fc2(x))
        return self.fc3(x)

    def predict(self, x):
        """Class names of the highest logits: x [N, 3, 32, 32] -> N names."""
        return [self.classes[i] for i in self(x).argmax(1).tolist()]


def mlp_with_dropout():
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))


# name -> (builder, one sample's shape); tiny inputs keep the whole file fast
MODELS = {
    "mlp_with_dropout": (mlp_with_dropout, (3, 4, 4)),
    "beginner_net": (BeginnerNet, (3, 32, 32)),
    **{name: (lambda name=name: build(name), RECIPES[name].input_shape) for name in NAMES},
}


def inputs(name, batch=4, seed=0):
    """x [batch, *shape] and a target of the model's loss (class indices, or [batch, 1])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *MODELS[name][1], generator=g)
    loss = RECIPES[name].loss if name in RECIPES else "cross_entropy"
    if loss == "cross_entropy":
        return x, torch.randint(0, 10, (batch,), generator=g)
    if loss == "bce":
        return x, torch.randint(0, 2, (batch, 1), generator=g).float()
    return x, torch.randn(batch, 1, generator=g)


def loss_of(name, output, target):
    loss = RECIPES[name].loss if name in RECIPES else "cross_entropy"
    if loss == "cross_entropy":
        return TF.cross_entropy(output, target)
    if loss == "bce":
        return TF.binary_cross_entropy(output, target)
    return TF.mse_loss(output, target)


def without_random_dropout(model):
    """Dropout draws its masks from torch's generator in torch and from fastops' counter-based
    Philox in fastops, so the two builds are compared with dropout off: every Dropout module,
    and every layer with a fused dropout, in eval mode (which only stops dropout). BatchNorm
    stays in training mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or getattr(module, "dropout", 0.0):
            module.eval()
    return model


def user_classes(model):
    return [type(module) for module in model.modules()]


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_runs_under_autocast_trains_and_unconverts_to_the_users_classes(name):
    torch.manual_seed(0)
    model = MODELS[name][0]()
    ours = fastops.convert(model)
    assert type(ours) is type(model)
    assert any(type(m).__module__.startswith("fastops") for m in ours.modules())
    torch_twin = copy.deepcopy(model)
    x, target = inputs(name)

    # CPU bfloat16 autocast, forward and backward, against torch under the same autocast
    results = []
    for net in (without_random_dropout(torch_twin), without_random_dropout(ours)):
        net.zero_grad()
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = net(leaf)
            loss = loss_of(name, output.float(), target)
        loss.backward()
        results.append((output, leaf.grad, [p.grad for p in net.parameters()]))
    (want, want_dx, want_grads), (got, got_dx, got_grads) = results
    assert got.dtype == want.dtype == torch.bfloat16
    # resnet18: bfloat16 rounding through 20 layers with batch statistics of 4 samples
    scale = 10 if name == "resnet18" else 1
    assert_close(got, want, scale=scale)
    assert_close(got_dx, want_dx, dtype=torch.bfloat16, scale=scale)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert_close(got_grad, want_grad, dtype=torch.bfloat16, scale=scale)

    # a few SGD steps in float32 from the same weights: the same losses. resnet18 takes two: on
    # its first step one ReLU input within float32 rounding of 0 (block 6, +7e-7 in float64)
    # comes out negative in fastops, and that masked gradient, spread over its channel by the
    # BatchNorm below, moves every earlier gradient by 3e-3, so the third losses differ by 6e-3
    # (torch: 6e-4). torch's float32 run flips such masks too, on other seeds; fastops more
    # often, as its oneDNN convolution GEMMs round twice as much (2.7e-7 vs 1.5e-7 relative)
    ours.load_state_dict(torch_twin.state_dict())
    losses = []
    for net in (torch_twin, ours):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        steps = []
        for step in range(2 if name == "resnet18" else 3):
            x, target = inputs(name, seed=step)
            optimizer.zero_grad()
            loss = loss_of(name, net(x), target)
            loss.backward()
            optimizer.step()
            steps.append(loss.detach())
        losses.append(torch.stack(steps))
    assert_close(losses[1], losses[0], scale=10)

    # back to the user's own classes, with the trained weights
    back = fastops.unconvert(ours.train())
    assert user_classes(back) == user_classes(model)
    assert [m.training for m in back.modules()] == [True] * len(user_classes(model))
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_the_beginners_net_keeps_its_class_method_and_attribute():
    torch.manual_seed(0)
    model = BeginnerNet()
    model.epochs_seen = 3
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    converted = fastops.convert(model)
    assert type(converted) is BeginnerNet and converted.epochs_seen == 3
    assert isinstance(converted.fc1, fastops.nn.Linear)
    assert repr(converted).startswith("BeginnerNet(\n  (conv1): Conv2d(3, 6, ")
    x = torch.randn(2, 3, 32, 32)
    assert converted.predict(x) == model.predict(x)
    assert calls == [(2, 10)] * 2  # the user's hook, on both
    back = fastops.unconvert(converted)
    assert type(back) is BeginnerNet and back.epochs_seen == 3
    assert back.predict(x) == model.predict(x) and len(calls) == 4
