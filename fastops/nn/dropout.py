import torch

from .. import functional as F


class Dropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` on fastops kernels: input [*] -> [*]; each element is zeroed with
    probability p in training mode and the others scaled by 1 / (1 - p); identity in eval mode.
    Stores no mask for backward (it is regenerated from a seed)."""

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)


class Dropout1d(torch.nn.Dropout1d):
    """``torch.nn.Dropout1d`` on fastops kernels: input [N, C, L] or [C, L]; whole channels
    are zeroed."""

    def forward(self, input):
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(torch.nn.Dropout2d):
    """``torch.nn.Dropout2d`` on fastops kernels: input [N, C, H, W] (or [N, C, L], as torch);
    whole channels are zeroed."""

    def forward(self, input):
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(torch.nn.Dropout3d):
    """``torch.nn.Dropout3d`` on fastops kernels: input [N, C, D, H, W] or [C, D, H, W]; whole
    channels are zeroed."""

    def forward(self, input):
        return F.dropout3d(input, self.p, self.training, self.inplace)
