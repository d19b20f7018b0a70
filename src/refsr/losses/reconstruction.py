"""Pixel reconstruction losses: L1 (MASA-SR's ``L_rec``) and Charbonnier (SSEN's ``L_rec``)."""

from __future__ import annotations

import torch
from torch import nn

from refsr.errors import RefsrError

__all__ = ["l1_loss", "charbonnier_loss", "L1Loss", "CharbonnierLoss"]


def _check_pair(sr: torch.Tensor, hr: torch.Tensor) -> None:
    if sr.shape != hr.shape:
        raise RefsrError(
            f"the output and the target must have the same shape; got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (MASA Eq. 14; the official ``nn.L1Loss()``).

    Args:
        sr: the network output ``(N, C, H, W)``, any range (MASA: RGB in [0, 1]).
        hr: the target, same shape.

    Returns:
        A scalar tensor.
    """
    _check_pair(sr, hr)
    return (sr - hr).abs().mean()


def charbonnier_loss(sr: torch.Tensor, hr: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Charbonnier penalty ``mean(sqrt((sr - hr)^2 + eps^2))``, a smooth L1 (SSEN Eq. 4, ``eps = 1e-6``).

    The penalty is taken per element and averaged, as LapSRN and BasicSR do; the paper's formula writes
    the norm of the whole difference, which as a training loss would only rescale the gradient.

    Args:
        sr: the network output ``(N, C, H, W)``.
        hr: the target, same shape.
        eps: the smoothing constant (the value inside is ``eps**2``).

    Returns:
        A scalar tensor.
    """
    _check_pair(sr, hr)
    if not eps > 0:
        raise RefsrError(f"the Charbonnier eps must be positive; got {eps}")
    return ((sr - hr).square() + eps * eps).sqrt().mean()


class L1Loss(nn.Module):
    """``nn.Module`` wrapper of :func:`l1_loss`; ``forward(sr, hr)``."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return l1_loss(sr, hr)


class CharbonnierLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`charbonnier_loss`; ``forward(sr, hr)``."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return charbonnier_loss(sr, hr, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
