import copy

import pytest
import torch
from helpers import assert_close
from torch import nn

import fastops
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


@pytest.mark.parametrize("name", NAMES)
def test_converted_models_run_forward_and_backward_under_cpu_bfloat16_autocast_like_torch(name):
    # Linear and Conv2d cast to bfloat16 under autocast, so the second of two in a row gets a
    # bfloat16 input and float32 parameters: fastops' dtype checks must let the op's autocast
    # kernel cast them, as torch's do.
    torch.manual_seed(0)
    reference = without_dropout(build(name, "torch"))
    ours, in_float32 = fastops.convert(reference), copy.deepcopy(reference)
    x, _ = batch(name, 4, seed=0)
    weights = torch.randn(4, 10 if RECIPES[name].loss == "cross_entropy" else 1,
                          generator=torch.Generator().manual_seed(1))
    outputs = []
    for model, autocast in ((reference, True), (ours, True), (in_float32, False)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = model(x)
            loss = (output.float() * weights).sum()
        loss.backward()
        outputs.append(output)
    expected, actual, _ = outputs
    assert actual.dtype == expected.dtype == torch.bfloat16
    # resnet18: batch statistics of 4 samples in bfloat16 along 20 layers amplify rounding
    deep = name == "resnet18"
    assert_close(actual, expected, scale=10 if deep else 1)
    for (key, want), got, exact in zip(reference.named_parameters(), ours.parameters(),
                                       in_float32.parameters(), strict=True):
        assert got.grad.dtype == want.grad.dtype == torch.float32, key
        # no further from torch's autocast gradient than that is from the float32 gradient
        error, autocast_error = (got.grad - want.grad).norm(), (want.grad - exact.grad).norm()
        assert error <= 2 * autocast_error, key
        if not deep:
            assert_close(got.grad, want.grad, dtype=torch.bfloat16, msg=key)


def test_under_autocast_dtype_checks_still_refuse_what_autocast_does_not_cast():
    linear, conv = fastops.nn.Linear(3, 2), fastops.nn.Conv2d(1, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(torch.randn(4, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
        assert conv(torch.randn(1, 1, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
        # float64 is never cast by autocast: still the functional layer's error
        with pytest.raises(RuntimeError, match="linear: expected weight to have the dtype of "
                                               r"input \(torch.float64\), got torch.float32"):
            linear(torch.randn(4, 3, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="conv2d: expected weight to have the dtype of "
                                               r"input \(torch.float32\), got torch.float64"):
            conv.double()(torch.randn(1, 1, 5, 5))


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
