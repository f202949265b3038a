"""Shared by every benchmarks/bench_<op>.py: the device, the implementations compared and one
timed step. Every case is recorded with pytest-benchmark; ``group`` holds the cases compared
side by side (torch vs fastops vs torch.compile), ``extra_info`` what the report needs.

The fastops case of a group is timed in pairs with its torch counterpart (a tutorial model's
also with torch.compile's; see ``_paired``): the speed-up the report gives is the median of the
per-pair ratios, with their quartiles.

Environment (set by ``python -m fastops bench``):
  FASTOPS_BENCH_DEVICE  cpu | cuda (default: cuda when available)
  FASTOPS_BENCH_QUICK   1: on the CPU, only each suite's tutorial-sized cases (its first case;
                        the models: mlp, mnist_cnn, cifar_net) in float32, no torch.compile;
                        on CUDA (where a run is one short lease and compiling is what costs)
                        the largest case too, float32 and bfloat16, torch.compile included

Dtypes: float32 and bfloat16 on CUDA; on the CPU float32, and in the full run bfloat16 too (CPU
training runs under torch.autocast("cpu", dtype=torch.bfloat16)), without torch.compile (see
``skip_unselected``); a suite leaves out, in bfloat16, the cases it names there.
"""

import math
import os
import statistics
import time

import torch

import fastops

DEVICE = os.environ.get("FASTOPS_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("FASTOPS_BENCH_QUICK", "0") == "1"
DTYPES = ([torch.float32, torch.bfloat16] if DEVICE == "cuda" or not QUICK
          else [torch.float32])
# Rounds on CUDA; each is preceded (untimed) by a write over a buffer larger than L2, so small
# cases are not flattered by a warm cache (the do_bench recipe).
CUDA_ROUNDS = 50
_L2_FLUSH_BYTES = 256 * 1024 * 1024
# Fewest (torch, fastops) pairs of a case: the quartiles of fewer ratios say little.
MIN_PAIRS = 7
# pytest-benchmark's --benchmark-max-time and --benchmark-min-rounds, which also bound the
# pairs; conftest.py sets them from the command line (these are pytest-benchmark's defaults).
ROUNDS = dict(max_time=1.0, min_rounds=5)


def cases(all_cases, tutorial=None):
    """The cases of a suite: all of them, or with --quick the tutorial-sized ones (``tutorial``,
    default the first case), and on CUDA the last (largest) one too."""
    names = list(all_cases)
    if not QUICK:
        return names
    quick = list(tutorial) if tutorial else names[:1]
    if DEVICE == "cuda" and names[-1] not in quick:
        quick.append(names[-1])
    return quick


def skip_unselected(impl, case, dtype, float32_only=()):
    """Skips (pytest.skip) a CPU bfloat16 combination the run leaves out: torch.compile, whose
    bfloat16 cases would each recompile the callable the suite shares across its cases (seconds
    each on the 2-core machine, and past dynamo's recompile limit, 8, it runs eager
    unannounced), and the cases in ``float32_only`` (a suite's cases too slow in bfloat16)."""
    import pytest

    if DEVICE == "cuda" or dtype != torch.bfloat16:
        return
    if impl == "torch.compile":
        pytest.skip("torch.compile: float32 only on the CPU")
    if case in float32_only:
        pytest.skip(f"{case}: float32 only on the CPU")


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


def _cache_flush():
    """A callable run (untimed) before every timed CUDA call: a write over a buffer larger than
    L2, so small cases are not flattered by a warm cache. Nothing to do on the CPU."""
    if DEVICE != "cuda":
        return lambda: None
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def run():
        flush.zero_()
        torch.cuda.synchronize()
    return run


def _timed(benchmark, run):
    if DEVICE != "cuda":
        benchmark(run)
        return
    benchmark.pedantic(run, setup=_cache_flush(), rounds=CUDA_ROUNDS, warmup_rounds=3)


def _seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _paired(benchmark, baseline_runs, run):
    """Times ``run`` (fastops) in pairs with each of ``baseline_runs`` ({name: run}: "torch", and
    for a model "compile" too; the first is the one pytest-benchmark's rounds pair with, each
    round one timed baseline call then the timed fastops call; the others' pairs are timed
    before, alike). Returns per name {pairs, <name>_median (seconds), ratio: the 25th, 50th and
    75th percentiles of the ratios baseline / fastops of its pairs} (None under
    --benchmark-disable, which times nothing).

    Timing all rounds of one implementation and then all of the other lets a slow spell of a
    shared machine (seconds long) fall on one side and move the ratio by up to 2x; in pairs,
    both calls of a ratio share the spell. The calls alternate strictly (torch, fastops, torch,
    ...), so each call follows a call of the other implementation and neither side runs in a
    cache the other warmed more often. Each baseline's pairs run apart from the other's: a
    compiled model's call changes the caches for the next calls (a ~20 us model step then
    takes up to ~3 us more, and not equally for both builds), so torch.compile calls in
    between would decide a small model's ratio. The number of pairs per baseline follows
    pytest-benchmark's own rule (--benchmark-max-time of round time, at least
    --benchmark-min-rounds) and is at least MIN_PAIRS; on CUDA it is CUDA_ROUNDS, each call
    after an L2 flush."""
    flush = _cache_flush()
    for baseline_run in baseline_runs.values():  # warm-up (record warmed ``run`` up)
        baseline_run()

    def pairs_for(baseline_run):
        if DEVICE == "cuda":
            return CUDA_ROUNDS
        round_seconds = _seconds(baseline_run) + _seconds(run)  # one more round sizes them
        return max(MIN_PAIRS, ROUNDS["min_rounds"], math.ceil(ROUNDS["max_time"] / round_seconds))

    def timed_pair(baseline_run):
        flush()
        baseline = _seconds(baseline_run)
        flush()
        return baseline, _seconds(run)

    if benchmark.disabled:
        benchmark.pedantic(run, rounds=1)
        return None
    first, *others = baseline_runs
    summaries = {}
    for name in others:
        pairs = [timed_pair(baseline_runs[name]) for _ in range(pairs_for(baseline_runs[name]))]
        summaries[name] = _pairs_summary(name, *zip(*pairs, strict=True))
    first_seconds = []

    def setup():
        flush()
        first_seconds.append(_seconds(baseline_runs[first]))
        flush()

    benchmark.pedantic(run, setup=setup, rounds=pairs_for(baseline_runs[first]))
    summaries[first] = _pairs_summary(first, first_seconds, benchmark.stats.stats.data)
    return {name: summaries[name] for name in baseline_runs}


def _pairs_summary(name, baseline_seconds, fastops_seconds):
    """The summary ``_paired`` returns for one baseline."""
    ratios = [b / f for b, f in zip(baseline_seconds, fastops_seconds, strict=True)]
    return {"pairs": len(ratios),
            f"{name}_median": _significant(statistics.median(baseline_seconds)),
            "ratio": [_significant(q) for q in statistics.quantiles(ratios, n=4)]}


def _significant(value):
    """Four significant digits: more than the report shows, and summary.json stays compact."""
    return float(f"{value:.4g}")


# extra_info key of the pairs' summary, per baseline.
_PAIRED_KEY = {"torch": "paired", "compile": "paired_compile"}


def record(benchmark, op, case, impl, pass_name, run, dtype=torch.float32, saved_bytes=None,
           torch_run=None, compile_run=None):
    """Times ``run()`` (which synchronises) under the group of cases compared side by side; with
    ``torch_run`` and / or ``compile_run`` (the torch and torch.compile counterparts of a fastops
    case) in pairs with them, the pairs' summaries in ``extra_info["paired"]`` and
    ``extra_info["paired_compile"]``. ``dtype``: a torch dtype or a name."""
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
    baseline_runs = {name: baseline_run for name, baseline_run in (("torch", torch_run),
                                                                    ("compile", compile_run))
                     if baseline_run is not None}
    if not baseline_runs:
        _timed(benchmark, run)
        return
    summaries = _paired(benchmark, baseline_runs, run) or dict.fromkeys(baseline_runs)
    for name, summary in summaries.items():
        benchmark.extra_info[_PAIRED_KEY[name]] = summary


def bench(benchmark, op, case, impl, impls, inputs, backward, dtype=torch.float32):
    """Times ``impls[impl](*inputs)`` (forward, or forward + backward) and records the case; the
    fastops case in pairs with ``impls["torch"]``."""
    fn = impls[impl]
    saved = fastops.saved_tensor_bytes(fn, *inputs)[1] if backward else None
    torch_run = _step(impls["torch"], inputs, backward) if impl == "fastops" else None
    record(benchmark, op, case, impl, "fwd+bwd" if backward else "fwd",
           _step(fn, inputs, backward), dtype, saved, torch_run)


def randn(*shape, dtype=torch.float32, requires_grad=False, scale=1.0):
    """Benchmark input on DEVICE, generated on the CPU from a fixed seed."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + sum(shape)))
    return (t * scale).to(DEVICE, dtype).requires_grad_(requires_grad)
