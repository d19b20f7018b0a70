"""Layers that several model families share, each defined once.

- :func:`conv2d`: a convolution with "same" padding (``kernel // 2``), the only kind the models here use;
- :func:`lrelu`: LeakyReLU with slope 0.1, the slope of every official model here that uses one (AMSA's and
  C2-Matching's restoration nets, SSEN);
- :class:`ResBlock`: ``x + conv(ReLU(conv(x)))`` without normalisation or residual scale, the block of the
  official MASA-SR, AMSA (C2-Matching's) and SSEN's EDSR-style trunk;
- :func:`conv_relu`, :func:`conv_add`: a convolution followed by ReLU or by adding a tensor, fused into one
  oneDNN call when nothing needs gradients on the CPU (PyTorch's own fused kernels, the ones
  ``torch.compile`` uses): the separate ReLU or addition is a full pass over a large map, about a third of
  a 32-channel convolution's time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv2d", "lrelu", "conv_relu", "conv_add", "ResBlock", "NEGATIVE_SLOPE"]

#: The LeakyReLU slope of the official AMSA, C2-Matching and SSEN code.
NEGATIVE_SLOPE = 0.1


def conv2d(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """``nn.Conv2d`` with bias and "same" padding ``kernel // 2``."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)


def lrelu(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """LeakyReLU(0.1). ``inplace`` is for callers whose input is a fresh conv or pixel-shuffle output that
    autograd does not need again."""
    return F.leaky_relu(x, NEGATIVE_SLOPE, inplace=inplace)


_FUSED = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Inference on the CPU, float32 or bfloat16, channels-last (the layout the fused kernels keep)."""
    return (_FUSED is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16) and conv.weight.dtype == x.dtype
            and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros")


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``F.relu(conv(x))``, one fused call where possible (same values)."""
    if _fusable(conv, x):
        return _FUSED(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                      conv.groups, "relu", [], "")
    return F.relu(conv(x), inplace=True)


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) + other``, one fused call where possible (same values)."""
    if _fusable(conv, x) and other.dtype == x.dtype and other.is_contiguous(memory_format=torch.channels_last):
        return _FUSED.binary(x, other, conv.weight, conv.bias, list(conv.padding), list(conv.stride),
                             list(conv.dilation), conv.groups, "add", 1.0, None, [], None)
    return conv(x).add_(other)


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
        return conv_add(self.conv2, conv_relu(self.conv1, x), x)
