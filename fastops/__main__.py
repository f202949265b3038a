"""Command line: ``python -m fastops info | bench``."""

import argparse
import os
import platform
import sys


def _backends():
    """For every public fastops op: the kernel each device would run."""
    import torch

    import fastops  # noqa: F401

    names = sorted(
        name for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("fastops::") and not name.endswith("_backward")
    )
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    rows = []
    for name in names:
        cpu = "C++ CPU" if torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU") else "-"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"):
            cuda = "-"
        elif torch.cuda.is_available():
            cuda = "Triton CUDA"
        else:
            cuda = "Triton CUDA (no GPU here)"
        interpreter = "Triton interpreter (CPU tensors, launchers only)" if interpreted else ""
        rows.append((name, cpu, cuda, interpreter))
    return rows


def info():
    import torch

    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"torch     {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    try:
        import triton

        print(f"triton    {triton.__version__}")
    except ImportError:
        print("triton    not installed (CUDA kernels unavailable)")
    try:
        import fastops

        print(f"fastops   {fastops.__version__}; C++ extension loaded from {fastops._C.__file__}")
    except Exception as error:  # report, don't hide, why the extension did not load
        print(f"fastops   C++ extension failed to load: {error}")
        return 1
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA GPU)"
    print(f"device    {device}; CPU threads: {torch.get_num_threads()}")
    print(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r}")
    print("\nop                       CPU       CUDA")
    for name, cpu, cuda, interpreter in _backends():
        print(f"{name:<24} {cpu:<9} {cuda} {interpreter}".rstrip())
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastops")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, extension, device and backend per op")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
