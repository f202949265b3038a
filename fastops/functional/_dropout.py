"""fastops.functional.dropout / dropout1d / dropout2d / dropout3d: torch's dropouts on the
fastops::dropout op (no mask stored); and the op's CUDA (Triton) kernels."""

import warnings

import torch

from .._checks import check_float_dtype, check_tensor, fail
from .._cuda import register_cuda_kernels
from .._dispatch import operator

dropout_op = operator("dropout")
dropout_inplace_op = operator("dropout_")


def _dropout_seed():
    """The seed of one dropout call: drawn from torch's default CPU generator, so
    torch.manual_seed reproduces every mask; a 0-d int64 CPU tensor, so the kernels read it
    without a device sync and torch.compile traces it as a random op (not a constant)."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def _check_p(p, fn):
    # torch: ValueError from its Python check; NaN slips through it and ATen raises RuntimeError.
    if p < 0.0 or p > 1.0:
        fail(fn, f"dropout probability has to be between 0 and 1, but got {p}", ValueError)
    if p != p:  # NaN (not math.isnan: p is a SymFloat under torch.compile(dynamic=True))
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
        dropout_inplace_op(input, _dropout_seed(), float(p), size)
        return input
    output = dropout_op(input, _dropout_seed(), float(p), size)
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


register_cuda_kernels("dropout", dropout="dropout_forward", dropout_="dropout_inplace")
