"""Registration of the Triton CUDA kernels: each op's Python module (fastops/functional/_<op>.py)
names its launchers in ``fastops.triton_kernels.<module>``. Triton is imported on the first CUDA
call, so ``import fastops`` works (and stays fast) on machines without it."""

import functools
import importlib

import torch

# Every registration: op name -> (module of fastops.triton_kernels, launcher function).
LAUNCHERS = {}


def register_cuda_kernels(module, **launchers):
    """Registers ``fastops.triton_kernels.<module>.<launcher>`` as the CUDA kernel of
    ``fastops::<op>`` for every ``op=launcher`` pair."""
    for op, launcher in launchers.items():
        _register(op, module, launcher)


def _register(op, module, launcher):
    LAUNCHERS[op] = (module, launcher)

    @functools.cache
    def resolve():
        return getattr(importlib.import_module(f"fastops.triton_kernels.{module}"), launcher)

    def kernel(*args):
        return resolve()(*args)

    kernel.__name__ = f"{op}_cuda"
    torch.library.register_kernel(f"fastops::{op}", "cuda", kernel)
