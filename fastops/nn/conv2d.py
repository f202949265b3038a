import torch

from .. import functional as F
from .._checks import check_activation


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on fastops kernels, with an optional fused activation.

    Same constructor (every padding, padding_mode, dilation and groups option), parameters
    (``weight`` [out_channels, in_channels / groups, kH, kW], ``bias`` [out_channels]),
    initialisation and state_dict as ``torch.nn.Conv2d``.
    Input [N, in_channels, H, W] or [in_channels, H, W] -> [N, out_channels, oH, oW] or
    [out_channels, oH, oW].
    """

    activation = None  # class default: fastops.convert turns nn.Conv2d instances into this class

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None,
                 activation=None):
        check_activation(activation, "conv2d")  # fail at construction, not at the first call
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        self.activation = activation

    def _conv_forward(self, input, weight, bias):
        # As torch.nn.Conv2d: the non-zero padding modes pad the input first, then convolve
        # without padding.
        padding = self.padding
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                            mode=self.padding_mode)
            padding = 0
        return F.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                        activation=self.activation)

    def extra_repr(self):
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        return super().extra_repr() + activation


class Conv2dReLU(Conv2d):
    """``Conv2d`` followed by ReLU, fused with the bias into the pass that writes the output."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype, activation="relu")
