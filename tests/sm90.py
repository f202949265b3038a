"""Compiles fastops' Triton kernels for Hopper (sm_90) on a machine without a GPU.

Triton's active driver is replaced by ``Sm90CompileDriver``: its target is
``GPUTarget("cuda", 90, 32)``, its device and stream queries answer harmlessly, and its launcher
does nothing. The real launchers of ``fastops.triton_kernels`` are then called on CPU tensors:
every launch compiles the kernel (for an autotuned kernel, every config that survives pruning,
since the driver's benchmarker runs each candidate once) and launches nothing. Each compiled
kernel's cubin is read with the ``cuobjdump`` that the triton wheel ships: registers, spill
stores (``STL``) and tensor-core instructions (``HGMMA`` / ``HMMA``); its metadata gives shared
memory. The launches are counted too (Triton kernels, and the torch ops that would launch a
device kernel), which gives the launch budget of each op.

Run as a script (a subprocess: the driver must be in place before any kernel is compiled, and
``TRITON_INTERPRET`` must be off)::

    python tests/sm90.py --out report.json [--autotune first|all] [--only OP]

``--autotune first`` (the test suite's setting) compiles one config per kernel and key: the
first that survives pruning, which is the config a GPU run with ``FASTOPS_AUTOTUNE=first`` uses;
``--autotune all`` compiles every config that can be picked (``make aot``).
"""

import argparse
import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from fastops.triton_kernels._utils import MAX_SHARED_MEMORY  # kernels are defined later

# H200 / H100 (sm_90): the register file per SM.
REGISTERS_PER_SM = 65536


def _cuobjdump():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def read_cubin(cubin):
    """(registers, spill stores, tensor-core instructions, subroutine calls) of a compiled
    kernel's cubin. Calls are what 64-bit integer division (and other slow paths) compile to."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], check=True, capture_output=True,
                              text=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", sass)
    spills = sum(op == "STL" for op in opcodes)
    tensor_core = sum(op in ("HGMMA", "HMMA") for op in opcodes)
    calls = sum(op == "CALL" for op in opcodes)
    return registers, spills, tensor_core, calls


def _max_threads(registers):
    """Threads per block that the register file allows (what cuFuncGetAttribute reports):
    registers are allocated per warp in units of 256."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(1024, REGISTERS_PER_SM // max(per_warp, 1) * 32)


class Sm90CompileDriver:
    """A Triton driver for sm_90 that compiles and never launches (see the module docstring)."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)
        self.compiled = []    # one record per compiled kernel (see load_binary)
        self.launches = []    # {"kernel", "grid"}, one per launch that would reach the GPU
        self._pending = None
        driver = self

        class Launcher:
            def __init__(self, src, metadata):
                self.name = metadata.name
                driver._pending = {
                    "kernel": src.fn.__name__ if hasattr(src, "fn") else metadata.name,
                    "constants": _named_constants(src),
                    "num_warps": metadata.num_warps, "num_stages": metadata.num_stages,
                    "shared": metadata.shared,
                }

            def __call__(self, grid_x, grid_y, grid_z, *args, **kwargs):
                driver.launches.append({"kernel": self.name, "grid": [grid_x, grid_y, grid_z]})

        class Utils:
            @staticmethod
            def get_device_properties(device):
                return {"max_shared_mem": MAX_SHARED_MEMORY, "multiprocessor_count": 132,
                        "max_num_regs": REGISTERS_PER_SM, "warpSize": 32,
                        "sm_clock_rate": 1980000, "mem_clock_rate": 2619000,
                        "mem_bus_width": 5120}

            @staticmethod
            def load_binary(name, cubin, shared, device):
                registers, spills, tensor_core, calls = read_cubin(cubin)
                record = dict(driver._pending or {"kernel": name}, registers=registers,
                              spills=spills, tensor_core=tensor_core, calls=calls)
                driver.compiled.append(record)
                driver._pending = None
                return object(), object(), registers, spills, _max_threads(registers)

        self.launcher_cls = Launcher
        self.utils = Utils()

    # the DriverBase interface that compiling and autotuning use
    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def get_benchmarker(self):
        def run_once(kernel_call, quantiles=None, **kwargs):
            kernel_call()
            return [1.0] * len(quantiles) if quantiles else 1.0
        return run_once

    def get_empty_cache_for_benchmark(self):
        import torch
        return torch.empty(0)

    def clear_cache(self, cache):
        pass

    def map_python_to_cpp_type(self, ty):
        return ty

    @staticmethod
    def is_active():
        return False


def _named_constants(src):
    """The constexpr arguments of a compiled kernel by name (Triton keys them by position)."""
    names = src.fn.arg_names
    named = {}
    for key, value in src.constants.items():
        index = key[0] if isinstance(key, tuple) else key
        name = names[index] if isinstance(index, int) else str(index)
        named[name] = _plain(value)
    return named


def _plain(value):
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# torch ops that launch no device kernel: allocation, views and metadata.
_NO_LAUNCH = re.compile(r"^(empty|empty_strided|empty_like|new_empty|new_empty_strided|view|"
                        r"_unsafe_view|reshape|t|transpose|permute|expand|as_strided|slice|select|"
                        r"unsqueeze|squeeze|movedim|alias|detach|lift_fresh|_reshape_alias|"
                        r"unflatten|split|narrow|diagonal|unbind|sym_size|"
                        r"sym_stride|sym_numel|sym_storage_offset|is_contiguous|"
                        r"_local_scalar_dense)(\.|$)")


@contextlib.contextmanager
def count_torch_launches(counter):
    """Counts the torch ops run inside the block that would launch a kernel on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__ if hasattr(func, "__name__") else str(func)
            out = func(*args, **(kwargs or {}))
            if not _NO_LAUNCH.match(name):
                counter[name] += 1
            return out

    with Counter():
        yield


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON report to write")
    parser.add_argument("--autotune", choices=["first", "all"], default="first")
    parser.add_argument("--only", default=None, help="comma-separated ops to compile")
    parser.add_argument("--summary", metavar="DIR",
                        help="also write DIR/triton-<version>.md, the per-kernel summary")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes, each compiling a share of the ops (default 1)")
    args = parser.parse_args(argv)

    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["FASTOPS_AUTOTUNE"] = args.autotune
    import triton
    from triton.runtime.driver import driver as triton_driver

    compile_driver = Sm90CompileDriver()
    triton_driver.set_active(compile_driver)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sm90_cases import CASES

    only = set(args.only.split(",")) if args.only else None
    if args.jobs > 1:
        report = _run_in_processes(args, sorted({c.op for c in CASES if not only or c.op in only}))
    else:
        report = _compile_cases(args, compile_driver, CASES, only)
    report["triton"] = triton.__version__
    report["jobs"] = args.jobs
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    if args.summary:
        os.makedirs(args.summary, exist_ok=True)
        path = os.path.join(args.summary, f"triton-{triton.__version__}.md")
        with open(path, "w") as f:
            f.write(summary(report, " ".join(["python tests/sm90.py", *(argv or sys.argv[1:])])))
        print(f"summary: {path}")


def _run_in_processes(args, ops):
    """Runs this script in args.jobs processes, ops dealt round-robin, and merges the reports
    (cases in their order in sm90_cases.CASES)."""
    shares = [ops[i::args.jobs] for i in range(args.jobs)]
    folder = tempfile.mkdtemp(prefix="sm90-")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--autotune",
                               args.autotune, "--only", ",".join(share), "--out",
                               os.path.join(folder, f"part{i}.json")])
             for i, share in enumerate(shares) if share]
    if any(p.wait() for p in procs):
        raise SystemExit("a compile process failed (see its output above)")
    cases = []
    for i in range(len(procs)):
        with open(os.path.join(folder, f"part{i}.json")) as f:
            cases += json.load(f)["cases"]
    order = {op: i for i, op in enumerate(ops)}
    cases.sort(key=lambda c: order[c["op"]])
    return {"autotune": args.autotune, "cases": cases}


def _compile_cases(args, compile_driver, cases, only):
    """Compiles (and launches twice, see below) every case of the ops in ``only``."""
    report = {"autotune": args.autotune, "cases": []}
    for case in cases:
        if only and case.op not in only:
            continue
        compiled_before = len(compile_driver.compiled)
        start = time.perf_counter()
        error = None
        torch_ops = collections.Counter()
        try:
            case.run()  # compiles (and, autotuning, times every candidate once)
            seconds = time.perf_counter() - start
            # a second call launches what a warmed-up run launches
            launches_before = len(compile_driver.launches)
            with count_torch_launches(torch_ops):
                case.run()
            triton_launches = compile_driver.launches[launches_before:]
        except Exception as e:  # noqa: BLE001  (reported per case; the test fails on it)
            seconds = time.perf_counter() - start
            error = f"{type(e).__name__}: {e}"[:2000]
            triton_launches = []
        compiled = compile_driver.compiled[compiled_before:]
        report["cases"].append({
            "op": case.op, "name": case.name, "phase": case.phase, "tutorial": case.tutorial,
            "seconds": round(seconds, 2), "error": error, "compiled": compiled,
            "triton_launches": triton_launches, "torch_launches": dict(torch_ops),
        })
        status = f"ERROR {error}" if error else f"{len(compiled)} compiled"
        print(f"{case.op:20s} {case.phase:8s} {case.name:44s} {seconds:6.1f}s {status}",
              flush=True)
    return report


def summary(report, command):
    """Markdown: one row per kernel and dtype over every case that compiled it."""
    rows = collections.OrderedDict()
    for case in report["cases"]:
        dtype = case["name"].rsplit(" ", 1)[-1]
        for kernel in case["compiled"]:
            row = rows.setdefault((kernel["kernel"], dtype), collections.defaultdict(list))
            for field in ("registers", "spills", "shared", "tensor_core", "calls"):
                row[field].append(kernel[field])
    compiles = sum(len(c["compiled"]) for c in report["cases"])
    seconds = sum(c["seconds"] for c in report["cases"])
    errors = [f"- {c['op']} {c['phase']} {c['name']}: {c['error']}" for c in report["cases"]
              if c["error"]]
    lines = [
        f"# sm_90 compile report: Triton {report['triton']}",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d')}, on a CPU-only machine ({os.cpu_count()} "
        f"cores): the real launchers on CPU tensors through a compile-only driver for "
        f"`GPUTarget('cuda', 90, 32)`; autotune mode `{report['autotune']}`. "
        f"{len(report['cases'])} calls, {compiles} kernels compiled; the calls took "
        f"{seconds:.0f} s in all over {report.get('jobs', 1)} process(es) (kernels already in "
        f"Triton's cache are not recompiled, so this depends on the cache).",
        "",
        "| kernel | dtype | compiled | registers | spill stores | shared memory (KiB) "
        "| HGMMA/HMMA | CALL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, dtype), row in rows.items():
        lines.append(
            f"| {kernel} | {dtype} | {len(row['registers'])} | {min(row['registers'])}-"
            f"{max(row['registers'])} | {max(row['spills'])} | {max(row['shared']) / 1024:.1f} "
            f"| {min(row['tensor_core'])}-{max(row['tensor_core'])} | {max(row['calls'])} |")
    lines += ["", "Errors:" if errors else "No call failed to compile.", *errors, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
