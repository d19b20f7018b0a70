"""The result type shared by every matcher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Correspondence"]


@dataclass
class Correspondence:
    """Top-1 patch correspondence from query positions to key positions.

    Attributes:
        index: ``LongTensor (N, h, w)``; the flat key position ``y * W + x`` matched by each query position.
        score: ``(N, h, w)``; the cosine similarity of the matched 3x3 (``patch_size``) patches, in [-1, 1].
        key_size: ``(H, W)`` of the key, so that ``index`` can be turned back into coordinates.
        extras: whatever else a method produces, by name (MEM's per-block windows, for example).
    """

    index: torch.Tensor
    score: torch.Tensor
    key_size: tuple[int, int]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def coords(self) -> torch.Tensor:
        """``LongTensor (N, h, w, 2)`` of matched key coordinates ``(y, x)``."""
        width = self.key_size[1]
        return torch.stack((self.index // width, self.index % width), dim=-1)

    def flow(self) -> torch.Tensor:
        """``(N, 2, h, w)`` displacement ``(dx, dy)`` from each query position to its match, in key pixels.

        Only meaningful when query and key share a coordinate frame (same size).
        """
        n, h, w = self.index.shape
        yy, xx = torch.meshgrid(
            torch.arange(h, device=self.index.device), torch.arange(w, device=self.index.device), indexing="ij"
        )
        c = self.coords
        return torch.stack((c[..., 1] - xx, c[..., 0] - yy), dim=1).to(torch.float32)
