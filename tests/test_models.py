import pytest
import torch
from helpers import assert_close
from torch import nn

from fastops.models import NAMES, RECIPES, build


def batch(name, size, seed):
    recipe = RECIPES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *recipe.input_shape, generator=g)
    if recipe.loss == "cross_entropy":
        return x, torch.randint(0, 10, (size,), generator=g)
    if recipe.loss == "bce":
        return x, torch.randint(0, 2, (size, 1), generator=g).float()
    return x, torch.randn(size, 1, generator=g)


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return model


def train_losses(model, name, impl, steps, size=8, same_batch=False):
    recipe = RECIPES[name]
    optimizer = recipe.make_optimizer(model.parameters())
    loss_fn = recipe.make_loss(impl)
    losses = []
    for step in range(steps):
        x, y = batch(name, size, seed=0 if same_batch else step)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("name", NAMES)
def test_both_builds_train_step_by_step_alike(name):
    torch.manual_seed(0)
    reference = without_dropout(build(name, "torch"))
    ours = without_dropout(build(name, "fastops"))
    assert ours.state_dict().keys() == reference.state_dict().keys()
    ours.load_state_dict(reference.state_dict())
    steps = 2 if name == "resnet18" else 4
    expected = train_losses(reference, name, "torch", steps)
    actual = train_losses(ours, name, "fastops", steps)
    # lr 1.0 (lenet_bn) or 0.5 (mlp) amplify float32 rounding step after step
    assert_close(actual, expected, scale=100)
    for (key, want), got in zip(reference.state_dict().items(), ours.state_dict().values(),
                                strict=True):
        if want.is_floating_point():
            assert_close(got, want, scale=1000, msg=key)
        else:  # num_batches_tracked
            assert torch.equal(got, want), key


def test_dropout_model_still_learns():
    torch.manual_seed(0)
    model = build("mlp", "fastops")
    losses = train_losses(model, "mlp", "fastops", steps=30, size=64, same_batch=True)
    assert losses[-5:].mean() < 0.5 * losses[:5].mean()


def test_unknown_model_and_impl_raise():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build("vgg")
    with pytest.raises(ValueError, match="impl must be one of"):
        build("mlp", impl="jax")
