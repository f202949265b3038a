"""Triton kernels of fastops.max_pool2d, for NCHW and channels-last tensors of any strides.

    forward:   out[n, c, oh, ow]    = max over the window of x (NaN wins, ties keep the first)
               argmax[n, c, oh, ow] = window position kh * KW + kw of that maximum (uint8 for
                                      windows of <= 256 elements, else int16 / int32); the
                                      values-only forward (max_pool2d_values, inference) is the
                                      same kernel with WRITE_ARGMAX=False: no argmax at all
    backward:  gx[n, c, ih, iw]     = sum of g[n, c, oh, ow] over the windows whose argmax is
                                      (ih, iw): each program owns input elements and gathers
                                      from the <= KH * KW windows that cover them, so
                                      overlapping windows need no atomics and no zero-fill pass
    indices:   idx[n, c, oh, ow]    = torch's flat-per-plane index ih * W + iw of the argmax

Programs walk the elements in the memory order of the tensor they write (channels fastest for
channels-last), so neighbouring lanes touch neighbouring addresses.
"""

import torch
import triton
import triton.language as tl

from ._utils import autotune, cdiv, checked_outputs

_CONFIGS = [
    triton.Config({"BLOCK": 256}, num_warps=4),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 128}, num_warps=2),
]
_MAX_BLOCK = max(config.kwargs["BLOCK"] for config in _CONFIGS)
# Autotuning keys: the window size is a constexpr (one compile per window, whose loops unroll),
# so it keys the tuning too.
_KEY = ["total", "CHANNELS_LAST", "KH", "KW"]
_FORWARD_KEY = _KEY + ["WRITE_ARGMAX"]
_INDICES_KEY = ["total", "CHANNELS_LAST", "KW"]


@triton.jit
def _coordinates(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of flat element offsets of an [N, C, H, W] tensor, walked in NCHW order or,
    when CHANNELS_LAST, in NHWC order; in the integer type of offs (int32 unless INDEX_64: a
    64-bit division is a ~85-instruction subroutine call per element)."""
    if CHANNELS_LAST:
        c = offs % C
        rest = offs // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = offs % W
        rest = offs // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


@triton.jit
def _element_offsets(BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """Flat offsets of this program's elements: int32 when the launcher proved that every index
    of the launch fits (see _index_64), else int64."""
    if INDEX_64:
        return tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        return tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _plane_offset(n, c, stride_n, stride_c):
    """Memory offset of plane (n, c), in int64: a tensor may span more than 2**31 elements
    where its indices fit int32 (a wide stride, an input larger than the output)."""
    return n.to(tl.int64) * stride_n + c.to(tl.int64) * stride_c


@triton.jit
def _offset(n, c, h, w, stride_n, stride_c, stride_h, stride_w):
    """Memory offset of element (n, c, h, w), in int64 (see _plane_offset)."""
    return (_plane_offset(n, c, stride_n, stride_c)
            + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w)


@autotune(_CONFIGS, key=_FORWARD_KEY, bucket=["total"])
@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, out_ptr, arg_ptr,
    total, C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    LOWEST: tl.constexpr, UPCAST: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr, WRITE_ARGMAX: tl.constexpr, BLOCK: tl.constexpr,
):
    """out and argmax (both with the strides stride_o*) of x; LOWEST (-inf, or the integer
    minimum) is what a window of only padding gives, as in torch. UPCAST: fp16 / bf16 compare
    in fp32 (exact, and the interpreter cannot order bf16). WRITE_ARGMAX=False: out alone, no
    position tracked (arg_ptr is not read or written)."""
    offs = _element_offsets(BLOCK, INDEX_64)
    inside = offs < total
    n, c, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    # torch starts from the first window position inside the input (reported for a window of
    # only padding); its value only wins over LOWEST by the rule below.
    if WRITE_ARGMAX:
        first_kh = tl.where(ih0 < 0, (DH - 1 - ih0) // DH, 0)
        first_kw = tl.where(iw0 < 0, (DW - 1 - iw0) // DW, 0)
        arg = (first_kh * KW + first_kw).to(tl.int32)
    if UPCAST:
        best = tl.full((BLOCK,), LOWEST, tl.float32)
    else:
        best = tl.full((BLOCK,), LOWEST, x_ptr.dtype.element_ty)
    x_plane = x_ptr + _plane_offset(n, c, stride_xn, stride_xc)
    # constexpr bounds: the small windows of CNNs (2x2, 3x3) unroll
    for kh in range(0, KH):
        ih = ih0 + kh * DH
        row_inside = inside & (ih >= 0) & (ih < H)
        x_row = x_plane + ih.to(tl.int64) * stride_xh
        for kw in range(0, KW):
            iw = iw0 + kw * DW
            valid = row_inside & (iw >= 0) & (iw < W)
            value = tl.load(x_row + iw.to(tl.int64) * stride_xw, mask=valid, other=LOWEST)
            value = value.to(best.dtype)
            # torch's rule: a strictly greater value or a NaN takes over (first max, last NaN)
            take = valid & ((value > best) | (value != value))
            best = tl.where(take, value, best)
            if WRITE_ARGMAX:
                arg = tl.where(take, kh * KW + kw, arg)
    out_offset = _offset(n, c, oh, ow, stride_on, stride_oc, stride_oh, stride_ow)
    tl.store(out_ptr + out_offset, best.to(out_ptr.dtype.element_ty), mask=inside)
    if WRITE_ARGMAX:
        tl.store(arg_ptr + out_offset, arg.to(arg_ptr.dtype.element_ty), mask=inside)


@autotune(_CONFIGS, key=_KEY, bucket=["total"])
@triton.jit
def max_pool2d_backward_kernel(
    g_ptr, arg_ptr, gx_ptr,
    total, C, H, W, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_an, stride_ac, stride_ah, stride_aw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr,
):
    """gx (strides stride_x*) from g and argmax: every input element sums, in fp32, the
    gradients of the windows that cover it at position kh * KW + kw and chose that position."""
    offs = _element_offsets(BLOCK, INDEX_64)
    inside = offs < total
    n, c, ih, iw = _coordinates(offs, C, H, W, CHANNELS_LAST)
    g_plane = g_ptr + _plane_offset(n, c, stride_gn, stride_gc)
    arg_plane = arg_ptr + _plane_offset(n, c, stride_an, stride_ac)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for kh in range(0, KH):
        # the window at output row oh covers ih at position kh iff ih + PH - kh * DH == oh * SH
        row = ih + PH - kh * DH
        oh = row // SH
        row_hit = inside & (row >= 0) & (row - oh * SH == 0) & (oh < OH)
        g_row = g_plane + oh.to(tl.int64) * stride_gh
        arg_row = arg_plane + oh.to(tl.int64) * stride_ah
        for kw in range(0, KW):
            col = iw + PW - kw * DW
            ow = col // SW
            hit = row_hit & (col >= 0) & (col - ow * SW == 0) & (ow < OW)
            chosen = tl.load(arg_row + ow.to(tl.int64) * stride_aw, mask=hit, other=0)
            hit = hit & (chosen.to(tl.int32) == kh * KW + kw)
            grad = tl.load(g_row + ow.to(tl.int64) * stride_gw, mask=hit, other=0.0)
            acc += grad.to(tl.float32)
    gx_offset = _offset(n, c, ih, iw, stride_xn, stride_xc, stride_xh, stride_xw)
    tl.store(gx_ptr + gx_offset, acc.to(gx_ptr.dtype.element_ty), mask=inside)


@autotune(_CONFIGS, key=_INDICES_KEY, bucket=["total"])
@triton.jit
def max_pool2d_indices_kernel(
    arg_ptr, idx_ptr,
    total, C, OH, OW, W,
    stride_an, stride_ac, stride_ah, stride_aw,
    stride_in, stride_ic, stride_ih, stride_iw,
    SH, SW, PH, PW, DH, DW,
    KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr, BLOCK: tl.constexpr,
):
    """idx = ih * W + iw of the window position each argmax element holds (torch's indices)."""
    offs = _element_offsets(BLOCK, INDEX_64)
    inside = offs < total
    n, c, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    k = tl.load(arg_ptr + _offset(n, c, oh, ow, stride_an, stride_ac, stride_ah, stride_aw),
                mask=inside, other=0).to(tl.int32)
    ih = oh * SH - PH + (k // KW) * DH
    iw = ow * SW - PW + (k % KW) * DW
    idx_offset = _offset(n, c, oh, ow, stride_in, stride_ic, stride_ih, stride_iw)
    # the flat index itself can pass int32 (a plane of more than 2**31 elements)
    tl.store(idx_ptr + idx_offset, ih.to(tl.int64) * W + iw, mask=inside)


def _index_64(total, input_size, output_size, kernel_size, stride, padding, dilation):
    """Whether a launch over ``total`` elements needs 64-bit index arithmetic: a flat element
    offset (plus a block past the end) or a window coordinate (an input row or column, with the
    padding and the dilated window around it, or an output row times the stride) can pass
    int32. Memory offsets are int64 either way."""
    coordinate = max(max(size, out * s) + 2 * p + d * k + s for size, out, k, s, p, d
                     in zip(input_size, output_size, kernel_size, stride, padding, dilation,
                            strict=True))
    return max(total + _MAX_BLOCK, coordinate) >= 2**31


def _channels_last(tensor):
    """Whether the rules gave the outputs the channels-last layout (else NCHW)."""
    return not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


def _lowest(dtype):
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def _grid(total):
    return lambda meta: (cdiv(total, meta["BLOCK"]),)


def _launch_forward(input, output, argmax, kernel_size, stride, padding, dilation):
    """Fills output, and argmax unless it is None (the values-only kernel)."""
    n, c, h, w = input.shape
    oh, ow = output.shape[2:]
    total = output.numel()
    if total == 0:
        return
    max_pool2d_forward_kernel[_grid(total)](
        input, output, output if argmax is None else argmax,
        total, c, h, w, oh, ow,
        *input.stride(), *output.stride(),
        *stride, *padding, *dilation, *kernel_size, LOWEST=_lowest(input.dtype),
        UPCAST=input.dtype in (torch.float16, torch.bfloat16),
        CHANNELS_LAST=_channels_last(output),
        INDEX_64=_index_64(total, (h, w), (oh, ow), kernel_size, stride, padding, dilation),
        WRITE_ARGMAX=argmax is not None,
    )


def max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode):
    """input [N, C, H, W] (any strides) -> (output, argmax) [N, C, H_out, W_out], both in the
    input's memory format (NCHW or channels-last)."""
    output, argmax = checked_outputs("max_pool2d", input, kernel_size, stride, padding,
                                     dilation, ceil_mode)
    _launch_forward(input, output, argmax, kernel_size, stride, padding, dilation)
    return output, argmax


def max_pool2d_values(input, kernel_size, stride, padding, dilation, ceil_mode):
    """input [N, C, H, W] (any strides) -> output [N, C, H_out, W_out] alone (no argmax), in the
    input's memory format: max_pool2d_forward's kernel without the argmax store."""
    output = checked_outputs("max_pool2d_values", input, kernel_size, stride, padding, dilation,
                             ceil_mode)
    _launch_forward(input, output, None, kernel_size, stride, padding, dilation)
    return output


def max_pool2d_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation):
    """grad_output and argmax [N, C, H_out, W_out] (any strides), input_size (H, W) ->
    grad_input [N, C, H, W] in argmax's memory format (the forward input's)."""
    grad_input = checked_outputs("max_pool2d_backward", grad_output, argmax, input_size,
                                 kernel_size, stride, padding, dilation)
    n, c, oh, ow = argmax.shape
    h, w = input_size
    total = grad_input.numel()
    if total == 0:
        return grad_input
    max_pool2d_backward_kernel[_grid(total)](
        grad_output, argmax, grad_input,
        total, c, h, w, oh, ow,
        *grad_output.stride(), *argmax.stride(), *grad_input.stride(),
        *stride, *padding, *dilation, *kernel_size, CHANNELS_LAST=_channels_last(grad_input),
        INDEX_64=_index_64(total, (h, w), (oh, ow), kernel_size, stride, padding, dilation),
    )
    return grad_input


def max_pool2d_indices(argmax, input_width, kernel_size, stride, padding, dilation):
    """argmax [N, C, H_out, W_out] -> torch's int64 indices (flat per input plane), same layout."""
    indices = checked_outputs("max_pool2d_indices", argmax, input_width, kernel_size, stride,
                              padding, dilation)
    n, c, oh, ow = argmax.shape
    total = indices.numel()
    if total == 0:
        return indices
    max_pool2d_indices_kernel[_grid(total)](
        argmax, indices,
        total, c, oh, ow, input_width,
        *argmax.stride(), *indices.stride(),
        *stride, *padding, *dilation, kernel_size[1],
        CHANNELS_LAST=_channels_last(indices),
        # the input height is not known here: oh * stride bounds the rows
        INDEX_64=_index_64(total, (0, input_width), (oh, ow), kernel_size, stride, padding,
                           dilation),
    )
    return indices
