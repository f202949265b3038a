"""Argument validation shared by fastops.functional: uniform, torch-style messages that name
the function, the argument, what was expected and what was given.

Every check runs on each call of a small op, so conditions are tested first and a message is
formatted only when it is raised (f-strings of shapes cost microseconds per call)."""

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fail(fn, message, error=RuntimeError):
    """Raises ``error`` with the message prefixed by the public function's name."""
    raise error(f"fastops.functional.{fn}: {message}")


def check_tensor(value, name, fn):
    if not isinstance(value, torch.Tensor):
        fail(fn, f"expected {name} to be a Tensor, got {type(value).__name__}", TypeError)


def check_float_dtype(tensor, name, fn):
    if tensor.dtype not in SUPPORTED_DTYPES:
        fail(fn, f"expected {name} to have a floating-point dtype "
                 f"(float16, bfloat16, float32 or float64), got {tensor.dtype}")


def check_like(tensor, name, ref, ref_name, fn):
    """Same dtype and device as ``ref``."""
    if tensor.dtype != ref.dtype:
        fail(fn,
             f"expected {name} to have the dtype of {ref_name} ({ref.dtype}), got {tensor.dtype}")
    if tensor.device != ref.device:
        fail(fn, f"expected {name} on the device of {ref_name} ({ref.device}), got {tensor.device}")


def check_activation(activation, fn, allowed=("relu",)):
    if activation is None:
        return "none"
    if activation not in allowed:
        fail(fn, f"activation must be None or one of {list(allowed)}, got {activation!r}",
             ValueError)
    return activation


def call_checked(op, args, torch_checks, *check_args):
    """``op(*args)``; when the op rejects the call, ``torch_checks(*check_args)`` raises torch's
    error for it (or the op's own error stands). The op's rules check every argument before any
    kernel runs, so nothing has changed by then, and a valid call does not pay for the Python
    checks, which only word the error as torch does. The checks' arguments are passed rather than
    bound in a lambda: a closure built on every call costs a tiny op measurable time."""
    try:
        return op(*args)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        op_error = error
    torch_checks(*check_args)
    raise op_error
