"""Tutorial models: a training step (forward + loss + backward + optimiser step) and an
inference step, torch.nn build vs fastops build, from the same weights and batch."""

import pytest
import torch
from common import DEVICE, cases, randn, record, sync

import fastops
from fastops.models import NAMES, RECIPES, build

IMPLS = ("torch", "fastops")
# name -> batch size of the benchmark: the course's batch, at least 64 so a step is measurable.
MODELS = {name: max(RECIPES[name].batch_size, 64) for name in NAMES}
# The quick suite's models: the ones a newcomer trains first (a few ms per step here).
QUICK_MODELS = ("mlp", "mnist_cnn", "cifar_net")


def _batch(name, batch_size):
    recipe = RECIPES[name]
    x = randn(batch_size, *recipe.input_shape)
    if recipe.loss == "cross_entropy":
        y = torch.randint(0, 10, (batch_size,),
                          generator=torch.Generator().manual_seed(0)).to(DEVICE)
    else:
        y = torch.rand(batch_size, 1, generator=torch.Generator().manual_seed(0)).round().to(DEVICE)
    return x, y


def _model(name, impl):
    torch.manual_seed(0)
    reference = build(name, "torch")
    model = build(name, impl)
    model.load_state_dict(reference.state_dict())  # same weights in both builds
    return model.to(DEVICE)


def _step(name, impl, train, x, y):
    """(one training or inference step of the ``impl`` build, bytes saved for backward)."""
    recipe = RECIPES[name]
    model = _model(name, impl)
    if not train:
        model.eval()

        def run():
            with torch.no_grad():
                model(x)
            sync()
        return run, None

    model.train()
    loss_fn = recipe.make_loss(impl)
    optimizer = recipe.make_optimizer(model.parameters())

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        sync()
    return run, fastops.saved_tensor_bytes(lambda: loss_fn(model(x), y))[1]


@pytest.mark.parametrize("train", [True, False], ids=["train-step", "inference"])
@pytest.mark.parametrize("name", cases(MODELS, tutorial=QUICK_MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def bench_model(benchmark, impl, name, train):
    batch_size = MODELS[name]
    x, y = _batch(name, batch_size)
    run, saved = _step(name, impl, train, x, y)
    # The fastops build is timed in pairs with the torch build's step on the same batch.
    torch_run = _step(name, "torch", train, x, y)[0] if impl == "fastops" else None
    record(benchmark, "model", f"{name} batch {batch_size}", impl,
           "train step" if train else "inference", run, saved_bytes=saved, torch_run=torch_run)
