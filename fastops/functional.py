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


# -------------------------------------------------------------------------------- cross_entropy

_REDUCTIONS = ("none", "mean", "sum")


def _reduction(size_average, reduce, reduction):
    """torch's reduction: the deprecated size_average / reduce override it (with torch's warning)."""
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
    check(label_smoothing <= 1.0, fn,
          f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    check(target.device == input.device, fn,
          f"expected target on the device of input ({input.device}), got {target.device}")
    classes = logits_shape[1] if len(logits_shape) > 1 else logits_shape[0]
    if weight is not None:
        check_tensor(weight, "weight", fn)
        check(weight.dim() == 1 and weight.numel() == classes, fn,
              f"weight tensor should be defined either for all {classes} classes or no classes "
              f"but got weight tensor of shape: {list(weight.shape)}")
        check(weight.device == input.device, fn,
              f"expected weight on the device of input ({input.device}), got {weight.device}")
    if tuple(target.shape) == tuple(logits_shape):
        check(target.is_floating_point(), fn, "Expected floating point type for target with class "
              f"probabilities, got {str(target.dtype).replace('torch.', '').capitalize()}")
        check(ignore_index == -100, fn, "ignore_index is not supported for floating point target")
        return True
    check(target.dtype in (torch.long, torch.uint8), fn,
          f"expected target dtype to be Long or Byte, but got {target.dtype}")
    if weight is not None and not _autocasting(input):
        check(weight.dtype == input.dtype, fn,
              f"expected weight to have the dtype of input ({input.dtype}), got {weight.dtype}")
    if len(logits_shape) == 1:
        check(target.dim() <= 1, fn, "0D or 1D target tensor expected, multi-target not supported")
        check(target.numel() == 1, fn,
              f"For 1D input, 1D target must have size 1, but got target size: {target.numel()}",
              ValueError)
    elif len(logits_shape) == 2:
        check(target.dim() <= 1, fn, "0D or 1D target tensor expected, multi-target not supported")
        batch = target.shape[0] if target.dim() else 0
        check(batch == logits_shape[0], fn,
              f"Expected input batch_size ({logits_shape[0]}) to match target batch_size ({batch}).",
              ValueError)
    else:
        expected = [logits_shape[0], *logits_shape[2:]]
        check(list(target.shape) == expected, fn,
              f"Expected target size {expected}, got {list(target.shape)}")
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
    reduction = _reduction(size_average, reduce, reduction)
    check_tensor(input, "input", fn)
    check_float_dtype(input, "input", fn)
    check(input.dim() >= 1, fn,
          "expected input of shape (C), (N, C) or (N, C, d1, ...), got a 0-D tensor")
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
    loss = _ops.cross_entropy(input, target, weight, reduction, ignore_index,
                              float(label_smoothing))[0]
    return loss.squeeze(0) if vector and reduction == "none" else loss


def linear_cross_entropy(input, weight, bias, target, class_weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0):
    """``cross_entropy(linear(input, weight, bias), target, class_weight, ...)`` without the
    logits: computed in chunks of rows, recomputed in the backward.

    input: [N, H] or [H]; weight: [C, H]; bias: [C] or None; target: class indices [N] (or [])
    or class probabilities [N, C] (or [C]); class_weight: [C]. Options and result as
    :func:`cross_entropy`; gradients flow to input, weight, bias and a probability target.
    """
    fn = "linear_cross_entropy"
    reduction = _reduction(None, None, reduction)
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    if not _autocasting(input):
        check_like(weight, "weight", input, "input", fn)
    check(input.dim() in (1, 2), fn, f"expected input of shape (N, H) or (H), got {input.dim()}-D")
    check(weight.dim() == 2, fn, f"expected weight of shape (C, H), got {weight.dim()}-D")
    check(input.shape[-1] == weight.shape[1], fn,
          f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
          f"weight expects in_features = {weight.shape[1]}")
    if bias is not None:
        check_tensor(bias, "bias", fn)
        if not _autocasting(input):
            check_like(bias, "bias", input, "input", fn)
        check(tuple(bias.shape) == (weight.shape[0],), fn,
              f"expected bias of shape [{weight.shape[0]}], got {list(bias.shape)}")
    logits_shape = (*input.shape[:-1], weight.shape[0])
    prob_target = _check_loss_arguments(fn, input, logits_shape, target, class_weight,
                                        ignore_index, label_smoothing)
    if prob_target and not _autocasting(input):
        check_like(target, "target", input, "input", fn)
    vector = input.dim() == 1
    if vector:
        input = input.unsqueeze(0)
        target = target.unsqueeze(0) if prob_target else target.reshape(1)
    loss = _ops.linear_cross_entropy(input, weight, bias, target, class_weight, reduction,
                                     ignore_index, float(label_smoothing))[0]
    return loss.squeeze(0) if vector and reduction == "none" else loss
