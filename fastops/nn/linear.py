import torch

from .. import functional as F
from .._checks import check_activation


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` on fastops kernels, with an optional fused activation and dropout.

    Same constructor, parameters (``weight`` [out_features, in_features], ``bias``
    [out_features]), initialisation and state_dict as ``torch.nn.Linear``.
    Input [*, in_features] -> output [*, out_features].
    ``dropout=p``: ``nn.Dropout(p)`` after the activation, in training mode only, fused into
    the GEMM epilogue (no mask is stored for backward).
    """

    # class defaults: fastops.convert turns nn.Linear instances into this class
    activation = None
    dropout = 0.0

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 activation=None, dropout=0.0):
        # fail at construction, not at the first call
        check_activation(activation, "linear")
        if dropout < 0 or dropout > 1:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {dropout}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.dropout = dropout

    def forward(self, input):
        return F.linear(input, self.weight, self.bias, activation=self.activation,
                        dropout=self.dropout, training=self.training)

    def extra_repr(self):
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        dropout = f", dropout={self.dropout}" if self.dropout else ""
        return super().extra_repr() + activation + dropout


class LinearReLU(Linear):
    """``Linear`` followed by ReLU (and optional dropout), fused into the GEMM epilogue."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, dropout=0.0):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype,
                         activation="relu", dropout=dropout)
