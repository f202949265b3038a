"""Triton kernels of fastops.conv2d: implicit GEMMs that gather their operands straight from the
4-D tensors (any strides, so NCHW and channels-last alike, with no im2col buffer), fp32
accumulation, and masks for the padding and every tile edge. Per group g (program axis 1):

    forward:      out[(n, oh, ow), o]      = act(sum_k x[n, c, ih, iw] * w[o, k] + bias[o])
    grad_input:   gx[(n, ih, iw), c]       = sum_(o, kh, kw) g'[n, o, oh, ow] * w[o, c, kh, kw]
                  with oh = (ih + pad - kh * dil) / stride where that divides (the flipped kernel)
    grad_weight:  gw[o, (c, kh, kw)]       = sum_(n, oh, ow) g'[n, o, oh, ow] * x[n, c, ih, iw]
    grad_bias:    gb[o]                    = sum_(n, oh, ow) g'[n, o, oh, ow]

with k = (c, kh, kw), ih = oh * stride - pad + kh * dil (iw likewise) and g' = g * !(out <= 0)
under ReLU (torch's threshold_backward). The weight gradient is split over the reduction
(SPLIT_K programs write fp32 partial sums, added by the launcher) so that a few output tiles
still fill the GPU; the bias gradient is summed in the same pass over g'.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from ._utils import autotune, cdiv, empty_grad, fp32_dot_precision

_CONV_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 32}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}, num_stages=4, num_warps=2),
]
_KEY = ["BATCH", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "STRIDE_H", "STRIDE_W", "GROUPS"]


@autotune(_CONV_CONFIGS, key=_KEY + ["HAS_BIAS", "RELU"])
@triton.jit
def conv2d_forward_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    BATCH, C, H, W, O, KH, KW, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wc, stride_wh, stride_ww,
    stride_on, stride_oc, stride_oh, stride_ow,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M pixels, BLOCK_N channels] tile of group program_id(1)'s output."""
    group = tl.program_id(1)
    c_per_group = C // GROUPS
    o_per_group = O // GROUPS
    num_pid_n = tl.cdiv(o_per_group, BLOCK_N)
    pid_m = tl.program_id(0) // num_pid_n
    pid_n = tl.program_id(0) % num_pid_n
    M = BATCH * OH * OW
    K = c_per_group * KH * KW

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_in = offs_m < M
    n_in = offs_n < o_per_group
    # 64-bit offsets: n * stride can exceed 2**31 for large activations.
    n_img = (offs_m // (OH * OW)).to(tl.int64)
    oh = (offs_m // OW) % OH
    ow = offs_m % OW
    x_base = x_ptr + n_img * stride_xn + (group * c_per_group).to(tl.int64) * stride_xc
    oc = (group * o_per_group + offs_n).to(tl.int64)
    w_base = w_ptr + oc * stride_wo

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < K
        c = offs_k // (KH * KW)
        kh = (offs_k // KW) % KH
        kw = offs_k % KW
        ih = oh[:, None] * STRIDE_H - PAD_H + kh[None, :] * DIL_H
        iw = ow[:, None] * STRIDE_W - PAD_W + kw[None, :] * DIL_W
        x_in = m_in[:, None] & k_in[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_ptrs = (x_base[:, None] + c[None, :].to(tl.int64) * stride_xc
                  + ih * stride_xh + iw * stride_xw)
        a = tl.load(x_ptrs, mask=x_in, other=0.0)
        w_ptrs = w_base[None, :] + (c * stride_wc + kh * stride_wh + kw * stride_ww)[:, None]
        b = tl.load(w_ptrs, mask=k_in[:, None] & n_in[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=n_in, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as with torch.relu
    out_ptrs = (out_ptr + n_img[:, None] * stride_on + oc[None, :] * stride_oc
                + (oh * stride_oh + ow * stride_ow)[:, None])
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


@autotune(_CONV_CONFIGS, key=_KEY + ["RELU"])
@triton.jit
def conv2d_grad_input_kernel(
    g_ptr, out_ptr, w_ptr, gx_ptr,
    BATCH, C, H, W, O, KH, KW, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_wo, stride_wc, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS,
    RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M input pixels, BLOCK_N input channels] tile of group program_id(1)'s grad_input:
    an implicit GEMM over k = (o, kh, kw) whose taps that no output pixel reads are masked."""
    group = tl.program_id(1)
    c_per_group = C // GROUPS
    o_per_group = O // GROUPS
    num_pid_n = tl.cdiv(c_per_group, BLOCK_N)
    pid_m = tl.program_id(0) // num_pid_n
    pid_n = tl.program_id(0) % num_pid_n
    M = BATCH * H * W
    K = o_per_group * KH * KW

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_in = offs_m < M
    n_in = offs_n < c_per_group
    n_img = (offs_m // (H * W)).to(tl.int64)
    ih = (offs_m // W) % H
    iw = offs_m % W
    o0 = (group * o_per_group).to(tl.int64)
    g_base = g_ptr + n_img * stride_gn + o0 * stride_gc
    out_base = out_ptr + n_img * stride_on + o0 * stride_oc
    ic = (group * c_per_group + offs_n).to(tl.int64)
    w_base = w_ptr + o0 * stride_wo + offs_n.to(tl.int64) * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_in = offs_k < K
        o = offs_k // (KH * KW)
        kh = (offs_k // KW) % KH
        kw = offs_k % KW
        th = ih[:, None] + PAD_H - kh[None, :] * DIL_H
        tw = iw[:, None] + PAD_W - kw[None, :] * DIL_W
        oh = th // STRIDE_H
        ow = tw // STRIDE_W
        g_in = (m_in[:, None] & k_in[None, :] & (th >= 0) & (tw >= 0) & (oh * STRIDE_H == th)
                & (ow * STRIDE_W == tw) & (oh < OH) & (ow < OW))
        o64 = o[None, :].to(tl.int64)
        g_ptrs = g_base[:, None] + o64 * stride_gc + oh * stride_gh + ow * stride_gw
        a = tl.load(g_ptrs, mask=g_in, other=0.0)
        if RELU:
            # zero where out <= 0 (torch's threshold_backward: a NaN output passes the gradient)
            out_v = tl.load(out_base[:, None] + o64 * stride_oc + oh * stride_oh + ow * stride_ow,
                            mask=g_in, other=0.0)
            a = tl.where(out_v <= 0, tl.zeros_like(a), a)
        tap = o.to(tl.int64) * stride_wo + kh * stride_wh + kw * stride_ww
        w_ptrs = w_base[None, :] + tap[:, None]
        b = tl.load(w_ptrs, mask=k_in[:, None] & n_in[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    gx_ptrs = (gx_ptr + n_img[:, None] * stride_xn + ic[None, :] * stride_xc
               + (ih * stride_xh + iw * stride_xw)[:, None])
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}, num_stages=4, num_warps=2),
]


@autotune(_WEIGHT_CONFIGS, key=_KEY + ["RELU", "NEED_WEIGHT", "NEED_BIAS", "SPLIT_K"])
@triton.jit
def conv2d_grad_weight_kernel(
    g_ptr, out_ptr, x_ptr, gw_ptr, gb_ptr,
    BATCH, C, H, W, O, KH, KW, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS, SPLIT_K,
    RELU: tl.constexpr, NEED_WEIGHT: tl.constexpr, NEED_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial sums over split program_id(2) of the reduction r = (n, oh, ow): one
    [BLOCK_M out channels, BLOCK_N (c, kh, kw)] tile of gw_ptr[split, O, C / groups * KH * KW]
    and, from the programs of the first column tile, gb_ptr[split, O]; both fp32."""
    group = tl.program_id(1)
    split = tl.program_id(2)
    c_per_group = C // GROUPS
    o_per_group = O // GROUPS
    N = c_per_group * KH * KW
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // num_pid_n
    pid_n = tl.program_id(0) % num_pid_n
    R = BATCH * OH * OW
    r_chunk = tl.cdiv(tl.cdiv(R, SPLIT_K), BLOCK_K) * BLOCK_K
    r_begin = split * r_chunk
    r_end = min(R, r_begin + r_chunk)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_in = offs_m < o_per_group
    n_in = offs_n < N
    oc = (group * o_per_group + offs_m).to(tl.int64)
    c = offs_n // (KH * KW)
    kh = (offs_n // KW) % KH
    kw = offs_n % KW
    x_chan = x_ptr + (group * c_per_group + c).to(tl.int64) * stride_xc

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        r_in = offs_r < r_end
        n_img = (offs_r // (OH * OW)).to(tl.int64)
        oh = (offs_r // OW) % OH
        ow = offs_r % OW
        g_in = m_in[:, None] & r_in[None, :]
        pixel_g = n_img * stride_gn + oh * stride_gh + ow * stride_gw
        a = tl.load(g_ptr + oc[:, None] * stride_gc + pixel_g[None, :], mask=g_in, other=0.0)
        if RELU:
            # zero where out <= 0 (torch's threshold_backward: a NaN output passes the gradient)
            pixel_o = n_img * stride_on + oh * stride_oh + ow * stride_ow
            out_v = tl.load(out_ptr + oc[:, None] * stride_oc + pixel_o[None, :], mask=g_in,
                            other=0.0)
            a = tl.where(out_v <= 0, tl.zeros_like(a), a)
        if NEED_BIAS:
            bias_acc += tl.sum(a.to(tl.float32), axis=1)
        if NEED_WEIGHT:
            ih = oh[:, None] * STRIDE_H - PAD_H + kh[None, :] * DIL_H
            iw = ow[:, None] * STRIDE_W - PAD_W + kw[None, :] * DIL_W
            x_in = r_in[:, None] & n_in[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_ptrs = x_chan[None, :] + n_img[:, None] * stride_xn + ih * stride_xh + iw * stride_xw
            b = tl.load(x_ptrs, mask=x_in, other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if NEED_WEIGHT:
        gw_ptrs = gw_ptr + (split * O + oc)[:, None] * N + offs_n[None, :]
        tl.store(gw_ptrs, acc, mask=m_in[:, None] & n_in[None, :])
    if NEED_BIAS:
        if pid_n == 0:
            tl.store(gb_ptr + split * O + oc, bias_acc, mask=m_in)


def _output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _output_memory_format(input, weight):
    """Channels-last when input or weight is, as torch's convolutions (and the CPU kernel)."""
    formats = (suggest_memory_format(input), suggest_memory_format(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


def _split_k(device, tiles, reduction):
    """Splits of the weight-gradient reduction: enough programs to fill the GPU (two per SM),
    each still reducing at least 1024 elements; two under the interpreter, to test the split."""
    if device.type != "cuda":
        return 2 if reduction > 1 else 1
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(programs, tiles), reduction // 1024))


def conv2d_forward(input, weight, bias, stride, padding, dilation, groups, activation):
    """input [N, C, H, W], weight [O, C / groups, kH, kW], bias [O] or None -> [N, O, oH, oW]
    (channels-last when input or weight is); explicit symmetric zero padding; activation
    "none" | "relu"."""
    batch, channels, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = (_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d],
                                 dilation[d])
                    for d in range(2))
    out = torch.empty((batch, out_channels, out_h, out_w), device=input.device, dtype=input.dtype,
                      memory_format=_output_memory_format(input, weight))
    if out.numel() == 0:
        return out

    def grid(meta):
        tiles_m = cdiv(batch * out_h * out_w, meta["BLOCK_M"])
        return (tiles_m * cdiv(out_channels // groups, meta["BLOCK_N"]), groups)

    conv2d_forward_kernel[grid](
        input, weight, bias, out,
        batch, channels, height, width, out_channels, kernel_h, kernel_w, out_h, out_w,
        *input.stride(), *weight.stride(), *out.stride(),
        *stride, *padding, *dilation, groups,
        HAS_BIAS=bias is not None, RELU=activation == "relu",
        INPUT_PRECISION=fp32_dot_precision(input.dtype),
    )
    return out


def conv2d_backward(grad_output, input, weight, output, input_size, stride, padding, dilation,
                    groups, activation, output_mask):
    """Gradients (input, weight, bias) of conv2d_forward; the ReLU mask comes from ``output``.
    ``input`` is needed only for the weight gradient, ``input_size`` gives grad_input's shape.
    Gradients not asked for in output_mask come back as empty tensors."""
    need_input, need_weight, need_bias = output_mask
    relu = activation == "relu"
    batch, channels, height, width = input_size
    out_channels, c_per_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = grad_output.shape[2:]
    sizes = (batch, channels, height, width, out_channels, kernel_h, kernel_w, out_h, out_w)
    conv = (*stride, *padding, *dilation, groups)
    # Without ReLU the mask pointer is never read: grad_output stands in for it.
    mask = output if relu else grad_output
    precision = fp32_dot_precision(grad_output.dtype)

    grad_input = empty_grad(grad_output)
    if need_input:
        grad_input = torch.empty(tuple(input_size), device=grad_output.device,
                                 dtype=grad_output.dtype,
                                 memory_format=suggest_memory_format(grad_output))

        def grid(meta):
            tiles_m = cdiv(batch * height * width, meta["BLOCK_M"])
            return (tiles_m * cdiv(c_per_group, meta["BLOCK_N"]), groups)

        if grad_input.numel():
            conv2d_grad_input_kernel[grid](
                grad_output, mask, weight, grad_input, *sizes,
                *grad_output.stride(), *mask.stride(), *weight.stride(), *grad_input.stride(),
                *conv, RELU=relu, INPUT_PRECISION=precision,
            )

    grad_weight = empty_grad(grad_output)
    grad_bias = empty_grad(grad_output)
    if need_weight or need_bias:
        patch = c_per_group * kernel_h * kernel_w
        reduction = batch * out_h * out_w
        o_per_group = out_channels // groups
        tiles = groups * cdiv(o_per_group, 64) * cdiv(patch, 64)
        split = _split_k(grad_output.device, tiles, reduction)
        partial_weight = torch.empty((split, out_channels, patch) if need_weight else (0,),
                                     device=grad_output.device, dtype=torch.float32)
        partial_bias = torch.empty((split, out_channels) if need_bias else (0,),
                                   device=grad_output.device, dtype=torch.float32)
        # Without the weight gradient only the bias sums are computed: one column of tiles, and
        # the input pointer is never read (grad_output stands in for it).
        x = input if need_weight else grad_output

        def grid(meta):
            columns = cdiv(patch, meta["BLOCK_N"]) if need_weight else 1
            return (cdiv(o_per_group, meta["BLOCK_M"]) * columns, groups, split)

        conv2d_grad_weight_kernel[grid](
            grad_output, mask, x, partial_weight, partial_bias, *sizes,
            *grad_output.stride(), *mask.stride(), *x.stride(),
            *conv, split,
            RELU=relu, NEED_WEIGHT=need_weight, NEED_BIAS=need_bias, INPUT_PRECISION=precision,
        )
        if need_weight:
            grad_weight = partial_weight.sum(0).to(grad_output.dtype).view(weight.shape)
        if need_bias:
            grad_bias = partial_bias.sum(0).to(grad_output.dtype)
    return grad_input, grad_weight, grad_bias
