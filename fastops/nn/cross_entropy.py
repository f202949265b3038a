import math

import torch

from .. import functional as F
from ..functional._cross_entropy import _check_linear_cross_entropy_options, _reduction


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on the fused fastops kernel.

    Same constructor (weight, deprecated size_average / reduce, ignore_index, reduction,
    label_smoothing), ``weight`` buffer and state_dict. input [C], [N, C] or [N, C, d1, ...];
    target class indices [], [N] or [N, d1, ...], or class probabilities of input's shape.
    """

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class _LinearCrossEntropyLossBase(torch.nn.Module):
    """torch.nn.LinearCrossEntropyLoss's constructor, attributes and state for torch builds
    that lack it (before 2.13): ``weight`` buffer (class weights, in the state_dict when given),
    ``reduction``, ``num_classes``, ``out_features``, ``ignore_index``, ``label_smoothing``,
    ``options`` and ``linear``, a ``torch.nn.Linear(in_features, num_classes * prod(out_features))``
    holding the flat weight and bias (state_dict keys ``linear.weight``, ``linear.bias``)."""

    def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None,
                 dtype=None, reduction="mean", weight=None, ignore_index=None,
                 label_smoothing=0.0, options=None):
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(
                f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(
                f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(in_features, math.prod(out_features, start=num_classes),
                                      bias=bias, device=device, dtype=dtype)
        self.options = options

    def extra_repr(self):
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, options={self.options}")


# torch's module where torch has it (>= 2.13)
_TorchLinearCrossEntropyLoss = getattr(torch.nn, "LinearCrossEntropyLoss",
                                       _LinearCrossEntropyLossBase)


class LinearCrossEntropyLoss(_TorchLinearCrossEntropyLoss):
    """``torch.nn.LinearCrossEntropyLoss`` on the fused fastops op: a ``Linear(in_features,
    num_classes)`` head followed by ``CrossEntropyLoss``, without the [N, num_classes] logits
    (computed in chunks of rows, recomputed in the backward).

    Subclasses torch's module (torch >= 2.13; before that a torch.nn.Module with the same
    attributes): same constructor, ``linear`` submodule (weight [num_classes * prod(out_features),
    in_features], bias when ``bias=True``, default False), ``weight`` class-weight buffer, and
    state_dict keys, so checkpoints load both ways. ``out_features=(d1, ..., dK)`` gives a
    K-dimensional loss; ``options`` is accepted and type-checked but fastops always chunks (see
    :func:`fastops.functional.linear_cross_entropy`).
    forward(input [N, in_features] or [in_features], target [N] / [] / [N, *out_features] class
    indices or [N, num_classes, *out_features] / [num_classes] probabilities) -> loss.
    """

    def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None,
                 dtype=None, reduction="mean", weight=None, ignore_index=None,
                 label_smoothing=0.0, options=None):
        # fail at construction, not at the first call
        _reduction(None, None, reduction)
        _check_linear_cross_entropy_options(options, "linear_cross_entropy")
        super().__init__(in_features, num_classes, out_features=out_features, bias=bias,
                         device=device, dtype=dtype, reduction=reduction, weight=weight,
                         ignore_index=ignore_index, label_smoothing=label_smoothing,
                         options=options)

    def forward(self, input, target):
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = (None if self.linear.bias is None
                       else self.linear.bias.reshape((self.num_classes, *self.out_features)))
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=self.weight, reduction=self.reduction,
                                      ignore_index=self.ignore_index,
                                      label_smoothing=self.label_smoothing, options=self.options)
