"""Command line: ``python -m fastops info | bench | train``."""

import argparse
import importlib
import os
import platform
import re
import sys

from ._extras import MissingExtra, require

# The CPU flags that csrc/shared/isa.h's cpu_has_avx512() asks for (__builtin_cpu_supports). That
# C++ check is what picks the kernels; info reads the same flags only to report them, from the
# kernel's /proc/cpuinfo, which lists an extension only where the OS also enabled it.
_AVX512_FLAGS = ("avx512f", "avx512vl", "avx512dq", "avx512bw")
_COLUMN_GAP = "   "


def _backends():
    """For every public fastops op: the kernel each device would run."""
    import torch

    import fastops  # noqa: F401

    names = sorted(
        name for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("fastops::") and not name.endswith("_backward")
    )
    rows = []
    for name in names:
        cpu = "C++ CPU" if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU") else "-"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"):
            cuda = "-"
        elif torch.cuda.is_available():
            cuda = "Triton CUDA"
        else:
            cuda = "Triton CUDA (no GPU here)"
        rows.append((name, cpu, cuda))
    return rows


def _avx512_text(cpuinfo="/proc/cpuinfo"):
    """Whether fastops' C++ kernels take their AVX-512 paths here, and torch's own choice."""
    import torch

    aten = f"torch's ATen: {torch.backends.cpu.get_cpu_capability()}"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"no: {platform.machine()} is not x86-64; {aten}"
    try:
        with open(cpuinfo) as file:
            flags = next(line.split(":", 1)[1].split() for line in file
                         if line.startswith("flags"))
    except (OSError, StopIteration):
        return f"unknown: no CPU flags in {cpuinfo}; {aten}"
    missing = [flag for flag in _AVX512_FLAGS if flag not in flags]
    if missing:
        return f"no: the CPU lacks {', '.join(missing)}: portable C++ kernels; {aten}"
    return (f"yes: the CPU has {', '.join(_AVX512_FLAGS)} ({cpuinfo}): AVX-512 C++ kernels "
            f"(in a GCC build); {aten}")


def _aligned(rows):
    """``rows`` (tuples of strings) as lines, each column as wide as its widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    lines = (_COLUMN_GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def info():
    import torch

    fields = [("python", f"{platform.python_version()} ({sys.executable})"),
              ("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")]
    try:
        import triton

        interpret = os.environ.get("TRITON_INTERPRET", "")
        fields.append(("triton", f"{triton.__version__}; TRITON_INTERPRET={interpret!r}" + (
            " (Triton kernels run in the interpreter, on CPU tensors)"
            if interpret not in ("", "0") else "")))
    except ImportError:
        fields.append(("triton", "not installed (CUDA kernels unavailable)"))
    try:
        import fastops

        fields.append(("fastops", f"{fastops.__version__}; C++ extension loaded from "
                                  f"{fastops._C.__file__}"))
    except Exception as error:  # report, don't hide, why the extension did not load
        fields.append(("fastops", f"C++ extension failed to load: {error}"))
        print(_aligned(fields))
        return 1
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA GPU)"
    fields += [("device", f"{device}; CPU threads: {torch.get_num_threads()}"),
               ("AVX-512", _avx512_text())]
    print(_aligned(fields))
    print()
    print(_aligned([("op", "CPU", "CUDA"), *_backends()]))
    return 0


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device):
    """Folder name of a machine's results: the GPU's name, or the CPU model and core count."""
    import torch

    if device == "cuda":
        return _slug(torch.cuda.get_device_name())
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1] for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu-{_slug(model)}-{os.cpu_count()}-cores"


def bench_out_dir(args, device):
    """The results folder of a bench run: --out, else runs/bench/<machine>[-quick][-filtered]
    (runs/ is ignored by git), so that no quick, filtered or ad-hoc run overwrites the
    committed results in benchmarks/results/<machine>/: only an explicit --out does."""
    if args.out:
        return args.out
    name = device_name(device) + ("-quick" if args.quick else "") + ("-filtered" if args.filter
                                                                     else "")
    return os.path.join("runs", "bench", name)


def bench(args):
    """Runs the pytest-benchmark suite on one device and writes JSON, table and charts."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is available here", file=sys.stderr)
        return 2
    require("bench", "python -m fastops bench")
    out_dir = bench_out_dir(args, device)
    print(f"python -m fastops bench: results go to {out_dir}/", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    os.environ["FASTOPS_BENCH_DEVICE"] = device
    os.environ["FASTOPS_BENCH_QUICK"] = "1" if args.quick else "0"

    import pytest

    from fastops.benchmarks.report import write_report

    suite = os.path.dirname(importlib.import_module("fastops.benchmarks").__file__)
    json_path = os.path.join(out_dir, "benchmark.json")
    pytest_args = [suite, "-q", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
                   "-o", "python_functions=bench_*", f"--benchmark-json={json_path}",
                   "--benchmark-sort=name", "--benchmark-columns=median,iqr,rounds"]
    if args.quick:
        pytest_args += ["--benchmark-max-time=0.2", "--benchmark-min-rounds=3"]
    if args.filter:
        pytest_args += ["-k", args.filter]
    status = pytest.main(pytest_args)
    if status != 0:
        return int(status)
    command = "python -m fastops bench " + " ".join(args.raw)
    text, written = write_report(json_path, out_dir, command=command.strip())
    print(text)
    print(f"results: {out_dir}/ ({', '.join(written)}; benchmark.json holds every sample and is "
          "not committed)")
    if not args.out:
        print("These results are not committed (runs/ is ignored by git). To update the committed "
              "ones, run the whole suite with "
              f"--out {os.path.join('benchmarks', 'results', device_name(device))}")
    return 0


def _add_train_parser(commands):
    from fastops.models import IMPLS, NAMES  # not fastops.train: `info` must not need tqdm

    parser = commands.add_parser(
        "train", help="train a tutorial model as its course does (torch, fastops or both)",
        description="Trains a tutorial model with its course's loss, optimiser and data. Under "
                    "`torchrun --nproc_per_node=P -m fastops train ...` it trains data-parallel "
                    "(gloo on CPU, NCCL on CUDA). Ctrl-C saves a checkpoint; --resume goes on.")
    parser.add_argument("--model", required=True, choices=NAMES, metavar="NAME",
                        help=f"one of {', '.join(NAMES)}")
    parser.add_argument("--impl", default="torch", choices=[*IMPLS, "both"],
                        help="both: torch and fastops from the same initial weights and data "
                             "order, taking turns a block of steps at a time, with a loss-curve "
                             "plot and a summary: accuracy, speed ratio (median, spread) after "
                             "warm-up (default torch)")
    parser.add_argument("--data", metavar="DIR",
                        help="folder of the real data set (MNIST/Fashion-MNIST IDX files, "
                             "cifar-10-batches-py, or the CSV table); default: built-in data")
    parser.add_argument("--epochs", type=int, help="default: the course's")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    parser.add_argument("--batch-size", type=int, help="per process; default: the course's")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N training and N test samples (quick runs)")
    parser.add_argument("--out", metavar="DIR", help="checkpoints and plot (default runs/<model>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (same options)")
    parser.add_argument("--sync-bn", action="store_true",
                        help="BatchNorm statistics over all processes (SyncBatchNorm; CUDA)")


def train(args):
    """Runs fastops.train with the command line's options; 130 when a signal stopped it."""
    require("models", "python -m fastops train")
    from fastops import train as training

    options = training.Options(
        model=args.model, impl=args.impl, data=args.data, epochs=args.epochs, device=args.device,
        seed=args.seed, batch_size=args.batch_size, limit=args.limit, out=args.out,
        resume=args.resume, sync_bn=args.sync_bn)
    try:
        results = training.train(options)
    except (ValueError, FileNotFoundError) as error:
        print(f"python -m fastops train: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
        print("python -m fastops train: stopped without saving", file=sys.stderr)
        return training.INTERRUPTED
    return training.INTERRUPTED if any(result.interrupted for result in results.values()) else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m fastops")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, extension, device and backend per op")
    bench_parser = commands.add_parser("bench", help="run the benchmark suite, write the report")
    bench_parser.add_argument("--quick", action="store_true",
                              help="tutorial-sized cases of each suite only, no torch.compile")
    bench_parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present")
    bench_parser.add_argument("--filter", help="pytest -k expression selecting cases")
    bench_parser.add_argument("--out", metavar="DIR",
                              help="results folder (default runs/bench/<machine>[-quick]"
                                   "[-filtered], ignored by git); the committed results are "
                                   "updated only with --out benchmarks/results/<machine>")
    _add_train_parser(commands)
    args = parser.parse_args(argv)
    args.raw = argv[1:]
    try:
        if args.command == "info":
            return info()
        if args.command == "train":
            return train(args)
        return bench(args)
    except MissingExtra as error:
        print(f"python -m fastops {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
