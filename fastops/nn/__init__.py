"""Modules mirroring torch.nn (each subclasses its torch.nn twin) plus fused modules.

None of them can be scripted (torch.jit.script raises one RuntimeError that names the supported
paths: torch.jit.trace, torch.export, torch.compile); see _torchscript.py. Every class exported
here gets that behaviour below, so a new op's module needs nothing more than its import.
"""

from ._torchscript import refuse_torchscript
from .batch_norm import BatchNorm1d, BatchNorm1dReLU, BatchNorm2d, BatchNorm2dReLU
from .conv2d import Conv2d, Conv2dReLU
from .cross_entropy import CrossEntropyLoss, LinearCrossEntropyLoss
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .linear import Linear, LinearReLU
from .max_pool2d import MaxPool2d

__all__ = [
    "BatchNorm1d",
    "BatchNorm1dReLU",
    "BatchNorm2d",
    "BatchNorm2dReLU",
    "Conv2d",
    "Conv2dReLU",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "Linear",
    "LinearCrossEntropyLoss",
    "LinearReLU",
    "MaxPool2d",
]

for _name in __all__:
    globals()[_name].__prepare_scriptable__ = refuse_torchscript
del _name
