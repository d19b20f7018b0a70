"""How the official pipelines turn an HR image into the model's inputs.

Every official RefSR repository makes its LR and its down-sampled reference (Ref↓) with PIL's bicubic on the
8-bit image; :func:`make_lr` does the same through :func:`refsr.imresize` (bit-exact with PIL). The size
rules differ by repository and are spelled out here as functions, so datasets can name the one they follow:

- :func:`mod_crop` (TTSR, C2-Matching, AMSA): cut the bottom/right so both sides divide by ``multiple``.
- :func:`pad_to_multiple` (MASA): replicate-pad, centred (test HR) or bottom/right (train, Ref), so both sides
  divide by ``multiple``; the metric is computed on the unpadded region.

All functions take and return ``HxWx3`` (or ``HxW``) ``uint8`` numpy arrays, RGB.

Real-world LR images (blur, noise, JPEG) are made by :func:`degrade_real`, a second-order pipeline in the
manner of Real-ESRGAN with its options in :class:`RealDegradation`; it lives in
:mod:`refsr.data.degrade_real` and is re-exported here, so this module is the one entry point for making LR.
"""

from __future__ import annotations

import numpy as np

from refsr.data.degrade_real import DegradationDraw, RealDegradation, degrade_real, jpeg_compress
from refsr.errors import RefsrError
from refsr.imresize import imresize

__all__ = [
    "make_lr", "mod_crop", "pad_to_multiple", "to_tensor",
    "RealDegradation", "DegradationDraw", "degrade_real", "jpeg_compress",
]


def make_lr(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    """``hr`` downscaled by ``scale`` with PIL bicubic on uint8: output ``(H // scale, W // scale)``.

    This is ``Image.fromarray(hr).resize((W // scale, H // scale), Image.BICUBIC)``, as every official repo
    makes its LR. When a side does not divide by ``scale``, PIL maps the whole input onto the smaller output
    (no crop), and so does this; crop or pad first (:func:`mod_crop`, :func:`pad_to_multiple`) to follow a
    repository's rule.
    """
    if hr.dtype != np.uint8:
        raise RefsrError(f"make_lr expects a uint8 image, got {hr.dtype}")
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise RefsrError(f"image {w}x{h} is too small to downscale by {scale}")
    return imresize(hr, size=(h // scale, w // scale), kernel="pil")


def mod_crop(img: np.ndarray, multiple: int) -> np.ndarray:
    """Cut the bottom and right so both sides divide by ``multiple`` (TTSR, C2-Matching, AMSA)."""
    h, w = img.shape[:2]
    hh, ww = h - h % multiple, w - w % multiple
    if hh == 0 or ww == 0:
        raise RefsrError(f"image {w}x{h} is smaller than the size multiple {multiple}")
    return img[:hh, :ww]


def pad_to_multiple(img: np.ndarray, multiple: int, *, centre: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Replicate-pad so both sides divide by ``multiple`` (MASA's ``copyMakeBorder(BORDER_REPLICATE)``).

    Args:
        img: ``HxWx3`` or ``HxW`` uint8.
        multiple: the size multiple.
        centre: pad evenly on both sides (MASA's test HR, ``top = pad // 2``) rather than bottom/right only
            (MASA's training images and references).

    Returns:
        The padded image and the ``(top, left)`` offset of the original inside it.
    """
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = (ph // 2, pw // 2) if centre else (0, 0)
    pad = ((top, ph - top), (left, pw - left)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="edge"), (top, left)


def to_tensor(img: np.ndarray):
    """``HxWx3`` uint8 RGB -> ``(3, H, W)`` float32 tensor in [0, 1]."""
    import torch

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return torch.tensor(img).permute(2, 0, 1).float().div_(255)
