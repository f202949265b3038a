"""Dropout: torch (bernoulli mask, stored for backward) vs fastops (Philox noise regenerated in
backward, nothing stored) vs torch.compile; element-wise dropout, Dropout2d and the fused
Linear -> ReLU -> Dropout of the tutorial MLP."""

import pytest
import torch
import torch.nn.functional as TF
from common import DTYPES, bench, cases, implementations, randn, skip_unselected

from fastops import functional as F

P = 0.5
CASES = {  # name: shape
    "256x256": (256, 256),
    "64x4x128x128": (64, 4, 128, 128),
}
IMPLS = implementations(lambda x: TF.dropout(x, P), lambda x: F.dropout(x, P))
CHANNEL_IMPLS = implementations(lambda x: TF.dropout2d(x, P), lambda x: F.dropout2d(x, P))
MLP_IMPLS = implementations(lambda x, w, b: TF.dropout(torch.relu(TF.linear(x, w, b)), P),
                            lambda x, w, b: F.linear_relu(x, w, b, dropout=P))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def bench_dropout(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype)
    inputs = [randn(*CASES[case], dtype=dtype, requires_grad=backward)]
    bench(benchmark, "dropout", case, impl, IMPLS, inputs, backward, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", CHANNEL_IMPLS)
def bench_dropout2d(benchmark, impl, backward, dtype):
    case = "64x4x128x128"
    skip_unselected(impl, case, dtype)
    inputs = [randn(*CASES[case], dtype=dtype, requires_grad=backward)]
    bench(benchmark, "dropout2d", case, impl, CHANNEL_IMPLS, inputs, backward, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", MLP_IMPLS)
def bench_linear_relu_dropout(benchmark, impl, backward, dtype):
    skip_unselected(impl, "mlp 256x784->256", dtype)
    rows, in_features, out_features = 256, 784, 256  # the tutorial MLP's first layer
    inputs = [randn(rows, in_features, dtype=dtype, requires_grad=backward),
              randn(out_features, in_features, dtype=dtype, requires_grad=backward,
                    scale=in_features**-0.5),
              randn(out_features, dtype=dtype, requires_grad=backward)]
    bench(benchmark, "linear_relu_dropout", "mlp 256x784->256", impl, MLP_IMPLS, inputs,
          backward, dtype)
