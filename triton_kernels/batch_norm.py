"""Triton kernels of fastops.batch_norm. Every tensor is addressed as a [N, C, S] view through
its own strides (contiguous, channels-last or strided alike); rows r = n * S + s of a channel are
split across programs, so large N*S reduce in parallel without atomics or a spin lock:

    training forward:  partial Welford moments per (split, channel)     _moments_kernel
                       combine, save mean / invstd, update the running   _finalize_stats_kernel
                       statistics in place (one program per channels)
                       y = act((x - mean) * gamma * invstd + beta)       _normalize_kernel
    evaluation:        _finalize_stats_kernel from the running statistics, then _normalize_kernel
    backward:          partial sums of g' and g' * (x - mean)           _grad_sums_kernel
                       combine, grad_weight / grad_bias, coefficients     _finalize_grad_kernel
                       gx = g' * a + (x - mean) * b + d                   _grad_input_kernel

g' is the output gradient masked by ReLU (zero where the saved output <= 0). Only the kernels
without side effects on their inputs are autotuned: the running statistics are written by
_finalize_stats_kernel, which runs exactly once per call.

Over 500 lines on purpose: six kernels of one op sharing the tile helpers and the pruning
rules below, and their two launchers.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from ._utils import (
    accumulate_dtype,
    autotune,
    cdiv,
    checked_outputs,
    interpreting,
    tl_accumulate_dtype,
)

# [BLOCK_R rows, BLOCK_C channels] tiles: tall and one channel wide for NC* planes (rows of a
# channel are contiguous), wide for channels-last (channels are contiguous). The first config
# is the one the interpreter runs.
_REDUCE_CONFIGS = [
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_R": 1024, "BLOCK_C": 1}, num_warps=4),
    triton.Config({"BLOCK_R": 2048, "BLOCK_C": 1}, num_warps=8),
    triton.Config({"BLOCK_R": 256, "BLOCK_C": 4}, num_warps=4),
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_R": 16, "BLOCK_C": 128}, num_warps=4),
]
_ELEMENTWISE_CONFIGS = [
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_R": 1024, "BLOCK_C": 1}, num_warps=4),
    triton.Config({"BLOCK_R": 2048, "BLOCK_C": 1}, num_warps=8),
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_R": 16, "BLOCK_C": 128}, num_warps=4),
]
# Autotuning keys: sizes and the layout (which of the channel / row strides is 1) of the
# tensor that every launch reads.
_MOMENTS_KEY = ["C", "S", "rows_per_split", "stride_xc", "stride_xs"]
_NORMALIZE_KEY = ["M", "C", "S", "stride_xc", "stride_xs"]
# (_prune_grad_sums also decides by every stride and by HAS_X / RELU: all of them key it)
_GRAD_SUMS_KEY = ["C", "S", "rows_per_split", "stride_gn", "stride_gc", "stride_gs", "stride_xn",
                  "stride_xc", "stride_xs", "stride_yn", "stride_yc", "stride_ys", "HAS_X", "RELU"]
_GRAD_INPUT_KEY = ["M", "C", "S", "stride_gc", "stride_gs"]
# Sizes that grow with the batch are keyed by bucket (see _utils.size_bucket).
_BUCKETED = ["M", "rows_per_split"]
_FINALIZE_BLOCK_C = 128
# Programs the reductions aim for: a few per SM; each split keeps at least this many rows.
_PROGRAMS_PER_SM = 4
_MIN_ROWS_PER_SPLIT = 256
_MAX_BLOCK_R = max(config.kwargs["BLOCK_R"] for config in _REDUCE_CONFIGS + _ELEMENTWISE_CONFIGS)
_MAX_BLOCK_C = max(config.kwargs["BLOCK_C"] for config in _REDUCE_CONFIGS + _ELEMENTWISE_CONFIGS)
# CUDA's limit on grid axis 0 (axes 1 and 2 stop at 65535: every grid here is 1-D)
_MAX_PROGRAMS = 2**31 - 1


def _prune_elementwise(configs, named_args):
    """The configs whose _elementwise_grid fits in _MAX_PROGRAMS (only a huge tensor of few
    channels comes near, with a wide BLOCK_C: its idle channel lanes multiply the programs)."""
    rows, channels = named_args["M"], named_args["C"]
    return [config for config in configs
            if cdiv(rows, config.kwargs["BLOCK_R"]) * cdiv(channels, config.kwargs["BLOCK_C"])
            <= _MAX_PROGRAMS]


@triton.jit
def _tile_offsets(r, c, S, stride_n, stride_c, stride_s):
    """Element offsets of rows r [BLOCK_R] and channels c [BLOCK_C] in a [N, C, S] view, in
    int64; r // S is a 32-bit division unless r is int64 (INDEX_64)."""
    n = (r // S).to(tl.int64)
    s = (r % S).to(tl.int64)
    return (n * stride_n + s * stride_s)[:, None] + c.to(tl.int64)[None, :] * stride_c


@triton.jit
def _block_start(index, size, INDEX_64: tl.constexpr):
    """index * size, the first row or channel of a block or split: int32 when the launcher
    proved that every row and channel index fits (see _index_64), else int64."""
    if INDEX_64:
        return index.to(tl.int64) * size
    else:
        return index * size


@triton.jit
def _reduce_program(C, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """(split, channels [BLOCK_C]) of this program of a _reduce_grid: channel blocks vary
    fastest, as on the 2-D grid this replaces."""
    channel_blocks = (C - 1) // BLOCK_C + 1
    pid = tl.program_id(0)
    c = _block_start(pid % channel_blocks, BLOCK_C, INDEX_64) + tl.arange(0, BLOCK_C)
    return pid // channel_blocks, c


@triton.jit
def _elementwise_program(M, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                         INDEX_64: tl.constexpr):
    """(rows [BLOCK_R], channels [BLOCK_C]) of the tile of this program of an _elementwise_grid:
    row blocks vary fastest (neighbouring programs read neighbouring rows of NC* planes)."""
    row_blocks = (M - 1) // BLOCK_R + 1  # not tl.cdiv: M + BLOCK_R - 1 may pass int32
    pid = tl.program_id(0)
    r = _block_start(pid % row_blocks, BLOCK_R, INDEX_64) + tl.arange(0, BLOCK_R)
    c = _block_start(pid // row_blocks, BLOCK_C, INDEX_64) + tl.arange(0, BLOCK_C)
    return r, c


@triton.jit
def _combine_means(mean, part_mean, part_weight):
    """Chan's update mean + (part_mean - mean) * part_weight of a running mean by a part of
    relative weight part_weight (0 for an empty part). Once the mean is infinite it stays so, as
    torch's (the update would make it inf - inf = NaN), unless the part brings a NaN or the
    other infinity (NaN)."""
    updated = mean + (part_mean - mean) * part_weight
    infinite = mean + tl.where(tl.abs(part_mean) < float("inf"), 0.0, part_mean)
    return tl.where(tl.abs(mean) < float("inf"), updated, infinite)


@autotune(_REDUCE_CONFIGS, key=_MOMENTS_KEY, bucket=_BUCKETED)
@triton.jit
def _moments_kernel(
    x_ptr, mean_ptr, m2_ptr, count_ptr,
    M, C, S, rows_per_split,
    stride_xn, stride_xc, stride_xs,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Count, mean and sum of squared deviations of rows [split * rows_per_split, +rows_per_split)
    per channel, tile by tile (two-pass within a tile, Chan's combination across tiles), written
    to [split, C] buffers. An inf, -inf or NaN makes the sum of squared deviations NaN (x - inf),
    and the mean what torch's is (_combine_means)."""
    split, c = _reduce_program(C, BLOCK_C, INDEX_64)
    c_in = c < C
    # start + rows_per_split <= splits * rows_per_split < M + splits, within _index_64's bound
    start = _block_start(split, rows_per_split, INDEX_64)
    end = tl.minimum(start + rows_per_split, M)
    count = tl.zeros((BLOCK_C,), dtype=ACC)
    mean = tl.zeros((BLOCK_C,), dtype=ACC)
    m2 = tl.zeros((BLOCK_C,), dtype=ACC)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_in = r < end
        inside = r_in[:, None] & c_in[None, :]
        x = tl.load(x_ptr + _tile_offsets(r, c, S, stride_xn, stride_xc, stride_xs),
                    mask=inside, other=0.0).to(ACC)
        tile_count = tl.sum(r_in.to(ACC), axis=0)
        tile_mean = tl.sum(x, axis=0) / tile_count
        deviation = tl.where(inside, x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + tile_count
        delta = tile_mean - mean
        mean = _combine_means(mean, tile_mean, tile_count / total)
        m2 += tile_m2 + delta * delta * (count * tile_count / total)
        count = total
    out = _block_start(split, C, INDEX_64) + c
    tl.store(mean_ptr + out, mean, mask=c_in)
    tl.store(m2_ptr + out, m2, mask=c_in)
    tl.store(count_ptr + out, count, mask=c_in)


@triton.jit
def _finalize_stats_kernel(
    mean_part_ptr, m2_part_ptr, count_part_ptr, splits, C, M,
    running_mean_ptr, running_var_ptr, weight_ptr,
    save_mean_ptr, save_invstd_ptr, scale_ptr,
    momentum, eps,
    TRAINING: tl.constexpr, HAS_RUNNING: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per channel: the batch mean / biased variance combined over the splits (training; the
    running statistics move towards mean and the unbiased variance by momentum, when given and
    the batch is not empty) or the running statistics (evaluation); saves mean and
    invstd = 1 / sqrt(var + eps) and scale = weight * invstd for the normalisation."""
    c = _block_start(tl.program_id(0), BLOCK_C, INDEX_64) + tl.arange(0, BLOCK_C)
    c_in = c < C
    if TRAINING:
        count = tl.zeros((BLOCK_C,), dtype=ACC)
        mean = tl.zeros((BLOCK_C,), dtype=ACC)
        m2 = tl.zeros((BLOCK_C,), dtype=ACC)
        for _ in range(0, splits):
            # the pointers step a [splits, C] row at a time: k * C may pass int32
            part_count = tl.load(count_part_ptr + c, mask=c_in, other=0.0)
            part_mean = tl.load(mean_part_ptr + c, mask=c_in, other=0.0)
            part_m2 = tl.load(m2_part_ptr + c, mask=c_in, other=0.0)
            count_part_ptr += C
            mean_part_ptr += C
            m2_part_ptr += C
            total = count + part_count
            weight_b = tl.where(total > 0, part_count / tl.maximum(total, 1.0), 0.0)
            delta = part_mean - mean
            mean = _combine_means(mean, part_mean, weight_b)
            m2 += part_m2 + delta * delta * count * weight_b
            count = total
        var = m2 / tl.maximum(count, 1.0)
        if HAS_RUNNING:
            if M > 0:
                running_mean = tl.load(running_mean_ptr + c, mask=c_in).to(ACC)
                running_var = tl.load(running_var_ptr + c, mask=c_in).to(ACC)
                running_mean = (1 - momentum) * running_mean + momentum * mean
                running_var = (1 - momentum) * running_var + momentum * (m2 / (count - 1))
                tl.store(running_mean_ptr + c, running_mean.to(running_mean_ptr.dtype.element_ty),
                         mask=c_in)
                tl.store(running_var_ptr + c, running_var.to(running_var_ptr.dtype.element_ty),
                         mask=c_in)
    else:
        mean = tl.load(running_mean_ptr + c, mask=c_in, other=0.0).to(ACC)
        var = tl.load(running_var_ptr + c, mask=c_in, other=1.0).to(ACC)
    invstd = 1.0 / tl.sqrt(var + eps)
    scale = invstd
    if HAS_WEIGHT:
        scale = scale * tl.load(weight_ptr + c, mask=c_in, other=1.0).to(ACC)
    tl.store(save_mean_ptr + c, mean, mask=c_in)
    tl.store(save_invstd_ptr + c, invstd, mask=c_in)
    tl.store(scale_ptr + c, scale, mask=c_in)


@autotune(_ELEMENTWISE_CONFIGS, key=_NORMALIZE_KEY, bucket=_BUCKETED, prune=_prune_elementwise)
@triton.jit
def _normalize_kernel(
    x_ptr, y_ptr, mean_ptr, scale_ptr, bias_ptr,
    M, C, S,
    stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = act((x - mean[c]) * scale[c] + bias[c]) over one [BLOCK_R, BLOCK_C] tile."""
    r, c = _elementwise_program(M, C, BLOCK_R, BLOCK_C, INDEX_64)
    c_in = c < C
    inside = (r < M)[:, None] & c_in[None, :]
    x = tl.load(x_ptr + _tile_offsets(r, c, S, stride_xn, stride_xc, stride_xs), mask=inside,
                other=0.0)
    mean = tl.load(mean_ptr + c, mask=c_in, other=0.0)
    scale = tl.load(scale_ptr + c, mask=c_in, other=0.0)
    y = (x.to(ACC) - mean[None, :]) * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + c, mask=c_in, other=0.0).to(ACC)[None, :]
    if RELU:
        y = tl.where(y < 0, 0.0, y)  # NaN stays NaN, as with torch.relu
    tl.store(y_ptr + _tile_offsets(r, c, S, stride_yn, stride_yc, stride_ys),
             y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _masked_grad(g_ptr, y_ptr, r, c, inside, S, stride_gn, stride_gc, stride_gs,
                 stride_yn, stride_yc, stride_ys, RELU: tl.constexpr, ACC: tl.constexpr):
    """The output gradient of a tile, zero where the ReLU output is <= 0 (torch's
    threshold_backward: a NaN output passes the gradient)."""
    g = tl.load(g_ptr + _tile_offsets(r, c, S, stride_gn, stride_gc, stride_gs), mask=inside,
                other=0.0).to(ACC)
    if RELU:
        y = tl.load(y_ptr + _tile_offsets(r, c, S, stride_yn, stride_yc, stride_ys), mask=inside,
                    other=0.0)
        g = tl.where(y <= 0, 0.0, g)
    return g


def _prune_grad_sums(configs, args):
    """Narrow tiles (BLOCK_C < 32) where Triton 3.9's compiler crashes on the wide ones (a
    segfault inside libtriton, found by make aot; Triton 3.6 compiles them): channels
    contiguous, rows not a multiple of 16 elements apart, and both x and the ReLU output read,
    as in LeNet's BatchNorm1d(120) + ReLU."""
    contiguous_channels = 1 in (args["stride_gc"], args["stride_xc"], args["stride_yc"])
    row_strides = [args[f"stride_{t}{d}"] for t in "gxy" for d in "ns"]
    unaligned_rows = any(stride % 16 for stride in row_strides if stride not in (0, 1))
    if args["HAS_X"] and args["RELU"] and contiguous_channels and unaligned_rows:
        return [c for c in configs if c.kwargs["BLOCK_C"] < 32]
    return configs


@autotune(_REDUCE_CONFIGS, key=_GRAD_SUMS_KEY, bucket=_BUCKETED, prune=_prune_grad_sums)
@triton.jit
def _grad_sums_kernel(
    g_ptr, x_ptr, y_ptr, mean_ptr, sum_g_ptr, sum_gx_ptr,
    M, C, S, rows_per_split,
    stride_gn, stride_gc, stride_gs, stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    HAS_X: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """sum g' and sum g' * (x - mean) over one split of rows, per channel, into [split, C]."""
    split, c = _reduce_program(C, BLOCK_C, INDEX_64)
    c_in = c < C
    start = _block_start(split, rows_per_split, INDEX_64)  # as in _moments_kernel
    end = tl.minimum(start + rows_per_split, M)
    mean = tl.load(mean_ptr + c, mask=c_in, other=0.0).to(ACC)
    sum_g = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    sum_gx = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        inside = (r < end)[:, None] & c_in[None, :]
        g = _masked_grad(g_ptr, y_ptr, r, c, inside, S, stride_gn, stride_gc, stride_gs,
                         stride_yn, stride_yc, stride_ys, RELU, ACC)
        sum_g += g
        if HAS_X:
            x = tl.load(x_ptr + _tile_offsets(r, c, S, stride_xn, stride_xc, stride_xs),
                        mask=inside, other=0.0)
            sum_gx += g * tl.where(inside, x.to(ACC) - mean[None, :], 0.0)
    out = _block_start(split, C, INDEX_64) + c
    tl.store(sum_g_ptr + out, tl.sum(sum_g, axis=0), mask=c_in)
    tl.store(sum_gx_ptr + out, tl.sum(sum_gx, axis=0), mask=c_in)


@triton.jit(do_not_specialize=["M"])  # M is converted to ACC below: keep it a runtime value
def _finalize_grad_kernel(
    sum_g_ptr, sum_gx_ptr, splits, C, M,
    weight_ptr, invstd_ptr, grad_weight_ptr, grad_bias_ptr, g_scale_ptr, x_scale_ptr, offset_ptr,
    TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, NEED_WEIGHT: tl.constexpr,
    NEED_BIAS: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Combines the split sums; grad_weight = sum(g' * (x - mean)) * invstd, grad_bias = sum(g');
    the input gradient's coefficients gx = g' * g_scale + (x - mean) * x_scale + offset with
    g_scale = weight * invstd and, in training, x_scale = -g_scale * invstd^2 * mean(g' (x - mean)),
    offset = -g_scale * mean(g')."""
    c = _block_start(tl.program_id(0), BLOCK_C, INDEX_64) + tl.arange(0, BLOCK_C)
    c_in = c < C
    sum_g = tl.zeros((BLOCK_C,), dtype=ACC)
    sum_gx = tl.zeros((BLOCK_C,), dtype=ACC)
    for _ in range(0, splits):
        # as in _finalize_stats_kernel: pointers step a row at a time
        sum_g += tl.load(sum_g_ptr + c, mask=c_in, other=0.0)
        sum_gx += tl.load(sum_gx_ptr + c, mask=c_in, other=0.0)
        sum_g_ptr += C
        sum_gx_ptr += C
    invstd = tl.load(invstd_ptr + c, mask=c_in, other=0.0).to(ACC)
    if NEED_WEIGHT:
        tl.store(grad_weight_ptr + c, (sum_gx * invstd).to(grad_weight_ptr.dtype.element_ty),
                 mask=c_in)
    if NEED_BIAS:
        tl.store(grad_bias_ptr + c, sum_g.to(grad_bias_ptr.dtype.element_ty), mask=c_in)
    g_scale = invstd
    if HAS_WEIGHT:
        g_scale = g_scale * tl.load(weight_ptr + c, mask=c_in, other=0.0).to(ACC)
    if TRAINING:
        n = tl.maximum(M, 1).to(ACC)
        x_scale = -g_scale * invstd * invstd * sum_gx / n
        offset = -g_scale * sum_g / n
    else:
        x_scale = tl.zeros((BLOCK_C,), dtype=ACC)
        offset = tl.zeros((BLOCK_C,), dtype=ACC)
    tl.store(g_scale_ptr + c, g_scale, mask=c_in)
    tl.store(x_scale_ptr + c, x_scale, mask=c_in)
    tl.store(offset_ptr + c, offset, mask=c_in)


@autotune(_ELEMENTWISE_CONFIGS, key=_GRAD_INPUT_KEY, bucket=_BUCKETED,
          prune=_prune_elementwise)
@triton.jit
def _grad_input_kernel(
    g_ptr, x_ptr, y_ptr, gx_ptr, mean_ptr, g_scale_ptr, x_scale_ptr, offset_ptr,
    M, C, S,
    stride_gn, stride_gc, stride_gs, stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys, stride_on, stride_oc, stride_os,
    TRAINING: tl.constexpr, RELU: tl.constexpr,
    ACC: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gx = g' * g_scale[c] + (x - mean[c]) * x_scale[c] + offset[c] (x only in training)."""
    r, c = _elementwise_program(M, C, BLOCK_R, BLOCK_C, INDEX_64)
    c_in = c < C
    inside = (r < M)[:, None] & c_in[None, :]
    g = _masked_grad(g_ptr, y_ptr, r, c, inside, S, stride_gn, stride_gc, stride_gs,
                     stride_yn, stride_yc, stride_ys, RELU, ACC)
    gx = g * tl.load(g_scale_ptr + c, mask=c_in, other=0.0)[None, :]
    if TRAINING:
        x = tl.load(x_ptr + _tile_offsets(r, c, S, stride_xn, stride_xc, stride_xs),
                    mask=inside, other=0.0)
        mean = tl.load(mean_ptr + c, mask=c_in, other=0.0)
        x_scale = tl.load(x_scale_ptr + c, mask=c_in, other=0.0)
        gx += (x.to(ACC) - mean[None, :]) * x_scale[None, :]
        gx += tl.load(offset_ptr + c, mask=c_in, other=0.0)[None, :]
    tl.store(gx_ptr + _tile_offsets(r, c, S, stride_on, stride_oc, stride_os),
             gx.to(gx_ptr.dtype.element_ty), mask=inside)


# ------------------------------------------------------------------------------------ launchers

def _view3d(tensor):
    """``tensor`` [N, C, *] as [N, C, S] without a copy when its trailing dimensions merge into
    one stride (contiguous, channels-last, strided last dimension), else a contiguous copy."""
    n, c = tensor.shape[:2]
    s = math.prod(tensor.shape[2:])
    try:
        return tensor.view(n, c, s)
    except RuntimeError:
        return tensor.contiguous().view(n, c, s)


@functools.cache
def _num_sms(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(rows, channels, channels_last, device):
    """How many row ranges the reductions split each channel into: enough programs to fill the
    GPU (assuming one channel per program for NC* planes, 64 for channels-last)."""
    sms = 1 if interpreting() or device.type != "cuda" else _num_sms(device.index or 0)
    channel_blocks = cdiv(channels, 64) if channels_last else channels
    return max(1, min(cdiv(rows, _MIN_ROWS_PER_SPLIT),
                      _PROGRAMS_PER_SM * sms // max(1, channel_blocks)))


def _index_64(rows, channels, splits=0):
    """Whether the kernels need 64-bit row and channel indices: a row index (up to rows plus a
    block, or a split's end, below rows + splits), a channel index (channels plus a block) or an
    index of the reductions' [splits, C] buffers can pass int32. Memory offsets of the tensors
    are int64 either way (_tile_offsets)."""
    largest = max(rows + splits + _MAX_BLOCK_R, channels + _MAX_BLOCK_C, splits * channels)
    return largest > 2**31 - 1


# The grids are 1-D (the kernels split the program id): CUDA caps grid axes 1 and 2 at 65535,
# fewer than the channel blocks of a wide BatchNorm1d or the row blocks of a large batch.
def _reduce_grid(channels, splits):
    """One program per (split, channel block), channel blocks fastest (_reduce_program)."""
    return lambda meta: (cdiv(channels, meta["BLOCK_C"]) * splits,)


def _elementwise_grid(rows, channels):
    """One program per (row block, channel block), row blocks fastest (_elementwise_program)."""
    return lambda meta: (cdiv(rows, meta["BLOCK_R"]) * cdiv(channels, meta["BLOCK_C"]),)


def batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                       activation, *, splits=None):
    """input [N, C, *]; weight, bias, running_mean, running_var [C] or None -> (output [N, C, *]
    in the layout of input, save_mean [C], save_invstd [C]) with float32 statistics (float64
    for a float64 input). Training updates running_mean / running_var in place when given.
    ``splits``: row ranges per channel of the reduction (default: enough to fill the GPU)."""
    output, save_mean, save_invstd = checked_outputs(
        "batch_norm", input, weight, bias, running_mean, running_var, training, momentum, eps,
        activation)
    n, channels = input.shape[:2]
    x = _view3d(input)
    rows = n * x.shape[2]
    y = output.view(x.shape)
    stat_dtype = save_mean.dtype
    acc = tl_accumulate_dtype(input.dtype)
    scale = torch.empty_like(save_mean)
    if training:
        splits = splits or _splits(rows, channels, x.stride(1) == 1, input.device)
        mean_part = torch.empty((splits, channels), device=input.device, dtype=stat_dtype)
        m2_part, count_part = torch.empty_like(mean_part), torch.empty_like(mean_part)
        rows_per_split = cdiv(rows, splits)
        _moments_kernel[_reduce_grid(channels, splits)](
            x, mean_part, m2_part, count_part,
            rows, channels, x.shape[2], rows_per_split,
            x.stride(0), x.stride(1), x.stride(2), ACC=acc,
            INDEX_64=_index_64(rows, channels, splits),
        )
    else:
        splits, mean_part, m2_part, count_part = 0, None, None, None
    index_64 = _index_64(rows, channels)
    if channels:
        _finalize_stats_kernel[(cdiv(channels, _FINALIZE_BLOCK_C),)](
            mean_part, m2_part, count_part, splits, channels, rows,
            running_mean, running_var, weight, save_mean, save_invstd, scale,
            momentum, eps,
            TRAINING=training, HAS_RUNNING=running_mean is not None, HAS_WEIGHT=weight is not None,
            ACC=acc, INDEX_64=index_64, BLOCK_C=_FINALIZE_BLOCK_C,
        )
    if rows and channels:
        _normalize_kernel[_elementwise_grid(rows, channels)](
            x, y, save_mean, scale, bias,
            rows, channels, x.shape[2],
            x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
            HAS_BIAS=bias is not None, RELU=activation == "relu", ACC=acc, INDEX_64=index_64,
        )
    return output, save_mean, save_invstd


def batch_norm_backward(grad_output, input, weight, output, save_mean, save_invstd, training,
                        activation, output_mask, *, splits=None):
    """Gradients (input, weight, bias) of batch_norm_forward; the ReLU mask comes from
    ``output``, ``input`` is needed for grad_weight and the training grad_input. Gradients not
    asked for in output_mask come back as empty tensors."""
    grad_input, grad_weight, grad_bias = checked_outputs(
        "batch_norm_backward", grad_output, input, weight, output, save_mean, save_invstd,
        training, activation, output_mask)
    need_input, need_weight, need_bias = output_mask
    relu = activation == "relu"
    n, channels = grad_output.shape[:2]
    g = _view3d(grad_output)
    rows, spatial = n * g.shape[2], g.shape[2]
    x = _view3d(input) if input is not None else None
    y = _view3d(output) if relu else None
    x_strides = x.stride() if x is not None else (0, 0, 0)
    y_strides = y.stride() if y is not None else (0, 0, 0)
    stat_dtype = accumulate_dtype(grad_output.dtype)
    acc = tl_accumulate_dtype(grad_output.dtype)

    need_sums = need_weight or need_bias or (training and need_input)
    splits = (splits or _splits(rows, channels, g.stride(1) == 1, g.device)) if need_sums else 0
    launch_sums = bool(splits and rows and channels)
    # the sums kernel writes every (split, channel); without it (no rows) the sums are zero
    allocate = torch.empty if launch_sums else torch.zeros
    sum_g = allocate((max(splits, 1), channels), device=g.device, dtype=stat_dtype)
    sum_gx = allocate((max(splits, 1), channels), device=g.device, dtype=stat_dtype)
    if launch_sums:
        _grad_sums_kernel[_reduce_grid(channels, splits)](
            g, x, y, save_mean, sum_g, sum_gx,
            rows, channels, spatial, cdiv(rows, splits),
            *g.stride(), *x_strides, *y_strides,
            HAS_X=x is not None, RELU=relu, ACC=acc, INDEX_64=_index_64(rows, channels, splits),
        )
    index_64 = _index_64(rows, channels)
    g_scale = torch.empty(channels, device=g.device, dtype=stat_dtype)
    x_scale, offset = torch.empty_like(g_scale), torch.empty_like(g_scale)
    if channels:
        _finalize_grad_kernel[(cdiv(channels, _FINALIZE_BLOCK_C),)](
            sum_g, sum_gx, splits, channels, rows,
            weight, save_invstd, grad_weight, grad_bias, g_scale, x_scale, offset,
            TRAINING=training, HAS_WEIGHT=weight is not None, NEED_WEIGHT=need_weight,
            NEED_BIAS=need_bias, ACC=acc, INDEX_64=index_64, BLOCK_C=_FINALIZE_BLOCK_C,
        )
    if need_input:
        gx = grad_input.view(g.shape)
        if rows and channels:
            _grad_input_kernel[_elementwise_grid(rows, channels)](
                g, x, y, gx, save_mean, g_scale, x_scale, offset,
                rows, channels, spatial,
                *g.stride(), *x_strides, *y_strides, *gx.stride(),
                TRAINING=training, RELU=relu, ACC=acc, INDEX_64=index_64,
            )
    return grad_input, grad_weight, grad_bias
