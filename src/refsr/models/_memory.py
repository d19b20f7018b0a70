"""A model's peak memory as data: :class:`MemoryCost`, bytes per pixel of each kind.

Every :class:`~refsr.models.RefSRModel` declares its ``memory_cost`` (calibrated by
``benchmarks/upscale.py --calibrate`` from the peak RSS of child processes); :func:`refsr.upscale` turns it
into a predicted peak for given sizes and picks the largest tile that fits the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryCost", "GENERIC_MEMORY_COST"]


@dataclass(frozen=True)
class MemoryCost:
    """A model family's peak memory, in bytes, as a sum of terms (see :func:`refsr.inference.predict_peak_memory`).

    Attributes:
        fixed: the process with torch loaded and a tiny input run (interpreter, libraries, allocator).
        per_parameter: per model parameter (the weights, float32).
        per_image_pixel: per LR pixel of the whole (padded) image: the output canvas, the uint8 result and
            the encoded file, which live for the whole run.
        per_image_pixel_tiled: when not 0, per LR pixel of the whole image *instead of* ``per_image_pixel``
            when the image runs in tiles: what a model that tiles itself (``tiles_exactly``) keeps of the whole
            image between its stages, and its 8-bit result (it needs no float canvas).
        per_tile_pixel: per LR pixel of one tile: the model's working set for the LR side, the matching's
            per-pixel buffers, the texture transfer and the decoder (the largest term).
        per_ref_pixel: per reference pixel, the cached reference features kept for every tile.
        per_ref_pixel_encoding: per reference pixel being encoded at once (the whole reference, or one strip
            of it), the encoder's working set on top of the cached features.
        per_match: per (tile LR pixel x Ref↓ pixel), for models whose matching is not chunked.
        matching_workspace: a fixed working set of the matching (MEM's chunk budget).
        context: LR pixels a tile discards at each inner edge (about the receptive field that matters).
        ramp: LR pixels over which neighbouring tiles cross-fade.
    """

    fixed: int
    per_parameter: float = 4.0
    per_image_pixel: float = 0.0
    per_image_pixel_tiled: float = 0.0
    per_tile_pixel: float = 0.0
    per_ref_pixel: float = 0.0
    per_ref_pixel_encoding: float = 0.0
    per_match: float = 0.0
    matching_workspace: int = 0
    context: int = 16
    ramp: int = 16


#: For models that declare none: generous, so that the budget errs on the safe side.
GENERIC_MEMORY_COST = MemoryCost(fixed=400 * 2**20, per_image_pixel=256, per_tile_pixel=40_000,
                                 per_ref_pixel=600, per_ref_pixel_encoding=1200, per_match=8.0, context=32, ramp=16)
