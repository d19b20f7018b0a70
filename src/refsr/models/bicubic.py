"""Bicubic upsampling, the baseline every RefSR paper reports.

The papers' bicubic rows come from PIL's ``Image.BICUBIC`` applied to the 8-bit LR. This model does exactly
that: it rounds its float input to 8 bits, resizes with :func:`refsr.imresize` (``kernel="pil"``, which is
bit-exact with PIL on uint8) and returns the result as float in [0, 1]. It has no parameters and ignores the
reference.
"""

from __future__ import annotations

import torch

from refsr.imresize import imresize
from refsr.models._base import RefSRModel
from refsr.models._memory import MemoryCost
from refsr.models._registry import register_model

__all__ = ["BicubicUpsampler", "bicubic"]


class BicubicUpsampler(RefSRModel):
    """PIL-exact bicubic upsampling of ``lr`` by ``scale``; ``ref`` is ignored.

    Args:
        scale: the upscaling factor.
        kernel: ``"pil"`` (what the papers report) or ``"matlab"``.
        quantize: round the input to 8 bits first, as the papers' pipeline does (output then equals PIL's on the
            8-bit image). With False, the float input is resized as it is.
    """

    uses_ref = False
    # Calibrated with benchmarks/upscale.py --calibrate: the output canvas, and a small per-tile working set.
    memory_cost = MemoryCost(fixed=300 * 2**20, per_image_pixel=320, per_tile_pixel=16 * 3 * 4 * 4, context=4, ramp=4)

    def __init__(self, *, scale: int = 4, kernel: str = "pil", quantize: bool = True) -> None:
        super().__init__()
        self.scale = int(scale)
        self.kernel = kernel
        self.quantize = quantize

    def forward(self, lr: torch.Tensor, ref: torch.Tensor | None = None, **unused: object) -> torch.Tensor:
        """``lr (N,3,h,w)`` RGB float in [0,1] -> ``(N,3,scale*h,scale*w)`` float in [0,1]."""
        size = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if not self.quantize:
            return imresize(lr, size=size, kernel=self.kernel)
        lr8 = (lr.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        return imresize(lr8, size=size, kernel=self.kernel).to(lr.dtype) / 255

    def extra_repr(self) -> str:
        return f"scale={self.scale}, kernel={self.kernel!r}, quantize={self.quantize}"


@register_model("bicubic", paper="PIL bicubic (the baseline)")
def bicubic(*, scale: int = 4, kernel: str = "pil", quantize: bool = True) -> BicubicUpsampler:
    """Bicubic upsampling (PIL-exact), the baseline row of every RefSR table."""
    return BicubicUpsampler(scale=scale, kernel=kernel, quantize=quantize)
