import torch

from .. import functional as F
from .._checks import check_activation

# torch's message for an in-place update of an inference tensor outside inference mode.
_INFERENCE_INPLACE = ("Inplace update to inference tensor outside InferenceMode is not allowed."
                      "You can make a clone to get a normal tensor before doing inplace update."
                      "See https://github.com/pytorch/rfcs/pull/17 for more details.")


class _BatchNormForward:
    """The forward of ``torch.nn.modules.batchnorm._BatchNorm`` on fastops.functional.batch_norm,
    with an optional fused activation. Same semantics (train / eval, track_running_stats,
    momentum=None as a cumulative average over num_batches_tracked), except that
    num_batches_tracked is counted only once the batch has been accepted, so a rejected input
    leaves every buffer as it was. Buffers created under torch.inference_mode() and trained
    outside it raise torch's error (torch's comes from incrementing num_batches_tracked, before
    the running statistics are read) before any buffer is written."""

    activation = None  # class default: fastops.convert turns torch.nn instances into these classes

    def _init_activation(self, activation):
        check_activation(activation, "batch_norm")  # fail at construction, not at the first call
        self.activation = activation

    def forward(self, input):
        self._check_input_dim(input)
        tracking = (self.training and self.track_running_stats
                    and self.num_batches_tracked is not None)
        # (Dynamo cannot trace is_inference(): a compiled forward skips this check.)
        if (tracking and not torch.compiler.is_compiling()
                and self.num_batches_tracked.is_inference()
                and not torch.is_inference_mode_enabled()):
            raise RuntimeError(_INFERENCE_INPLACE)
        if self.momentum is not None:
            momentum = self.momentum
        elif tracking:  # cumulative moving average over the batches seen, this one included
            momentum = 1.0 / float(self.num_batches_tracked + 1)
        else:
            momentum = 0.0
        # Batch statistics in training, and in evaluation when there are no running statistics;
        # the buffers are passed when they are updated (training + tracking) or used (evaluation).
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats
        output = F.batch_norm(input,
                              self.running_mean if pass_buffers else None,
                              self.running_var if pass_buffers else None,
                              self.weight, self.bias, use_batch_stats, momentum, self.eps,
                              activation=self.activation)
        if tracking:
            self.num_batches_tracked.add_(1)
        return output

    def extra_repr(self):
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        return super().extra_repr() + activation


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on fastops kernels, with an optional fused activation.

    Same constructor, parameters (``weight``, ``bias`` [num_features]), buffers
    (``running_mean``, ``running_var`` [num_features], ``num_batches_tracked``), initialisation
    and state_dict as ``torch.nn.BatchNorm1d``. Input [N, C] or [N, C, L] -> same shape.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self._init_activation(activation)


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on fastops kernels, with an optional fused activation.

    Same constructor, parameters, buffers, initialisation and state_dict as
    ``torch.nn.BatchNorm2d``. Input [N, C, H, W] (contiguous or channels-last) -> same shape and
    memory format.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True, activation=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self._init_activation(activation)


class BatchNorm1dReLU(BatchNorm1d):
    """``BatchNorm1d`` followed by ReLU, fused into the normalisation pass."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, activation="relu")


class BatchNorm2dReLU(BatchNorm2d):
    """``BatchNorm2d`` followed by ReLU, fused into the normalisation pass."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, activation="relu")
