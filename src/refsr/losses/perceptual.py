"""Perceptual loss on VGG19 features (MASA-SR: ``conv5_4``, before its ReLU).

MASA-SR's Eq. 15 writes ``||φ(I_HR) - φ(I_SR)||_2``; the official training code (``PerceptualLoss`` with
``layer_weights={'conv5_4': 1.}`` and its default ``criterion='l1'``) takes the *mean absolute* difference
of the features, and that is the default here (``criterion="l1"``); ``"mse"`` gives the squared version.
AMSA and C2-Matching (``criterion: fro`` on ``relu5_1``, weight 1e-4) take the Frobenius norm of the whole
feature difference, ``‖φ(SR) - φ(HR)‖_F`` over the batch, neither squared nor averaged: ``criterion="fro"``.
The target's features carry no gradient, as in the official code.

The VGG weights are not shipped: pass the torchvision ``vgg19`` checkpoint (``vgg19-dcbb9e9d.pth``) or a
file in refsr's layout (see :mod:`refsr.models.vgg`). Images are RGB in [0, 1]; the extractor applies the
ImageNet normalisation. (The official code fed its BGR tensors to this RGB network.)
"""

from __future__ import annotations

import os
from typing import Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.models.vgg import VGG19Features, load_vgg19_weights

__all__ = ["perceptual_loss", "PerceptualLoss"]

_CRITERIA = ("l1", "mse", "fro")


def _check_criterion(criterion: str) -> None:
    if criterion not in _CRITERIA:
        raise RefsrError(f"unknown perceptual criterion {criterion!r}; choose one of {', '.join(_CRITERIA)}")


def perceptual_loss(
    sr: torch.Tensor,
    hr: torch.Tensor,
    extractor: VGG19Features,
    *,
    layer: str = "conv5_4",
    criterion: str = "l1",
) -> torch.Tensor:
    """Distance between the VGG19 features of the output and of the target.

    Args:
        sr: the network output ``(N, 3, H, W)``, RGB in [0, 1]; gradients flow back to it.
        hr: the target, same shape; no gradient.
        extractor: a :class:`~refsr.models.vgg.VGG19Features` whose outputs include ``layer``.
        layer: the VGG19 layer name.
        criterion: ``"l1"`` (mean absolute difference, the official MASA code), ``"mse"``, or ``"fro"``
            (the Frobenius norm of the difference over the whole batch, AMSA's and C2-Matching's).

    Returns:
        A scalar tensor.
    """
    _check_criterion(criterion)
    if layer not in extractor.outputs:
        raise RefsrError(
            f"the VGG extractor does not output {layer!r} (it outputs {', '.join(extractor.outputs)})"
        )
    if sr.shape != hr.shape:
        raise RefsrError(
            f"the output and the target must have the same shape; got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    sr_features = extractor(sr)[layer]
    with torch.no_grad():
        hr_features = extractor(hr.detach())[layer]
    if criterion == "l1":
        return F.l1_loss(sr_features, hr_features)
    if criterion == "fro":
        return torch.linalg.vector_norm(sr_features - hr_features)
    return F.mse_loss(sr_features, hr_features)


class PerceptualLoss(nn.Module):
    """:func:`perceptual_loss` with its own frozen VGG19 (up to ``layer``).

    Args:
        vgg_weights: the VGG19 weights file (or state_dict); ``None`` keeps random weights (tests only).
        layer: the VGG19 layer (``"conv5_4"``).
        criterion: ``"l1"``, ``"mse"`` or ``"fro"``.
    """

    def __init__(
        self,
        vgg_weights: Union[str, os.PathLike, Mapping[str, torch.Tensor], None] = None,
        *,
        layer: str = "conv5_4",
        criterion: str = "l1",
    ) -> None:
        super().__init__()
        _check_criterion(criterion)
        self.layer = layer
        self.criterion = criterion
        self.vgg = VGG19Features((layer,))
        if vgg_weights is not None:
            load_vgg19_weights(self.vgg, vgg_weights)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # The VGG is a fixed feature extractor: it stays in eval mode whatever the training loop asks.
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return perceptual_loss(sr, hr, self.vgg, layer=self.layer, criterion=self.criterion)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, criterion={self.criterion!r}"
