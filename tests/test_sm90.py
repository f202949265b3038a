"""Every Triton kernel compiles for Hopper (sm_90), without a GPU, and stays within its budget.

tests/sm90.py compiles the real launchers on CPU tensors through a compile-only driver (one
config per kernel and key, the one FASTOPS_AUTOTUNE=first runs; ``make aot`` compiles every
config that can be picked) and reports each compiled kernel's shared memory, registers, spill
stores and tensor-core instructions, and each warmed-up call's launches. The Triton interpreter
that the other tests use checks none of this: it accepts kernels no GPU compiler would.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from fastops.triton_kernels._utils import MAX_SHARED_MEMORY
from sm90_cases import CASES

HERE = os.path.dirname(os.path.abspath(__file__))
DOT_KERNELS = ("matmul_kernel", "conv2d_forward_kernel", "conv2d_grad_input_kernel",
               "conv2d_grad_weight_kernel")

# Launches per call at the tutorial shapes (Triton kernels + torch ops that launch a kernel):
# on a GPU the tutorial models are launch-bound, so each op's count is held here.
LAUNCH_BUDGET = {
    ("linear", "forward"): 1,
    ("linear", "backward"): 2,           # grad_input; grad_weight with the bias gradient
    ("dropout", "forward"): 1,
    ("max_pool2d", "forward"): 1,
    ("cross_entropy", "forward"): 2,     # per-row kernel, then one reduction kernel
    ("cross_entropy", "backward"): 1,
    ("conv2d", "forward"): 1,
    # grad_input, grad_weight + bias; then the fp32 split-K partials summed and (fp16 / bf16)
    # cast by torch, for the weight and the bias
    ("conv2d", "backward"): 6,
    ("batch_norm", "forward"): 3,        # moments, finalize (running stats), normalise
    ("batch_norm", "backward"): 3,       # sums, finalize, grad_input
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """tests/sm90.py's report, compiled in two processes (this machine's two cores)."""
    out = tmp_path_factory.mktemp("sm90") / "report.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sm90.py"), "--jobs", "2",
                           "--out", str(out)], env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(out) as f:
        return json.load(f)["cases"]


def _kernels(report):
    for case in report:
        for kernel in case["compiled"]:
            yield case, kernel


def _label(case, kernel=None):
    constants = (kernel or {}).get("constants", {})
    config = {k: v for k, v in constants.items() if k.startswith("BLOCK")}
    name = kernel["kernel"] if kernel else ""
    return f"{case['op']} {case['phase']} {case['name']} {name} {config}"


def test_every_case_compiles_for_sm90(report):
    assert len(report) == len(CASES)
    errors = [f"{_label(c)}: {c['error']}" for c in report if c["error"]]
    assert not errors, "\n".join(errors)
    assert sum(len(c["compiled"]) for c in report) > 0


def test_shared_memory_within_the_device_limit(report):
    over = [f"{_label(c, k)}: {k['shared']} bytes" for c, k in _kernels(report)
            if k["shared"] > MAX_SHARED_MEMORY]
    assert not over, "\n".join(over)


def test_no_register_spills(report):
    spilling = [f"{_label(c, k)}: {k['spills']} STL, {k['registers']} registers"
                for c, k in _kernels(report) if k["spills"]]
    assert not spilling, "\n".join(spilling)


def test_reduced_precision_dots_use_tensor_cores(report):
    missing = [_label(c, k) for c, k in _kernels(report)
               if k["kernel"] in DOT_KERNELS and not c["name"].endswith("float32")
               and not k["tensor_core"]]
    assert not missing, "\n".join(missing)


def test_max_pool2d_index_arithmetic_is_inline(report):
    """No subroutine calls (64-bit integer division compiles to one per element)."""
    calling = [f"{_label(c, k)}: {k['calls']} CALL" for c, k in _kernels(report)
               if c["op"] == "max_pool2d" and k["calls"]]
    assert not calling, "\n".join(calling)


def test_launch_grids_within_cuda_limits(report):
    bad = [f"{_label(c)}: {launch}" for c in report for launch in c["triton_launches"]
           if not (launch["grid"][0] < 2**31 and max(launch["grid"][1:]) <= 65535)]
    assert not bad, "\n".join(bad)


def test_tutorial_launch_budget(report):
    over = []
    for case in report:
        if not case["tutorial"]:
            continue
        launches = len(case["triton_launches"]) + sum(case["torch_launches"].values())
        budget = LAUNCH_BUDGET[(case["op"], case["phase"])]
        if launches > budget:
            over.append(f"{_label(case)}: {launches} > {budget} "
                        f"({[k['kernel'] for k in case['triton_launches']]}, "
                        f"{case['torch_launches']})")
    assert not over, "\n".join(over)


def test_cases_cover_every_op_and_dtype():
    ops = {case.op for case in CASES}
    assert ops == {"linear", "dropout", "max_pool2d", "cross_entropy", "linear_cross_entropy",
                   "conv2d", "batch_norm"}
    for dtype in ("float32", "float16", "bfloat16"):
        assert {c.op for c in CASES if c.name.endswith(dtype)} == ops


def test_batch_norm_grad_sums_keeps_clear_of_a_triton_compiler_crash():
    """Triton 3.9 segfaults compiling _grad_sums_kernel's wide-channel tiles for LeNet's
    BatchNorm1d(120) + ReLU (make aot found it); such launches are pruned to narrow tiles."""
    from fastops.triton_kernels import batch_norm

    def args(shape, channels_last=False, relu=True):
        g = torch.empty(shape)
        if channels_last:
            g = g.contiguous(memory_format=torch.channels_last)
        g = g.view(shape[0], shape[1], -1)
        strides = {f"stride_{t}{d}": s
                   for t in "gxy" for d, s in zip("ncs", g.stride(), strict=True)}
        return dict(strides, HAS_X=True, RELU=relu)

    def widths(named):
        return {c.kwargs["BLOCK_C"] for c in batch_norm._prune_grad_sums(
            batch_norm._REDUCE_CONFIGS, named)}

    assert max(widths(args((256, 120)))) < 32                          # LeNet's BatchNorm1d
    assert max(widths(args((16, 120, 24, 24), channels_last=True))) < 32
    assert max(widths(args((256, 128)))) >= 32                         # aligned rows
    assert max(widths(args((256, 120), relu=False))) >= 32
    assert max(widths(args((256, 6, 24, 24)))) >= 32                  # NCHW planes
