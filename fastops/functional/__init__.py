"""The torch.nn.functional mirror: same signatures, defaults and semantics as the torch
functions, torch's argument conventions and exception types, then one fastops op call (whose
own checks, shared by every backend, live with the op in csrc/<op>/<op>.cpp).

One private module per op (``_linear.py``, ...) holds its functions and registers the op's
Triton CUDA kernels."""

from ._batch_norm import batch_norm, batch_norm_relu
from ._conv2d import conv2d, conv2d_relu
from ._cross_entropy import cross_entropy, linear_cross_entropy
from ._dropout import dropout, dropout1d, dropout2d, dropout3d
from ._linear import linear, linear_relu
from ._max_pool2d import max_pool2d

__all__ = [
    "batch_norm", "batch_norm_relu", "conv2d", "conv2d_relu", "cross_entropy", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "linear", "linear_cross_entropy", "linear_relu",
    "max_pool2d",
]
