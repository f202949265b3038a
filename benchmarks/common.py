"""Shared by every benchmarks/bench_<op>.py: the device, the implementations compared and one
timed step. Every case is recorded with pytest-benchmark; ``group`` holds the cases compared
side by side (torch vs fastops vs torch.compile), ``extra_info`` what the report needs.

Environment (set by ``python -m fastops bench``):
  FASTOPS_BENCH_DEVICE  cpu | cuda (default: cuda when available)
  FASTOPS_BENCH_QUICK   1: on the CPU, only each suite's first (tutorial-sized) case in float32,
                        no torch.compile; on CUDA (where a run is one short lease and compiling
                        is what costs) the first and the last (largest) case, float32 and
                        bfloat16, torch.compile included
"""

import os

import torch

import fastops

DEVICE = os.environ.get("FASTOPS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("FASTOPS_BENCH_QUICK", "0") == "1"
DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
# Rounds on CUDA; each is preceded (untimed) by a write over a buffer larger than L2, so small
# cases are not flattered by a warm cache (the do_bench recipe).
CUDA_ROUNDS = 50
_L2_FLUSH_BYTES = 256 * 1024 * 1024


def cases(all_cases):
    """The cases of a suite: all of them, or with --quick the first (tutorial-sized) one, and
    on CUDA the last (largest) one too."""
    names = list(all_cases)
    if not QUICK:
        return names
    return names[:1] + names[1:][-1:] if DEVICE == "cuda" else names[:1]


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def implementations(torch_fn, fastops_fn, compile_torch=True):
    """{name: callable}: torch eager, fastops, and torch.compile of the torch function."""
    impls = {"torch": torch_fn, "fastops": fastops_fn}
    if compile_torch and (DEVICE == "cuda" or not QUICK):
        impls["torch.compile"] = torch.compile(torch_fn)
    return impls


def _step(fn, inputs, backward):
    """One timed call: forward under no_grad, or forward + backward to every input that
    requires grad (torch.autograd.grad, so no .grad accumulation is timed)."""
    differentiable = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not backward:
        def run():
            with torch.no_grad():
                fn(*inputs)
            sync()
        return run
    out = fn(*inputs)
    grad = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)

    def run():
        torch.autograd.grad(fn(*inputs), differentiable, grad)
        sync()
    return run


def _timed(benchmark, run):
    if DEVICE != "cuda":
        benchmark(run)
        return
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def setup():
        flush.zero_()
        torch.cuda.synchronize()

    benchmark.pedantic(run, setup=setup, rounds=CUDA_ROUNDS, warmup_rounds=3)


def record(benchmark, op, case, impl, pass_name, run, dtype=torch.float32, saved_bytes=None):
    """Times ``run()`` (which synchronises) under the group of cases compared side by side."""
    dtype_name = str(dtype).replace("torch.", "")
    benchmark.group = f"{op} | {case} | {pass_name} | {dtype_name} | {DEVICE}"
    info = dict(op=op, case=case, impl=impl, pass_=pass_name, dtype=dtype_name, device=DEVICE)
    if saved_bytes is not None:
        info["saved_bytes"] = saved_bytes
    run()  # warm-up: compilation, autotuning, allocator
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        info["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    benchmark.extra_info.update(info)
    _timed(benchmark, run)


def bench(benchmark, op, case, impl, fn, inputs, backward, dtype=torch.float32):
    """Times ``fn(*inputs)`` (forward, or forward + backward) and records the case."""
    saved = fastops.saved_tensor_bytes(fn, *inputs)[1] if backward else None
    record(benchmark, op, case, impl, "fwd+bwd" if backward else "fwd",
           _step(fn, inputs, backward), dtype, saved)


def randn(*shape, dtype=torch.float32, requires_grad=False, scale=1.0):
    """Benchmark input on DEVICE, generated on the CPU from a fixed seed."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + sum(shape)))
    return (t * scale).to(DEVICE, dtype).requires_grad_(requires_grad)
