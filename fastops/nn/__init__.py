"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .conv2d import Conv2d, Conv2dReLU
from .linear import Linear, LinearReLU

__all__ = ["Conv2d", "Conv2dReLU", "Linear", "LinearReLU"]
