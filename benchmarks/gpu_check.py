"""The whole GPU run, sized for one short lease of a GPU machine (``make gpu-check``).

Assumes fastops is built against the installed torch (the Makefile does that first). Stages,
each logged with its wall time:

1. info: versions, the GPU, the backend of every op.
2. tests: the CUDA tests (marked ``cuda`` or parametrised on "cuda") and the Triton launcher
   tests, run on the GPU in one pytest process per test file, all at once, with
   FASTOPS_AUTOTUNE=first (one config per kernel and key: the tests check results, not speed)
   and one Triton cache shared by the processes.
3. graph: converted tutorial models (mnist_cnn, cifar_net, lenet_bn) captured in a CUDA graph,
   inference and a training step, replayed and compared with eager execution.
4. reference: the measured copy bandwidth and the bf16 matmul rate of this GPU (cuBLAS), the
   yardsticks of the report.
5. bench: the quick GPU benchmark (``python -m fastops bench --quick --device cuda``):
   tutorial and large shapes, fp32 and bf16, torch eager vs fastops vs torch.compile, L2
   flushed before every round; fastops with FASTOPS_AUTOTUNE=first unless ``--autotune all``
   (timing every surviving config of every kernel does not fit a short lease).

Writes to ``benchmarks/results/<gpu-name>/``: report.md, summary.json (medians and quartiles
per case) and the charts of the benchmark, results.json (the reference rates, the stage times,
the test and CUDA-graph outcomes) and gpu-check.log. ``--dry-run`` runs the same stages on the
CPU (no GPU needed) into a folder of your choice, to check the script itself before a lease.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FILES = ["test_linear.py", "test_dropout.py", "test_max_pool2d.py", "test_cross_entropy.py",
              "test_conv2d.py", "test_batch_norm.py", "test_models.py", "test_convert.py"]
TEST_SELECTION = "cuda or triton"


class Log:
    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, text):
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def run_tests(log, device, timeout):
    """One pytest process per test file, all at once; returns {file: (exit code, summary)}."""
    cache = os.environ.get("TRITON_CACHE_DIR",
                           os.path.join(tempfile.gettempdir(), "fastops-triton"))
    env = dict(os.environ, FASTOPS_AUTOTUNE="first", PYTHONUNBUFFERED="1",
               TRITON_CACHE_DIR=cache)
    selection = TEST_SELECTION if device == "cuda" else "triton"  # dry run: the launcher tests
    procs = {}
    for name in TEST_FILES:
        cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "tests", name), "-q",
               "-p", "no:cacheprovider", "-k", selection]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    results = {}
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\n[gpu-check] killed after the {timeout} s test budget"
        lines = [line for line in out.splitlines() if line.strip()]
        summary = lines[-1] if lines else ""
        # pytest's 5: nothing selected in this file (e.g. no Triton test), not a failure
        code = 0 if proc.returncode == 5 else proc.returncode
        results[name] = (code, summary)
        log(f"  {name:24s} exit {proc.returncode}: {summary}")
        if code:
            log("\n".join("    " + line for line in lines[-60:]))
    return results


def check_cuda_graphs(log, device):
    """Converted tutorial models replayed from a CUDA graph give eager's results."""
    import torch

    import fastops
    from fastops.models import build

    if device != "cuda":
        log("  skipped: CUDA graphs need a GPU")
        return {}
    outcomes = {}
    for name, shape in (("mnist_cnn", (64, 1, 28, 28)), ("cifar_net", (4, 3, 32, 32)),
                        ("lenet_bn", (256, 1, 28, 28))):
        torch.manual_seed(0)
        model = fastops.convert(build(name, impl="torch"), verbose=False).to(device)
        x = torch.randn(shape, device=device)
        target = torch.randint(0, 10, (shape[0],), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()
        try:
            # inference
            model.eval()
            static_x = x.clone()
            with torch.no_grad():
                eager = model(static_x)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up on a side stream, as torch documents
                    for _ in range(3):
                        model(static_x)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = model(static_x)
                graph.replay()
            torch.testing.assert_close(static_out, eager, rtol=1e-4, atol=1e-4)
            # one training step (forward, loss, backward) captured whole
            model.train()
            params = [p for p in model.parameters()]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    torch.autograd.grad(loss_fn(model(static_x), target), params)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_loss = loss_fn(model(static_x), target)
                static_grads = torch.autograd.grad(static_loss, params)
            graph.replay()
            want_loss = loss_fn(model(static_x), target)
            want_grads = torch.autograd.grad(want_loss, params)
            torch.testing.assert_close(static_loss, want_loss, rtol=1e-4, atol=1e-4)
            for got, want in zip(static_grads, want_grads, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
            timings = _graph_speedup(model, static_x, target, loss_fn, params, graph)
            outcomes[name] = dict(ok=True, **timings)
            log(f"  {name}: inference and train step replay eager's results; train step "
                f"{timings['eager_ms']:.3f} ms eager, {timings['graph_ms']:.3f} ms from the graph")
        except Exception as error:  # noqa: BLE001  (reported; the check fails on it)
            outcomes[name] = dict(ok=False, error=f"{type(error).__name__}: {error}"[:500])
            log(f"  {name}: FAILED {outcomes[name]['error']}")
    return outcomes


def _graph_speedup(model, x, target, loss_fn, params, graph):
    """Train-step time, eager vs graph replay (tutorial models are launch-bound on a GPU)."""
    import torch
    from triton.testing import do_bench

    def eager():
        torch.autograd.grad(loss_fn(model(x), target), params)

    return dict(eager_ms=do_bench(eager), graph_ms=do_bench(graph.replay))


def measure_reference(log, device):
    """This GPU's copy bandwidth (GB/s, a 1 GiB device-to-device copy) and bf16 matmul rate
    (TFLOP/s, cuBLAS at 8192^3): what the report's fractions are fractions of."""
    import torch

    if device != "cuda":
        log("  skipped: needs a GPU")
        return {}
    from triton.testing import do_bench

    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src))
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_ms = do_bench(lambda: a @ b)
    reference = dict(copy_gb_per_s=2 * src.numel() / copy_ms / 1e6,
                     bf16_matmul_tflop_per_s=2 * n**3 / mm_ms / 1e9)
    log(f"  copy {reference['copy_gb_per_s']:.0f} GB/s (read + write), "
        f"bf16 matmul {reference['bf16_matmul_tflop_per_s']:.0f} TFLOP/s")
    return reference


# The quick suite in parts, most wanted first: each part writes its own results, so a part that
# outruns the budget costs only itself.
BENCH_PARTS = ["cross_entropy", "linear_relu", "conv2d", "batch_norm", "max_pool2d",
               "dropout and not linear", "model"]


def run_bench(log, device, out_dir, timeout, autotune):
    """The quick benchmark, one part at a time, within ``timeout`` seconds in all; writes the
    report of what finished into out_dir and returns (exit code, rows)."""
    scratch = tempfile.mkdtemp(prefix="fastops-bench-")
    env = dict(os.environ, FASTOPS_AUTOTUNE=autotune)
    parts = BENCH_PARTS if device == "cuda" else ["linear_relu and not dropout"]  # dry run
    deadline = time.monotonic() + timeout
    merged, code = None, 0
    for i, part in enumerate(parts):
        left = deadline - time.monotonic()
        if left < 10:
            log(f"  {part}: skipped, the {timeout} s budget is spent")
            code = code or 124
            continue
        part_dir = os.path.join(scratch, f"part{i}")
        cmd = [sys.executable, "-m", "fastops", "bench", "--quick", "--device", device,
               "--out", part_dir, "--filter", part]
        began = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=left)
            part_code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired:
            part_code, output = 124, f"stopped after the remaining {left:.0f} s of the budget"
        log(f"  {part}: exit {part_code} in {time.monotonic() - began:.0f} s")
        if part_code:
            log("\n".join("    " + line for line in output.splitlines()[-30:]))
            code = code or part_code
            continue
        with open(os.path.join(part_dir, "benchmark.json")) as f:
            data = json.load(f)
        if merged is None:
            merged = data
        else:
            merged["benchmarks"] += data["benchmarks"]
    if merged is None:
        return code or 1, []
    from fastops.benchmarks.report import load_rows, write_report

    json_path = os.path.join(scratch, "benchmark.json")
    with open(json_path, "w") as f:
        json.dump(merged, f)
    write_report(json_path, out_dir, command=f"make gpu-check (FASTOPS_AUTOTUNE={autotune})")
    return code, load_rows(json_path)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same stages on the CPU (no GPU needed), to check the script")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<gpu-name>)")
    parser.add_argument("--test-timeout", type=int,
                        help="seconds for the test stage (default 180; 900 for --dry-run, whose "
                             "Triton interpreter is slow)")
    parser.add_argument("--bench-timeout", type=int, default=150)
    parser.add_argument("--autotune", choices=["first", "all"], default="first",
                        help="FASTOPS_AUTOTUNE of the benchmark: 'first' (default) fits a short "
                             "lease; 'all' times every config that survives pruning")
    parser.add_argument("--copy-to", metavar="DIR",
                        help="also copy the results folder's files there (e.g. a lease's outbox)")
    args = parser.parse_args(argv)

    import torch

    from fastops.__main__ import device_name, info

    device = "cpu" if args.dry_run else "cuda"
    test_timeout = args.test_timeout or (900 if args.dry_run else 180)
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here (use --dry-run to check the script on a CPU)",
              file=sys.stderr)
        return 2
    out_dir = args.out or os.path.join(ROOT, "benchmarks", "results", device_name(device))
    os.makedirs(out_dir, exist_ok=True)
    log = Log(os.path.join(out_dir, "gpu-check.log"))
    summary = dict(date=time.strftime("%Y-%m-%d"), device=device_name(device),
                   torch=torch.__version__, autotune=args.autotune, stages={})
    ok = True
    start = time.monotonic()
    for stage, run in (("info", lambda: info()),
                       ("tests", lambda: run_tests(log, device, test_timeout)),
                       ("graph", lambda: check_cuda_graphs(log, device)),
                       ("reference", lambda: measure_reference(log, device)),
                       ("bench", lambda: run_bench(log, device, out_dir, args.bench_timeout,
                                                   args.autotune))):
        log(f"== {stage}")
        began = time.monotonic()
        result = run()
        seconds = time.monotonic() - began
        summary["stages"][stage] = round(seconds, 1)
        log(f"   {stage}: {seconds:.1f} s")
        if stage == "tests":
            summary["tests"] = {name: summary_line for name, (_, summary_line) in result.items()}
            ok &= all(code == 0 for code, _ in result.values())
        elif stage == "graph":
            summary["cuda_graphs"] = result
            ok &= all(outcome["ok"] for outcome in result.values())
        elif stage == "reference":
            summary["reference"] = result
        elif stage == "bench":
            code, rows = result
            summary["bench_cases"] = len(rows)  # the cases themselves: summary.json
            ok &= code == 0
    summary["total_seconds"] = round(time.monotonic() - start, 1)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"== gpu-check {'passed' if ok else 'FAILED'} in {summary['total_seconds']} s; "
        f"results in {out_dir}")
    if args.copy_to:
        os.makedirs(args.copy_to, exist_ok=True)
        for name in os.listdir(out_dir):
            shutil.copy(os.path.join(out_dir, name), args.copy_to)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
