"""Triton kernels of fastops.conv2d: implicit GEMMs that gather their operands straight from the
4-D tensors (any strides, so NCHW and channels-last alike, with no im2col buffer), fp32
accumulation, and masks for the padding and every tile edge. Per group g (program axis 1):

    forward:      out[(n, oh, ow), o]      = act(sum_k x[n, c, ih, iw] * w[o, k] + bias[o])
    grad_input:   gx[(n, ih, iw), c]       = sum_(o, kh, kw) g'[n, o, oh, ow] * w[o, c, kh, kw]
                  with oh = (ih + pad - kh * dil) / stride where that divides (the flipped kernel)
    grad_weight:  gw[o, (c, kh, kw)]       = sum_(n, oh, ow) g'[n, o, oh, ow] * x[n, c, ih, iw]
    grad_bias:    gb[o]                    = sum_(n, oh, ow) g'[n, o, oh, ow]

with k = (c, kh, kw), ih = oh * stride - pad + kh * dil (iw likewise) and g' = g * !(out <= 0)
under ReLU (torch's threshold_backward).

The forward and input-gradient GEMMs run one flat loop over k-steps, tap-major: step s is the
tap (kh, kw) and the channel block c0 of s = (kh * KW + kw) * cdiv(C / groups, BLOCK_K) + c0 /
BLOCK_K, found by scalar division. Each step then loads a [BLOCK_M pixels, BLOCK_K channels]
tile at one tap (per-pixel offsets computed once, before the loop, plus a scalar tap offset)
and the weight's [BLOCK_K, BLOCK_N] tile at that tap: no per-element division in the loop, and
loads that Triton can pipeline (cp.async) wherever the channels are contiguous (channels-last)
or the elements are 32-bit. The weight gradient gives each program one tap, so its loop over
the pixels r = (n, oh, ow) needs only per-pixel index arithmetic; it is split over the
reduction (SPLIT_K programs write fp32 partial sums, added by the launcher) so that a few
output tiles still fill the GPU, and the bias gradient is summed in the same pass over g'.

Pixel indices and tile offsets are int32 unless some tensor spans 2**31 elements or more
(INT64, a constexpr chosen by the launcher: _needs_int64); tiles are loaded from 64-bit
pointers that move by 64-bit scalar offsets (the group, the tap and the channel block).

Over 500 lines on purpose: three implicit GEMMs (forward, grad input, grad weight) sharing
the index helpers and tile pruning, and their launchers.
"""

import torch
import triton
import triton.language as tl

from ._utils import autotune, cdiv, checked_outputs, dot_shared_memory, fp32_dot_precision

_CONV_CONFIGS = [
    # 8 warps: with 4, Triton 3.6 spills this tile's registers (stride 2, fp32; 3.9 does not)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    # 8 warps: with 4, a gathered 128x64 tile's offsets and masks spill (NCHW)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 32}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 16, "BLOCK_K": 16}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}, num_stages=4, num_warps=2),
]
_KEY = ["BATCH", "C_G", "H", "W", "O_G", "KH", "KW", "OH", "OW", "STRIDE_H", "STRIDE_W", "GROUPS",
        "INT64", "INPUT_PRECISION"]

# Offsets of at most this many elements stay int32: the margin covers the indices a tile
# computes past the end (masked) of its tensor.
_INT32_LIMIT = 2**31 - 2**20


def _span(tensor):
    """1 + the offset of a tensor's last element: what an index into it must reach."""
    if tensor.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(stride)
                   for size, stride in zip(tensor.shape, tensor.stride(), strict=True))


def _needs_int64(pixels, *tensors):
    """True when a kernel's pixel index (``pixels`` = batch * planar size) or an offset into one
    of ``tensors`` may pass int32: the kernels then index in 64-bit (a constexpr, so that the
    common case keeps 32-bit arithmetic)."""
    return pixels >= _INT32_LIMIT or any(_span(t) >= _INT32_LIMIT for t in tensors)


def _prune_tiles(m, n, k, strided=None):
    """prune= of a conv autotune: drops configs whose BLOCK_M / BLOCK_N / BLOCK_K are far above the
    problem's dimensions (``m``, ``n``, ``k``: names of kernel arguments), which would only compute
    padding, and, for a stride above 1, those that ``strided(config)`` rejects (the tiles whose
    per-pixel state spills registers there: tests/sm90.py --autotune all, under Triton 3.6);
    keeps the configs of the smallest tiles when none is left."""
    def prune(configs, named_args):
        dims = {"BLOCK_M": named_args[m], "BLOCK_N": named_args[n], "BLOCK_K": named_args[k]}
        is_strided = (strided is not None
                      and max(named_args["STRIDE_H"], named_args["STRIDE_W"]) > 1)

        def fits(config):
            return (all(config.kwargs[name] <= max(16, triton.next_power_of_2(int(size)))
                        for name, size in dims.items())
                    and (not is_strided or strided(config)))

        kept = [c for c in configs if fits(c)]
        if kept:
            return kept
        smallest = min((c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in configs)
        return [c for c in configs if (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) == smallest]
    return prune


# The strided= rules of _prune_tiles, one per kernel (forward, grad_input, grad_weight).
def _at_most_128x64_outputs(config):
    return config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] <= 128 * 64


def _at_most_64x32_gathers(config):
    return config.kwargs["BLOCK_M"] <= 64 and config.kwargs["BLOCK_K"] <= 32


def _at_least_4_warps(config):
    return config.num_warps >= 4


def _masked_dot_shared_memory(a_ptr, b_ptr):
    """shared_memory estimate of a pipelined tl.dot whose [BLOCK_M, BLOCK_K] operand ``a_ptr`` is
    masked under ReLU by the same tile of ``out_ptr`` (one more buffer per stage, and one staging
    buffer of the masked operand): an upper bound, as dot_shared_memory's."""
    plain = dot_shared_memory(a_ptr, b_ptr)

    def estimate(config, named_args):
        if not named_args["RELU"]:
            return plain(config, named_args)
        meta = config.kwargs
        tile_a = meta["BLOCK_M"] * meta["BLOCK_K"] * named_args[a_ptr].element_size()
        return plain(config, named_args) + tile_a * (max(config.num_stages, 1) + 1)
    return estimate


@triton.jit
def _split_pixels(offs, OH, OW):
    """(n, oh, ow) of flat pixel indices offs = (n * OH + oh) * OW + ow: n in the type of offs,
    oh and ow in int32 (below the plane's size)."""
    plane = OH * OW
    n = offs // plane
    rest = (offs - n * plane).to(tl.int32)
    oh = rest // OW
    return n, oh, rest - oh * OW


@triton.jit
def _index(i, INT64: tl.constexpr):
    """An index about to be multiplied by a stride: int64 under INT64, else int32 (every offset
    into the tensors, and so every offset of an element not masked out, is below 2**31)."""
    if INT64:
        return i.to(tl.int64)
    return i


@triton.jit
def _offset(i, stride_i, j, stride_j, INT64: tl.constexpr):
    """i * stride_i + j * stride_j (see _index)."""
    return _index(i, INT64) * stride_i + _index(j, INT64) * stride_j


@autotune(_CONV_CONFIGS, key=_KEY + ["HAS_BIAS", "RELU"], bucket=["BATCH"],
          prune=_prune_tiles("M", "O_G", "C_G", strided=_at_most_128x64_outputs),
          shared_memory=dot_shared_memory("x_ptr", "w_ptr"))
@triton.jit
def conv2d_forward_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    BATCH, M, C_G, H, W, O_G, KH, KW, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wo, stride_wc, stride_wh, stride_ww,
    stride_on, stride_oc, stride_oh, stride_ow,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M pixels, BLOCK_N channels] tile of group program_id(1)'s output
    out[N, GROUPS * O_G, OH, OW] (M = N * OH * OW pixels) from x[N, GROUPS * C_G, H, W] and
    w[GROUPS * O_G, C_G, KH, KW]: tap-major k-steps (see the module docstring)."""
    group = tl.program_id(1)
    num_pid_n = tl.cdiv(O_G, BLOCK_N)
    # Column tiles of one pixel tile run side by side: they share its x tiles in L2.
    pid_m = tl.program_id(0) // num_pid_n
    pid_n = tl.program_id(0) % num_pid_n

    if INT64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in = offs_m < M
    n_in = offs_n < O_G
    # Per pixel, once: the image, the input row / column of tap (0, 0) and their offset. Tile
    # offsets are int32 (or int64, see _index) from pointers that move by a scalar per k-step.
    n_img, oh, ow = _split_pixels(offs_m, OH, OW)
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_rows = _index(n_img, INT64) * stride_xn + _offset(ih0, stride_xh, iw0, stride_xw, INT64)
    # x tiles are gathered transposed, [BLOCK_K, BLOCK_M] with the pixels last: where the
    # compiler sees no contiguity (NCHW), threads then spread over the pixels, so that each holds
    # the per-pixel state (offsets, bounds) of a few pixels rather than of BLOCK_M / num_warps.
    x_tile = (_index(offs_k, INT64) * stride_xc)[:, None] + x_rows[None, :]
    x_group = x_ptr + (group * C_G).to(tl.int64) * stride_xc
    oc = group * O_G + offs_n
    w_tile = (_index(offs_k, INT64) * stride_wc)[:, None] + (_index(oc, INT64) * stride_wo)[None, :]

    c_blocks = tl.cdiv(C_G, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, KH * KW * c_blocks):
        # scalar index arithmetic only: the tap and the channel block of this k-step
        tap = step // c_blocks
        c0 = (step - tap * c_blocks) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh * DIL_H
        iw = iw0 + kw * DIL_W
        row_in = m_in & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        k_in = offs_k < C_G - c0
        x_tap = x_group + (c0.to(tl.int64) * stride_xc + (kh * DIL_H).to(tl.int64) * stride_xh
                           + (kw * DIL_W).to(tl.int64) * stride_xw)
        a = tl.load(x_tap + x_tile, mask=k_in[:, None] & row_in[None, :], other=0.0)
        w_tap = w_ptr + (c0.to(tl.int64) * stride_wc + kh * stride_wh + kw * stride_ww)
        b = tl.load(w_tap + w_tile, mask=k_in[:, None] & n_in[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=n_in, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as with torch.relu
    out_rows = _index(n_img, INT64) * stride_on + _offset(oh, stride_oh, ow, stride_ow, INT64)
    out_ptrs = out_ptr + (out_rows[:, None] + (_index(oc, INT64) * stride_oc)[None, :])
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


# grad_input holds more per-pixel state (the stride's divisibility masks, the ReLU mask): its
# first choice is a 64-pixel tile (128 pixels spill registers with Triton 3.6 at stride 2, fp32)
_GRAD_INPUT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    *_CONV_CONFIGS,
]


@autotune(_GRAD_INPUT_CONFIGS, key=_KEY + ["RELU"], bucket=["BATCH"],
          prune=_prune_tiles("M", "C_G", "O_G", strided=_at_most_64x32_gathers),
          shared_memory=_masked_dot_shared_memory("g_ptr", "w_ptr"))
@triton.jit
def conv2d_grad_input_kernel(
    g_ptr, out_ptr, w_ptr, gx_ptr,
    BATCH, M, C_G, H, W, O_G, KH, KW, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_wo, stride_wc, stride_wh, stride_ww,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS,
    RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M input pixels, BLOCK_N input channels] tile of group program_id(1)'s
    gx[N, GROUPS * C_G, H, W] (M = N * H * W pixels) from g[N, GROUPS * O_G, OH, OW] (masked by
    out under ReLU) and w[GROUPS * O_G, C_G, KH, KW]: an implicit GEMM over k = (kh, kw, o),
    tap-major like the forward, whose taps that no output pixel reads are masked."""
    group = tl.program_id(1)
    num_pid_n = tl.cdiv(C_G, BLOCK_N)
    pid_m = tl.program_id(0) // num_pid_n
    pid_n = tl.program_id(0) % num_pid_n

    if INT64:
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in = offs_m < M
    n_in = offs_n < C_G
    n_img, ih, iw = _split_pixels(offs_m, H, W)
    th0 = ih + PAD_H
    tw0 = iw + PAD_W
    o_base = (group * O_G).to(tl.int64)
    g_group = g_ptr + o_base * stride_gc
    out_group = out_ptr + o_base * stride_oc
    g_img = _index(n_img, INT64) * stride_gn
    out_img = _index(n_img, INT64) * stride_on
    g_chan = _index(offs_k, INT64) * stride_gc
    out_chan = _index(offs_k, INT64) * stride_oc
    w_group = w_ptr + o_base * stride_wo
    w_tile = ((_index(offs_k, INT64) * stride_wo)[:, None]
              + (_index(offs_n, INT64) * stride_wc)[None, :])

    o_blocks = tl.cdiv(O_G, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, KH * KW * o_blocks):
        tap = step // o_blocks
        o0 = (step - tap * o_blocks) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        # the output pixel that reads this input pixel through tap (kh, kw), where one does;
        # per pixel, not per element (a stride of 1 is specialised: no division)
        th = th0 - kh * DIL_H
        tw = tw0 - kw * DIL_W
        oh = th // STRIDE_H
        ow = tw // STRIDE_W
        row_in = (m_in & (th >= 0) & (tw >= 0) & (oh < OH) & (ow < OW)
                  & (oh * STRIDE_H == th) & (ow * STRIDE_W == tw))
        k_in = offs_k < O_G - o0
        # g (and out) tiles transposed, [BLOCK_K, BLOCK_M], as x in the forward
        g_in = k_in[:, None] & row_in[None, :]
        o_tap = o0.to(tl.int64)
        g_rows = g_img + _offset(oh, stride_gh, ow, stride_gw, INT64)
        a = tl.load(g_group + o_tap * stride_gc + (g_chan[:, None] + g_rows[None, :]), mask=g_in,
                    other=0.0)
        if RELU:
            # zero where out <= 0 (torch's threshold_backward: a NaN output passes the gradient)
            out_rows = out_img + _offset(oh, stride_oh, ow, stride_ow, INT64)
            out_v = tl.load(out_group + o_tap * stride_oc + (out_chan[:, None] + out_rows[None, :]),
                            mask=g_in, other=0.0)
            a = tl.where(out_v <= 0, tl.zeros_like(a), a)
        w_tap = w_group + (o_tap * stride_wo + kh * stride_wh + kw * stride_ww)
        b = tl.load(w_tap + w_tile, mask=k_in[:, None] & n_in[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=INPUT_PRECISION)

    gx_rows = _index(n_img, INT64) * stride_xn + _offset(ih, stride_xh, iw, stride_xw, INT64)
    gx_cols = _index(group * C_G + offs_n, INT64) * stride_xc
    gx_ptrs = gx_ptr + (gx_rows[:, None] + gx_cols[None, :])
    tl.store(gx_ptrs, acc.to(gx_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}, num_stages=4, num_warps=2),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64}, num_stages=4, num_warps=2),
]


def _weight_shared_memory(config, named_args):
    """shared_memory estimate of conv2d_grad_weight_kernel: g's [BLOCK_M, BLOCK_K] tiles (and out's
    under ReLU, plus a staging buffer of the masked tile), x's [BLOCK_K, BLOCK_N] tiles."""
    meta = config.kwargs
    stages = max(config.num_stages, 1)
    size = named_args["g_ptr"].element_size()
    tile_g = meta["BLOCK_M"] * meta["BLOCK_K"] * size
    total = tile_g * stages
    if named_args["RELU"]:
        total += tile_g * (stages + 1)
    if named_args["NEED_WEIGHT"]:
        total += meta["BLOCK_K"] * meta["BLOCK_N"] * size * stages
    return total


@autotune(_WEIGHT_CONFIGS, key=_KEY + ["RELU", "NEED_WEIGHT", "NEED_BIAS", "SPLIT_K"],
          bucket=["BATCH"],
          prune=_prune_tiles("O_G", "C_G", "R", strided=_at_least_4_warps),
          shared_memory=_weight_shared_memory)
@triton.jit
def conv2d_grad_weight_kernel(
    g_ptr, out_ptr, x_ptr, gw_ptr, gb_ptr,
    BATCH, R, C_G, H, W, O_G, KH, KW, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_xn, stride_xc, stride_xh, stride_xw,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W, GROUPS, SPLIT_K,
    RELU: tl.constexpr, NEED_WEIGHT: tl.constexpr, NEED_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Partial sums over split program_id(2) of the reduction over the R = N * OH * OW pixels
    r = (n, oh, ow): one [BLOCK_M out channels, BLOCK_N in channels] tile of one tap (kh, kw) of
    gw_ptr[split, GROUPS * O_G, C_G * KH * KW] and, from the programs of the first tap and
    channel tile, gb_ptr[split, GROUPS * O_G]; both fp32. One tap per program keeps the loop's
    index arithmetic per pixel (g and x tiles share it), none per element."""
    group = tl.program_id(1)
    split = tl.program_id(2)
    c_tiles = tl.cdiv(C_G, BLOCK_N)
    if NEED_WEIGHT:
        num_cols = c_tiles * KH * KW
    else:
        num_cols = 1
    # The taps and channel tiles of one out-channel tile run side by side: they share g in L2.
    pid_m = tl.program_id(0) // num_cols
    col = tl.program_id(0) % num_cols
    tap = col // c_tiles
    pid_n = col - tap * c_tiles
    kh = tap // KW
    kw = tap - kh * KW

    if INT64:
        r_chunk = tl.cdiv(tl.cdiv(R, SPLIT_K), BLOCK_K).to(tl.int64) * BLOCK_K
    else:
        r_chunk = tl.cdiv(tl.cdiv(R, SPLIT_K), BLOCK_K) * BLOCK_K
    r_begin = split * r_chunk
    r_end = min(R, r_begin + r_chunk)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in = offs_m < O_G
    n_in = offs_n < C_G
    oc = group * O_G + offs_m
    g_rows = _index(oc, INT64) * stride_gc
    out_rows = _index(oc, INT64) * stride_oc
    x_cols = _index(group * C_G + offs_n, INT64) * stride_xc
    # the input pixel of output pixel (0, 0) through this program's tap
    ih_tap = kh * DIL_H - PAD_H
    iw_tap = kw * DIL_W - PAD_W

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_K):
        offs_r = r0 + offs_k
        r_in = offs_r < r_end
        n_img, oh, ow = _split_pixels(offs_r, OH, OW)
        g_in = m_in[:, None] & r_in[None, :]
        pixel_g = _index(n_img, INT64) * stride_gn + _offset(oh, stride_gh, ow, stride_gw, INT64)
        a = tl.load(g_ptr + (g_rows[:, None] + pixel_g[None, :]), mask=g_in, other=0.0)
        if RELU:
            # zero where out <= 0 (torch's threshold_backward: a NaN output passes the gradient)
            pixel_o = _index(n_img, INT64) * stride_on + _offset(oh, stride_oh, ow, stride_ow,
                                                                 INT64)
            out_v = tl.load(out_ptr + (out_rows[:, None] + pixel_o[None, :]), mask=g_in,
                            other=0.0)
            a = tl.where(out_v <= 0, tl.zeros_like(a), a)
        if NEED_BIAS:
            bias_acc += tl.sum(a.to(tl.float32), axis=1)
        if NEED_WEIGHT:
            ih = oh * STRIDE_H + ih_tap
            iw = ow * STRIDE_W + iw_tap
            r_ok = r_in & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            pixel_x = _index(n_img, INT64) * stride_xn + _offset(ih, stride_xh, iw, stride_xw,
                                                                 INT64)
            # gathered transposed, [BLOCK_N, BLOCK_K] with the pixels last like g's tile (see
            # the forward)
            b = tl.load(x_ptr + (x_cols[:, None] + pixel_x[None, :]),
                        mask=n_in[:, None] & r_ok[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)

    if NEED_WEIGHT:
        # gw[split, o, (c, kh, kw)]: the weight's own (contiguous) order
        gw_rows = gw_ptr + (split * GROUPS * O_G + oc).to(tl.int64) * (C_G * KH * KW)
        gw_ptrs = gw_rows[:, None] + (offs_n * (KH * KW) + tap)[None, :]
        tl.store(gw_ptrs, acc, mask=m_in[:, None] & n_in[None, :])
    if NEED_BIAS:
        if col == 0:
            tl.store(gb_ptr + split * GROUPS * O_G + oc, bias_acc, mask=m_in)


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
    "none" | "relu". float32 runs in TF32 where torch's convolutions do (cudnn.allow_tf32)."""
    out = checked_outputs("conv2d", input, weight, bias, stride, padding, dilation, groups,
                          activation)
    batch, channels, height, width = input.shape
    out_channels, c_per_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = out.shape[2:]
    if out.numel() == 0:
        return out
    pixels = batch * out_h * out_w
    o_per_group = out_channels // groups

    def grid(meta):
        tiles_m = cdiv(pixels, meta["BLOCK_M"])
        return (tiles_m * cdiv(o_per_group, meta["BLOCK_N"]), groups)

    conv2d_forward_kernel[grid](
        input, weight, bias, out,
        batch, pixels, c_per_group, height, width, o_per_group, kernel_h, kernel_w, out_h, out_w,
        *input.stride(), *weight.stride(), *out.stride(),
        *stride, *padding, *dilation, groups,
        HAS_BIAS=bias is not None, RELU=activation == "relu",
        INPUT_PRECISION=fp32_dot_precision(input.dtype, op="conv"),
        INT64=_needs_int64(pixels, input, weight, out),
    )
    return out


def conv2d_backward(grad_output, input, weight, output, input_size, stride, padding, dilation,
                    groups, activation, output_mask):
    """Gradients (input, weight, bias) of conv2d_forward; the ReLU mask comes from ``output``.
    ``input`` is needed only for the weight gradient, ``input_size`` gives grad_input's shape.
    Gradients not asked for in output_mask come back as empty tensors."""
    grad_input, grad_weight, grad_bias = checked_outputs(
        "conv2d_backward", grad_output, input, weight, output, input_size, stride, padding,
        dilation, groups, activation, output_mask)
    need_input, need_weight, need_bias = output_mask
    if input_size[1] == 0:  # no input channel, so no output channel (as torch): no gradient
        return grad_input, grad_weight, grad_bias.zero_()
    relu = activation == "relu"
    batch, channels, height, width = input_size
    out_channels, c_per_group, kernel_h, kernel_w = weight.shape
    o_per_group = out_channels // groups
    out_h, out_w = grad_output.shape[2:]
    sizes = (c_per_group, height, width, o_per_group, kernel_h, kernel_w, out_h, out_w)
    conv = (*stride, *padding, *dilation, groups)
    # Without ReLU the mask pointer is never read: grad_output stands in for it.
    mask = output if relu else grad_output
    precision = fp32_dot_precision(grad_output.dtype, op="conv")

    if need_input:
        pixels = batch * height * width

        def grid(meta):
            tiles_m = cdiv(pixels, meta["BLOCK_M"])
            return (tiles_m * cdiv(c_per_group, meta["BLOCK_N"]), groups)

        if grad_input.numel():
            conv2d_grad_input_kernel[grid](
                grad_output, mask, weight, grad_input, batch, pixels, *sizes,
                *grad_output.stride(), *mask.stride(), *weight.stride(), *grad_input.stride(),
                *conv, RELU=relu, INPUT_PRECISION=precision,
                INT64=_needs_int64(pixels, grad_output, mask, weight, grad_input),
            )

    if need_weight or need_bias:
        patch = c_per_group * kernel_h * kernel_w
        reduction = batch * out_h * out_w
        tiles = groups * cdiv(o_per_group, 64) * cdiv(c_per_group, 64) * kernel_h * kernel_w
        split = _split_k(grad_output.device, tiles, reduction)
        partial_weight = torch.empty((split, out_channels, patch) if need_weight else (0,),
                                     device=grad_output.device, dtype=torch.float32)
        partial_bias = torch.empty((split, out_channels) if need_bias else (0,),
                                   device=grad_output.device, dtype=torch.float32)
        # Without the weight gradient only the bias sums are computed: one column of tiles, and
        # the input pointer is never read (grad_output stands in for it).
        x = input if need_weight else grad_output

        def grid(meta):
            columns = cdiv(c_per_group, meta["BLOCK_N"]) * kernel_h * kernel_w if need_weight else 1
            return (cdiv(o_per_group, meta["BLOCK_M"]) * columns, groups, split)

        conv2d_grad_weight_kernel[grid](
            grad_output, mask, x, partial_weight, partial_bias, batch, reduction, *sizes,
            *grad_output.stride(), *mask.stride(), *x.stride(),
            *conv, split,
            RELU=relu, NEED_WEIGHT=need_weight, NEED_BIAS=need_bias, INPUT_PRECISION=precision,
            INT64=_needs_int64(reduction, grad_output, mask, x, partial_weight),
        )
        if need_weight:
            grad_weight.copy_(partial_weight.sum(0).view(weight.shape))
        if need_bias:
            grad_bias.copy_(partial_bias.sum(0))
    return grad_input, grad_weight, grad_bias
