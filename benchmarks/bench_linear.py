"""Linear + ReLU: torch (nn.Linear then relu) vs fastops (fused epilogue) vs torch.compile."""

import pytest
import torch
import torch.nn.functional as TF
from common import DTYPES, bench, cases, implementations, randn, skip_unselected

from fastops import functional as F

CASES = {  # name: (rows, in_features, out_features)
    "mlp 256x784->256": (256, 784, 256),
    "4096x1024->1024": (4096, 1024, 1024),
}
IMPLS = implementations(lambda x, w, b: torch.relu(TF.linear(x, w, b)), F.linear_relu)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def bench_linear_relu(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype)
    rows, in_features, out_features = CASES[case]
    inputs = [randn(rows, in_features, dtype=dtype, requires_grad=backward),
              randn(out_features, in_features, dtype=dtype, requires_grad=backward,
                    scale=in_features**-0.5),
              randn(out_features, dtype=dtype, requires_grad=backward)]
    bench(benchmark, "linear_relu", case, impl, IMPLS, inputs, backward, dtype)
