import torch

from .. import functional as F


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on fastops kernels: same constructor (kernel_size, stride=None,
    padding=0, dilation=1, return_indices=False, ceil_mode=False), attributes and repr.

    Input [N, C, H, W] or [C, H, W] -> output [N, C, H_out, W_out] (or [C, H_out, W_out]), plus
    torch's int64 indices when ``return_indices``.
    """

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)
