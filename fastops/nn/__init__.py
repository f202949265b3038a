"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .linear import Linear, LinearReLU

__all__ = ["Linear", "LinearReLU"]
