"""The torch.nn.functional mirror: same signatures, defaults and semantics as the torch
functions, validation with clear messages, then one fastops op call."""

import warnings

import torch

from ._checks import check, check_activation, check_float_dtype, check_like, check_tensor

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
    check(input.dim() >= 1, fn, "expected input to have at least 1 dimension, got a 0-D tensor")
    check(weight.dim() in (1, 2), fn, f"expected weight to be 1-D or 2-D, got {weight.dim()}-D")
    vector_weight = weight.dim() == 1
    weight_2d = weight.unsqueeze(0) if vector_weight else weight
    check(input.shape[-1] == weight_2d.shape[1], fn,
          f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
          f"weight expects in_features = {weight_2d.shape[1]} (input {tuple(input.shape)}, "
          f"weight {tuple(weight.shape)})")
    if bias is None:
        output = _ops.linear(input, weight_2d, None, activation,
                             *_linear_dropout(fused_dropout, dropout))
    else:
        check_tensor(bias, "bias", fn)
        check_like(bias, "bias", input, "input", fn)
        check(not vector_weight, fn, "a bias needs a 2-D weight (torch: mat2 must be a matrix)")
        out_features = weight_2d.shape[0]
        if bias.dim() <= 1 and bias.numel() in (1, out_features):
            output = _ops.linear(input, weight_2d, bias.reshape(-1).expand(out_features), activation,
                                 *_linear_dropout(fused_dropout, dropout))
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
    message = f"dropout probability has to be between 0 and 1, but got {p}"
    check(not (p < 0.0 or p > 1.0), fn, message, ValueError)
    check(p == p, fn, message)


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
    check(input.dim() >= (2 if batched else 1), fn,
          "Feature dropout requires at least 2 dimensions in the input")
    size = 1
    for d in dims:
        size *= d
    return size


def dropout1d(input, p=0.5, training=True, inplace=False):
    """``torch.nn.functional.dropout1d``: input [N, C, L] or [C, L], whole channels zeroed."""
    fn = "dropout1d"
    check_tensor(input, "input", fn)
    _check_p(p, fn)
    check(input.dim() in (2, 3), fn,
          f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. Note that "
          "dropout1d exists to provide channel-wise dropout on inputs with 1 spatial dimension, a "
          "channel dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
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
