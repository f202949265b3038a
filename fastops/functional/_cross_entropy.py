"""fastops.functional.cross_entropy / linear_cross_entropy: torch's cross-entropy losses on
the fused fastops ops (the logits of linear_cross_entropy are never materialised); and the
ops' CUDA (Triton) kernels."""

import math

import torch

from .._checks import check_float_dtype, check_like, check_tensor, fail
from .._cuda import register_cuda_kernels
from .._dispatch import operator

cross_entropy_op = operator("cross_entropy")
linear_cross_entropy_op = operator("linear_cross_entropy")


_REDUCTIONS = ("none", "mean", "sum")


def _reduction(size_average, reduce, reduction):
    """torch's reduction: the deprecated size_average / reduce override it (with torch's
    warning)."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def _autocasting(tensor):
    """Under torch.autocast the op's autocast kernel casts the floating-point arguments to one
    dtype, so dtype mismatches are only errors outside it."""
    return torch.is_autocast_enabled(tensor.device.type)


def _check_loss_arguments(fn, input, logits_shape, target, weight, ignore_index, label_smoothing):
    """torch.nn.functional.cross_entropy's checks (same exception types and messages) of the
    target and the class weight against logits of shape [N, C, d...] (or [C]) computed from
    ``input``. Returns True for a class-probability target, False for class indices."""
    check_tensor(target, "target", fn)
    if not (label_smoothing <= 1.0):
        fail(fn, f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if target.device != input.device:
        fail(fn, f"expected target on the device of input ({input.device}), got {target.device}")
    classes = logits_shape[1] if len(logits_shape) > 1 else logits_shape[0]
    if weight is not None:
        check_tensor(weight, "weight", fn)
        if weight.dim() != 1 or weight.numel() != classes:
            fail(fn,
                 f"weight tensor should be defined either for all {classes} classes or no classes "
                 f"but got weight tensor of shape: {list(weight.shape)}")
        if weight.device != input.device:
            fail(fn,
                 f"expected weight on the device of input ({input.device}), got {weight.device}")
    if tuple(target.shape) == tuple(logits_shape):
        if not target.is_floating_point():
            fail(fn, "Expected floating point type for target with class "
                 f"probabilities, got {str(target.dtype).replace('torch.', '').capitalize()}")
        if ignore_index != -100:
            fail(fn, "ignore_index is not supported for floating point target")
        return True
    if target.dtype not in (torch.long, torch.uint8):
        fail(fn, f"expected target dtype to be Long or Byte, but got {target.dtype}")
    if weight is not None and weight.dtype != input.dtype and not _autocasting(input):
        fail(fn, f"expected weight to have the dtype of input ({input.dtype}), got {weight.dtype}")
    if len(logits_shape) == 1:
        if target.dim() > 1:
            fail(fn, "0D or 1D target tensor expected, multi-target not supported")
        if target.numel() != 1:
            fail(fn,
                 f"For 1D input, 1D target must have size 1, but got target size: {target.numel()}",
                 ValueError)
    elif len(logits_shape) == 2:
        if target.dim() > 1:
            fail(fn, "0D or 1D target tensor expected, multi-target not supported")
        batch = target.shape[0] if target.dim() else 0
        if batch != logits_shape[0]:
            fail(fn, f"Expected input batch_size ({logits_shape[0]}) to match target batch_size "
                     f"({batch}).", ValueError)
    else:
        expected = [logits_shape[0], *logits_shape[2:]]
        if list(target.shape) != expected:
            fail(fn, f"Expected target size {expected}, got {list(target.shape)}")
    return False


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy``: softmax cross-entropy in one fused op.

    input: logits [C], [N, C] or [N, C, d1, ..., dk]; target: class indices [], [N] or
    [N, d1, ..., dk] (int64 or uint8; ``ignore_index`` skipped) or class probabilities of the
    input's shape; weight: [C] class weights. Returns [] for "mean" / "sum", the target's batch
    shape for "none". Only the per-row log-sum-exp is kept for backward.
    """
    fn = "cross_entropy"
    if size_average is None and reduce is None and (
            ignore_index == -100 or isinstance(target, torch.Tensor)
            and not target.is_floating_point()):
        # The common call goes straight to the op, whose rules check it (a tiny loss's per-call
        # cost is all Python here); torch's wording of an error, the deprecated arguments, a
        # [C] input and dtype promotion are the general path below, taken only when the op
        # rejects the call (before any kernel runs). Not with ignore_index on a probability
        # target, which torch rejects and the op would ignore.
        try:
            return cross_entropy_op(input, target, weight, reduction, ignore_index,
                                    float(label_smoothing))[0]
        except (RuntimeError, ValueError, TypeError, IndexError):
            pass
    reduction = _reduction(size_average, reduce, reduction)
    check_tensor(input, "input", fn)
    check_float_dtype(input, "input", fn)
    if input.dim() < 1:
        fail(fn, "expected input of shape (C), (N, C) or (N, C, d1, ...), got a 0-D tensor")
    prob_target = _check_loss_arguments(fn, input, input.shape, target, weight, ignore_index,
                                        label_smoothing)
    if prob_target:
        # torch computes -(log_softmax(input) * target * weight): one promoted dtype.
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        input, target = input.to(dtype), target.to(dtype)
        weight = weight.to(dtype) if weight is not None else None
    vector = input.dim() == 1
    if vector:  # one sample: [C] -> [1, C]
        input = input.unsqueeze(0)
        target = target.unsqueeze(0) if prob_target else target.reshape(1)
    loss = cross_entropy_op(input, target, weight, reduction, ignore_index,
                              float(label_smoothing))[0]
    return loss.squeeze(0) if vector and reduction == "none" else loss


def _check_linear_cross_entropy_options(options, fn):
    """``options`` as torch takes it: None or a ``torch.nn.LinearCrossEntropyOptions`` (whose
    fields torch validates when it is constructed). torch uses it to opt in to its chunked path;
    fastops always computes in chunks of its own size, so it is only type-checked."""
    if options is None:
        return
    options_type = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options_type is None or not isinstance(options, options_type):
        fail(fn, "expected options to be None or a torch.nn.LinearCrossEntropyOptions, got "
                 f"{type(options).__name__}", TypeError)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0, options=None):
    """``torch.nn.functional.linear_cross_entropy`` (same signature): ``cross_entropy(
    linear(input, linear_weight, linear_bias), target, weight, ...)`` without the logits,
    computed in chunks of rows (for a reduced loss the gradients come out of the same pass;
    for reduction="none" the backward recomputes the logits).

    input: [N, H] or [H]; linear_weight: [C, H], or [C, d1, ..., dK, H] for a K-dimensional
    loss (batched input only); linear_bias: None or of shape linear_weight.shape[:-1];
    target: class indices [N] (or [], or [N, d1, ..., dK]) or class probabilities of the logits'
    shape [N, C, d1, ..., dK] (or [C]); weight: [C] class weights.
    ignore_index: None means -100 for class indices; with class probabilities it must stay None
    (as in torch). reduction, label_smoothing and the result as :func:`cross_entropy`; gradients
    flow to input, linear_weight, linear_bias and a probability target.
    Under ``torch.autocast``, as torch's ``linear`` then ``cross_entropy``: the GEMMs in the
    autocast dtype, the loss computed (with the class weight and a probability target) and
    returned in float32.

    options: None or a ``torch.nn.LinearCrossEntropyOptions``. In torch it switches from the
    reference computation (full logits) to a chunked one; fastops always chunks (with its own
    chunk size, and for every reduction, label_smoothing and target type), so options is only
    type-checked and does not change the result. A K-dimensional loss is computed as one chunked
    op call per position (d1, ..., dK), each a [C, H] head.
    """
    fn = "linear_cross_entropy"
    reduction = _reduction(None, None, reduction)
    _check_linear_cross_entropy_options(options, fn)
    check_tensor(input, "input", fn)
    check_tensor(linear_weight, "linear_weight", fn)
    check_float_dtype(input, "input", fn)
    if not _autocasting(input):
        check_like(linear_weight, "linear_weight", input, "input", fn)
    if input.dim() not in (1, 2):
        fail(fn, f"expected input of shape (N, H) or (H), got {input.dim()}-D")
    if linear_weight.dim() < 2:
        fail(fn, "expected linear_weight of shape (C, H) or (C, d1, ..., dK, H), got "
                 f"{linear_weight.dim()}-D")
    classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if input.shape[-1] != linear_weight.shape[-1]:
        fail(fn,
             f"input and linear_weight shapes cannot be multiplied: input.shape[-1] is "
             f"{input.shape[-1]}, linear_weight expects in_features = {linear_weight.shape[-1]}")
    if linear_bias is not None:
        check_tensor(linear_bias, "linear_bias", fn)
        if not _autocasting(input):
            check_like(linear_bias, "linear_bias", input, "input", fn)
        if tuple(linear_bias.shape) != (classes, *out_features):
            fail(fn, f"expected linear_bias of shape {[classes, *out_features]}, got "
                     f"{list(linear_bias.shape)}")
    if out_features and input.dim() == 1:
        fail(fn, f"a K-dimensional loss (linear_weight of shape {list(linear_weight.shape)}) "
                 f"needs batched input (N, {input.shape[-1]}), got {list(input.shape)}")
    logits_shape = (*input.shape[:-1], classes, *out_features)
    check_tensor(target, "target", fn)
    if tuple(target.shape) == logits_shape and ignore_index is not None:
        fail(fn, "ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    prob_target = _check_loss_arguments(fn, input, logits_shape, target, weight, ignore_index,
                                        label_smoothing)
    if prob_target and not _autocasting(input):
        check_like(target, "target", input, "input", fn)
    if out_features:
        return _linear_cross_entropy_positions(input, linear_weight, linear_bias, target, weight,
                                               reduction, ignore_index, float(label_smoothing),
                                               prob_target)
    vector = input.dim() == 1
    if vector:
        input = input.unsqueeze(0)
        target = target.unsqueeze(0) if prob_target else target.reshape(1)
    loss = linear_cross_entropy_op(input, linear_weight, linear_bias, target, weight,
                                     reduction, ignore_index, float(label_smoothing))[0]
    return loss.squeeze(0) if vector and reduction == "none" else loss


def _linear_cross_entropy_positions(input, linear_weight, linear_bias, target, weight, reduction,
                                    ignore_index, label_smoothing, prob_target):
    """The K-dimensional loss: logits[n, c, p] = input[n] . linear_weight[c, p] + bias[c, p] for
    each position p of (d1, ..., dK), so each position is a [C, H] head over the same N rows: one
    chunked op call each ('none' or 'sum'), reduced like cross_entropy's K-dimensional mean (over
    the summed weights of the kept targets, or over N * d1 * ... * dK for probabilities)."""
    classes, hidden = linear_weight.shape[0], linear_weight.shape[-1]
    out_features = tuple(linear_weight.shape[1:-1])
    positions = math.prod(out_features)
    if positions == 0:  # no logits at all: torch's composition materialises nothing
        logits = torch.nn.functional.linear(
            input, linear_weight.reshape(-1, hidden),
            None if linear_bias is None else linear_bias.reshape(-1))
        return torch.nn.functional.cross_entropy(
            logits.reshape(input.shape[0], classes, *out_features), target, weight,
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    heads = linear_weight.reshape(classes, positions, hidden)
    biases = None if linear_bias is None else linear_bias.reshape(classes, positions)
    # [N, d...] -> [N, P] (class indices), [N, C, d...] -> [N, C, P] (probabilities)
    targets = target.reshape(*target.shape[:2 if prob_target else 1], positions)
    per_position = "none" if reduction == "none" else "sum"
    outputs = [linear_cross_entropy_op(input, heads[:, p],
                                         None if biases is None else biases[:, p],
                                         targets[..., p], weight, per_position, ignore_index,
                                         label_smoothing)
               for p in range(positions)]
    losses = [loss for loss, _, _ in outputs]
    if reduction == "none":
        return torch.stack(losses, -1).reshape(input.shape[0], *out_features)
    dtype = losses[0].dtype
    acc = outputs[0][2].dtype  # total_weight's: the op's accumulation dtype
    total = torch.stack(losses).to(acc).sum()
    if reduction == "sum":
        return total.to(dtype)
    if prob_target:
        count = input.shape[0] * positions
    else:
        kept = target != ignore_index
        if weight is None:
            count = kept.sum().to(acc)
        else:
            kept_weight = weight.to(acc)[target.long().masked_fill(~kept, 0)]
            count = torch.where(kept, kept_weight, 0).sum()
    # Without a kept target the mean is NaN and its gradient zero (as torch's): dividing by 1
    # there keeps an infinite grad_loss from reaching the gradients the op saved.
    kept_any = torch.as_tensor(count, dtype=acc, device=total.device) > 0
    mean = total / torch.where(kept_any, count, 1)
    return torch.where(kept_any, mean, torch.nan).to(dtype)


register_cuda_kernels("cross_entropy", cross_entropy="cross_entropy_forward",
                      cross_entropy_backward="cross_entropy_backward",
                      linear_cross_entropy="linear_cross_entropy_forward",
                      linear_cross_entropy_backward="linear_cross_entropy_backward",
                      linear_cross_entropy_with_grad="linear_cross_entropy_with_grad")
