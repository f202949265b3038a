"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .linear import Linear, LinearReLU
from .max_pool2d import MaxPool2d

__all__ = ["Linear", "LinearReLU", "MaxPool2d"]
