"""Conv2d + ReLU: torch (nn.Conv2d then relu) vs fastops (bias + ReLU fused into the pass that
writes the output) vs torch.compile, at the LeNet shapes and a ResNet-style 64-channel shape."""

import pytest
import torch
import torch.nn.functional as TF
from common import DTYPES, bench, cases, implementations, randn, skip_unselected

from fastops import functional as F

CASES = {  # name: (batch, in_channels, (H, W), out_channels, kernel, padding)
    "lenet conv1 256x3x32x32->6x5x5": (256, 3, (32, 32), 6, 5, 0),
    "lenet conv2 256x6x14x14->16x5x5": (256, 6, (14, 14), 16, 5, 0),
    "128x64x32x32->64x3x3 pad 1": (128, 64, (32, 32), 64, 3, 1),
}
IMPLS = implementations(lambda x, w, b, padding: torch.relu(TF.conv2d(x, w, b, padding=padding)),
                        lambda x, w, b, padding: F.conv2d_relu(x, w, b, padding=padding))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def bench_conv2d_relu(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype)
    batch, in_channels, size, out_channels, kernel, padding = CASES[case]
    fan_in = in_channels * kernel * kernel
    inputs = [randn(batch, in_channels, *size, dtype=dtype, requires_grad=backward),
              randn(out_channels, in_channels, kernel, kernel, dtype=dtype, requires_grad=backward,
                    scale=fan_in**-0.5),
              randn(out_channels, dtype=dtype, requires_grad=backward),
              padding]
    bench(benchmark, "conv2d_relu", case, impl, IMPLS, inputs, backward, dtype)
