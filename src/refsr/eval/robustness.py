"""Reference transforms for robustness runs: scale mismatch (AMSA Fig. 7) and luminance change (MASA Fig. 6).

Both papers change only the *reference* and watch the score:

- **Scale mismatch** (AMSA, Fig. 7): the reference is resized by a factor (``0.5`` halves it, ``2`` doubles
  it) with PIL bicubic on the 8-bit image, the way every official pipeline resizes, so that its content
  sits at a different scale than the LR expects. AMSA's own study also changes the LR factor (×12); here
  the LR stays as the protocol makes it and only the reference moves, which isolates the reference's scale.
- **Luminance change** (MASA, Fig. 6, the study behind its spatial adaptation module): every reference
  pixel becomes ``clip(round(gain * v + shift), 0, 255)`` on 8-bit values ``v``. The data module's
  :func:`refsr.data.augment.brightness_contrast` is MASA's *training* jitter and reproduces OpenCV's
  ``convertScaleAbs``, which takes an absolute value (a negative result folds back up to a positive
  level); for a robustness study a darker reference must saturate at black instead, so this module
  applies the plain saturating map. With ``shift >= 0`` the two agree exactly.

The transforms act on the reference *as the dataset prepared it* (after the protocol's size rule); the
evaluation runner then re-pads it to the model's size rule and remakes Ref↓ from the transformed image
(PIL bicubic, :func:`refsr.data.degrade.make_lr`).

- **Unrelated reference** (SSEN, Table 3 and its robustness claim): every reference is replaced by one
  fixed image of unrelated content, resized with PIL bicubic to cover the reference's size (aspect kept)
  and centre-cropped to it, so the model gets a reference exactly as large as before that shares nothing
  with the LR. ``grey`` stands for a flat mid-grey (128) reference, which carries no texture at all. A
  model that uses its reference safely should fall back to its single-image quality, not below it.

On the command line: ``--robustness ref-scale=0.5,0.75,1,1.5,2``, ``--robustness
luminance=0.6,0.8,1.25,1.5+10`` (each item ``GAIN`` or ``GAIN+SHIFT`` / ``GAIN-SHIFT``, shift in 8-bit
levels) and ``--robustness unrelated=photo.png,grey`` (image files, or ``grey``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.io import read_image

__all__ = [
    "ROBUSTNESS_KINDS",
    "RefTransform",
    "change_luminance",
    "cover_crop",
    "luminance_change",
    "parse_robustness",
    "rescale_reference",
    "scale_mismatch",
    "unrelated_reference",
]

ROBUSTNESS_KINDS = ("ref-scale", "luminance", "unrelated")
_KIND_ALIASES = {
    "ref-scale": "ref-scale",
    "scale": "ref-scale",
    "ref_scale": "ref-scale",
    "luminance": "luminance",
    "brightness": "luminance",
    "unrelated": "unrelated",
    "unrelated-ref": "unrelated",
}


def _check_uint8_image(ref: np.ndarray, what: str) -> None:
    if not isinstance(ref, np.ndarray) or ref.dtype != np.uint8 or ref.ndim != 3 or ref.shape[2] != 3:
        shape = getattr(ref, "shape", None)
        raise RefsrError(f"{what} expects an HxWx3 uint8 RGB image, got {type(ref).__name__} {shape}")


def rescale_reference(ref: np.ndarray, factor: float) -> np.ndarray:
    """Resize a reference by ``factor`` with PIL bicubic (8-bit in, 8-bit out).

    Args:
        ref: ``HxWx3`` uint8 RGB.
        factor: the zoom; the new size is ``(round(H * factor), round(W * factor))``, at least 1 pixel.

    Returns:
        ``H'xW'x3`` uint8 RGB, bit-exact with ``Image.resize((W', H'), Image.BICUBIC)``.
    """
    _check_uint8_image(ref, "rescale_reference")
    if not factor > 0:
        raise RefsrError(f"the reference scale factor must be positive, got {factor!r}")
    h, w = ref.shape[:2]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return ref.copy()
    return imresize(ref, size=size, kernel="pil")


def change_luminance(ref: np.ndarray, gain: float, shift: float = 0.0) -> np.ndarray:
    """``clip(round(gain * v + shift), 0, 255)`` on every 8-bit value ``v`` (round half to even).

    Args:
        ref: ``HxWx3`` uint8 RGB.
        gain: brightness factor (> 0); ``shift``: offset in 8-bit levels.

    Returns:
        ``HxWx3`` uint8 RGB, same size.
    """
    _check_uint8_image(ref, "change_luminance")
    if not gain > 0:
        raise RefsrError(f"the luminance gain must be positive, got {gain!r}")
    values = ref.astype(np.float64) * float(gain) + float(shift)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def cover_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``image`` (aspect kept, PIL bicubic) to just cover ``size`` and centre-crop it to ``size``.

    Args:
        image: ``HxWx3`` uint8 RGB.
        size: the wanted ``(height, width)``.

    Returns:
        ``size[0] x size[1] x 3`` uint8 RGB. The zoom is ``max(size[0] / H, size[1] / W)``; the resized
        side that overshoots is cut evenly on both ends (the extra pixel, if odd, from the far end).
    """
    _check_uint8_image(image, "cover_crop")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise RefsrError(f"cover_crop needs a positive size, got {size!r}")
    h, w = image.shape[:2]
    zoom = max(out_h / h, out_w / w)
    # ceil-safe: rounding may land one pixel short of the target on the covering side
    new_h, new_w = max(out_h, round(h * zoom)), max(out_w, round(w * zoom))
    resized = image if (new_h, new_w) == (h, w) else imresize(image, size=(new_h, new_w), kernel="pil")
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return np.ascontiguousarray(resized[top : top + out_h, left : left + out_w])


@dataclass(frozen=True)
class RefTransform:
    """A named reference transform: ``transform(ref_uint8) -> ref_uint8``.

    Attributes:
        kind: ``"ref-scale"``, ``"luminance"`` or ``"unrelated"``.
        label: the column title in the robustness table (``"×0.5"``, ``"×1.2+10"``).
        params: the parameters, for the JSON report.
        apply: the function on ``HxWx3`` uint8 RGB.
    """

    kind: str
    label: str
    params: dict
    apply: Callable[[np.ndarray], np.ndarray]

    def __call__(self, ref: np.ndarray) -> np.ndarray:
        return self.apply(ref)


def _number(value: float) -> str:
    return f"{value:g}"


def scale_mismatch(factor: float) -> RefTransform:
    """The reference resized by ``factor`` (:func:`rescale_reference`)."""
    factor = float(factor)
    if not factor > 0:
        raise RefsrError(f"the reference scale factor must be positive, got {factor!r}")
    return RefTransform(
        "ref-scale", f"×{_number(factor)}", {"factor": factor}, lambda ref: rescale_reference(ref, factor)
    )


def luminance_change(gain: float, shift: float = 0.0) -> RefTransform:
    """The reference's levels mapped by ``gain * v + shift`` (:func:`change_luminance`)."""
    gain, shift = float(gain), float(shift)
    if not gain > 0:
        raise RefsrError(f"the luminance gain must be positive, got {gain!r}")
    label = f"×{_number(gain)}" + (f"{shift:+g}" if shift else "")
    return RefTransform(
        "luminance", label, {"gain": gain, "shift": shift}, lambda ref: change_luminance(ref, gain, shift)
    )


def unrelated_reference(source: str | Path | np.ndarray, label: str | None = None) -> RefTransform:
    """Every reference replaced by ``source`` fitted to its size (:func:`cover_crop`).

    Args:
        source: an image file, an ``HxWx3`` uint8 RGB array, or ``"grey"`` (a flat level-128 reference).
        label: the column title (default: the file's stem, ``"grey"``, or ``"image"`` for an array).
    """
    if isinstance(source, str) and source.strip().lower() in ("grey", "gray"):
        return RefTransform(
            "unrelated", label or "grey", {"image": "grey"}, lambda ref: np.full_like(ref, 128)
        )
    if isinstance(source, np.ndarray):
        image, name, shown = source, "image", "array"
    else:
        path = Path(source)
        if not path.is_file():
            raise RefsrError(f"unrelated reference {str(path)!r} not found; give an image file or 'grey'")
        image, name, shown = read_image(path), path.stem, str(path)
    _check_uint8_image(image, "unrelated_reference")
    image = image.copy()  # the transform must not see later changes to the caller's array
    return RefTransform(
        "unrelated", label or name, {"image": shown}, lambda ref: cover_crop(image, ref.shape[:2])
    )


_FLOAT = r"(?:\d+(?:\.\d*)?|\.\d+)"
_LUMINANCE_ITEM = re.compile(rf"^({_FLOAT})(?:([+-]{_FLOAT}))?$")


def parse_robustness(spec: str) -> tuple[str, list[RefTransform]]:
    """Parse ``"ref-scale=0.5,1,2"``, ``"luminance=0.8,1.2+10"`` or ``"unrelated=a.png,grey"`` into its
    kind and transforms.

    Raises:
        RefsrError: an unknown kind, an empty list or an item that is not a positive number.
    """
    kind_text, sep, items_text = str(spec).partition("=")
    kind = _KIND_ALIASES.get(kind_text.strip().lower())
    if not sep or kind is None:
        raise RefsrError(
            f"bad --robustness {spec!r}; use ref-scale=F1,F2,..., luminance=G1,G2+S,... or "
            f"unrelated=IMAGE,grey "
            f"(kinds: {', '.join(ROBUSTNESS_KINDS)})"
        )
    items = [item.strip() for item in items_text.split(",") if item.strip()]
    if not items:
        raise RefsrError(f"bad --robustness {spec!r}: give at least one value after '='")
    transforms = []
    for item in items:
        if kind == "unrelated":
            transforms.append(unrelated_reference(item))
        elif kind == "ref-scale":
            try:
                factor = float(item)
            except ValueError:
                factor = float("nan")
            if not factor > 0:
                raise RefsrError(f"bad --robustness {spec!r}: {item!r} is not a positive scale factor")
            transforms.append(scale_mismatch(factor))
        else:
            match = _LUMINANCE_ITEM.match(item)
            if match is None or not float(match.group(1)) > 0:
                raise RefsrError(
                    f"bad --robustness {spec!r}: {item!r} is not GAIN or GAIN+SHIFT with a positive GAIN"
                )
            transforms.append(luminance_change(float(match.group(1)), float(match.group(2) or 0.0)))
    return kind, transforms
