"""Helpers shared by the Triton launchers: autotuning, launch grids, matmul precision."""

import os

import torch
import triton


def interpreting():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune(configs, key, **kwargs):
    """triton.autotune over ``configs`` on a GPU; under the interpreter only the first config,
    since the interpreter cannot time kernels (and one config keeps the tests fast)."""
    return triton.autotune(configs=configs[:1] if interpreting() else configs, key=key, **kwargs)


def fp32_dot_precision(dtype):
    """The ``input_precision`` of ``tl.dot`` that matches torch for float32 matmuls: TF32 only
    when torch allows it (torch.set_float32_matmul_precision("high"/"medium"))."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def cdiv(a, b):
    return triton.cdiv(a, b)


def empty_grad(like):
    """What a backward launcher returns for a gradient that output_mask did not ask for."""
    return like.new_empty((0,))
