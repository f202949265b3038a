"""The torch.nn.functional mirror: same signatures, defaults and semantics as the torch
functions, validation with clear messages, then one fastops op call."""

import warnings

import math

import torch

from ._checks import (SUPPORTED_DTYPES, check_activation, check_float_dtype, check_like,
                      check_tensor, fail)

_ops = torch.ops.fastops


# --------------------------------------------------------------------------------------- linear

def linear(input, weight, bias=None, *, activation=None, dropout=0.0, training=True):
    """``torch.nn.functional.linear`` (+ optional fused activation and dropout).

    input: [*, in_features]; weight: [out_features, in_features] (or [in_features], giving
    [*] like torch); bias: [out_features] or broadcastable to it; returns [*, out_features].
    activation: None or "relu" (applied in the GEMM epilogue).
    dropout: probability p of ``dropout(activation(linear(...)), p, training)`` in the same
    epilogue, with the mask :func:`dropout` draws for the output from the same seed; backward
    regenerates it (no mask is stored).
    """
    fn = "linear"
    activation = check_activation(activation, fn)
    _check_p(dropout, fn)
    fused_dropout = training and dropout > 0
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    check_like(weight, "weight", input, "input", fn)
    if input.dim() < 1:
        fail(fn, "expected input to have at least 1 dimension, got a 0-D tensor")
    if weight.dim() not in (1, 2):
        fail(fn, f"expected weight to be 1-D or 2-D, got {weight.dim()}-D")
    vector_weight = weight.dim() == 1
    weight_2d = weight.unsqueeze(0) if vector_weight else weight
    if input.shape[-1] != weight_2d.shape[1]:
        fail(fn,
             f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
             f"weight expects in_features = {weight_2d.shape[1]} (input {tuple(input.shape)}, "
             f"weight {tuple(weight.shape)})")
    if bias is None:
        output = _ops.linear(input, weight_2d, None, activation,
                             *_linear_dropout(fused_dropout, dropout))
    else:
        check_tensor(bias, "bias", fn)
        check_like(bias, "bias", input, "input", fn)
        if vector_weight:
            fail(fn, "a bias needs a 2-D weight (torch: mat2 must be a matrix)")
        out_features = weight_2d.shape[0]
        if bias.dim() <= 1 and bias.numel() in (1, out_features):
            if bias.shape != (out_features,):  # [] or [1]: broadcast along the features
                bias = bias.reshape(-1).expand(out_features)
            output = _ops.linear(input, weight_2d, bias, activation,
                                 *_linear_dropout(fused_dropout, dropout))
        else:
            # torch also accepts any bias that broadcasts to the output (e.g. one per row):
            # rare, so it is added outside the fused epilogue.
            out_shape = (*input.shape[:-1], out_features)
            try:
                broadcasts = torch.broadcast_shapes(bias.shape, out_shape) == out_shape
            except RuntimeError:
                broadcasts = False
            if not broadcasts:
                fail(fn,
                     f"expected bias of shape [{out_features}] or broadcastable to the output "
                     f"{list(out_shape)}, got {list(bias.shape)}")
            output = _ops.linear(input, weight_2d, None, "none") + bias
            if activation == "relu":
                output = torch.relu(output)
            output = _dropout(output, dropout, training, False, fn, lambda: 1)
    return output.squeeze(-1) if vector_weight else output


def _linear_dropout(fused, p):
    """The (dropout_seed, dropout_p) arguments of the linear op: a fresh seed when fused."""
    return (_dropout_seed(), float(p)) if fused else (None, 0.0)


def linear_relu(input, weight, bias=None, *, dropout=0.0, training=True):
    """``dropout(relu(linear(input, weight, bias)), dropout, training)`` in one op; shapes as
    :func:`linear`."""
    return linear(input, weight, bias, activation="relu", dropout=dropout, training=training)


# -------------------------------------------------------------------------------------- dropout

def _dropout_seed():
    """The seed of one dropout call: drawn from torch's default CPU generator, so
    torch.manual_seed reproduces every mask; a 0-d int64 CPU tensor, so the kernels read it
    without a device sync and torch.compile traces it as a random op (not a constant)."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def _check_p(p, fn):
    # torch: ValueError from its Python check; NaN slips through it and ATen raises RuntimeError.
    if p < 0.0 or p > 1.0:
        fail(fn, f"dropout probability has to be between 0 and 1, but got {p}", ValueError)
    if math.isnan(p):
        fail(fn, f"dropout probability has to be between 0 and 1, but got {p}")


def _dropout(input, p, training, inplace, fn, channel_size):
    """input * noise (a fresh seed), where a unit of ``channel_size()`` consecutive elements is
    kept or dropped as a whole; identity (``input`` itself, as torch) when not training, p = 0
    or input is empty."""
    check_tensor(input, "input", fn)
    _check_p(p, fn)
    if not training or p == 0 or input.numel() == 0:
        return input
    check_float_dtype(input, "input", fn)
    # p = 1 zeroes everything, units or not (torch checks the feature shape only for p < 1).
    size = 1 if p == 1 else channel_size()
    if inplace:
        _ops.dropout_(input, _dropout_seed(), float(p), size)
        return input
    output = _ops.dropout(input, _dropout_seed(), float(p), size)
    # torch's output keeps a channels-last input's layout; the kernels write row-major.
    for memory_format in (torch.channels_last, torch.channels_last_3d):
        if not input.is_contiguous() and input.is_contiguous(memory_format=memory_format):
            return output.contiguous(memory_format=memory_format)
    return output


def dropout(input, p=0.5, training=True, inplace=False):
    """``torch.nn.functional.dropout``: input [*] -> [*], each element zeroed with probability
    p and the others scaled by 1 / (1 - p); no mask is stored (backward regenerates it)."""
    return _dropout(input, p, training, inplace, "dropout", lambda: 1)


def _feature_channel_size(input, fn, batched):
    """Elements per channel of torch's feature dropout: input [N, C, *] (or [C, *] when not
    ``batched``) keeps or drops each [*] block as a whole."""
    dims = input.shape[2:] if batched else input.shape[1:]
    if input.dim() < (2 if batched else 1):
        fail(fn, "Feature dropout requires at least 2 dimensions in the input")
    size = 1
    for d in dims:
        size *= d
    return size


def dropout1d(input, p=0.5, training=True, inplace=False):
    """``torch.nn.functional.dropout1d``: input [N, C, L] or [C, L], whole channels zeroed."""
    fn = "dropout1d"
    check_tensor(input, "input", fn)
    _check_p(p, fn)
    if input.dim() not in (2, 3):
        fail(fn, f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. "
                 "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
                 "spatial dimension, a channel dimension, and an optional batch dimension (i.e. 2D "
                 "or 3D inputs).")
    return _dropout(input, p, training, inplace, fn,
                    lambda: _feature_channel_size(input, fn, batched=input.dim() == 3))


def _warn_deprecated_dim(fn, dim, spatial, expected):
    # torch's warnings, word for word, for inputs of an unexpected rank.
    warnings.warn(
        f"{fn}: Received a {dim}-D input to {fn}, which is deprecated and will result in an "
        f"error in a future release. To retain the behavior and silence this warning, please use "
        f"dropout instead. Note that {fn} exists to provide channel-wise dropout on inputs with "
        f"{spatial} spatial dimensions, a channel dimension, and an optional batch dimension "
        f"(i.e. {expected} inputs).", stacklevel=3)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """``torch.nn.functional.dropout2d``: input [N, C, H, W], whole channels zeroed; like torch,
    a 3-D input is read as [N, C, L] (with torch's warning)."""
    fn = "dropout2d"
    check_tensor(input, "input", fn)
    _check_p(p, fn)
    if input.dim() not in (3, 4):
        _warn_deprecated_dim(fn, input.dim(), 2, "3D or 4D")
    if input.dim() == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
            "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel "
            "dim. This behavior will change in a future release to interpret the input as one "
            "without a batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise "
            "dropout behavior, please switch to using dropout1d instead.", stacklevel=2)
    return _dropout(input, p, training, inplace, fn,
                    lambda: _feature_channel_size(input, fn, batched=True))


def dropout3d(input, p=0.5, training=True, inplace=False):
    """``torch.nn.functional.dropout3d``: input [N, C, D, H, W] or [C, D, H, W], whole channels
    zeroed."""
    fn = "dropout3d"
    check_tensor(input, "input", fn)
    _check_p(p, fn)
    if input.dim() not in (4, 5):
        _warn_deprecated_dim(fn, input.dim(), 3, "4D or 5D")
    return _dropout(input, p, training, inplace, fn,
                    lambda: _feature_channel_size(input, fn, batched=input.dim() == 5))


# ----------------------------------------------------------------------------------- max_pool2d

_MAX_POOL2D_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8,
                      torch.int8, torch.int16, torch.int32, torch.int64)


def _int_pair(value, name, fn, allow_empty=False):
    """An int or a sequence of 1 or 2 ints (as torch's int[2]) -> (int, int); torch's TypeError
    for a non-int and its RuntimeError for a wrong length. ``allow_empty``: () -> None."""
    values = value if isinstance(value, (tuple, list, torch.Size)) else (value,)
    for v in values:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            fail(fn, f"argument '{name}' must be an int or a tuple of ints, not "
                     f"{type(v).__name__}", TypeError)
    if allow_empty and len(values) == 0:
        return None
    lengths = "omitted, a single int, or a tuple of two ints" if allow_empty else \
        "a single int, or a tuple of two ints"
    if len(values) not in (1, 2):
        fail(fn, f"{name} must either be {lengths}, got {list(values)}")
    return (values[0].__index__(), values[-1].__index__())


def _max_pool2d_output_size(input_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """(H_out, W_out) of max pooling an input [*, C, H, W], validated with torch's rules and
    messages: positive kernel, stride and dilation; 0 <= padding <= kernel // 2; with
    ceil_mode, the last window must start inside the input or its left padding."""
    fn = "max_pool2d"
    for k, s, p, d in zip(kernel_size, stride, padding, dilation):
        if s == 0:
            fail(fn, "stride should not be zero")
        if p < 0:
            fail(fn, f"pad must be non-negative, but got pad: {p}")
        effective = (k - 1) * d + 1  # halved with C's truncation, as torch does
        half = effective // 2 if effective >= 0 else -(-effective // 2)
        if p > half:
            fail(fn, "pad should be at most half of effective kernel "
                 f"size, but got pad={p}, kernel_size={k} and dilation={d}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if kh <= 0 or kw <= 0:
        fail(fn, f"kernel size should be greater than zero, but got kH: {kh} kW: {kw}")
    if sh <= 0 or sw <= 0:
        fail(fn, f"stride should be greater than zero, but got dH: {sh} dW: {sw}")
    if dh <= 0 or dw <= 0:
        fail(fn, f"dilation should be greater than zero, but got dilationH: {dh} dilationW: {dw}")
    channels, height, width = input_shape[-3:]
    if 0 in input_shape[-3:]:
        fail(fn, "Expected 3D or 4D (batch mode) tensor "
             f"with optional 0 dim batch size for input, but got: {list(input_shape)}")
    if kw // 2 < pw or kh // 2 < ph:
        fail(fn, "pad should be smaller than or equal to half of "
             f"kernel size, but got padW = {pw}, padH = {ph}, kW = {kw}, kH = {kh}")

    def pooled(size, k, s, p, d):
        out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        return out - 1 if ceil_mode and (out - 1) * s >= size + p else out

    out_h, out_w = pooled(height, kh, sh, ph, dh), pooled(width, kw, sw, pw, dw)
    if out_h < 1 or out_w < 1:
        fail(fn, f"Given input size: ({channels}x{height}x{width}). "
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
    if not isinstance(ceil_mode, bool):
        fail(fn, f"argument 'ceil_mode' must be bool, not {type(ceil_mode).__name__}", TypeError)
    if input.dim() not in (3, 4):
        fail(fn,
             f"non-empty 3D or 4D (batch mode) tensor expected for input, got {input.dim()}-D "
             f"of shape {list(input.shape)}")
    if input.dtype not in _MAX_POOL2D_DTYPES:
        fail(fn, f'"max_pool2d" not implemented for {input.dtype}', NotImplementedError)
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
    loss = _ops.cross_entropy(input, target, weight, reduction, ignore_index,
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
    computed in chunks of rows and recomputed in the backward.

    input: [N, H] or [H]; linear_weight: [C, H], or [C, d1, ..., dK, H] for a K-dimensional
    loss (batched input only); linear_bias: None or of shape linear_weight.shape[:-1];
    target: class indices [N] (or [], or [N, d1, ..., dK]) or class probabilities of the logits'
    shape [N, C, d1, ..., dK] (or [C]); weight: [C] class weights.
    ignore_index: None means -100 for class indices; with class probabilities it must stay None
    (as in torch). reduction, label_smoothing and the result as :func:`cross_entropy`; gradients
    flow to input, linear_weight, linear_bias and a probability target.

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
    loss = _ops.linear_cross_entropy(input, linear_weight, linear_bias, target, weight,
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
    losses = [_ops.linear_cross_entropy(input, heads[:, p],
                                        None if biases is None else biases[:, p], targets[..., p],
                                        weight, per_position, ignore_index, label_smoothing)[0]
              for p in range(positions)]
    if reduction == "none":
        return torch.stack(losses, -1).reshape(input.shape[0], *out_features)
    dtype = losses[0].dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
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
    return (total / count).to(dtype)


# --------------------------------------------------------------------------------------- conv2d

def _pair(value, name, fn):
    """An int or a sequence of 1 or 2 ints, as torch accepts them -> a 2-tuple."""
    if isinstance(value, int):
        return (value, value)
    if not (isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)):
        fail(fn, f"expected {name} to be an int or a tuple of ints, got {value!r}", TypeError)
    if len(value) not in (1, 2):
        fail(fn,
             f"expected {name} to be a single integer value or a list of 2 values to match the "
             f"convolution dimensions, got {name}={list(value)}")
    return tuple(value) * (2 // len(value))


def _conv2d_padding(input, weight, padding, stride, dilation, fn):
    """Explicit symmetric padding for the op, plus the input, zero-padded by one more row/column
    at the bottom/right where 'same' needs an odd total padding (as torch does)."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding", fn)
    if padding not in ("same", "valid"):
        fail(fn,
             f"expected padding to be 'same', 'valid', an int or a tuple of ints, got {padding!r}")
    if padding == "valid":
        return input, (0, 0)
    if stride != (1, 1):
        fail(fn, f"padding='same' is not supported for strided convolutions, got stride={stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    extra_h, extra_w = (t % 2 for t in total)
    if extra_h or extra_w:
        input = torch.nn.functional.pad(input, (0, extra_w, 0, extra_h))
    return input, tuple(t // 2 for t in total)


def _check_conv2d_config(input, weight, bias, stride, padding, dilation, groups, fn):
    """torch's errors for a bad configuration (the CUDA kernels rely on these checks; the CPU
    kernel repeats them for direct op calls). input is 4-D here, padding explicit."""
    if groups <= 0:
        fail(fn, f"non-positive groups is not supported, got groups={groups}")
    if min(stride) <= 0:
        fail(fn, f"non-positive stride is not supported, got stride={list(stride)}")
    if min(padding) < 0:
        fail(fn, f"negative padding is not supported, got padding={list(padding)}")
    if min(dilation) <= 0:
        fail(fn, f"non-positive dilation is not supported, got dilation={list(dilation)}")
    out_channels, in_per_group, kernel_h, kernel_w = weight.shape
    if out_channels <= 0 or out_channels % groups != 0:
        fail(fn, "expected weight.shape[0] (out_channels) to be a positive multiple of "
                 f"groups={groups}, got weight of shape {list(weight.shape)}")
    if in_per_group * groups != input.shape[1]:
        fail(fn,
             f"expected input[{list(input.shape)}] to have groups * weight.shape[1] = "
             f"{in_per_group * groups} channels (groups={groups}, weight of shape "
             f"{list(weight.shape)}), got {input.shape[1]} channels")
    if kernel_h <= 0 or kernel_w <= 0:
        fail(fn, f"expected a kernel of at least 1x1, got weight of shape {list(weight.shape)}")
    padded = [input.shape[2 + d] + 2 * padding[d] for d in range(2)]
    extent = [dilation[d] * (weight.shape[2 + d] - 1) + 1 for d in range(2)]
    if padded[0] < extent[0] or padded[1] < extent[1]:
        fail(fn,
             f"calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size "
             f"(dilated): ({extent[0]} x {extent[1]}). "
             "Kernel size can't be greater than actual input size")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        fail(fn,
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
    if input.dim() not in (3, 4):
        fail(fn,
             "expected 3-D (unbatched) or 4-D (batched) input, got input of shape "
             f"{list(input.shape)}")
    if weight.dim() != 4:
        fail(fn,
             f"expected weight to be 4-D [out_channels, in_channels / groups, kH, kW], got shape "
             f"{list(weight.shape)}")
    if not isinstance(groups, int):
        fail(fn, f"expected groups to be an int, got {groups!r}", TypeError)
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


# ----------------------------------------------------------------------------------- batch_norm

_REDUCED = (torch.float16, torch.bfloat16)


def _batch_norm_channels(tensor, name, input, channels, fn, flat):
    """Validates one per-channel argument of batch_norm and returns it 1-D. Parameters may have
    any shape holding ``channels`` elements, as torch allows (``flat``); running statistics, which
    are updated in place, must be 1-D. dtype: the input's, or float32 for a float16/bfloat16 input
    (as torch on CPU). Conditions are tested before any message is formatted (a per-call path)."""
    if tensor is None:
        return None
    check_tensor(tensor, name, fn)
    if tensor.numel() != channels or (not flat and tensor.dim() != 1):
        fail(fn, f"expected {name} of shape [{channels}] (the channels of input), got {list(tensor.shape)}")
    if tensor.device != input.device:
        fail(fn, f"expected {name} on the device of input ({input.device}), got {tensor.device}")
    if tensor.dtype != input.dtype and not (input.dtype in _REDUCED and tensor.dtype == torch.float32):
        fail(fn, f"expected {name} to have the dtype of input ({input.dtype})"
                 f"{' or float32' if input.dtype in _REDUCED else ''}, got {tensor.dtype}")
    return tensor if tensor.dim() == 1 else tensor.reshape(-1)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-05, *, activation=None):
    """``torch.nn.functional.batch_norm`` (+ optional fused activation).

    input: [N, C, *]; running_mean, running_var: [C] or None (updated in place when training);
    weight, bias: [C] or None; returns [N, C, *] in the layout of input (channels-last stays
    channels-last). Training normalises with the batch statistics (biased variance) and moves the
    running statistics towards them by ``momentum`` (unbiased variance); evaluation normalises
    with the running statistics. activation: None or "relu" (applied in the normalisation pass).
    Errors are torch's (type and message) where torch has one.
    """
    fn = "batch_norm"
    activation = check_activation(activation, fn)
    check_tensor(input, "input", fn)
    if input.dtype not in SUPPORTED_DTYPES:
        fail(fn, f'"batch_norm" not implemented for {input.dtype}: expected input to have a '
                 "floating-point dtype (float16, bfloat16, float32 or float64)", NotImplementedError)
    if input.dim() < 2:
        fail(fn, f"expected input of shape [N, C, *] (at least 2-D), got {list(input.shape)}")
    if training:
        if input.shape[0] * math.prod(input.shape[2:]) == 1:
            fail(fn, f"Expected more than 1 value per channel when training, got input size {input.size()}",
                 ValueError)
        if not eps > 0.0:
            fail(fn, f"batch_norm eps must be positive during training, but got {eps}", ValueError)
        if (running_mean is None) != (running_var is None):
            fail(fn, "running_mean and running_var must either both be None or neither be None", ValueError)
    else:
        if not eps >= 0.0:
            fail(fn, f"batch_norm eps must be non-negative, but got {eps}", ValueError)
        if running_mean is None:
            fail(fn, "running_mean must be defined in evaluation mode")
        if running_var is None:
            fail(fn, "running_var must be defined in evaluation mode")
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        fail(fn, f"expected momentum to be a float, got {type(momentum).__name__}", TypeError)
    channels = input.shape[1]
    # torch's order: the running statistics, then the parameters.
    running_mean = _batch_norm_channels(running_mean, "running_mean", input, channels, fn, flat=False)
    running_var = _batch_norm_channels(running_var, "running_var", input, channels, fn, flat=False)
    weight = _batch_norm_channels(weight, "weight", input, channels, fn, flat=True)
    bias = _batch_norm_channels(bias, "bias", input, channels, fn, flat=True)
    dtypes = {t.dtype for t in (weight, bias, running_mean, running_var) if t is not None}
    if len(dtypes) > 1:
        fail(fn, "expected weight, bias, running_mean and running_var to share one dtype, got "
                 f"{sorted(str(d) for d in dtypes)}")
    output, _, _ = _ops.batch_norm(input, weight, bias, running_mean, running_var, bool(training),
                                   float(momentum), float(eps), activation)
    return output


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-05):
    """``relu(batch_norm(...))`` in one pass; arguments and shapes as :func:`batch_norm`."""
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      activation="relu")
