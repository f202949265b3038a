"""Triton kernels of fastops.cross_entropy and fastops.linear_cross_entropy.

Logits [N, C, S] (S = d1 * ... * dk, 1 for [N, C]) are read through explicit strides as
N * S rows of C classes: the class dimension may be strided (NCHW) or contiguous
(channels-last, [N, C]), with no transposed copy. A program handles BLOCK_ROWS rows (several
when C is small) and loops over C in BLOCK_C chunks (when C is large).

    forward:   lse[r] = logsumexp_c x[r, c] (online: running max and rescaled sum)
               loss[r] = -sum_c a[r, c] * (x[r, c] - lse[r]), a = the weighted, smoothed target
    backward:  grad_x[r, c] = scale[r] * (A[r] * exp(x[r, c] - lse[r]) - a[r, c]), A = sum_c a
               grad_target[r, c] = -scale[r] * w[c] * (1 - smoothing) * (x[r, c] - lse[r])

Both compute log_softmax from logits shifted by the row's max, (x - shift) - log_sum, rather
than x - lse, which loses what lies below lse's rounding at large logits: the backward, handed
only lse, recomputes shift and log_sum for the rows of |lse| >= _EXACT_LSE_BOUND.

A Triton kernel cannot raise, and checking class indices on the host would cost a
synchronisation per call (there is none anywhere): a class index out of [0, C) (and not
ignore_index) is never read through, and gives a NaN loss in the forward and a row of NaN
gradients in the backward, where the CPU kernels raise torch's IndexError (and torch on CUDA a
device-side assert).
"""

import math

import torch
import triton
import triton.language as tl

from ._utils import accumulate_dtype, autotune, cdiv, checked_outputs, tl_accumulate_dtype

# (BLOCK_ROWS, BLOCK_C, num_warps): many short rows per program down to one row in 4096-wide
# chunks. The first (the interpreter's only config) loops over C and masks rows and classes.
_SHAPES = [(4, 16, 1), (64, 16, 4), (32, 32, 4), (16, 64, 4), (8, 128, 4), (4, 256, 4),
           (2, 512, 4), (1, 1024, 4), (1, 2048, 8), (1, 4096, 8), (1, 8192, 16)]
_CONFIGS = [triton.Config({"BLOCK_ROWS": rows, "BLOCK_C": block_c}, num_warps=warps)
            for rows, block_c, warps in _SHAPES]
_KEY = ["C", "PROB_TARGET", "HAS_WEIGHT", "SMOOTHING"]


def _prune(configs, named_args):
    """Keeps the tiles that suit C: chunks no wider than the row, and several rows per program
    only when a row fits in one chunk."""
    classes = named_args["C"]
    width = max(16, triton.next_power_of_2(classes))
    fitting = [c for c in configs if c.kwargs["BLOCK_C"] <= width
               and (c.kwargs["BLOCK_ROWS"] == 1 or c.kwargs["BLOCK_C"] >= classes)]
    return fitting or configs[:1]


@triton.jit
def _row_pointers(base, rows_idx, S, stride_n, stride_s):
    """Pointers to element (n, 0, s) of rows r = n * S + s."""
    return base + (rows_idx // S) * stride_n + (rows_idx % S) * stride_s


@triton.jit
def _class_coefficients(y, w, smoothing, C, PROB_TARGET: tl.constexpr):
    """Per-class coefficients a of the loss (besides the target class of index targets): the
    weighted smoothed distribution w * (y * (1 - s) + s / C), or w * s / C for index targets.
    One return statement: Triton rejects returns of different types from the branches of a
    constexpr if (w is [1, BLOCK_C] with a class weight, [BLOCK_ROWS, BLOCK_C] without)."""
    if PROB_TARGET:
        a = w * (y * (1.0 - smoothing) + smoothing / C)
    else:
        a = w * (smoothing / C)
    return a


@triton.jit
def _loss_coefficients(t_rows, weight_ptr, cols, inside, C, stride_tc, smoothing,
                       PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """The coefficients of the logits in the loss's dot product, for the chunk of classes
    ``cols``: the weighted smoothed distribution for probability targets, the class weights for
    the smoothing term of index targets; 0 outside the rows and classes."""
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    else:
        w = tl.where(inside, 1.0, 0.0)
    if PROB_TARGET:
        y = tl.load(t_rows[:, None] + cols[None, :] * stride_tc, mask=inside, other=0.0)
        a = _class_coefficients(y.to(tl.float32), w, smoothing, C, PROB_TARGET)
    else:
        a = w
    return tl.where(inside, a, 0.0)


@triton.jit
def _online_sum_step(running_max, running_sum, x):
    """One block of columns x [rows, cols] of an online log-sum-exp: the new running max, the
    running sum of exp(x - shift) re-based on the new shift, and that shift (the max, 0 while a
    row holds only -inf, so that its sum stays 0 rather than exp(-inf - -inf) = NaN)."""
    new_max = tl.maximum(running_max, tl.max(x, axis=1))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift[:, None]),
                                                                      axis=1)
    return new_max, running_sum, shift


@triton.jit
def _shifted_logsumexp(x_rows, row_in, C, stride_xc, BLOCK_ROWS: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """(shift, log_sum) of each row, log-sum-exp = shift + log_sum: shift is the row's max
    (0 when every logit is -inf, so that the sum is 0 rather than exp(-inf - -inf) = NaN) and
    log_sum = log(sum_c exp(x_c - shift)). The backward's recomputation for large logits."""
    running_max = tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_ROWS,), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inside = row_in[:, None] & (cols < C)[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :] * stride_xc, mask=inside, other=float("-inf"))
        running_max, running_sum, _ = _online_sum_step(running_max, running_sum,
                                                       x.to(tl.float32))
    shift = tl.where(running_max == float("-inf"), 0.0, running_max)
    return shift, tl.log(tl.where(row_in, running_sum, 1.0))


@triton.jit
def _coefficient_loss_by_terms(x_rows, t_rows, weight_ptr, row_in, shift, log_sum, C, stride_xc,
                               stride_tc, smoothing, PROB_TARGET: tl.constexpr,
                               HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr):
    """-sum_c a_c * log_softmax_c term by term, as torch computes it, for rows whose
    coefficients a are not all finite (an infinite or NaN target probability or class weight):
    there the infinities and NaNs of the terms decide the result, which the shifted form
    sum_c a_c * log_sum - sum_c a_c * (x_c - shift) does not reproduce."""
    total = tl.zeros(shift.shape, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inside = row_in[:, None] & (cols < C)[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :] * stride_xc, mask=inside, other=0.0)
        log_softmax = (x.to(tl.float32) - shift[:, None]) - log_sum[:, None]
        a = _loss_coefficients(t_rows, weight_ptr, cols, inside, C, stride_tc, smoothing,
                               PROB_TARGET, HAS_WEIGHT)
        total -= tl.sum(tl.where(inside, a * log_softmax, 0.0), axis=1)
    return total


@autotune(_CONFIGS, key=_KEY, prune=_prune)
@triton.jit
def cross_entropy_forward_kernel(
    x_ptr, target_ptr, weight_ptr, loss_ptr, row_weight_ptr, lse_ptr,
    rows, C, S,
    stride_xn, stride_xc, stride_xs, stride_tn, stride_tc, stride_ts,
    ignore_index, smoothing,
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per row: lse, the loss before reduction and the row's weight in a mean (fp32). The loss
    is computed from logits shifted by the row's max (log_sum - (x_t - shift)), not as
    lse - x_t, which loses everything below lse's rounding at large logits."""
    rows_idx = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    row_in = rows_idx < rows
    x_rows = _row_pointers(x_ptr, rows_idx, S, stride_xn, stride_xs)
    t_rows = _row_pointers(target_ptr, rows_idx, S, stride_tn, stride_ts)
    running_max = tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_ROWS,), tl.float32)
    shift = tl.zeros((BLOCK_ROWS,), tl.float32)  # the running max, 0 while it is -inf
    dot = tl.zeros((BLOCK_ROWS,), tl.float32)  # sum_c a_c * (x_c - shift)
    coefficient_sum = tl.zeros((BLOCK_ROWS,), tl.float32)  # sum_c a_c
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inside = row_in[:, None] & (cols < C)[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :] * stride_xc, mask=inside, other=float("-inf"))
        x = x.to(tl.float32)
        running_max, running_sum, new_shift = _online_sum_step(running_max, running_sum, x)
        if PROB_TARGET or SMOOTHING:
            # the dot product follows the shift: re-based when the max grows
            dot = tl.where(new_shift != shift, dot - (new_shift - shift) * coefficient_sum, dot)
            a = _loss_coefficients(t_rows, weight_ptr, cols, inside, C, stride_tc, smoothing,
                                   PROB_TARGET, HAS_WEIGHT)
            coefficient_sum += tl.sum(a, axis=1)
            # padding is -inf in x (for the max): 0 here, so that 0 * -inf makes no NaN
            dot += tl.sum(tl.where(inside, a * (x - new_shift[:, None]), 0.0), axis=1)
        shift = new_shift
    # rows past the end (not stored) get log_sum 0 rather than -inf: no NaN arithmetic below
    log_sum = tl.log(tl.where(row_in, running_sum, 1.0))
    lse = tl.where(row_in, shift + log_sum, 0.0)

    if PROB_TARGET or SMOOTHING:
        # -sum_c a_c * log_softmax_c, exact when the logits are large and close
        coefficient_loss = coefficient_sum * log_sum - dot
        finite = tl.abs(coefficient_sum) < float("inf")
        if tl.max(tl.where(row_in & ~finite, 1, 0), axis=0) > 0:
            by_terms = _coefficient_loss_by_terms(x_rows, t_rows, weight_ptr, row_in, shift,
                                                  log_sum, C, stride_xc, stride_tc, smoothing,
                                                  PROB_TARGET, HAS_WEIGHT, BLOCK_C)
            coefficient_loss = tl.where(finite, coefficient_loss, by_terms)
    if PROB_TARGET:
        loss = coefficient_loss
        row_weight = tl.where(row_in, 1.0, 0.0)
    else:
        target = tl.load(t_rows, mask=row_in, other=ignore_index).to(tl.int64)
        counted = row_in & (target != ignore_index)
        in_range = (target >= 0) & (target < C)
        safe_target = tl.where(in_range, target, 0)
        x_target = tl.load(x_rows + safe_target * stride_xc, mask=counted & in_range,
                           other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            w_target = tl.load(weight_ptr + safe_target, mask=counted & in_range,
                               other=0.0).to(tl.float32)
        else:
            w_target = tl.where(counted, 1.0, 0.0)
        loss = w_target * (log_sum - (x_target - shift))
        if SMOOTHING:
            loss = (1.0 - smoothing) * loss + smoothing / C * coefficient_loss
        loss = tl.where(counted, tl.where(in_range, loss, float("nan")), 0.0)
        row_weight = w_target
    tl.store(loss_ptr + rows_idx, loss, mask=row_in)
    tl.store(row_weight_ptr + rows_idx, row_weight, mask=row_in)
    tl.store(lse_ptr + rows_idx, lse, mask=row_in)


# Backward rows whose |lse| reaches this recompute their shift and log_sum: exp(x - lse) carries
# lse's rounding, half an ulp of |lse| (2^-17 relative below 256 in float32; at tied logits of
# 1e7, lse is off by 1 and the softmax sums to 0.74).
_EXACT_LSE_BOUND = 256.0


@autotune(_CONFIGS, key=_KEY + ["NEED_INPUT", "NEED_TARGET"], prune=_prune)
@triton.jit
def cross_entropy_backward_kernel(
    x_ptr, target_ptr, weight_ptr, lse_ptr, grad_loss_ptr, total_weight_ptr, grad_x_ptr,
    grad_target_ptr,
    rows, C, S,
    stride_xn, stride_xc, stride_xs, stride_tn, stride_tc, stride_ts, stride_grad_loss,
    ignore_index, smoothing,
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr,
    MEAN: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_TARGET: tl.constexpr,
    EXACT_LSE_BOUND: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x / grad_target as contiguous rows [rows, C] (classes last). d loss / d loss[r] is
    grad_loss[r * stride_grad_loss] (stride 0: a reduced loss), divided by the total weight
    for a mean. Rows of an ignored target get zeros (NaN where the logits hold a NaN or +inf,
    or only -inf, as torch's log_softmax backward gives); rows of a class index out of range
    get NaN (the forward's loss is NaN)."""
    rows_idx = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    row_in = rows_idx < rows
    x_rows = _row_pointers(x_ptr, rows_idx, S, stride_xn, stride_xs)
    t_rows = _row_pointers(target_ptr, rows_idx, S, stride_tn, stride_ts)
    lse = tl.load(lse_ptr + rows_idx, mask=row_in, other=0.0).to(tl.float32)
    scale = tl.load(grad_loss_ptr + rows_idx * stride_grad_loss, mask=row_in, other=0.0)
    scale = scale.to(tl.float32)
    if MEAN:
        scale = scale / tl.load(total_weight_ptr).to(tl.float32)
    keep = 1.0 - smoothing
    # log_softmax = (x - shift) - log_sum: shift 0 and log_sum lse, but for large |lse|
    shift = tl.zeros((BLOCK_ROWS,), tl.float32)
    log_sum = lse
    large = row_in & (tl.abs(lse) >= EXACT_LSE_BOUND)
    if tl.max(tl.where(large, 1, 0), axis=0) > 0:
        exact_shift, exact_log_sum = _shifted_logsumexp(x_rows, large, C, stride_xc, BLOCK_ROWS,
                                                        BLOCK_C)
        shift = tl.where(large, exact_shift, shift)
        log_sum = tl.where(large, exact_log_sum, log_sum)

    if PROB_TARGET:
        counted = row_in
        target = tl.zeros((BLOCK_ROWS,), tl.int64)
        in_range = row_in
        total = tl.zeros((BLOCK_ROWS,), tl.float32)  # A = sum_c a
        if NEED_INPUT:
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + tl.arange(0, BLOCK_C)
                inside = row_in[:, None] & (cols < C)[None, :]
                total += tl.sum(_loss_coefficients(t_rows, weight_ptr, cols, inside, C, stride_tc,
                                                   smoothing, PROB_TARGET, HAS_WEIGHT), axis=1)
    else:
        target = tl.load(t_rows, mask=row_in, other=ignore_index).to(tl.int64)
        counted = row_in & (target != ignore_index)
        in_range = (target >= 0) & (target < C)
        if HAS_WEIGHT:
            w_target = tl.load(weight_ptr + tl.where(in_range, target, 0), mask=counted & in_range,
                               other=0.0)
            w_target = w_target.to(tl.float32)
        else:
            w_target = tl.where(counted, 1.0, 0.0)
        total = keep * w_target
        if SMOOTHING:
            if HAS_WEIGHT:
                weight_sum = tl.zeros((1,), tl.float32)
                for c0 in range(0, C, BLOCK_C):
                    cols = c0 + tl.arange(0, BLOCK_C)
                    weight_sum += tl.sum(tl.load(weight_ptr + cols, mask=cols < C, other=0.0)
                                         .to(tl.float32)[None, :], axis=1)
            else:
                weight_sum = C
            total += smoothing / C * weight_sum
    scale = tl.where(counted, scale, 0.0)
    # what rows without a gradient of their own get: 0 for an ignored target (NaN where lse is
    # not finite), NaN for a class index out of range
    fill = tl.where(counted, float("nan"), tl.where(tl.abs(lse) < float("inf"), 0.0, float("nan")))
    computed = counted & in_range

    out_rows = rows_idx * C
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inside = row_in[:, None] & (cols < C)[None, :]
        x = tl.load(x_rows[:, None] + cols[None, :] * stride_xc, mask=inside,
                    other=0.0).to(tl.float32)
        log_softmax = (x - shift[:, None]) - log_sum[:, None]
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        else:
            w = tl.where(inside, 1.0, 0.0)
        out = out_rows[:, None] + cols[None, :]
        if NEED_INPUT:
            if PROB_TARGET:
                y = tl.load(t_rows[:, None] + cols[None, :] * stride_tc, mask=inside, other=0.0)
                a = _class_coefficients(y.to(tl.float32), w, smoothing, C, PROB_TARGET)
            else:
                a = _class_coefficients(0.0, w, smoothing, C, PROB_TARGET)
                a += tl.where(cols[None, :] == target[:, None], keep * w_target[:, None], 0.0)
            grad = scale[:, None] * (total[:, None] * tl.exp(log_softmax) - a)
            grad = tl.where(computed[:, None], grad, fill[:, None])
            tl.store(grad_x_ptr + out, grad.to(grad_x_ptr.dtype.element_ty), mask=inside)
        if NEED_TARGET:
            grad_y = -scale[:, None] * w * keep * log_softmax
            tl.store(grad_target_ptr + out, grad_y.to(grad_target_ptr.dtype.element_ty),
                     mask=inside)


_REDUCE_BLOCK = 1024


@triton.jit
def reduce_loss_kernel(
    loss_ptr, row_weight_ptr, out_ptr, total_weight_ptr,
    rows,
    REDUCTION: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: total_weight[0] = sum of row_weight[:rows]; out = the per-row losses in
    out's dtype (REDUCTION 0, "none"), their sum (2) or their sum / total_weight (1, "mean").
    Sums in a fixed order (deterministic, unlike atomics), in ACC."""
    loss_sum = tl.zeros((BLOCK,), ACC)
    weight_sum = tl.zeros((BLOCK,), ACC)
    for r0 in range(0, rows, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        inside = r < rows
        loss = tl.load(loss_ptr + r, mask=inside, other=0.0)
        weight_sum += tl.load(row_weight_ptr + r, mask=inside, other=0.0).to(ACC)
        if REDUCTION == 0:
            tl.store(out_ptr + r, loss.to(out_ptr.dtype.element_ty), mask=inside)
        else:
            loss_sum += loss.to(ACC)
    total_weight = tl.sum(weight_sum, axis=0)
    tl.store(total_weight_ptr, total_weight.to(total_weight_ptr.dtype.element_ty))
    if REDUCTION == 1:
        tl.store(out_ptr, (tl.sum(loss_sum, axis=0) / total_weight).to(out_ptr.dtype.element_ty))
    elif REDUCTION == 2:
        tl.store(out_ptr, tl.sum(loss_sum, axis=0).to(out_ptr.dtype.element_ty))


def _as_rows(t):
    """[N, C, d...] -> a [N, C, S] view when the spatial dims collapse (else a copy), and its
    strides (n, c, s)."""
    t3 = t.reshape(t.shape[0], t.shape[1], t.shape[2:].numel())  # (-1 is ambiguous when empty)
    return t3, (t3.stride(0), t3.stride(1), t3.stride(2))


def _index_rows(target):
    """A class-index target [N, d...] as [N, S] and its strides (n, unused, s)."""
    t2 = target.reshape(target.shape[0], target.shape[1:].numel())
    return t2, (t2.stride(0), 0, t2.stride(1))


def _rows_view(input, target, weight, label_smoothing):
    """What the forward and backward launchers share: logits and target as rows (no copy),
    the row and class counts, the effective smoothing and the class weight."""
    x, x_strides = _as_rows(input)
    prob_target = target.is_floating_point()
    t, t_strides = _as_rows(target) if prob_target else _index_rows(target)
    rows, classes = x.shape[0] * x.shape[2], x.shape[1]
    smoothing = max(float(label_smoothing), 0.0)
    weight = weight.contiguous() if weight is not None else None
    return x, x_strides, t, t_strides, prob_target, rows, classes, smoothing, weight


def _per_row_buffers(rows, device):
    """(loss, row_weight, lse): the float32 per-row results of the forward kernel."""
    return tuple(torch.empty(rows, device=device, dtype=torch.float32) for _ in range(3))


def _loss_rows(input, target, weight, ignore_index, label_smoothing, loss, row_weight, lse):
    """Writes the per-row loss, row_weight and lse (contiguous float32 [N * d...]) of logits
    [N, C, d...]."""
    (x, x_strides, t, t_strides, prob_target, rows, classes, smoothing,
     weight) = _rows_view(input, target, weight, label_smoothing)
    if rows > 0:
        cross_entropy_forward_kernel[lambda meta: (cdiv(rows, meta["BLOCK_ROWS"]),)](
            x, t, weight, loss, row_weight, lse,
            rows, classes, x.shape[2], *x_strides, *t_strides, ignore_index, smoothing,
            PROB_TARGET=prob_target, HAS_WEIGHT=weight is not None, SMOOTHING=smoothing > 0,
        )
    if prob_target and classes == 0:  # torch's mean over no logits is NaN
        row_weight.zero_()


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _reduce(loss, row_weight, reduction, rows_shape, dtype):
    """(loss, total_weight) from per-row values, in one launch on the device (no
    synchronisation)."""
    acc = accumulate_dtype(dtype)
    total_weight = torch.empty((), device=loss.device, dtype=acc)
    out = torch.empty(rows_shape if reduction == "none" else (), device=loss.device, dtype=dtype)
    reduce_loss_kernel[(1,)](loss, row_weight, out, total_weight, loss.numel(),
                             REDUCTION=_REDUCTIONS[reduction],
                             ACC=tl_accumulate_dtype(dtype),
                             BLOCK=_REDUCE_BLOCK)
    return out, total_weight


def _loss_grads(input, target, weight, lse, grad_loss, total_weight, reduction, ignore_index,
                label_smoothing, need_input, need_target):
    """Gradients of input and of a probability target as contiguous rows [N * S, C], from
    grad_loss (one value per row, or one for a reduced loss). (Never written over the input:
    autotuning runs the kernel several times on the same arguments.)"""
    (x, x_strides, t, t_strides, prob_target, rows, classes, smoothing,
     weight) = _rows_view(input, target, weight, label_smoothing)
    grad_loss = grad_loss.reshape(-1)
    grad_input = (torch.empty((rows, classes), device=x.device, dtype=x.dtype) if need_input
                  else None)
    grad_target = (torch.empty((rows, classes), device=x.device, dtype=x.dtype) if need_target
                   else None)
    if rows > 0 and classes > 0:
        cross_entropy_backward_kernel[lambda meta: (cdiv(rows, meta["BLOCK_ROWS"]),)](
            x, t, weight, lse.reshape(-1), grad_loss, total_weight, grad_input, grad_target,
            rows, classes, x.shape[2], *x_strides, *t_strides,
            grad_loss.stride(0) if grad_loss.numel() > 1 else 0, ignore_index, smoothing,
            PROB_TARGET=prob_target, HAS_WEIGHT=weight is not None, SMOOTHING=smoothing > 0,
            MEAN=reduction == "mean", NEED_INPUT=need_input, NEED_TARGET=need_target,
            EXACT_LSE_BOUND=_EXACT_LSE_BOUND,
        )
    return grad_input, grad_target


def _classes_last_view(rows_grad, input):
    """Contiguous rows [N * d..., C] as a view of input's shape [N, C, d...]."""
    shape = (input.shape[0], *input.shape[2:], input.shape[1])
    return rows_grad.view(shape).movedim(-1, 1)


def cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing):
    """input [N, C, d...]; target class indices [N, d...] or probabilities (input's shape);
    weight [C] or None -> (loss [N, d...] or [], lse [N, d...] fp32, total_weight [])."""
    checked_outputs("cross_entropy", input, target, weight, reduction, ignore_index,
                    label_smoothing)
    rows_shape = (input.shape[0], *input.shape[2:])
    loss, row_weight, lse = _per_row_buffers(math.prod(rows_shape), input.device)
    _loss_rows(input, target, weight, ignore_index, label_smoothing, loss, row_weight, lse)
    loss, total_weight = _reduce(loss, row_weight, reduction, rows_shape, input.dtype)
    return loss, lse.to(accumulate_dtype(input.dtype)).view(rows_shape), total_weight


def cross_entropy_backward(grad_loss, input, target, weight, logsumexp, total_weight, reduction,
                           ignore_index, label_smoothing, output_mask):
    """(grad_input, grad_target) of cross_entropy_forward, each of input's shape (or empty)."""
    placeholders = checked_outputs("cross_entropy_backward", grad_loss, input, target, weight,
                                   logsumexp, total_weight, reduction, ignore_index,
                                   label_smoothing, output_mask)
    need_input, need_target = output_mask
    grad_input, grad_target = _loss_grads(input, target, weight, logsumexp, grad_loss,
                                          total_weight, reduction, ignore_index, label_smoothing,
                                          need_input, need_target)
    return (_classes_last_view(grad_input, input) if need_input else placeholders[0],
            _classes_last_view(grad_target, input) if need_target else placeholders[1])


# --------------------------------------------------------------------- linear + cross-entropy

# Logits per chunk of rows: 2**25 elements (64 MiB in bf16, 128 MiB in fp32).
_LINEAR_CHUNK_ELEMENTS = 1 << 25


def _chunks(rows, classes):
    step = max(1, min(rows, _LINEAR_CHUNK_ELEMENTS // max(1, classes)))
    return [(r0, min(step, rows - r0)) for r0 in range(0, rows, step)]


def _chunk_logits(input, linear_weight, bias, r0, m, loss_dtype):
    """The logits of rows [r0, r0 + m): the GEMM in input's dtype, converted to the loss dtype
    (as torch's autocast casts Linear's output for cross_entropy)."""
    x = input[r0:r0 + m]
    logits = torch.addmm(bias, x, linear_weight.t()) if bias is not None else x @ linear_weight.t()
    return logits.to(loss_dtype)


def linear_cross_entropy_forward(input, linear_weight, bias, target, weight, reduction,
                                 ignore_index, label_smoothing, loss_dtype=None):
    """cross_entropy_forward of input [N, H] @ linear_weight[C, H]^T + bias, chunk by chunk,
    computed in loss_dtype (None: input's dtype)."""
    checked_outputs("linear_cross_entropy", input, linear_weight, bias, target, weight, reduction,
                    ignore_index, label_smoothing, loss_dtype)
    loss_dtype = loss_dtype or input.dtype
    rows = input.shape[0]
    loss, row_weight, lse = _per_row_buffers(rows, input.device)
    for r0, m in _chunks(rows, linear_weight.shape[0]):
        logits = _chunk_logits(input, linear_weight, bias, r0, m, loss_dtype)
        _loss_rows(logits, target[r0:r0 + m], weight, ignore_index, label_smoothing,
                   loss[r0:r0 + m], row_weight[r0:r0 + m], lse[r0:r0 + m])
    loss, total_weight = _reduce(loss, row_weight, reduction, (rows,), loss_dtype)
    return loss, lse.to(accumulate_dtype(loss_dtype)), total_weight


def _accumulate(total, part, dtype):
    """total + part in dtype; total None (the first chunk) is part itself."""
    return part.to(dtype) if total is None else total.add_(part)


class _LinearGrads:
    """The gradients of input, linear_weight and bias from the gradient of the logits, chunk by
    chunk of rows: input's rows written in place, the parameters' summed over the chunks (in
    fp32, float64 for float64, when there are several; one chunk writes them directly)."""

    def __init__(self, input, linear_weight, need, chunks):
        self.need = need
        self.input = (torch.empty_like(input, memory_format=torch.contiguous_format)
                      if need[0] else None)
        self.acc = input.dtype if len(chunks) == 1 else accumulate_dtype(input.dtype)
        self.linear_weight = self.bias = None

    def add(self, grad_logits, input, linear_weight, r0):
        """Rows [r0, r0 + m) of grad_logits [m, C] (input's dtype)."""
        rows = slice(r0, r0 + grad_logits.shape[0])
        if self.need[0]:
            torch.mm(grad_logits, linear_weight, out=self.input[rows])
        if self.need[1]:
            self.linear_weight = _accumulate(self.linear_weight, grad_logits.t() @ input[rows],
                                             self.acc)
        if self.need[2]:
            self.bias = _accumulate(self.bias, grad_logits.sum(0, dtype=self.acc), self.acc)

    def finish(self, input, linear_weight, placeholders):
        """(grad_input, grad_linear_weight, grad_bias): placeholders where not needed, zeros for
        the parameters without rows."""
        if input.shape[0] == 0:
            self.linear_weight = torch.zeros_like(linear_weight)
            self.bias = input.new_zeros(linear_weight.shape[0])
        return (self.input if self.need[0] else placeholders[0],
                self.linear_weight.to(input.dtype) if self.need[1] else placeholders[1],
                self.bias.to(input.dtype) if self.need[2] else placeholders[2])


def linear_cross_entropy_backward(grad_loss, input, linear_weight, bias, target, weight, logsumexp,
                                  total_weight, reduction, ignore_index, label_smoothing,
                                  output_mask, loss_dtype=None):
    """Gradients (input, linear_weight, bias, probability target): the logits of each chunk
    are recomputed (the price of keeping only the lse for backward), their gradient computed
    (in the loss dtype, then in input's for the GEMMs) and fed to the GEMMs."""
    placeholders = checked_outputs("linear_cross_entropy_backward", grad_loss, input,
                                   linear_weight, bias, target, weight, logsumexp, total_weight,
                                   reduction, ignore_index, label_smoothing, output_mask,
                                   loss_dtype)
    loss_dtype = loss_dtype or input.dtype
    need_input, need_linear_weight, need_bias, need_target = output_mask
    rows, classes = input.shape[0], linear_weight.shape[0]
    per_row = grad_loss.numel() > 1 or reduction == "none"
    chunks = _chunks(rows, classes)
    grads = _LinearGrads(input, linear_weight, output_mask[:3], chunks)
    grad_target = (torch.empty((rows, classes), device=input.device, dtype=loss_dtype)
                   if need_target else None)
    need_logits = need_input or need_linear_weight or need_bias
    for r0, m in chunks:
        logits = _chunk_logits(input, linear_weight, bias, r0, m, loss_dtype)
        grad_logits, chunk_grad_target = _loss_grads(
            logits, target[r0:r0 + m], weight, logsumexp[r0:r0 + m],
            grad_loss[r0:r0 + m] if per_row else grad_loss, total_weight, reduction,
            ignore_index, label_smoothing, need_logits, need_target)
        if need_target:
            grad_target[r0:r0 + m] = chunk_grad_target
        if need_logits:
            grads.add(grad_logits.to(input.dtype), input, linear_weight, r0)
    return (*grads.finish(input, linear_weight, placeholders),
            grad_target if need_target else placeholders[3])


def _mean_denominator(target, weight, ignore_index, classes, dtype):
    """total_weight of a mean before any logit is computed (as the forward kernel's row weights
    sum it): the class weights of the kept class indices (an out-of-range one adds nothing: its
    loss is NaN), or one per probability row; in dtype's accumulation dtype."""
    acc = accumulate_dtype(dtype)
    if target.is_floating_point() or classes == 0:
        return torch.tensor(target.shape[0] if classes > 0 else 0, device=target.device,
                            dtype=acc)
    kept = (target != ignore_index) & (target >= 0) & (target < classes)
    if weight is None:
        return kept.sum(dtype=acc)
    return torch.where(kept, weight.to(acc)[target.long().clamp(0, classes - 1)], 0).sum()


def linear_cross_entropy_with_grad(input, linear_weight, bias, target, weight, reduction,
                                   ignore_index, label_smoothing, output_mask, loss_dtype=None):
    """linear_cross_entropy_forward's (loss, lse, total_weight) and the gradients of input,
    linear_weight and bias for grad_loss = 1 (reduction 'mean' or 'sum'): each chunk's logits
    are computed once, their loss taken and their gradient fed to the GEMMs at once."""
    placeholders = checked_outputs("linear_cross_entropy_with_grad", input, linear_weight, bias,
                                   target, weight, reduction, ignore_index, label_smoothing,
                                   output_mask, loss_dtype)[3:]
    loss_dtype = loss_dtype or input.dtype
    rows, classes = input.shape[0], linear_weight.shape[0]
    loss, row_weight, lse = _per_row_buffers(rows, input.device)
    chunks = _chunks(rows, classes)
    grads = _LinearGrads(input, linear_weight, output_mask, chunks)
    need_logits = any(output_mask)
    unit = torch.ones((), device=input.device, dtype=accumulate_dtype(loss_dtype))
    denominator = (_mean_denominator(target, weight, ignore_index, classes, loss_dtype)
                   if reduction == "mean" else unit)
    for r0, m in chunks:
        logits = _chunk_logits(input, linear_weight, bias, r0, m, loss_dtype)
        _loss_rows(logits, target[r0:r0 + m], weight, ignore_index, label_smoothing,
                   loss[r0:r0 + m], row_weight[r0:r0 + m], lse[r0:r0 + m])
        if need_logits:
            grad_logits, _ = _loss_grads(logits, target[r0:r0 + m], weight, lse[r0:r0 + m], unit,
                                         denominator, reduction, ignore_index, label_smoothing,
                                         True, False)
            grads.add(grad_logits.to(input.dtype), input, linear_weight, r0)
    loss, total_weight = _reduce(loss, row_weight, reduction, (rows,), loss_dtype)
    return (loss, lse.to(accumulate_dtype(loss_dtype)), total_weight,
            *grads.finish(input, linear_weight, placeholders))
