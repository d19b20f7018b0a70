"""What every refsr model has in common: its scale and its size rules, as data."""

from __future__ import annotations

import torch

from refsr.models._size import SizeRule

__all__ = ["RefSRModel"]


class RefSRModel(torch.nn.Module):
    """Base class of refsr models.

    Subclasses implement ``forward(lr, ref=None, **kwargs)`` with ``lr (N,3,h,w)`` and ``ref (N,3,H,W)``, RGB
    float in [0, 1], and return ``(N,3,scale*h,scale*w)``. They set:

    Attributes:
        scale: the upscaling factor.
        size_rule: a :class:`SizeRule` that :func:`refsr.upscale` pads and crops to.
        uses_ref: False for single-image models, which ignore ``ref``.
    """

    scale: int = 4
    size_rule: SizeRule = SizeRule()
    uses_ref: bool = True

    @property
    def size_multiple(self) -> int:
        """What the LR height and width must divide by (``size_rule.lr_multiple``)."""
        return self.size_rule.lr_multiple
