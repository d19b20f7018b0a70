"""Side-by-side comparison images: bicubic | refsr | reference, labelled.

What ``make demo`` and ``refsr upscale --compare PATH`` write. Everything is done with Pillow on uint8 RGB
images; the bicubic panel is PIL's ``Image.BICUBIC`` upscaling of the LR to the SR size (the papers'
baseline), and the reference is fitted into a panel of the SR's size (aspect ratio kept, centred).
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from refsr.inference import image_to_tensor
from refsr.io import write_image

__all__ = ["side_by_side", "write_comparison"]

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

_LABEL_HEIGHT = 28
_GAP = 8
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def _as_pil(image: ImageLike) -> Image.Image:
    """Any image refsr accepts, as an RGB PIL image (same conversion rules as :func:`refsr.upscale`)."""
    arr = image_to_tensor(image)[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font on Pillow >= 10.1 with FreeType
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` scaled to fit in ``size`` (w, h), aspect ratio kept, centred on a white panel."""
    width, height = size
    factor = min(width / image.width, height / image.height)
    fitted = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                          Image.BICUBIC)
    panel = Image.new("RGB", size, _BACKGROUND)
    panel.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    return panel


def side_by_side(
    lr: ImageLike,
    sr: ImageLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    labels: Sequence[str] = ("bicubic", "refsr", "reference"),
) -> Image.Image:
    """A labelled row of three panels: the LR upscaled with PIL bicubic, the SR, and the reference.

    Args:
        lr: the LR image (PIL, uint8 array or path).
        sr: the super-resolved image; its size is every panel's size.
        ref: the reference, a list of them (stacked vertically in one panel), or ``None``: then the third
            panel is the self-reference the model was given, the LR upscaled with PIL bicubic (so it repeats
            the first panel), labelled ``"self-reference"``.
        labels: the three panel titles.

    Returns:
        An RGB PIL image, ``3 * W + 2 * gap`` wide and ``H + label`` high, where ``W x H`` is the SR size.
    """
    sr_img = _as_pil(sr)
    size = sr_img.size
    bicubic = _as_pil(lr).resize(size, Image.BICUBIC)
    panels = [bicubic, sr_img]
    names = list(labels[:2])
    if ref is None:
        panels.append(bicubic)
        names.append("self-reference")
    else:
        refs = [_as_pil(r) for r in (ref if isinstance(ref, (list, tuple)) else [ref])]
        if len(refs) > 1:
            width = max(r.width for r in refs)
            stacked = Image.new("RGB", (width, sum(r.height for r in refs)), _BACKGROUND)
            top = 0
            for r in refs:
                stacked.paste(r, ((width - r.width) // 2, top))
                top += r.height
            refs = [stacked]
        panels.append(_fit(refs[0], size))
        names.append(labels[2] if len(labels) > 2 else "reference")
    width = len(panels) * size[0] + (len(panels) - 1) * _GAP
    canvas = Image.new("RGB", (width, size[1] + _LABEL_HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(18)
    for i, (panel, name) in enumerate(zip(panels, names)):
        left = i * (size[0] + _GAP)
        canvas.paste(panel, (left, _LABEL_HEIGHT))
        draw.text((left + 6, 4), name, fill=_TEXT, font=font)
    return canvas


def write_comparison(
    path: str | os.PathLike,
    lr: ImageLike,
    sr: ImageLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    labels: Sequence[str] = ("bicubic", "refsr", "reference"),
) -> os.PathLike:
    """Write :func:`side_by_side` to ``path`` atomically (the format follows the extension); returns the path."""
    return write_image(path, side_by_side(lr, sr, ref, labels=labels))
