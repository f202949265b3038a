"""Per-call cost: every op at a tiny size (where the call, not the arithmetic, is the time),
torch.nn.functional / torch.nn vs fastops.functional / fastops.nn, forward and forward +
backward. The speed-up here is the ratio of what each library costs around its kernel:
argument checks and normalisation, operator dispatch, autograd set-up. No torch.compile: it is
not called per op from eager code. On the CPU float32 only: the call's cost does not depend on
the dtype, and the op suites time bfloat16."""

import pytest
import torch
import torch.nn.functional as TF
from common import DEVICE, DTYPES, bench, randn

import fastops
from fastops import functional as F

_LOGITS_TARGET = torch.tensor([1, 0, 3, 9], device=DEVICE)  # 4 rows of 10 classes
_LINEAR_MODULES = {}


def _linear_module(impl):
    """nn.Linear(8, 2) of the impl, the same weights for both (one per impl, reused)."""
    if impl not in _LINEAR_MODULES:
        torch.manual_seed(0)
        module = torch.nn.Linear(8, 2)
        module = fastops.convert(module) if impl == "fastops" else module
        _LINEAR_MODULES[impl] = module.to(DEVICE)
    return _LINEAR_MODULES[impl]


# name: (torch callable, fastops callable, input shapes (the first differentiable input first),
# number of leading inputs that get gradients)
CASES = {
    "linear 4x8->2": (TF.linear, F.linear, [(4, 8), (2, 8), (2,)], 3),
    "nn.Linear module 4x8->2": (lambda x: _linear_module("torch")(x),
                                lambda x: _linear_module("fastops")(x), [(4, 8)], 1),
    "cross_entropy 4x10": (lambda x: TF.cross_entropy(x, _LOGITS_TARGET),
                           lambda x: F.cross_entropy(x, _LOGITS_TARGET), [(4, 10)], 1),
    "max_pool2d 1x1x8x8 k2": (lambda x: TF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2),
                              [(1, 1, 8, 8)], 1),
    "conv2d 1x1x8x8->2x3x3": (TF.conv2d, F.conv2d, [(1, 1, 8, 8), (2, 1, 3, 3)], 2),
    "dropout 4x8": (lambda x: TF.dropout(x, 0.5), lambda x: F.dropout(x, 0.5), [(4, 8)], 1),
    "batch_norm 4x3x4x4 train": (
        lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        [(4, 3, 4, 4), (3,), (3,)], 3),
}


@pytest.mark.parametrize("dtype", DTYPES if DEVICE == "cuda" else [torch.float32], ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["torch", "fastops"])
def bench_percall(benchmark, impl, case, backward, dtype):
    torch_fn, fastops_fn, shapes, differentiable = CASES[case]
    impls = {"torch": torch_fn, "fastops": fastops_fn}
    inputs = [randn(*shape, dtype=dtype, requires_grad=backward and i < differentiable)
              for i, shape in enumerate(shapes)]
    bench(benchmark, "per call", case, impl, impls, inputs, backward, dtype)
