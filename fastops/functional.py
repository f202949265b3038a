"""The torch.nn.functional mirror: same signatures, defaults and semantics as the torch
functions, validation with clear messages, then one fastops op call."""

import torch

from ._checks import check, check_activation, check_float_dtype, check_like, check_tensor

_ops = torch.ops.fastops


# --------------------------------------------------------------------------------------- linear

def linear(input, weight, bias=None, *, activation=None):
    """``torch.nn.functional.linear`` (+ optional fused activation).

    input: [*, in_features]; weight: [out_features, in_features] (or [in_features], giving
    [*] like torch); bias: [out_features] or broadcastable to it; returns [*, out_features].
    activation: None or "relu" (applied in the GEMM epilogue).
    """
    fn = "linear"
    activation = check_activation(activation, fn)
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    check_like(weight, "weight", input, "input", fn)
    check(input.dim() >= 1, fn, "expected input to have at least 1 dimension, got a 0-D tensor")
    check(weight.dim() in (1, 2), fn, f"expected weight to be 1-D or 2-D, got {weight.dim()}-D")
    vector_weight = weight.dim() == 1
    weight_2d = weight.unsqueeze(0) if vector_weight else weight
    check(input.shape[-1] == weight_2d.shape[1], fn,
          f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
          f"weight expects in_features = {weight_2d.shape[1]} (input {tuple(input.shape)}, "
          f"weight {tuple(weight.shape)})")
    if bias is None:
        output = _ops.linear(input, weight_2d, None, activation)
    else:
        check_tensor(bias, "bias", fn)
        check_like(bias, "bias", input, "input", fn)
        check(not vector_weight, fn, "a bias needs a 2-D weight (torch: mat2 must be a matrix)")
        out_features = weight_2d.shape[0]
        if bias.dim() <= 1 and bias.numel() in (1, out_features):
            output = _ops.linear(input, weight_2d, bias.reshape(-1).expand(out_features), activation)
        else:
            # torch also accepts any bias that broadcasts to the output (e.g. one per row):
            # rare, so it is added outside the fused epilogue.
            out_shape = (*input.shape[:-1], out_features)
            try:
                broadcasts = torch.broadcast_shapes(bias.shape, out_shape) == out_shape
            except RuntimeError:
                broadcasts = False
            check(broadcasts, fn,
                  f"expected bias of shape [{out_features}] or broadcastable to the output "
                  f"{list(out_shape)}, got {list(bias.shape)}")
            output = _ops.linear(input, weight_2d, None, "none") + bias
            if activation == "relu":
                output = torch.relu(output)
    return output.squeeze(-1) if vector_weight else output


def linear_relu(input, weight, bias=None):
    """``relu(linear(input, weight, bias))`` in one op; shapes as :func:`linear`."""
    return linear(input, weight, bias, activation="relu")


# ----------------------------------------------------------------------------------- max_pool2d

_MAX_POOL2D_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8,
                      torch.int8, torch.int16, torch.int32, torch.int64)


def _int_pair(value, name, fn, allow_empty=False):
    """An int or a sequence of 1 or 2 ints (as torch's int[2]) -> (int, int); torch's TypeError
    for a non-int and its RuntimeError for a wrong length. ``allow_empty``: () -> None."""
    values = value if isinstance(value, (tuple, list, torch.Size)) else (value,)
    for v in values:
        check(not isinstance(v, bool) and hasattr(v, "__index__"), fn,
              f"argument '{name}' must be an int or a tuple of ints, not {type(v).__name__}",
              TypeError)
    if allow_empty and len(values) == 0:
        return None
    lengths = "omitted, a single int, or a tuple of two ints" if allow_empty else \
        "a single int, or a tuple of two ints"
    check(len(values) in (1, 2), fn, f"{name} must either be {lengths}, got {list(values)}")
    return (values[0].__index__(), values[-1].__index__())


def _max_pool2d_output_size(input_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """(H_out, W_out) of max pooling an input [*, C, H, W], validated with torch's rules and
    messages: positive kernel, stride and dilation; 0 <= padding <= kernel // 2; with
    ceil_mode, the last window must start inside the input or its left padding."""
    fn = "max_pool2d"
    for k, s, p, d in zip(kernel_size, stride, padding, dilation):
        check(s != 0, fn, "stride should not be zero")
        check(p >= 0, fn, f"pad must be non-negative, but got pad: {p}")
        effective = (k - 1) * d + 1  # halved with C's truncation, as torch does
        half = effective // 2 if effective >= 0 else -(-effective // 2)
        check(p <= half, fn, "pad should be at most half of effective kernel "
              f"size, but got pad={p}, kernel_size={k} and dilation={d}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    check(kh > 0 and kw > 0, fn,
          f"kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    check(sh > 0 and sw > 0, fn, f"stride should be greater than zero, but got dH: {sh} dW: {sw}")
    check(dh > 0 and dw > 0, fn,
          f"dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    channels, height, width = input_shape[-3:]
    check(all(size != 0 for size in input_shape[-3:]), fn, "Expected 3D or 4D (batch mode) tensor "
          f"with optional 0 dim batch size for input, but got: {list(input_shape)}")
    check(kw // 2 >= pw and kh // 2 >= ph, fn, "pad should be smaller than or equal to half of "
          f"kernel size, but got padW = {pw}, padH = {ph}, kW = {kw}, kH = {kh}")

    def pooled(size, k, s, p, d):
        out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        return out - 1 if ceil_mode and (out - 1) * s >= size + p else out

    out_h, out_w = pooled(height, kh, sh, ph, dh), pooled(width, kw, sw, pw, dw)
    check(out_h >= 1 and out_w >= 1, fn, f"Given input size: ({channels}x{height}x{width}). "
          f"Calculated output size: ({channels}x{out_h}x{out_w}). Output size is too small")
    return out_h, out_w


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
    check_tensor(input, "input", fn)
    kernel = _int_pair(kernel_size, "kernel_size", fn)
    stride = _int_pair(() if stride is None else stride, "stride", fn, allow_empty=True) or kernel
    padding = _int_pair(padding, "padding", fn)
    dilation = _int_pair(dilation, "dilation", fn)
    check(isinstance(ceil_mode, bool), fn,
          f"argument 'ceil_mode' must be bool, not {type(ceil_mode).__name__}", TypeError)
    check(input.dim() in (3, 4), fn,
          f"non-empty 3D or 4D (batch mode) tensor expected for input, got {input.dim()}-D "
          f"of shape {list(input.shape)}")
    check(input.dtype in _MAX_POOL2D_DTYPES, fn,
          f'"max_pool2d" not implemented for {input.dtype}', NotImplementedError)
    _max_pool2d_output_size(input.shape, kernel, stride, padding, dilation, ceil_mode)
    batched = input.dim() == 4
    # An unbatched input gets torch's contiguous output whatever its strides (torch picks
    # channels-last only for 4-D inputs).
    output, argmax = _ops.max_pool2d(input if batched else input.unsqueeze(0).contiguous(), kernel,
                                     stride, padding, dilation, ceil_mode)
    results = (output,)
    if return_indices:
        results += (_ops.max_pool2d_indices(argmax, input.shape[-1], kernel, stride, padding,
                                            dilation),)
    if not batched:
        results = tuple(t.squeeze(0) for t in results)
    return results if return_indices else results[0]
