"""Triton kernels of fastops.max_pool2d, for NCHW and channels-last tensors of any strides.

    forward:   out[n, c, oh, ow]    = max over the window of x (NaN wins, ties keep the first)
               argmax[n, c, oh, ow] = window position kh * KW + kw of that maximum (uint8 for
                                      windows of <= 256 elements, else int16 / int32)
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
from torch._prims_common import suggest_memory_format

from ._utils import autotune, cdiv

_CONFIGS = [
    triton.Config({"BLOCK": 256}, num_warps=4),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 128}, num_warps=2),
]


@triton.jit
def _coordinates(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(n, c, h, w) of flat element offsets of an [N, C, H, W] tensor, walked in NCHW order or,
    when CHANNELS_LAST, in NHWC order."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


@autotune(_CONFIGS, key=["total", "CHANNELS_LAST"])
@triton.jit
def max_pool2d_forward_kernel(
    x_ptr, out_ptr, arg_ptr,
    total, C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    KH, KW, SH, SW, PH, PW, DH, DW,
    LOWEST: tl.constexpr, UPCAST: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out and argmax (both with the strides stride_o*) of x; LOWEST (-inf, or the integer
    minimum) is what a window of only padding gives, as in torch. UPCAST: fp16 / bf16 compare
    in fp32 (exact, and the interpreter cannot order bf16)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < total
    n, c, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    # torch starts from the first window position inside the input (reported for a window of
    # only padding); its value only wins over LOWEST by the rule below.
    first_kh = tl.where(ih0 < 0, (DH - 1 - ih0) // DH, 0)
    first_kw = tl.where(iw0 < 0, (DW - 1 - iw0) // DW, 0)
    arg = (first_kh * KW + first_kw).to(tl.int32)
    if UPCAST:
        best = tl.full((BLOCK,), LOWEST, tl.float32)
    else:
        best = tl.full((BLOCK,), LOWEST, x_ptr.dtype.element_ty)
    x_plane = x_ptr + n * stride_xn + c * stride_xc
    for kh in range(0, KH):
        ih = ih0 + kh * DH
        row_inside = inside & (ih >= 0) & (ih < H)
        for kw in range(0, KW):
            iw = iw0 + kw * DW
            valid = row_inside & (iw >= 0) & (iw < W)
            value = tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=valid, other=LOWEST)
            value = value.to(best.dtype)
            # torch's rule: a strictly greater value or a NaN takes over (first max, last NaN)
            take = valid & ((value > best) | (value != value))
            best = tl.where(take, value, best)
            arg = tl.where(take, kh * KW + kw, arg)
    out_offset = n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow
    tl.store(out_ptr + out_offset, best.to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(arg_ptr + out_offset, arg.to(arg_ptr.dtype.element_ty), mask=inside)


@autotune(_CONFIGS, key=["total", "CHANNELS_LAST"])
@triton.jit
def max_pool2d_backward_kernel(
    g_ptr, arg_ptr, gx_ptr,
    total, C, H, W, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_an, stride_ac, stride_ah, stride_aw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    KH, KW, SH, SW, PH, PW, DH, DW,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """gx (strides stride_x*) from g and argmax: every input element sums, in fp32, the
    gradients of the windows that cover it at position kh * KW + kw and chose that position."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < total
    n, c, ih, iw = _coordinates(offs, C, H, W, CHANNELS_LAST)
    g_plane = g_ptr + n * stride_gn + c * stride_gc
    arg_plane = arg_ptr + n * stride_an + c * stride_ac
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for kh in range(0, KH):
        # the window at output row oh covers ih at position kh iff ih + PH - kh * DH == oh * SH
        row = ih + PH - kh * DH
        oh = row // SH
        row_hit = inside & (row >= 0) & (row - oh * SH == 0) & (oh < OH)
        for kw in range(0, KW):
            col = iw + PW - kw * DW
            ow = col // SW
            hit = row_hit & (col >= 0) & (col - ow * SW == 0) & (ow < OW)
            chosen = tl.load(arg_plane + oh * stride_ah + ow * stride_aw, mask=hit, other=0)
            hit = hit & (chosen.to(tl.int32) == kh * KW + kw)
            grad = tl.load(g_plane + oh * stride_gh + ow * stride_gw, mask=hit, other=0.0)
            acc += grad.to(tl.float32)
    gx_offset = n * stride_xn + c * stride_xc + ih * stride_xh + iw * stride_xw
    tl.store(gx_ptr + gx_offset, acc.to(gx_ptr.dtype.element_ty), mask=inside)


@autotune(_CONFIGS, key=["total", "CHANNELS_LAST"])
@triton.jit
def max_pool2d_indices_kernel(
    arg_ptr, idx_ptr,
    total, C, OH, OW, W,
    stride_an, stride_ac, stride_ah, stride_aw,
    stride_in, stride_ic, stride_ih, stride_iw,
    KW, SH, SW, PH, PW, DH, DW,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """idx = ih * W + iw of the window position each argmax element holds (torch's indices)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < total
    n, c, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    k = tl.load(arg_ptr + n * stride_an + c * stride_ac + oh * stride_ah + ow * stride_aw,
                mask=inside, other=0).to(tl.int64)
    ih = oh * SH - PH + (k // KW) * DH
    iw = ow * SW - PW + (k % KW) * DW
    idx_offset = n * stride_in + c * stride_ic + oh * stride_ih + ow * stride_iw
    tl.store(idx_ptr + idx_offset, ih * W + iw, mask=inside)


def _compact_argmax_dtype(kernel_size):
    """The narrowest integer dtype holding every window position (as the C++ kernel)."""
    window = kernel_size[0] * kernel_size[1]
    return torch.uint8 if window <= 256 else torch.int16 if window <= 32768 else torch.int32


def _pooled_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output size (arguments validated by fastops.functional)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + pad else out


def _lowest(dtype):
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def _grid(total):
    return lambda meta: (cdiv(total, meta["BLOCK"]),)


def max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode):
    """input [N, C, H, W] (any strides) -> (output, argmax) [N, C, H_out, W_out], both in the
    input's memory format (NCHW or channels-last)."""
    n, c, h, w = input.shape
    oh = _pooled_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pooled_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    format = suggest_memory_format(input)
    output = torch.empty((n, c, oh, ow), device=input.device, dtype=input.dtype,
                         memory_format=format)
    argmax = torch.empty((n, c, oh, ow), device=input.device,
                         dtype=_compact_argmax_dtype(kernel_size), memory_format=format)
    total = output.numel()
    if total == 0:
        return output, argmax
    max_pool2d_forward_kernel[_grid(total)](
        input, output, argmax,
        total, c, h, w, oh, ow,
        *input.stride(), *output.stride(),
        *kernel_size, *stride, *padding, *dilation, LOWEST=_lowest(input.dtype),
        UPCAST=input.dtype in (torch.float16, torch.bfloat16),
        CHANNELS_LAST=format == torch.channels_last,
    )
    return output, argmax


def max_pool2d_backward(grad_output, argmax, input_size, kernel_size, stride, padding, dilation):
    """grad_output and argmax [N, C, H_out, W_out] (any strides), input_size (H, W) ->
    grad_input [N, C, H, W] in argmax's memory format (the forward input's)."""
    n, c, oh, ow = argmax.shape
    h, w = input_size
    format = suggest_memory_format(argmax)
    grad_input = torch.empty((n, c, h, w), device=grad_output.device, dtype=grad_output.dtype,
                             memory_format=format)
    total = grad_input.numel()
    if total == 0:
        return grad_input
    max_pool2d_backward_kernel[_grid(total)](
        grad_output, argmax, grad_input,
        total, c, h, w, oh, ow,
        *grad_output.stride(), *argmax.stride(), *grad_input.stride(),
        *kernel_size, *stride, *padding, *dilation, CHANNELS_LAST=format == torch.channels_last,
    )
    return grad_input


def max_pool2d_indices(argmax, input_width, kernel_size, stride, padding, dilation):
    """argmax [N, C, H_out, W_out] -> torch's int64 indices (flat per input plane), same layout."""
    n, c, oh, ow = argmax.shape
    format = suggest_memory_format(argmax)
    indices = torch.empty(argmax.shape, device=argmax.device, dtype=torch.int64,
                          memory_format=format)
    total = indices.numel()
    if total == 0:
        return indices
    max_pool2d_indices_kernel[_grid(total)](
        argmax, indices,
        total, c, oh, ow, input_width,
        *argmax.stride(), *indices.stride(),
        kernel_size[1], *stride, *padding, *dilation, CHANNELS_LAST=format == torch.channels_last,
    )
    return indices
