"""The beginner tutorial models (the README lists them), each in two builds with the same
structure and the same state_dict keys:

    build(name, impl="torch")    the model from torch.nn layers, as the course writes it
    build(name, impl="fastops")  the same model on fastops layers, fused where layers follow each
                                 other (fastops.convert with fuse=True)

``RECIPES[name]`` is how the course trains it (loss, optimiser, batch size, epochs, data).
"""

import dataclasses

import torch
from torch import nn

from ..convert import convert

IMPLS = ("torch", "fastops")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a tutorial trains a model. ``data`` names a loader of fastops.data; ``input_shape``
    is one sample's shape."""

    loss: str  # "mse" | "bce" | "cross_entropy"
    optimizer: str  # "sgd" | "adam"
    lr: float
    batch_size: int
    epochs: int
    data: str
    input_shape: tuple
    momentum: float = 0.0
    weight_decay: float = 0.0

    def make_loss(self, impl="torch"):
        if self.loss == "mse":
            return nn.MSELoss()
        if self.loss == "bce":
            return nn.BCELoss()
        loss = nn.CrossEntropyLoss()
        return convert(loss, verbose=False) if impl == "fastops" else loss

    def make_optimizer(self, parameters):
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)


def _linear_regression():
    return nn.Sequential(nn.Linear(3, 1))


def _logistic_regression():
    return nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())


def _multi_feature_logistic(in_features=8):
    return nn.Sequential(nn.Linear(in_features, 6), nn.Sigmoid(), nn.Linear(6, 4), nn.Sigmoid(),
                         nn.Linear(4, 1), nn.Sigmoid())


def _softmax_regression():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))


def _mnist_cnn():
    return nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5),
                         nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(320, 10))


def _cifar_net():
    return nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5),
                         nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(400, 120),
                         nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def _lenet_bn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.ReLU(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.ReLU(), nn.Linear(84, 10))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (1x1 conv-BN when the
    shape changes), then ReLU. Input [N, in_channels, H, W] -> [N, channels, H/stride, W/stride].
    The branches are nn.Sequential so that fastops.convert can fuse BN -> ReLU inside them."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(self.residual(x) + self.shortcut(x))


def _resnet18(num_classes=10):
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    in_channels = 64
    for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)]
        in_channels = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


_BUILDERS = {
    "linear_regression": _linear_regression,
    "logistic_regression": _logistic_regression,
    "multi_feature_logistic": _multi_feature_logistic,
    "softmax_regression": _softmax_regression,
    "mlp": _mlp,
    "mnist_cnn": _mnist_cnn,
    "cifar_net": _cifar_net,
    "lenet_bn": _lenet_bn,
    "resnet18": _resnet18,
}

_MNIST_SHAPE = (1, 28, 28)
_CIFAR_SHAPE = (3, 32, 32)
RECIPES = {
    "linear_regression": Recipe("mse", "sgd", 0.03, 10, 3, "linear_regression", (3,)),
    "logistic_regression": Recipe("bce", "sgd", 0.01, 10, 10, "logistic_clouds", (2,),
                                  momentum=0.9),
    "multi_feature_logistic": Recipe("bce", "sgd", 0.1, 32, 20, "table", (8,)),
    "softmax_regression": Recipe("cross_entropy", "sgd", 0.1, 256, 5, "fashion_mnist",
                                 _MNIST_SHAPE),
    "mlp": Recipe("cross_entropy", "sgd", 0.5, 256, 10, "fashion_mnist", _MNIST_SHAPE),
    "mnist_cnn": Recipe("cross_entropy", "sgd", 0.01, 64, 10, "mnist", _MNIST_SHAPE, momentum=0.5),
    "cifar_net": Recipe("cross_entropy", "sgd", 0.001, 4, 2, "cifar10", _CIFAR_SHAPE, momentum=0.9),
    "lenet_bn": Recipe("cross_entropy", "sgd", 1.0, 256, 10, "fashion_mnist", _MNIST_SHAPE),
    "resnet18": Recipe("cross_entropy", "sgd", 0.1, 128, 30, "cifar10", _CIFAR_SHAPE,
                       momentum=0.9, weight_decay=5e-4),
}
NAMES = tuple(_BUILDERS)


def build(name, impl="torch", **kwargs):
    """The tutorial model ``name`` built from torch.nn (impl="torch") or on fastops layers
    (impl="fastops"). kwargs go to the builder (multi_feature_logistic: in_features;
    resnet18: num_classes)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(NAMES)}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    model = _BUILDERS[name](**kwargs)
    return convert(model, fuse=True, inplace=True, verbose=False) if impl == "fastops" else model
