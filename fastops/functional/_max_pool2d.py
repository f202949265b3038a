"""fastops.functional.max_pool2d: torch.nn.functional.max_pool2d on fastops::max_pool2d_values
(the output alone; its autograd keeps a compact argmax when a graph is recorded, and inference
computes none) or, with return_indices, fastops::max_pool2d (output and compact argmax) and
max_pool2d_indices; and the ops' CUDA (Triton) kernels."""

import torch
from torch import Tensor

from .._checks import call_checked, check_tensor, fail
from .._cuda import register_cuda_kernels
from .._dispatch import operator

max_pool2d_op = operator("max_pool2d")
max_pool2d_values_op = operator("max_pool2d_values")
max_pool2d_indices_op = operator("max_pool2d_indices")


_MAX_POOL2D_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8,
                      torch.int8, torch.int16, torch.int32, torch.int64)


def _int_pair(value, name, fn, allow_empty=False):
    """An int or a sequence of 1 or 2 ints (as torch's int[2]) -> (int, int); torch's TypeError
    for a non-int and its RuntimeError for a wrong length. ``allow_empty``: () -> None."""
    values = value if isinstance(value, (tuple, list, torch.Size)) else (value,)
    for v in values:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            fail(fn, f"argument '{name}' must be an int or a tuple of ints, not "
                     f"{type(v).__name__}", TypeError)
    if allow_empty and len(values) == 0:
        return None
    lengths = "omitted, a single int, or a tuple of two ints" if allow_empty else \
        "a single int, or a tuple of two ints"
    if len(values) not in (1, 2):
        fail(fn, f"{name} must either be {lengths}, got {list(values)}")
    return (values[0].__index__(), values[-1].__index__())


def _check_input(input, fn):
    """torch's errors for the input."""
    check_tensor(input, "input", fn)
    if input.dim() not in (3, 4):
        fail(fn,
             f"non-empty 3D or 4D (batch mode) tensor expected for input, got {input.dim()}-D "
             f"of shape {list(input.shape)}")
    if input.dtype not in _MAX_POOL2D_DTYPES:
        fail(fn, f'"max_pool2d" not implemented for {input.dtype}', NotImplementedError)


def _unsqueezed(input, fn):
    """A 3-D input as a batch of one, contiguous (torch's layout for unbatched outputs)."""
    _check_input(input, fn)
    return input.unsqueeze(0).contiguous()


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """``torch.nn.functional.max_pool2d``: input [N, C, H, W] or [C, H, W] -> output
    [N, C, H_out, W_out] (or [C, H_out, W_out]), plus torch's int64 indices (flat per input
    plane, ih * W + iw; what ``max_unpool2d`` takes) when ``return_indices``.

    kernel_size, stride (default: kernel_size), padding, dilation: an int or a pair (H, W).
    NaN propagates and ties pick the first maximum, as in torch. Channels-last input gives
    channels-last output. Autograd keeps only a 1-byte window-local argmax per output element
    (for windows of <= 256 elements) for the backward.
    """
    fn = "max_pool2d"
    if type(kernel_size) is int and type(padding) is int and type(dilation) is int and (
            stride is None or type(stride) is int):  # the common call: ints, read at once
        kernel = (kernel_size, kernel_size)
        stride = kernel if stride is None else (stride, stride)
        padding, dilation = (padding, padding), (dilation, dilation)
    else:
        kernel = _int_pair(kernel_size, "kernel_size", fn)
        stride = _int_pair(() if stride is None else stride, "stride", fn,
                           allow_empty=True) or kernel
        padding = _int_pair(padding, "padding", fn)
        dilation = _int_pair(dilation, "dilation", fn)
    if type(ceil_mode) is not bool:  # bool has no subclasses: isinstance, cheaper
        fail(fn, f"argument 'ceil_mode' must be bool, not {type(ceil_mode).__name__}", TypeError)
    batched = isinstance(input, Tensor) and input.dim() == 4
    # An unbatched input gets torch's contiguous output whatever its strides (torch picks
    # channels-last only for 4-D inputs).
    args = (input if batched else _unsqueezed(input, fn), kernel, stride, padding, dilation,
            ceil_mode)
    if not return_indices:
        # The output alone: no argmax is computed unless autograd records a graph.
        output = call_checked(max_pool2d_values_op, args, _check_input, input, fn)
        return output if batched else output.squeeze(0)
    output, argmax = call_checked(max_pool2d_op, args, _check_input, input, fn)
    indices = max_pool2d_indices_op(argmax, input.shape[-1], kernel, stride, padding, dilation)
    return (output, indices) if batched else (output.squeeze(0), indices.squeeze(0))


register_cuda_kernels("max_pool2d", max_pool2d="max_pool2d_forward",
                      max_pool2d_values="max_pool2d_values",
                      max_pool2d_backward="max_pool2d_backward",
                      max_pool2d_indices="max_pool2d_indices")
