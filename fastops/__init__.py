"""fastops: fused PyTorch ops with C++ CPU kernels and Triton CUDA kernels.

Importing the package loads ``fastops._C`` (operator schemas, their rules as Meta kernels, CPU
kernels, autograd, autocast) and registers the Triton CUDA kernels with the dispatcher.
"""

import torch

# _C registers the fastops:: ops, functional registers the Triton CUDA kernels.
from . import _C, functional, nn  # noqa: F401
from .convert import convert, unconvert
from .fold import fold_batchnorm
from .memory import saved_tensor_bytes

__version__ = "0.1.0"

ops = torch.ops.fastops

__all__ = ["convert", "fold_batchnorm", "functional", "nn", "ops", "saved_tensor_bytes",
           "unconvert", "__version__"]
