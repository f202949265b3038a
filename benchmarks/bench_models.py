"""Tutorial models: a training step (forward + loss + backward + optimiser step) and an
inference step, torch.nn build vs fastops build, from the same weights and batch.

The fastops build is timed in pairs with the torch build and with the torch build under
torch.compile; the CNNs' fastops build is also timed under torch.compile (in pairs with the
compiled torch build), and both builds under bf16 autocast. torch.compile compiles the model
(``torch.compile(model, fullgraph=True)``: a graph break fails the case) and leaves the loss,
backward and optimiser step eager, as most training loops do; record's warm-up calls compile,
so compile time is not timed.
"""

import contextlib
import functools

import pytest
import torch
from common import DEVICE, QUICK, cases, randn, record, sync
from report import FASTOPS_COMPILED

import fastops
from fastops.models import NAMES, RECIPES, build

# name -> batch size of the benchmark: the course's batch, at least 64 so a step is measurable.
MODELS = {name: max(RECIPES[name].batch_size, 64) for name in NAMES}
# The quick suite's models: the ones a newcomer trains first (a few ms per step here), eager
# only (compiling a model takes from seconds to minutes, more than the quick suite's budget).
QUICK_MODELS = ("mlp", "mnist_cnn", "cifar_net")
# The convolutional models, where fastops fuses most (conv, pool, batch norm): they also get the
# fastops build under torch.compile and bf16 autocast.
CNN_MODELS = ("mnist_cnn", "cifar_net", "lenet_bn", "resnet18")
AUTOCAST = "bfloat16 autocast"


def _variants():
    """(impl, model, precision) of every case: torch and fastops builds in float32; in the full
    suite, for the CNNs also the fastops build under torch.compile and both builds under bf16
    autocast."""
    names = cases(MODELS, tutorial=QUICK_MODELS)
    variants = [(impl, name, "float32") for name in names for impl in ("torch", "fastops")]
    if not QUICK:
        variants += [(FASTOPS_COMPILED, name, "float32") for name in CNN_MODELS]
        variants += [(impl, name, AUTOCAST) for name in CNN_MODELS for impl in ("torch", "fastops")]
    return [pytest.param(*variant, id="-".join(variant).replace(" ", "-")) for variant in variants]


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


def _step(name, impl, train, x, y, compiled=False, autocast=False):
    """(one training or inference step of the ``impl`` build, bytes saved for backward; None
    when compiled: the report's saved column compares the eager builds)."""
    recipe = RECIPES[name]
    model = _model(name, impl)
    forward = torch.compile(model, fullgraph=True) if compiled else model
    # Forward and loss under autocast, backward and optimiser step outside it (torch's AMP recipe).
    precision = (functools.partial(torch.autocast, DEVICE, dtype=torch.bfloat16) if autocast
                 else contextlib.nullcontext)
    if not train:
        model.eval()

        def run():
            with torch.no_grad(), precision():
                forward(x)
            sync()
        return run, None

    model.train()
    loss_fn = recipe.make_loss(impl)
    optimizer = recipe.make_optimizer(model.parameters())

    def loss():
        with precision():
            return loss_fn(forward(x), y)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        sync()
    return run, None if compiled else fastops.saved_tensor_bytes(loss)[1]


@pytest.mark.parametrize("train", [True, False], ids=["train-step", "inference"])
@pytest.mark.parametrize("impl, name, precision", _variants())
def bench_model(benchmark, impl, name, precision, train):
    batch_size = MODELS[name]
    x, y = _batch(name, batch_size)
    autocast = precision == AUTOCAST
    # Each case compiles afresh: the frames other models compiled (every nn.Sequential shares
    # one forward) would count towards dynamo's recompile limit and turn sizes dynamic.
    torch._dynamo.reset()
    compiled = impl == FASTOPS_COMPILED
    run, saved = _step(name, "torch" if impl == "torch" else "fastops", train, x, y, compiled,
                       autocast)
    # The fastops build is timed in pairs with the torch build's step on the same batch (in
    # the same precision), and in float32 also with the compiled torch build's; the compiled
    # fastops build with the compiled torch build's only.
    torch_run = (_step(name, "torch", train, x, y, autocast=autocast)[0]
                 if impl == "fastops" else None)
    compile_run = (_step(name, "torch", train, x, y, compiled=True)[0]
                   if impl != "torch" and not autocast and not QUICK else None)
    record(benchmark, "model", f"{name} batch {batch_size}", impl,
           "train step" if train else "inference", run, precision, saved, torch_run, compile_run)
