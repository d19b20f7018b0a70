"""Size rules declared as data.

A model says what its inputs must look like (:class:`SizeRule`); :func:`refsr.models.pad_inputs` and
:func:`refsr.models.run_padded` read the rule, pad the inputs to fit and crop the output back. Nothing in a
model asserts sizes on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SizeRule", "padded_size", "pad_to_rule"]


@dataclass(frozen=True)
class SizeRule:
    """What a model needs of its input sizes.

    Attributes:
        lr_multiple: the LR height and width must each divide by this.
        ref_multiple: the reference height and width must each divide by this.
        min_lr: the smallest LR side the model accepts (after padding).
        min_ref: the smallest reference side the model accepts (after padding).
        pad_mode: how inputs are padded to fit, a mode of ``torch.nn.functional.pad``. ``"replicate"``
            is what MASA's test loader does.
        centre_lr: pad the LR evenly on both sides (MASA's TestSet centres its padding), rather than only
            at the bottom and right.
    """

    lr_multiple: int = 1
    ref_multiple: int = 1
    min_lr: int = 1
    min_ref: int = 1
    pad_mode: str = "replicate"
    centre_lr: bool = False


def padded_size(size: int, multiple: int, minimum: int = 1) -> int:
    """The smallest size >= ``max(size, minimum)`` that divides by ``multiple``.

    >>> padded_size(37, 8), padded_size(40, 8), padded_size(3, 4, minimum=16)
    (40, 40, 16)
    """
    size = max(size, minimum)
    return -(-size // multiple) * multiple


def pad_to_rule(x: torch.Tensor, multiple: int, minimum: int, mode: str, centre: bool
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x (N,C,H,W)`` so both sides divide by ``multiple`` and are at least ``minimum``.

    Returns the padded tensor and the ``(top, left)`` padding, so the caller can crop the output back.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple, minimum) - h, padded_size(w, multiple, minimum) - w
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = (ph // 2, pw // 2) if centre else (0, 0)
    # "replicate" and "constant" pad any amount; only "reflect" needs pad < size.
    x = F.pad(x, (left, pw - left, top, ph - top), mode=mode)
    return x, (top, left)
