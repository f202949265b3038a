"""Cross-entropy: torch (log_softmax + nll_loss) vs fastops (one fused pass per row) vs
torch.compile; and Linear + CrossEntropyLoss vs the fused linear_cross_entropy, whose memory
kept for backward (extra_info["saved_bytes"]) holds no [N, C] logits."""

import pytest
import torch
import torch.nn.functional as TF
from common import DEVICE, DTYPES, bench, cases, implementations, randn

from fastops import functional as F

CASES = {  # name: (rows, classes)
    "tutorial 256x10": (256, 10),
    "4096x32000": (4096, 32000),
}
IMPLS = implementations(TF.cross_entropy, F.cross_entropy)

LINEAR_CASES = {  # name: (rows, hidden, classes)
    "head 1024x256->4000": (1024, 256, 4000),
    "lm head 4096x1024->32000": (4096, 1024, 32000),
}
LINEAR_IMPLS = implementations(lambda x, w, b, t: TF.cross_entropy(TF.linear(x, w, b), t),
                               lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b))


def targets(rows, classes):
    return torch.randint(0, classes, (rows,),
                         generator=torch.Generator().manual_seed(rows)).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def bench_cross_entropy(benchmark, impl, case, backward, dtype):
    rows, classes = CASES[case]
    inputs = [randn(rows, classes, dtype=dtype, requires_grad=backward, scale=3.0),
              targets(rows, classes)]
    bench(benchmark, "cross_entropy", case, impl, IMPLS, inputs, backward, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(LINEAR_CASES))
@pytest.mark.parametrize("impl", LINEAR_IMPLS)
def bench_linear_cross_entropy(benchmark, impl, case, backward, dtype):
    rows, hidden, classes = LINEAR_CASES[case]
    inputs = [randn(rows, hidden, dtype=dtype, requires_grad=backward),
              randn(classes, hidden, dtype=dtype, requires_grad=backward, scale=hidden**-0.5),
              randn(classes, dtype=dtype, requires_grad=backward),
              targets(rows, classes)]
    bench(benchmark, "linear_cross_entropy", case, impl, LINEAR_IMPLS, inputs, backward, dtype)
