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

On the command line: ``--robustness ref-scale=0.5,0.75,1,1.5,2`` and ``--robustness
luminance=0.6,0.8,1.25,1.5+10`` (each item ``GAIN`` or ``GAIN+SHIFT`` / ``GAIN-SHIFT``, shift in 8-bit
levels).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refsr.errors import RefsrError
from refsr.imresize import imresize

__all__ = [
    "ROBUSTNESS_KINDS",
    "RefTransform",
    "change_luminance",
    "luminance_change",
    "parse_robustness",
    "rescale_reference",
    "scale_mismatch",
]

ROBUSTNESS_KINDS = ("ref-scale", "luminance")
_KIND_ALIASES = {
    "ref-scale": "ref-scale",
    "scale": "ref-scale",
    "ref_scale": "ref-scale",
    "luminance": "luminance",
    "brightness": "luminance",
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


@dataclass(frozen=True)
class RefTransform:
    """A named reference transform: ``transform(ref_uint8) -> ref_uint8``.

    Attributes:
        kind: ``"ref-scale"`` or ``"luminance"``.
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


_FLOAT = r"(?:\d+(?:\.\d*)?|\.\d+)"
_LUMINANCE_ITEM = re.compile(rf"^({_FLOAT})(?:([+-]{_FLOAT}))?$")


def parse_robustness(spec: str) -> tuple[str, list[RefTransform]]:
    """Parse ``"ref-scale=0.5,1,2"`` or ``"luminance=0.8,1.2+10"`` into its kind and transforms.

    Raises:
        RefsrError: an unknown kind, an empty list or an item that is not a positive number.
    """
    kind_text, sep, items_text = str(spec).partition("=")
    kind = _KIND_ALIASES.get(kind_text.strip().lower())
    if not sep or kind is None:
        raise RefsrError(
            f"bad --robustness {spec!r}; use ref-scale=F1,F2,... or luminance=G1,G2+S,... "
            f"(kinds: {', '.join(ROBUSTNESS_KINDS)})"
        )
    items = [item.strip() for item in items_text.split(",") if item.strip()]
    if not items:
        raise RefsrError(f"bad --robustness {spec!r}: give at least one value after '='")
    transforms = []
    for item in items:
        if kind == "ref-scale":
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
