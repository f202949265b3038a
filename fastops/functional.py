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


# --------------------------------------------------------------------------------------- conv2d

def _pair(value, name, fn):
    """An int or a sequence of 1 or 2 ints, as torch accepts them -> a 2-tuple."""
    if isinstance(value, int):
        return (value, value)
    check(isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value), fn,
          f"expected {name} to be an int or a tuple of ints, got {value!r}", TypeError)
    check(len(value) in (1, 2), fn,
          f"expected {name} to be a single integer value or a list of 2 values to match the "
          f"convolution dimensions, got {name}={list(value)}")
    return tuple(value) * (2 // len(value))


def _conv2d_padding(input, weight, padding, stride, dilation, fn):
    """Explicit symmetric padding for the op, plus the input, zero-padded by one more row/column
    at the bottom/right where 'same' needs an odd total padding (as torch does)."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding", fn)
    check(padding in ("same", "valid"), fn,
          f"expected padding to be 'same', 'valid', an int or a tuple of ints, got {padding!r}")
    if padding == "valid":
        return input, (0, 0)
    check(stride == (1, 1), fn,
          f"padding='same' is not supported for strided convolutions, got stride={stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    extra_h, extra_w = (t % 2 for t in total)
    if extra_h or extra_w:
        input = torch.nn.functional.pad(input, (0, extra_w, 0, extra_h))
    return input, tuple(t // 2 for t in total)


def _check_conv2d_config(input, weight, bias, stride, padding, dilation, groups, fn):
    """torch's errors for a bad configuration (the CUDA kernels rely on these checks; the CPU
    kernel repeats them for direct op calls). input is 4-D here, padding explicit."""
    check(groups > 0, fn, f"non-positive groups is not supported, got groups={groups}")
    check(min(stride) > 0, fn, f"non-positive stride is not supported, got stride={list(stride)}")
    check(min(padding) >= 0, fn, f"negative padding is not supported, got padding={list(padding)}")
    check(min(dilation) > 0, fn,
          f"non-positive dilation is not supported, got dilation={list(dilation)}")
    out_channels, in_per_group, kernel_h, kernel_w = weight.shape
    check(out_channels > 0 and out_channels % groups == 0, fn,
          f"expected weight.shape[0] (out_channels) to be a positive multiple of groups={groups}, "
          f"got weight of shape {list(weight.shape)}")
    check(in_per_group * groups == input.shape[1], fn,
          f"expected input[{list(input.shape)}] to have groups * weight.shape[1] = "
          f"{in_per_group * groups} channels (groups={groups}, weight of shape "
          f"{list(weight.shape)}), got {input.shape[1]} channels")
    check(kernel_h > 0 and kernel_w > 0, fn,
          f"expected a kernel of at least 1x1, got weight of shape {list(weight.shape)}")
    padded = [input.shape[2 + d] + 2 * padding[d] for d in range(2)]
    extent = [dilation[d] * (weight.shape[2 + d] - 1) + 1 for d in range(2)]
    check(padded[0] >= extent[0] and padded[1] >= extent[1], fn,
          f"calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size "
          f"(dilated): ({extent[0]} x {extent[1]}). "
          "Kernel size can't be greater than actual input size")
    check(bias is None or (bias.dim() == 1 and bias.shape[0] == out_channels), fn,
          f"expected bias of shape [{out_channels}] (weight.shape[0]), got "
          f"{list(bias.shape) if bias is not None else None}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, activation=None):
    """``torch.nn.functional.conv2d`` (+ optional fused activation).

    input: [N, C, H, W] or unbatched [C, H, W]; weight: [O, C / groups, kH, kW]; bias: [O];
    returns [N, O, oH, oW] (or [O, oH, oW]), channels-last when input or weight is.
    stride, dilation: int or (int, int); padding: int, (int, int), 'valid' or 'same'.
    activation: None or "relu" (applied with the bias in the pass that writes the output).
    """
    fn = "conv2d"
    activation = check_activation(activation, fn)
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    check_like(weight, "weight", input, "input", fn)
    if bias is not None:
        check_tensor(bias, "bias", fn)
        check_like(bias, "bias", input, "input", fn)
    check(input.dim() in (3, 4), fn,
          "expected 3-D (unbatched) or 4-D (batched) input, got input of shape "
          f"{list(input.shape)}")
    check(weight.dim() == 4, fn,
          f"expected weight to be 4-D [out_channels, in_channels / groups, kH, kW], got shape "
          f"{list(weight.shape)}")
    check(isinstance(groups, int), fn, f"expected groups to be an int, got {groups!r}", TypeError)
    stride = _pair(stride, "stride", fn)
    dilation = _pair(dilation, "dilation", fn)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    input, padding = _conv2d_padding(input, weight, padding, stride, dilation, fn)
    _check_conv2d_config(input, weight, bias, stride, padding, dilation, groups, fn)
    output = _ops.conv2d(input, weight, bias, stride, padding, dilation, groups, activation)
    return output.squeeze(0) if unbatched else output


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(...))`` in one op; arguments and shapes as :func:`conv2d`."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups, activation="relu")
