import torch

from .. import functional as F
from .._checks import check_activation


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` on fastops kernels, with an optional fused activation.

    Same constructor, parameters (``weight`` [out_features, in_features], ``bias``
    [out_features]), initialisation and state_dict as ``torch.nn.Linear``.
    Input [*, in_features] -> output [*, out_features].
    """

    activation = None  # class default: fastops.convert turns nn.Linear instances into this class

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 activation=None):
        check_activation(activation, "linear")  # fail at construction, not at the first call
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input):
        return F.linear(input, self.weight, self.bias, activation=self.activation)

    def extra_repr(self):
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        return super().extra_repr() + activation


class LinearReLU(Linear):
    """``Linear`` followed by ReLU, fused into the GEMM epilogue."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype,
                         activation="relu")
