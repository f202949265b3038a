"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules."""

from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .linear import Linear, LinearReLU
from .max_pool2d import MaxPool2d

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Linear", "LinearReLU", "MaxPool2d"]
