"""Layers that several model families share, each defined once.

- :func:`conv2d`: a convolution with "same" padding (``kernel // 2``), the only kind the models here use;
- :func:`lrelu`: LeakyReLU with slope 0.1, the slope of every official model here that uses one (AMSA's and
  C2-Matching's restoration nets, SSEN);
- :class:`ResBlock`: ``x + conv(ReLU(conv(x)))`` without normalisation or residual scale, the block of the
  official MASA-SR, AMSA (C2-Matching's) and SSEN's EDSR-style trunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d", "lrelu", "ResBlock", "NEGATIVE_SLOPE"]

#: The LeakyReLU slope of the official AMSA, C2-Matching and SSEN code.
NEGATIVE_SLOPE = 0.1


def conv2d(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """``nn.Conv2d`` with bias and "same" padding ``kernel // 2``."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)


def lrelu(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """LeakyReLU(0.1). ``inplace`` is for callers whose input is a fresh conv or pixel-shuffle output that
    autograd does not need again."""
    return F.leaky_relu(x, NEGATIVE_SLOPE, inplace=inplace)


class ResBlock(nn.Module):
    """``x + conv2(ReLU(conv1(x)))``, 3x3 convolutions with bias, no normalisation and no residual scale.

    ``(N, nf, H, W) -> (N, nf, H, W)``.
    """

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = conv2d(nf, nf)
        self.conv2 = conv2d(nf, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLU and add are safe for autograd: neither convolution needs its output for backward.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)
