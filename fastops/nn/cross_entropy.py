import torch

from .. import functional as F


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on the fused fastops kernel.

    Same constructor (weight, deprecated size_average / reduce, ignore_index, reduction,
    label_smoothing), ``weight`` buffer and state_dict. input [C], [N, C] or [N, C, d1, ...];
    target class indices [], [N] or [N, d1, ...], or class probabilities of input's shape.
    """

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class LinearCrossEntropyLoss(torch.nn.Module):
    """``torch.nn.Linear(in_features, num_classes)`` followed by ``CrossEntropyLoss``, fused so
    that the [N, num_classes] logits are never materialised (a language-model head).

    Parameters as ``torch.nn.Linear`` (``weight`` [num_classes, in_features], ``bias``
    [num_classes], same initialisation and state_dict keys, so a Linear head's checkpoint loads
    both ways); ``class_weight`` [num_classes] is a buffer like CrossEntropyLoss's ``weight``.
    forward(input [N, in_features] or [in_features], target [N] / [] class indices or
    [N, num_classes] probabilities) -> loss.
    """

    def __init__(self, in_features, num_classes, bias=True, class_weight=None, ignore_index=-100,
                 reduction="mean", label_smoothing=0.0, device=None, dtype=None):
        super().__init__()
        F._reduction(None, None, reduction)  # fail at construction, not at the first call
        factory = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.num_classes = num_classes
        self.weight = torch.nn.Parameter(torch.empty((num_classes, in_features), **factory))
        self.bias = torch.nn.Parameter(torch.empty(num_classes, **factory)) if bias else None
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.Linear.reset_parameters(self)  # the same initialisation as torch.nn.Linear

    def forward(self, input, target):
        return F.linear_cross_entropy(input, self.weight, self.bias, target, self.class_weight,
                                      ignore_index=self.ignore_index, reduction=self.reduction,
                                      label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"bias={self.bias is not None}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}")
