"""Argument validation shared by fastops.functional: uniform, torch-style messages that name
the function, the argument, what was expected and what was given."""

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check(condition, fn, message, error=RuntimeError):
    if not condition:
        raise error(f"fastops.functional.{fn}: {message}")


def check_tensor(value, name, fn):
    check(isinstance(value, torch.Tensor), fn,
          f"expected {name} to be a Tensor, got {type(value).__name__}", TypeError)


def check_float_dtype(tensor, name, fn):
    check(tensor.dtype in SUPPORTED_DTYPES, fn,
          f"expected {name} to have a floating-point dtype "
          f"(float16, bfloat16, float32 or float64), got {tensor.dtype}")


def check_like(tensor, name, ref, ref_name, fn):
    """Same dtype and device as ``ref``."""
    check(tensor.dtype == ref.dtype, fn,
          f"expected {name} to have the dtype of {ref_name} ({ref.dtype}), got {tensor.dtype}")
    check(tensor.device == ref.device, fn,
          f"expected {name} on the device of {ref_name} ({ref.device}), got {tensor.device}")


def check_activation(activation, fn, allowed=("relu",)):
    check(activation is None or activation in allowed, fn,
          f"activation must be None or one of {list(allowed)}, got {activation!r}", ValueError)
    return "none" if activation is None else activation


def fail(fn, message, error=RuntimeError):
    """Raises like :func:`check` with a failed condition; for hot paths, where the caller tests
    the condition itself so that the message is formatted only on failure."""
    raise error(f"fastops.functional.{fn}: {message}")
