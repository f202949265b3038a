"""Cross-entropy: torch (log_softmax + nll_loss) vs fastops (one fused pass per row) vs
torch.compile; and Linear + CrossEntropyLoss vs the fused linear_cross_entropy, whose memory
kept for backward (extra_info["saved_bytes"]) holds no [N, C] logits.

fastops' linear_cross_entropy is also timed in pairs with torch's own fused function (torch >=
2.13) with its memory-saving chunked path, ``options=torch.nn.LinearCrossEntropyOptions()``
(default options: chunks of rows sized from the shapes, e.g. 64 rows for the lm head in
float32): op "linear_cross_entropy vs torch fused", whose "torch" is that function. Its chunked
path computes the gradients in the forward and keeps them for backward as attributes of its
autograd node, where saved-tensor hooks do not see them, so the saved bytes there are
``kept_bytes``. No torch.compile of it: torch's chunked op runs eager under torch.compile.
(With ``options=None`` torch's function is linear then cross_entropy: the first group's torch.)

In bfloat16 on the CPU, both linear_cross_entropy groups leave out the lm head
(FLOAT32_ONLY): one bfloat16 call of torch's chunked path there takes tens of seconds on the
2-core machine (its CPU bfloat16 policy, "accurate", accumulates in float32), minutes per case
at the suite's 7 pairs at least, and the float32 lm head already costs about 3 minutes.
"""

import pytest
import torch
import torch.nn.functional as TF
from common import (
    DEVICE,
    DTYPES,
    _step,
    bench,
    cases,
    implementations,
    randn,
    record,
    skip_unselected,
)

import fastops
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
FLOAT32_ONLY = ("lm head 4096x1024->32000",)
# torch's own linear_cross_entropy (torch >= 2.13) on its chunked path, vs fastops'.
TORCH_FUSED = hasattr(TF, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")
FUSED_IMPLS = {"torch": lambda x, w, b, t: TF.linear_cross_entropy(
                   x, w, t, linear_bias=b, options=torch.nn.LinearCrossEntropyOptions()),
               "fastops": LINEAR_IMPLS["fastops"]} if TORCH_FUSED else {}


def kept_bytes(fn, *inputs):
    """Bytes autograd keeps for backward of ``fn(*inputs)``: the saved tensors
    (fastops.saved_tensor_bytes) and the tensors a Python autograd node of the result's graph
    holds as attributes (torch's chunked linear_cross_entropy keeps its precomputed gradients
    so: ctx._gi, _gw, _gb), each storage counted once."""
    out, saved = fastops.saved_tensor_bytes(fn, *inputs)
    stashed, seen, nodes = {}, set(), [out.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for value in getattr(node, "__dict__", {}).values():
            if isinstance(value, torch.Tensor):
                stashed[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        nodes += [next_node for next_node, _ in node.next_functions]
    return saved + sum(stashed.values())


def targets(rows, classes):
    return torch.randint(0, classes, (rows,),
                         generator=torch.Generator().manual_seed(rows)).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def bench_cross_entropy(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype)
    rows, classes = CASES[case]
    inputs = [randn(rows, classes, dtype=dtype, requires_grad=backward, scale=3.0),
              targets(rows, classes)]
    bench(benchmark, "cross_entropy", case, impl, IMPLS, inputs, backward, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(LINEAR_CASES))
@pytest.mark.parametrize("impl", LINEAR_IMPLS)
def bench_linear_cross_entropy(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype, FLOAT32_ONLY)
    bench(benchmark, "linear_cross_entropy", case, impl, LINEAR_IMPLS,
          linear_inputs(case, backward, dtype), backward, dtype)


@pytest.mark.skipif(not TORCH_FUSED, reason="torch < 2.13: no F.linear_cross_entropy")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", cases(LINEAR_CASES))
@pytest.mark.parametrize("impl", ["torch", "fastops"])
def bench_linear_cross_entropy_vs_torch_fused(benchmark, impl, case, backward, dtype):
    skip_unselected(impl, case, dtype, FLOAT32_ONLY)
    inputs = linear_inputs(case, backward, dtype)
    fn = FUSED_IMPLS[impl]
    torch_run = _step(FUSED_IMPLS["torch"], inputs, backward) if impl == "fastops" else None
    record(benchmark, "linear_cross_entropy vs torch fused", case, impl,
           "fwd+bwd" if backward else "fwd", _step(fn, inputs, backward), dtype,
           kept_bytes(fn, *inputs) if backward else None, torch_run)


def linear_inputs(case, backward, dtype):
    rows, hidden, classes = LINEAR_CASES[case]
    return [randn(rows, hidden, dtype=dtype, requires_grad=backward),
            randn(classes, hidden, dtype=dtype, requires_grad=backward, scale=hidden**-0.5),
            randn(classes, dtype=dtype, requires_grad=backward),
            targets(rows, classes)]
