"""BatchNorm + ReLU: torch (batch_norm then relu) vs fastops (fused) vs torch.compile, in
training (forward + backward, running statistics updated) and evaluation (forward)."""

import pytest
import torch
import torch.nn.functional as TF
from common import DEVICE, DTYPES, bench, cases, implementations, randn, skip_unselected

from fastops import functional as F

CASES = {  # name: input shape [N, C, *]
    "bn2d 128x64x32x32": (128, 64, 32, 32),
    "lenet-bn bn1d 256x120": (256, 120),
}
MODES = {"train": True, "eval": False}  # training is timed forward + backward, evaluation forward
IMPLS = {
    mode: implementations(
        lambda x, rm, rv, w, b, training=training: torch.relu(
            TF.batch_norm(x, rm, rv, w, b, training)),
        lambda x, rm, rv, w, b, training=training: F.batch_norm_relu(x, rm, rv, w, b, training))
    for mode, training in MODES.items()
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS["train"])
def bench_batch_norm_relu(benchmark, impl, case, mode, dtype):
    skip_unselected(impl, case, dtype)
    shape = CASES[case]
    backward = MODES[mode]
    channels = shape[1]
    # Statistics and parameters stay float32 (a reduced-precision input uses them as is).
    inputs = [randn(*shape, dtype=dtype, requires_grad=backward, scale=2.0),
              torch.zeros(channels, device=DEVICE), torch.ones(channels, device=DEVICE),
              randn(channels, requires_grad=backward), randn(channels, requires_grad=backward)]
    bench(benchmark, "batch_norm_relu", f"{case} {mode}", impl, IMPLS[mode], inputs, backward,
          dtype)
