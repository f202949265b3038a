"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .cross_entropy import CrossEntropyLoss, LinearCrossEntropyLoss
from .linear import Linear, LinearReLU

__all__ = ["CrossEntropyLoss", "Linear", "LinearCrossEntropyLoss", "LinearReLU"]
