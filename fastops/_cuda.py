"""CUDA kernels of every fastops op: the Triton launchers of ``fastops.triton_kernels``,
registered for the CUDA dispatch key. Triton is imported on the first CUDA call, so
``import fastops`` works (and stays fast) on machines without it."""

import functools
import importlib

import torch


def _register(op, module, launcher):
    @functools.cache
    def resolve():
        return getattr(importlib.import_module(f"fastops.triton_kernels.{module}"), launcher)

    def kernel(*args):
        return resolve()(*args)

    kernel.__name__ = f"{op}_cuda"
    torch.library.register_kernel(f"fastops::{op}", "cuda", kernel)


_register("linear", "linear", "linear_forward")
_register("linear_backward", "linear", "linear_backward")
_register("dropout", "dropout", "dropout_forward")
_register("dropout_", "dropout", "dropout_inplace")

_register("max_pool2d", "max_pool2d", "max_pool2d_forward")
_register("max_pool2d_backward", "max_pool2d", "max_pool2d_backward")
_register("max_pool2d_indices", "max_pool2d", "max_pool2d_indices")

_register("cross_entropy", "cross_entropy", "cross_entropy_forward")
_register("cross_entropy_backward", "cross_entropy", "cross_entropy_backward")
_register("linear_cross_entropy", "cross_entropy", "linear_cross_entropy_forward")
_register("linear_cross_entropy_backward", "cross_entropy", "linear_cross_entropy_backward")

_register("conv2d", "conv2d", "conv2d_forward")
_register("conv2d_backward", "conv2d", "conv2d_backward")

_register("batch_norm", "batch_norm", "batch_norm_forward")
_register("batch_norm_backward", "batch_norm", "batch_norm_backward")
