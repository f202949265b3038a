"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .batch_norm import BatchNorm1d, BatchNorm1dReLU, BatchNorm2d, BatchNorm2dReLU
from .linear import Linear, LinearReLU

__all__ = ["Linear", "LinearReLU", "BatchNorm1d", "BatchNorm1dReLU", "BatchNorm2d", "BatchNorm2dReLU"]
