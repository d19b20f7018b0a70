"""A tiny reference-based x4 network for the training-engine tests (registered as ``tiny-sr-test``).

Imported by the tests, and by the config's ``imports`` in the torchrun subprocesses (with this folder on
``PYTHONPATH``). It has no batch norm, so that DDP with a batch split over processes equals one process with
the whole batch, and a parameter named ``offset`` for the per-name learning-rate groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refsr.models import RefSRModel, SizeRule, list_models, register_model

NAME = "tiny-sr-test"


class TinyRefSR(RefSRModel):
    """``sr = bilinear(lr) + shuffle(conv(relu(conv(cat[lr, ref_down]))))``, x4; LR any size."""

    scale = 4
    size_rule = SizeRule()

    def __init__(self, nf: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(6, nf, 3, padding=1)
        self.offset = nn.Conv2d(nf, nf, 1)
        self.tail = nn.Conv2d(nf, 3 * 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(4)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, *, ref_down: torch.Tensor | None = None) -> torch.Tensor:
        if ref_down is None:
            ref_down = F.interpolate(ref, scale_factor=0.25, mode="area")
        ref_small = F.interpolate(ref_down, size=lr.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self.head(torch.cat([lr, ref_small], dim=1)))
        x = F.relu(self.offset(x)) + x
        up = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        return up + self.shuffle(self.tail(x))


if NAME not in list_models():

    @register_model(NAME)
    def tiny_sr_test(*, nf: int = 8) -> TinyRefSR:
        """A tiny x4 RefSR network for tests."""
        return TinyRefSR(nf=nf)
