"""MaxPool2d: torch (F.max_pool2d) vs fastops (compact argmax) vs torch.compile, forward and
forward + backward; saved_bytes records what autograd keeps for backward (torch: the input and
int64 indices; fastops: a 1-byte window-local argmax per output element)."""

import pytest
import torch.nn.functional as TF
from common import DTYPES, bench, cases, implementations, randn, skip_unselected

from fastops import functional as F

CASES = {  # name: (input shape, kernel_size, stride, padding)
    "lenet 256x6x28x28 k2": ((256, 6, 28, 28), 2, 2, 0),
    "resnet stem 128x64x32x32 k3 s2 p1": ((128, 64, 32, 32), 3, 2, 1),
}
IMPLS = {case: implementations(lambda x, k=k, s=s, p=p: TF.max_pool2d(x, k, s, p),
                               lambda x, k=k, s=s, p=p: F.max_pool2d(x, k, s, p))
         for case, (_, k, s, p) in CASES.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS[next(iter(CASES))])  # the same names for every case
def bench_max_pool2d(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype)
    shape = CASES[case][0]
    inputs = [randn(*shape, dtype=dtype, requires_grad=backward)]
    bench(benchmark, "max_pool2d", case, impl, IMPLS[case], inputs, backward, dtype)
