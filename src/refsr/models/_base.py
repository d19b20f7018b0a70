"""The contract every refsr network implements: :class:`RefSRModel`, its capabilities as data, and the one
pad -> run -> crop helper that reads them.

:func:`pad_inputs` pads LR and Ref to the model's :class:`~refsr.models.SizeRule` and
:meth:`PaddedInputs.crop` cuts the output back to exactly ``scale`` times the LR; :func:`run_padded` is the
two around one forward pass. :func:`refsr.upscale` (tiles), evaluation and training validation all go
through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from refsr.models._memory import GENERIC_MEMORY_COST, MemoryCost
from refsr.models._size import SizeRule, pad_to_rule

__all__ = ["RefSRModel", "PaddedInputs", "pad_inputs", "run_padded"]


class RefSRModel(torch.nn.Module):
    """Base class of refsr models: what inference, evaluation and training read off a model, declared once.

    Subclasses implement ``forward(lr, ref=None, **kwargs)`` with ``lr (N,3,h,w)`` and ``ref (N,3,H,W)``, RGB
    float in [0, 1], and return ``(N,3,scale*h,scale*w)``. They set, as class or instance attributes:

    Attributes:
        scale: the upscaling factor.
        size_rule: a :class:`SizeRule` that :func:`~refsr.models.run_padded` (and so :func:`refsr.upscale`,
            evaluation and validation) pads and crops to.
        uses_ref: False for single-image models, which ignore ``ref``.
        takes_ref_down: ``forward`` takes ``ref_down=`` (the PIL-bicubic ÷``scale`` reference, so that
            evaluation can feed exactly what an official data pipeline feeds); such a model makes it itself
            when it is not given.
        memory_cost: the :class:`~refsr.models.MemoryCost` that :func:`refsr.upscale` plans tiles with.
        exposes_correspondence: ``forward(..., return_correspondence=True)`` returns ``(sr, corr)``, the
            model's own :class:`~refsr.matching.Correspondence` (evaluation draws it in its figures).
        caches_reference: the model encodes a reference once and reuses it for every tile:
            ``encode_reference(ref, strip_rows=None) -> cache`` (in horizontal strips of ``strip_rows`` rows,
            each with :meth:`encoder_halo` rows of context), ``match_reference(lr, cache) ->``
            :class:`~refsr.matching.Correspondence` (cheap: picks the best of several references) and
            ``forward(lr, reference_cache=cache)``.
        matching_modes: the correspondence searches the model offers, exact one first; ``forward``,
            ``encode_reference``, ``match_reference`` and ``forward_tiled`` then take ``matching=`` (MASA:
            ``("exact", "fast")``). Empty: no choice.
        precisions: the number formats the model runs in (``"fp32"``, ``"bf16"``), for
            :func:`refsr.devices.resolve_precision`. Converted to another of them (``model.to(dtype)``), the
            model still takes float32 images and casts them itself.
        tiles_exactly: the model runs a whole image in tiles itself, with the untiled result:
            ``forward_tiled(lr, reference_cache, tile=, write=, matching=, progress=)`` (needs
            ``caches_reference``); :func:`refsr.upscale` uses it instead of cross-faded tiles.
        max_tile: for ``tiles_exactly`` models, the largest tile ``forward_tiled`` runs (a larger one is cut
            to it); the memory plan then never counts on a larger one. ``None``: no limit.
    """

    scale: int = 4
    size_rule: SizeRule = SizeRule()
    uses_ref: bool = True
    takes_ref_down: bool = False
    memory_cost: MemoryCost = GENERIC_MEMORY_COST
    exposes_correspondence: bool = False
    caches_reference: bool = False
    matching_modes: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    tiles_exactly: bool = False
    max_tile: int | None = None

    def encoder_halo(self) -> int:
        """Rows of context a reference strip needs to encode exactly as the whole reference (0: no strips)."""
        return 0

    @property
    def size_multiple(self) -> int:
        """What the LR height and width must divide by (``size_rule.lr_multiple``)."""
        return self.size_rule.lr_multiple


@dataclass
class PaddedInputs:
    """A model's inputs padded to its rule, and how to crop its output back.

    Attributes:
        lr: ``(N,3,h',w')`` the padded LR.
        ref: ``(N,3,H',W')`` the padded reference, or ``None`` (no reference, or a model without use for one).
        ref_down: the given Ref↓ when the reference needed no padding and the model takes one, else ``None``
            (the model then makes it from the padded reference, as the official loaders do).
        offset: ``(top, left)`` LR pixels padded in front of the LR.
        size: ``(h, w)`` of the LR before padding.
        scale: the model's factor.
    """

    lr: torch.Tensor
    ref: torch.Tensor | None
    ref_down: torch.Tensor | None
    offset: tuple[int, int]
    size: tuple[int, int]
    scale: int

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the forward pass besides ``lr`` and ``ref``."""
        return {} if self.ref_down is None else {"ref_down": self.ref_down}

    def crop(self, sr: torch.Tensor) -> torch.Tensor:
        """``(N,C,s*h',s*w')`` output of the padded LR -> ``(N,C,s*h,s*w)``, the part the LR covers."""
        (top, left), (h, w), s = self.offset, self.size, self.scale
        return sr[..., top * s : (top + h) * s, left * s : (left + w) * s]


def pad_inputs(model: RefSRModel, lr: torch.Tensor, ref: torch.Tensor | None = None, *,
               ref_down: torch.Tensor | None = None) -> PaddedInputs:
    """Pad ``lr`` and ``ref`` to ``model.size_rule``.

    The LR is padded (centred when the rule says so) to ``lr_multiple`` and ``min_lr``; the reference, for a
    model that uses one, bottom/right to ``ref_multiple`` and ``min_ref``, and for a model that takes Ref↓
    also to a multiple of its scale, so that Ref↓ has whole pixels. A Ref↓ is passed on only when the
    reference was not padded.
    """
    rule = model.size_rule
    scale = int(model.scale)
    h, w = lr.shape[-2:]
    padded_lr, offset = pad_to_rule(lr, rule.lr_multiple, rule.min_lr, rule.pad_mode, rule.centre_lr)
    padded_ref = None
    if ref is not None and model.uses_ref:
        multiple = math.lcm(rule.ref_multiple, scale) if model.takes_ref_down else rule.ref_multiple
        padded_ref, _ = pad_to_rule(ref, multiple, rule.min_ref, rule.pad_mode, centre=False)
    keep_down = model.takes_ref_down and ref_down is not None and padded_ref is not None \
        and padded_ref.shape == ref.shape  # type: ignore[union-attr]
    return PaddedInputs(padded_lr, padded_ref, ref_down if keep_down else None, offset, (h, w), scale)


def run_padded(model: RefSRModel, lr: torch.Tensor, ref: torch.Tensor | None = None, *,
               ref_down: torch.Tensor | None = None, **forward_kwargs: Any) -> torch.Tensor:
    """``model(lr, ref)`` on inputs of any size: padded to the model's rule, the output cropped back.

    Args:
        model: a :class:`~refsr.models.RefSRModel` (or its DDP wrapper's ``module``).
        lr: ``(N,3,h,w)`` RGB float in [0, 1].
        ref: ``(N,3,H,W)`` or ``None``.
        ref_down: ``(N,3,H/s,W/s)`` for models that take it (see :func:`pad_inputs`).
        **forward_kwargs: passed to ``forward``.

    Returns:
        ``(N,3,s*h,s*w)``.
    """
    inputs = pad_inputs(model, lr, ref, ref_down=ref_down)
    return inputs.crop(model(inputs.lr, inputs.ref, **inputs.forward_kwargs(), **forward_kwargs))
