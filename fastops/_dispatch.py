"""How fastops.functional calls its operators: eager calls go through ``fastops._C.call``, the
operator's boxed kernel with arguments converted by their Python type, which costs a fraction
of ``torch.ops.fastops.<op>`` (that parses every argument against the schema first); same
dispatcher, kernels, checks and errors (see csrc/shared/module.cpp). ``torch.ops`` remains the
path under torch.compile (Dynamo traces it, not the C function) and whenever an argument
overrides ``__torch_function__`` or a torch function mode is active (torch.ops honours them)."""

import torch
from torch._C import _has_torch_function, _is_torch_function_mode_enabled

from . import _C

_is_compiling = torch.compiler.is_compiling


def operator(name):
    """``call(*args)`` of ``torch.ops.fastops.<name>``'s default overload, every argument given
    positionally in the schema's types (float for float, tuples of ints for int[])."""
    handle = _C.op_handle(f"fastops::{name}")
    overload = getattr(torch.ops.fastops, name).default
    fast_call = _C.call

    def call(*args):
        if _is_compiling() or _is_torch_function_mode_enabled() or _has_torch_function(args):
            return overload(*args)
        return fast_call(handle, *args)

    call.__name__ = call.__qualname__ = name
    return call
