"""fastops.functional.conv2d / conv2d_relu: torch.nn.functional.conv2d with a fused ReLU; and
the op's CUDA (Triton) kernels."""

import torch
from torch import Tensor

from .._checks import (
    SUPPORTED_DTYPES,
    call_checked,
    check_activation,
    check_float_dtype,
    check_tensor,
    fail,
)
from .._cuda import register_cuda_kernels
from .._dispatch import operator
from ._linear import _check_like_input

conv2d_op = operator("conv2d")
_FLOAT_DTYPES = frozenset(SUPPORTED_DTYPES)  # one hash instead of a tuple scan per call


def _pair(value, name, fn):
    """An int or a sequence of 1 or 2 ints, as torch accepts them -> a 2-tuple."""
    if isinstance(value, int):
        return (value, value)
    if not (isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)):
        fail(fn, f"expected {name} to be an int or a tuple of ints, got {value!r}", TypeError)
    if len(value) not in (1, 2):
        fail(fn,
             f"expected {name} to be a single integer value or a list of 2 values to match the "
             f"convolution dimensions, got {name}={list(value)}")
    return tuple(value) * (2 // len(value))


def _conv2d_padding(input, weight, padding, stride, dilation, fn):
    """Explicit symmetric padding for the op, plus the input, zero-padded by one more row/column
    at the bottom/right where 'same' needs an odd total padding (as torch does)."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding", fn)
    if padding not in ("same", "valid"):
        fail(fn,
             f"expected padding to be 'same', 'valid', an int or a tuple of ints, got {padding!r}")
    if padding == "valid":
        return input, (0, 0)
    if stride != (1, 1):
        fail(fn, f"padding='same' is not supported for strided convolutions, got stride={stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
    extra_h, extra_w = (t % 2 for t in total)
    if extra_h or extra_w:
        input = torch.nn.functional.pad(input, (0, extra_w, 0, extra_h))
    return input, tuple(t // 2 for t in total)


def _check_conv2d_config(input, weight, bias, stride, padding, dilation, groups, fn):
    """torch's errors for a bad configuration, raised when the op has rejected the call (its
    rules, shared by every backend, check the same conditions). input is 4-D, padding explicit."""
    if groups <= 0:
        fail(fn, f"non-positive groups is not supported, got groups={groups}")
    if min(stride) <= 0:
        fail(fn, f"non-positive stride is not supported, got stride={list(stride)}")
    if min(padding) < 0:
        fail(fn, f"negative padding is not supported, got padding={list(padding)}")
    if min(dilation) <= 0:
        fail(fn, f"non-positive dilation is not supported, got dilation={list(dilation)}")
    out_channels, in_per_group, kernel_h, kernel_w = weight.shape
    if out_channels <= 0 or out_channels % groups != 0:
        fail(fn, "expected weight.shape[0] (out_channels) to be a positive multiple of "
                 f"groups={groups}, got weight of shape {list(weight.shape)}")
    if in_per_group * groups != input.shape[1]:
        fail(fn,
             f"expected input[{list(input.shape)}] to have groups * weight.shape[1] = "
             f"{in_per_group * groups} channels (groups={groups}, weight of shape "
             f"{list(weight.shape)}), got {input.shape[1]} channels")
    if kernel_h <= 0 or kernel_w <= 0:
        fail(fn, f"expected a kernel of at least 1x1, got weight of shape {list(weight.shape)}")
    padded = [input.shape[2 + d] + 2 * padding[d] for d in range(2)]
    extent = [dilation[d] * (weight.shape[2 + d] - 1) + 1 for d in range(2)]
    if padded[0] < extent[0] or padded[1] < extent[1]:
        fail(fn,
             f"calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size "
             f"(dilated): ({extent[0]} x {extent[1]}). "
             "Kernel size can't be greater than actual input size")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        fail(fn,
             f"expected bias of shape [{out_channels}] (weight.shape[0]), got "
             f"{list(bias.shape) if bias is not None else None}")


def _normalised_call(input, weight, bias, stride, padding, dilation, groups, fn):
    """The op's arguments of a call (after torch's errors for the types, dtypes and dimensions):
    (input as 4-D, padding explicit, stride / padding / dilation as pairs, unbatched)."""
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    _check_like_input(weight, "weight", input, fn)
    if bias is not None:
        check_tensor(bias, "bias", fn)
        _check_like_input(bias, "bias", input, fn)
    if input.dim() not in (3, 4):
        fail(fn,
             "expected 3-D (unbatched) or 4-D (batched) input, got input of shape "
             f"{list(input.shape)}")
    if weight.dim() != 4:
        fail(fn,
             f"expected weight to be 4-D [out_channels, in_channels / groups, kH, kW], got shape "
             f"{list(weight.shape)}")
    if not isinstance(groups, int):
        fail(fn, f"expected groups to be an int, got {groups!r}", TypeError)
    stride = _pair(stride, "stride", fn)
    dilation = _pair(dilation, "dilation", fn)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    input, padding = _conv2d_padding(input, weight, padding, stride, dilation, fn)
    return input, stride, padding, dilation, unbatched


def _check_conv2d(input, weight, bias, stride, padding, dilation, groups, fn):
    """torch's error for a call the op rejected: the checks of _normalised_call, then of the
    configuration (_check_conv2d_config), in that order."""
    input, stride, padding, dilation, _ = _normalised_call(input, weight, bias, stride, padding,
                                                           dilation, groups, fn)
    _check_conv2d_config(input, weight, bias, stride, padding, dilation, groups, fn)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None):
    """``torch.nn.functional.conv2d`` (+ optional fused activation).

    input: [N, C, H, W] or unbatched [C, H, W]; weight: [O, C / groups, kH, kW]; bias: [O];
    returns [N, O, oH, oW] (or [O, oH, oW]), channels-last when input or weight is.
    stride, dilation: int or (int, int); padding: int, (int, int), 'valid' or 'same'.
    activation: None or "relu" (applied with the bias in the pass that writes the output).
    """
    fn = "conv2d"
    activation = "none" if activation is None else check_activation(activation, fn)
    if type(stride) is int:
        stride = (stride, stride)
    if type(padding) is int:
        padding = (padding, padding)
    if type(dilation) is int:
        dilation = (dilation, dilation)
    if (type(stride) is tuple and type(padding) is tuple and type(dilation) is tuple
            and len(stride) == 2 and len(padding) == 2 and len(dilation) == 2
            and type(groups) is int and isinstance(input, Tensor) and input.dim() == 4
            and input.dtype in _FLOAT_DTYPES):
        # The common call, as the op takes it (a batch, explicit pairs, a dtype fastops
        # supports: the rules accept every floating type): the op's rules check the rest, and
        # torch's wording (_check_conv2d) is needed only when they reject it, e.g. a non-int in
        # a pair, which the fast call refuses.
        return call_checked(
            conv2d_op, (input, weight, bias, stride, padding, dilation, groups, activation),
            _check_conv2d, input, weight, bias, stride, padding, dilation, groups, fn)
    input, stride, padding, dilation, unbatched = _normalised_call(
        input, weight, bias, stride, padding, dilation, groups, fn)
    output = call_checked(
        conv2d_op, (input, weight, bias, stride, padding, dilation, groups, activation),
        _check_conv2d_config, input, weight, bias, stride, padding, dilation, groups, fn)
    return output.squeeze(0) if unbatched else output


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(...))`` in one op; arguments and shapes as :func:`conv2d`."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups, activation="relu")


register_cuda_kernels("conv2d", conv2d="conv2d_forward", conv2d_backward="conv2d_backward")
