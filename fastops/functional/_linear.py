"""fastops.functional.linear / linear_relu: torch.nn.functional.linear with a fused ReLU and
dropout epilogue; and the op's CUDA (Triton) kernels."""

import torch

from .._checks import (
    check_activation,
    check_float_dtype,
    check_like,
    check_tensor,
    fail,
)
from .._cuda import register_cuda_kernels
from .._dispatch import operator
from ._dropout import _check_p, _dropout, _dropout_seed

linear_op = operator("linear")


def _cast_by_autocast(tensor):
    """Whether the op's autocast kernel casts ``tensor`` to the autocast dtype: a floating-point
    tensor other than float64 on a device where torch.autocast is on (at::autocast::cached_cast's
    rule)."""
    return (tensor.is_floating_point() and tensor.dtype != torch.float64
            and torch.is_autocast_enabled(tensor.device.type))


def _check_like_input(tensor, name, input, fn):
    """check_like(tensor, input), except that under torch.autocast a parameter whose dtype differs
    from the input's is fine when the op's autocast kernel casts both (the op's rules check them
    after the cast): the second of two Linear / Conv2d layers gets a bfloat16 input and float32
    parameters. Shared by linear and conv2d, whose ops autocast alike (lower precision)."""
    if not (tensor.dtype != input.dtype and tensor.device == input.device
            and _cast_by_autocast(input) and _cast_by_autocast(tensor)):
        check_like(tensor, name, input, "input", fn)


def _check_linear(input, weight, bias, fn):
    """torch's errors for input, weight and bias's type; returns weight as [out_features,
    in_features]."""
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    _check_like_input(weight, "weight", input, fn)
    if input.dim() < 1:
        fail(fn, "expected input to have at least 1 dimension, got a 0-D tensor")
    if weight.dim() not in (1, 2):
        fail(fn, f"expected weight to be 1-D or 2-D, got {weight.dim()}-D")
    if bias is not None:
        check_tensor(bias, "bias", fn)
        _check_like_input(bias, "bias", input, fn)
    weight_2d = weight.unsqueeze(0) if weight.dim() == 1 else weight
    if input.shape[-1] != weight_2d.shape[1]:
        fail(fn,
             f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
             f"weight expects in_features = {weight_2d.shape[1]} (input {tuple(input.shape)}, "
             f"weight {tuple(weight.shape)})")
    return weight_2d


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
    if dropout == 0.0 and (activation is None or activation == "relu"):
        # The common call (2-D weight, [out_features] bias) goes straight to the op, whose rules
        # check it: a small layer's per-call cost is all Python here, so nothing else runs first.
        # torch's wording of an error, and the layouts torch also takes (1-D weight, a bias that
        # broadcasts), are the general path below, taken only when the op rejects the call (its
        # rules run before any kernel, so nothing has changed).
        try:
            return linear_op(input, weight, bias, activation or "none", None, 0.0)
        except (RuntimeError, ValueError, TypeError, IndexError):
            pass
    activation = check_activation(activation, fn)
    _check_p(dropout, fn)
    fused_dropout = training and dropout > 0
    weight_2d = _check_linear(input, weight, bias, fn)
    vector_weight = weight.dim() == 1
    if bias is None:
        output = linear_op(input, weight_2d, None, activation,
                             *_linear_dropout(fused_dropout, dropout))
    else:
        if vector_weight:
            fail(fn, "a bias needs a 2-D weight (torch: mat2 must be a matrix)")
        out_features = weight_2d.shape[0]
        if bias.dim() <= 1 and bias.numel() in (1, out_features):
            if bias.shape != (out_features,):  # [] or [1]: broadcast along the features
                bias = bias.reshape(-1).expand(out_features)
            output = linear_op(input, weight_2d, bias, activation,
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
            output = linear_op(input, weight_2d, None, "none") + bias
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


register_cuda_kernels("linear", linear="linear_forward", linear_backward="linear_backward")
