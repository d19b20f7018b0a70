"""Running a model on one's own images: :func:`upscale`.

This is the path users want most: any LR and reference size, no ground truth. It turns images into tensors, pads them to the model's :class:`~refsr.models.SizeRule`, runs the model (in
overlapping tiles when the whole image would not fit the memory budget), crops the padding away and turns
the result back into the caller's image type.

Memory. Every model declares its :class:`~refsr.models.MemoryCost` (``model.memory_cost``), a small table of
bytes per pixel calibrated by ``benchmarks/upscale.py --calibrate`` from the peak RSS of a child process.
:func:`predict_peak_memory` turns it into a predicted peak for given sizes and a tile side, and
:func:`choose_tile` picks the largest tile whose prediction fits ``max_memory``. Models that cache their
reference (``caches_reference``, e.g. MASA) encode it once before the first tile, so each tile pays only for
its LR side, the matching and the decoder.

Tiles. Tiles start on the model's LR grid (multiples of ``size_rule.lr_multiple``), so MASA's 8x8 matching
blocks are the same blocks as in the whole image. Neighbouring tiles overlap by ``2 * context + ramp`` LR
pixels: each tile's outer ``context`` pixels at an inner edge are discarded (they lack the context the
whole image would give), and over the next ``ramp`` pixels the two tiles cross-fade linearly. A model whose
receptive field fits in ``context`` (bicubic) gives exactly the untiled output.

Several references. ``multi_ref="stitch"`` stacks them vertically into one (MASA's multi-reference test);
``"per-tile"`` encodes each one, matches every tile against each and decodes the tile with the reference
whose mean match score is highest; ``"auto"`` picks per :data:`AUTO_MULTI_REF`.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.batch import is_terminal
from refsr.devices import resolve_device, resolve_precision
from refsr.errors import RefsrError
from refsr.hub import create_model
from refsr.imresize import imresize
from refsr.io import _to_rgb8, read_image, read_image_size
from refsr.models import DEFAULT_MODEL, MemoryCost, RefSRModel, get_entry, list_models
from refsr.models._base import PaddedInputs, pad_inputs
from refsr.models._size import SizeRule, pad_to_rule, padded_size

__all__ = [
    "upscale",
    "resolve_model",
    "image_to_tensor",
    "image_size",
    "tensor_to_image",
    "stitch_references",
    "self_reference",
    "encode_references",
    "reference_runner",
    "local_self_reference_runner",
    "run_tiles",
    "parse_memory",
    "predict_peak_memory",
    "choose_tile",
    "TilePlan",
    "UpscalePlan",
    "plan_upscale",
    "padded_reference_sizes",
    "minimum_budget",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_MATCHING",
    "MULTI_REF_MODES",
    "resolve_matching",
]

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]

#: The default memory budget of :func:`upscale` and ``refsr upscale`` (peak RSS of the whole process).
DEFAULT_MAX_MEMORY = 4 * 2**30

#: The matching :func:`upscale` asks of models that offer a choice (``model.matching_modes``, e.g. MASA's
#: exact or indexed coarse search). Its time grows linearly with the image instead of with LR x reference
#: pixels; what it costs in quality is measured by ``benchmarks/upscale.py --quality`` (README).
DEFAULT_MATCHING = "fast"

#: The ways of using several references.
MULTI_REF_MODES = ("stitch", "per-tile", "auto")

#: Models that encode their reference once (``encode_reference(..., strip_rows=)``) do it in horizontal strips
#: of about this many pixels, so that a large reference costs its cached features plus one strip.
REF_STRIP_PIXELS = 2**20

#: What ``multi_ref="auto"`` does. Measured (``benchmarks/upscale.py --multi-ref``: 7 open video pairs, the
#: pair's own reference plus one from another video, masa-lite after 400 training iterations, 128-pixel
#: tiles): per-tile matched the own-reference-only PSNR on every pair (it never chose the distractor), while
#: stitching lost 0.01-0.13 dB to the distractor. Per-tile also keeps MEM's windows within one reference.
AUTO_MULTI_REF = "per-tile"


# ---------------------------------------------------------------------- images <-> tensors


def _array_to_rgb8(arr: np.ndarray) -> np.ndarray:
    """An ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` uint8 or uint16 array as ``HxWx3`` uint8 RGB."""
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] == 4 else arr  # alpha is dropped, as refsr.io does for files
    elif arr.ndim != 2:
        raise RefsrError(f"expected an HxW or HxWx3 image array, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        # The same mapping as refsr.io for 16-bit files: 65535 -> 255.
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise RefsrError(
            f"expected a uint8 (or uint16) image array, got dtype {arr.dtype}; convert it, e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def image_to_tensor(image: ImageLike) -> torch.Tensor:
    """A PIL image, an image array or a file path as a ``(1,3,H,W)`` float32 RGB tensor in [0, 1].

    Arrays may be ``HxW`` (grey), ``HxWx3`` or ``HxWx4`` (alpha dropped), uint8 or uint16 (scaled by 1/257).
    PIL images of any mode and files follow :mod:`refsr.io`'s rules (grey replicated, alpha dropped, 16-bit
    scaled).
    """
    if isinstance(image, (str, os.PathLike)):
        arr = read_image(image)
    elif isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise RefsrError(f"the image has zero size ({image.width}x{image.height})")
        arr = _to_rgb8(image)
    elif isinstance(image, np.ndarray):
        arr = _array_to_rgb8(image)
    else:
        raise RefsrError(f"expected a PIL image, a uint8 array or a file path, got {type(image).__name__}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RefsrError(f"the image has zero size ({arr.shape[1]}x{arr.shape[0]})")
    # torch.tensor copies, so read-only arrays (np.asarray of a PIL image) are fine. The float copy gets dense
    # channels-last strides, not a permuted view's batch stride of 3 (the layout the models run in on the CPU;
    # see refsr.models.masa._in_layout for why odd strides matter).
    pixels = torch.tensor(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    out = torch.empty(pixels.shape, dtype=torch.float32, memory_format=torch.channels_last)
    return out.copy_(pixels).div_(255)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """``(1,3,H,W)`` float in [0,1] -> ``HxWx3`` uint8, rounded as the official ``tensor2img`` does."""
    return t[0].detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resolve_model(model: str | torch.nn.Module, weights: str | os.PathLike | None = None, *,
                  random_weights: bool = False) -> RefSRModel:
    """The model to run: a module as it is, or a registered name with its trained weights.

    A name means that model *with its shipped weights* (``"default"`` is the shipped default model), or with
    ``weights`` (a file, or ``"default"``) when given. A name that ships no weights and gets no file is an
    error that lists the models that do, unless ``random_weights`` asks for an untrained network on purpose
    (e.g. to time it). Models without parameters (``bicubic``) need no weights.
    """
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, RefSRModel):
            raise RefsrError(f"a {type(model).__name__} is not a refsr model: subclass refsr.models.RefSRModel, "
                             "which declares scale, size_rule, uses_ref and the rest that upscale reads")
        return model
    name = DEFAULT_MODEL if model == "default" else model
    if weights is not None:
        if random_weights:
            raise RefsrError("give weights or ask for random weights, not both")
        return create_model(name, weights=weights)
    if random_weights:
        return create_model(name).eval()
    entry = get_entry(name)
    if entry.weights is None:
        net = create_model(name)
        if any(True for _ in net.parameters()):
            shipped = ", ".join(list_models(pretrained=True)) or "none"
            raise RefsrError(
                f"model {name!r} ships no trained weights (models that do: {shipped}; see 'refsr models'); give "
                "--weights FILE (weights=), or --random-weights (random_weights=True) to run it untrained"
            )
        return net.eval()
    return create_model(name, weights="default")


def stitch_references(refs: Sequence[torch.Tensor], rule: SizeRule) -> torch.Tensor:
    """Several references as one, stacked vertically as MASA's multi-reference test does.

    Each reference is replicate-padded, centred, to the widest one's width (MASA pads each to 512x512) and
    the results are concatenated along the height.
    """
    width = max(r.shape[-1] for r in refs)
    width = padded_size(width, rule.ref_multiple, rule.min_ref)
    parts = []
    for r in refs:
        height = padded_size(r.shape[-2], rule.ref_multiple, 1)
        ph, pw = height - r.shape[-2], width - r.shape[-1]
        parts.append(F.pad(r, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate"))
    return torch.cat(parts, dim=-2)


# ---------------------------------------------------------------------- memory


_MEMORY_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: int | float | str) -> int:
    """A memory size in bytes from ``4G``, ``512M``, ``1.5GB``, ``4GiB`` or a plain number of bytes.

    Units are binary (``1G`` = 2**30 bytes), as ``free -h`` and ``top`` print them.
    """
    if isinstance(value, bool):
        raise RefsrError(f"bad memory size {value!r}; use e.g. 4G, 512M or a number of bytes")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if not found:
            raise RefsrError(f"bad memory size {value!r}; use e.g. 4G, 512M or a number of bytes")
        number, unit = float(found.group(1)), found.group(2).upper()
    size = int(number * _MEMORY_UNITS[unit])
    if size <= 0:
        raise RefsrError(f"the memory budget must be positive; got {value!r}")
    return size


def _format_memory(size: float, *, round_up: bool = False) -> str:
    """``size`` bytes as ``"877 MB"`` or ``"3.07 GB"``; ``round_up`` for a budget to suggest (it must suffice)."""
    rounding = math.ceil if round_up else round
    if size >= 2**30:
        return f"{rounding(size / 2**30 * 100) / 100:.2f} GB"
    return f"{rounding(size / 2**20):.0f} MB"


#: Predictions are multiplied by this: the measured peaks vary by a few percent from run to run (allocator).
MEMORY_MARGIN = 1.15


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def predict_peak_memory(
    cost: MemoryCost,
    *,
    parameters: int,
    image_size: tuple[int, int],
    tile_size: tuple[int, int],
    ref_pixels: int,
    ref_down_pixels: int | None = None,
    ref_strip_pixels: int | None = None,
    self_tiled: bool = False,
) -> int:
    """Predicted peak RSS in bytes (margin included) of upscaling an image in tiles of ``tile_size``.

    Args:
        cost: the model's :class:`MemoryCost`.
        parameters: the model's parameter count.
        image_size: ``(h, w)``, the padded LR.
        tile_size: ``(th, tw)`` of a tile (the whole image when not tiled).
        ref_pixels: pixels of all (padded) references together; 0 for models that ignore the reference.
        ref_down_pixels: pixels of the reference map a tile is matched against (default ``ref_pixels / 16``).
        ref_strip_pixels: pixels of one strip (halo included) when the reference is encoded in strips;
            default: all of ``ref_pixels`` at once.
        self_tiled: the model tiles the image itself (``tiles_exactly``, one reference): its
            ``per_image_pixel_tiled`` then counts instead of ``per_image_pixel``.
    """
    ref_down = ref_pixels / 16 if ref_down_pixels is None else ref_down_pixels
    tile_pixels = tile_size[0] * tile_size[1]
    image_pixels = image_size[0] * image_size[1]
    # A model that tiles itself keeps other whole-image maps (and no float canvas) when it runs in tiles.
    tiled = self_tiled and tile_pixels < image_pixels and cost.per_image_pixel_tiled > 0
    per_image = cost.per_image_pixel_tiled if tiled else cost.per_image_pixel
    base = cost.fixed + cost.per_parameter * parameters + per_image * image_pixels
    strip = ref_pixels if ref_strip_pixels is None else min(ref_strip_pixels, ref_pixels)
    encoding = cost.per_ref_pixel * ref_pixels + cost.per_ref_pixel_encoding * strip
    tiles = (cost.per_ref_pixel * ref_pixels + cost.per_tile_pixel * tile_pixels
             + cost.per_match * tile_pixels * ref_down + (cost.matching_workspace if ref_pixels else 0))
    return int(MEMORY_MARGIN * (base + max(encoding, tiles)))


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut: ``tile`` is ``None`` for the whole image at once.

    Attributes:
        tile: the tile side in LR pixels (a multiple of the model's LR multiple), or ``None``.
        overlap: LR pixels shared by neighbouring tiles (``2 * context + ramp``).
        context: LR pixels each tile discards at an inner edge.
        ramp: LR pixels of the linear cross-fade.
        predicted_peak: the predicted peak RSS in bytes.
        self_tiled: the model runs the tiles itself, exactly (``forward_tiled``), instead of cross-faded
            tiles; ``overlap``, ``context`` and ``ramp`` then do not apply.
    """

    tile: int | None
    overlap: int
    context: int
    ramp: int
    predicted_peak: int
    self_tiled: bool = False


def _overlap_for(cost: MemoryCost, rule: SizeRule) -> tuple[int, int, int]:
    """``(context, ramp, overlap)`` rounded so that tiles stay on the model's LR grid."""
    context, ramp = cost.context, cost.ramp
    overlap = padded_size(2 * context + ramp, rule.lr_multiple, 1)
    ramp = overlap - 2 * context  # any rounding goes to the cross-fade
    return context, ramp, overlap


def choose_tile(
    model: RefSRModel,
    image_size: tuple[int, int],
    ref_pixels: int,
    max_memory: int,
    *,
    tile: int | None = None,
    ref_down_pixels: int | None = None,
    ref_strip_pixels: int | None = None,
    self_tiled: bool = False,
) -> TilePlan:
    """The tiling for a padded LR of ``image_size`` under ``max_memory`` bytes.

    With ``tile=None`` this is the whole image if it fits, otherwise the largest tile (a multiple of the
    model's LR multiple, at least twice the overlap, at most the model's ``max_tile``) whose predicted peak
    fits. A given ``tile`` is kept (rounded up to the LR multiple, cut to ``max_tile``). The budget is
    checked either way. ``self_tiled``: the model will tile the image itself (``tiles_exactly``, one
    reference): its ``max_tile`` and its own whole-image cost apply.

    Raises:
        RefsrError: when nothing fits; the message says what budget would.
    """
    cost = model.memory_cost
    rule = model.size_rule
    context, ramp, overlap = _overlap_for(cost, rule)
    h, w = image_size
    peak = _peak_function(model, image_size, ref_pixels, ref_down_pixels, ref_strip_pixels, self_tiled)
    smallest = _smallest_tile(model)
    if tile is not None:
        candidates = [_tile_side(model, tile, self_tiled)]
    else:
        largest = _tile_side(model, None, self_tiled)
        # Whole when it fits; a model that tiles itself runs tiles of its limit even then (faster, and the
        # same result).
        if max(h, w) <= largest and peak(h, w) <= max_memory:
            return TilePlan(None, overlap, context, ramp, peak(h, w))
        top = min(padded_size(max(h, w), rule.lr_multiple, 1), largest)
        candidates = list(range(top, smallest - 1, -rule.lr_multiple)) or [smallest]
    for side in candidates:
        predicted = peak(min(side, h), min(side, w))
        if predicted <= max_memory:
            cut = side < h or side < w
            return TilePlan(side if cut else None, overlap, context, ramp, predicted, self_tiled and cut)
    needed = _format_memory(peak(min(candidates[-1], h), min(candidates[-1], w)), round_up=True)
    what = f"even tiles of {candidates[-1]} LR pixels need" if tile is None else f"tiles of {candidates[-1]} px need"
    raise RefsrError(
        f"the memory budget of {_format_memory(max_memory)} is too small: {what} about {needed} (the "
        f"reference's features alone take {_format_memory(cost.per_ref_pixel * ref_pixels)}); raise "
        f"--max-memory (max_memory=) to at least {needed}, or use a smaller reference"
        + ("" if tile is None else " or --tile")
    )


def _peak_function(model: RefSRModel, image_size: tuple[int, int], ref_pixels: int,
                   ref_down_pixels: int | None, ref_strip_pixels: int | None,
                   self_tiled: bool = False) -> Callable[[int, int], int]:
    """``(tile h, tile w) -> predicted peak`` for ``model`` on a padded LR of ``image_size``."""
    cost = model.memory_cost
    parameters = _parameter_count(model)

    def peak(th: int, tw: int) -> int:
        return predict_peak_memory(cost, parameters=parameters, image_size=image_size, tile_size=(th, tw),
                                   ref_pixels=ref_pixels, ref_down_pixels=ref_down_pixels,
                                   ref_strip_pixels=ref_strip_pixels, self_tiled=self_tiled)

    return peak


def _tile_side(model: RefSRModel, tile: int | None, self_tiled: bool) -> int:
    """The tile side a plan uses for a forced ``tile`` (``None``: the largest the model takes; a very large
    number when it has no limit): on the model's LR grid, no smaller than :func:`_smallest_tile`, and no
    larger than ``max_tile`` for a model that tiles itself (it runs no larger one)."""
    rule = model.size_rule
    smallest = _smallest_tile(model)
    limit = model.max_tile if self_tiled and model.tiles_exactly and model.max_tile else None
    if tile is None:
        return sys.maxsize if limit is None else padded_size(max(limit, smallest), rule.lr_multiple, 1)
    side = padded_size(max(int(tile), rule.min_lr, smallest), rule.lr_multiple, 1)
    return side if limit is None else min(side, padded_size(max(limit, smallest), rule.lr_multiple, 1))


def _smallest_tile(model: RefSRModel) -> int:
    """The smallest tile side :func:`choose_tile` uses: twice the overlap, on the model's LR grid."""
    rule = model.size_rule
    overlap = _overlap_for(model.memory_cost, rule)[2]
    return padded_size(max(2 * overlap, rule.min_lr), rule.lr_multiple, 1)


def minimum_budget(
    model: RefSRModel,
    image_size: tuple[int, int],
    ref_pixels: int,
    *,
    tile: int | None = None,
    ref_down_pixels: int | None = None,
    ref_strip_pixels: int | None = None,
    self_tiled: bool = False,
) -> int:
    """The smallest ``max_memory`` for which :func:`choose_tile` finds a plan (same arguments).

    That is the predicted peak at the smallest usable tile, or at ``tile`` when one is forced.
    """
    side = _smallest_tile(model) if tile is None else _tile_side(model, tile, self_tiled)
    peak = _peak_function(model, image_size, ref_pixels, ref_down_pixels, ref_strip_pixels, self_tiled)
    return peak(min(side, image_size[0]), min(side, image_size[1]))


# ---------------------------------------------------------------------- planning from sizes


@dataclass(frozen=True)
class UpscalePlan:
    """How :func:`upscale` runs an LR with its references, decided from their sizes alone (nothing decoded).

    Attributes:
        lr_size: ``(h, w)`` of the LR padded to the model's size rule.
        tiles: the :class:`TilePlan`.
        multi_ref: ``"per-tile"`` or ``"stitch"`` (also for a single reference).
        local_self_reference: no reference was given and the whole self-reference does not fit the budget:
            each tile takes its own LR, upscaled, as its reference.
    """

    lr_size: tuple[int, int]
    tiles: TilePlan
    multi_ref: str
    local_self_reference: bool

    @property
    def tile_count(self) -> int:
        """How many tiles the LR is cut into (1 when it runs whole)."""
        if self.tiles.tile is None:
            return 1
        h, w = self.lr_size
        th, tw = min(self.tiles.tile, h), min(self.tiles.tile, w)
        return len(_tile_starts(h, th, self.tiles.overlap)) * len(_tile_starts(w, tw, self.tiles.overlap))


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def padded_reference_sizes(rule: SizeRule, sizes: Sequence[tuple[int, int]], mode: str) -> list[tuple[int, int]]:
    """The ``(h, w)`` of the references :func:`upscale` feeds the model: stitched when ``mode`` says so, then
    padded to the size rule (as :func:`stitch_references` and :func:`pad_to_rule` do)."""
    sizes = list(sizes)
    if mode == "stitch" and len(sizes) > 1:
        width = padded_size(max(w for _, w in sizes), rule.ref_multiple, rule.min_ref)
        sizes = [(sum(padded_size(h, rule.ref_multiple, 1) for h, _ in sizes), width)]
    return [(padded_size(h, rule.ref_multiple, rule.min_ref), padded_size(w, rule.ref_multiple, rule.min_ref))
            for h, w in sizes]


def plan_upscale(
    model: RefSRModel,
    lr_size: tuple[int, int],
    ref_sizes: Sequence[tuple[int, int]] | None,
    max_memory: int,
    *,
    tile: int | None = None,
    multi_ref: str = "auto",
    lr_name: str = "the LR",
    ref_names: Sequence[str] | None = None,
) -> UpscalePlan:
    """Plan :func:`upscale` from sizes: check the budget before any image is decoded.

    Args:
        model: the model (its size rule, scale and memory cost).
        lr_size: ``(h, w)`` of the LR as given (unpadded).
        ref_sizes: ``(h, w)`` of each reference, or ``None`` for self-reference.
        max_memory: the budget in bytes.
        tile: a forced tile side, or ``None``.
        multi_ref: as :func:`upscale`.
        lr_name, ref_names: how error messages name the inputs (e.g. their paths).

    Raises:
        RefsrError: nothing fits the budget; the message names the input that is too large (the LR or a
            reference) when it is the cause, and always the budget that would work.
    """
    if multi_ref not in MULTI_REF_MODES:
        raise RefsrError(f"unknown multi_ref {multi_ref!r}; use one of {', '.join(MULTI_REF_MODES)}")
    rule, scale = model.size_rule, int(model.scale)
    h, w = lr_size
    padded = (padded_size(h, rule.lr_multiple, rule.min_lr), padded_size(w, rule.lr_multiple, rule.min_lr))
    self_reference = ref_sizes is None
    refs: list[tuple[int, int]] = []
    mode = "stitch"
    if model.uses_ref:
        given = [(h * scale, w * scale)] if self_reference else list(ref_sizes)  # type: ignore[arg-type]
        if not given:
            raise RefsrError("an empty list of references was given; pass None for self-reference")
        mode = _resolve_multi_ref(multi_ref, model) if len(given) > 1 else "stitch"
        refs = padded_reference_sizes(rule, given, mode)
    ref_pixels = sum(rh * rw for rh, rw in refs)
    ref_down_pixels = max((rh * rw for rh, rw in refs), default=0) // 16
    strip_pixels = max((_strip_pixels(model, r) for r in refs), default=0) if model.caches_reference else None
    # One reference (several are stitched into one): a model that tiles itself does (run_with_references).
    self_tiled = model.tiles_exactly and model.caches_reference and len(refs) == 1
    try:
        tiles = choose_tile(model, padded, ref_pixels, max_memory, tile=tile, ref_down_pixels=ref_down_pixels,
                            ref_strip_pixels=strip_pixels, self_tiled=self_tiled)
        return UpscalePlan(padded, tiles, mode, False)
    except RefsrError:
        pass
    needed = minimum_budget(model, padded, ref_pixels, tile=tile, ref_down_pixels=ref_down_pixels,
                            ref_strip_pixels=strip_pixels, self_tiled=self_tiled)
    if self_reference and refs and tile is None:
        # A self-reference is the whole LR upscaled: for a large LR it outgrows the budget by itself
        # (1024^2 LR -> 4096^2 reference). Each tile then takes its own upscaled LR as its reference: the
        # reference shrinks with the tile, so some tile size fits.
        try:
            return UpscalePlan(padded, _local_self_reference_plan(model, padded, scale, max_memory), mode, True)
        except RefsrError:
            side = _smallest_tile(model)
            local_pixels = min(side, padded[0]) * scale * min(side, padded[1]) * scale
            needed = min(needed, minimum_budget(model, padded, local_pixels, tile=side,
                                                ref_down_pixels=local_pixels // 16))
    raise _budget_error(model, padded, (h, w), refs if not self_reference else [], ref_sizes, needed,
                        max_memory, tile, lr_name, ref_names)


def _budget_error(model: RefSRModel, padded: tuple[int, int], lr_size: tuple[int, int],
                  refs: list[tuple[int, int]], ref_sizes: Sequence[tuple[int, int]] | None, needed: int,
                  budget: int, tile: int | None, lr_name: str, ref_names: Sequence[str] | None) -> RefsrError:
    """The one-line error for a budget that nothing fits: who is too large, and the budget that works."""
    cost = model.memory_cost
    at_least = _format_memory(needed, round_up=True)
    advice = f"raise --max-memory (max_memory=) to at least {at_least}"
    image_part = MEMORY_MARGIN * cost.per_image_pixel * padded[0] * padded[1]
    ref_part = MEMORY_MARGIN * cost.per_ref_pixel * sum(rh * rw for rh, rw in refs)
    # Blame the larger of the two parts that grow with the inputs, when it is a large share of the need.
    if image_part >= ref_part and image_part >= needed / 3:
        return RefsrError(
            f"{lr_name} ({_size(lr_size)}) is too large for the memory budget of {_format_memory(budget)}: "
            f"its output alone takes {_format_memory(image_part)} and the whole run at least {at_least}; "
            f"{advice}, or give a smaller image"
        )
    if ref_sizes and ref_part > image_part and ref_part >= needed / 3:
        largest = max(range(len(ref_sizes)), key=lambda i: ref_sizes[i][0] * ref_sizes[i][1])
        name = ref_names[largest] if ref_names else f"#{largest + 1}"
        return RefsrError(
            f"the reference {name} ({_size(ref_sizes[largest])}) is too large for the memory budget of "
            f"{_format_memory(budget)}: the references' features alone take {_format_memory(ref_part)} and "
            f"the whole run at least {at_least}; {advice}, or use a smaller reference"
        )
    what = f"tiles of {tile} LR pixels" if tile is not None else "even the smallest tiles"
    return RefsrError(
        f"the memory budget of {_format_memory(budget)} is too small: {what} need about {at_least} (the "
        f"model and libraries alone take {_format_memory(MEMORY_MARGIN * cost.fixed)}); {advice}"
    )


# ---------------------------------------------------------------------- tiling


def _blend_window(size: int, context: int, ramp: int, at_start: bool, at_end: bool, device: torch.device) -> torch.Tensor:
    """A 1-D weight: 0 over ``context`` pixels at inner edges, then a linear ramp over ``ramp``, then 1.

    Two neighbours overlapping by ``2 * context + ramp`` have ramps that sum to exactly 1.
    """
    w = torch.ones(size, device=device)
    rising = (torch.arange(ramp, device=device, dtype=torch.float32) + 0.5) / max(ramp, 1)
    if not at_start:
        w[:context] = 0
        w[context : context + ramp] = rising
    if not at_end:
        w[size - context :] = 0
        w[size - context - ramp : size - context] = rising.flip(0)
    return w


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` along ``length`` overlapping by at least ``overlap``; the last ends at ``length``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    return list(range(0, length - tile, step)) + [length - tile]


def _progress(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = is_terminal(sys.stderr)
    return tqdm(total=total, desc=desc, unit="tile", disable=not enabled or total <= 1, leave=False,
                file=sys.stderr)


def _run_tiled(
    run_tile: Callable[[torch.Tensor], torch.Tensor],
    lr: torch.Tensor,
    scale: int,
    plan: TilePlan,
    progress: bool | None,
) -> torch.Tensor:
    """Run ``run_tile`` on overlapping LR tiles of ``lr (N,3,h,w)`` and blend them into ``(N,3,sh,sw)``.

    The weight of a tile is separable (a row ramp times a column ramp) and the tiles form a grid, so the
    sum of weights is the outer product of two 1-D sums: no full-size weight map is needed.
    """
    assert plan.tile is not None
    tile = plan.tile
    h, w = lr.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _tile_starts(h, th, plan.overlap), _tile_starts(w, tw, plan.overlap)
    out = torch.zeros(lr.shape[0], 3, h * scale, w * scale, device=lr.device)
    row_weight = torch.zeros(h * scale, device=lr.device)
    col_weight = torch.zeros(w * scale, device=lr.device)
    context, ramp = plan.context * scale, plan.ramp * scale
    row_windows = {y: _blend_window(th * scale, context, ramp, y == 0, y + th >= h, lr.device) for y in ys}
    col_windows = {x: _blend_window(tw * scale, context, ramp, x == 0, x + tw >= w, lr.device) for x in xs}
    for y in ys:
        row_weight[y * scale : (y + th) * scale] += row_windows[y]
    for x in xs:
        col_weight[x * scale : (x + tw) * scale] += col_windows[x]

    with _progress(len(ys) * len(xs), progress, "tiles") as bar:
        for y in ys:
            for x in xs:
                sr = run_tile(lr[..., y : y + th, x : x + tw])
                weight = row_windows[y][:, None] * col_windows[x][None, :]
                out[..., y * scale : (y + th) * scale, x * scale : (x + tw) * scale].addcmul_(sr, weight)
                del sr
                bar.update(1)
    return out.div_(row_weight[:, None]).div_(col_weight[None, :])


# ---------------------------------------------------------------------- references


def self_reference(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR upscaled with PIL bicubic: the stand-in reference when none is given (``(1,3,sh,sw)``)."""
    h, w = x.shape[-2:]
    return imresize((x * 255).round().to(torch.uint8), size=(h * scale, w * scale)).float().div_(255)


def _reference_tensors(ref: ImageLike | Sequence[ImageLike] | None, x: torch.Tensor, scale: int,
                       device: torch.device) -> list[torch.Tensor]:
    if ref is None:
        return [self_reference(x, scale)]
    if isinstance(ref, (list, tuple)):
        if not ref:
            raise RefsrError("an empty list of references was given; pass None for self-reference")
        return [image_to_tensor(item).to(device) for item in ref]
    return [image_to_tensor(ref).to(device)]


def _resolve_multi_ref(multi_ref: str, model: RefSRModel) -> str:
    if multi_ref not in MULTI_REF_MODES:
        raise RefsrError(f"unknown multi_ref {multi_ref!r}; use one of {', '.join(MULTI_REF_MODES)}")
    mode = AUTO_MULTI_REF if multi_ref == "auto" else multi_ref
    if mode == "per-tile" and not model.caches_reference:
        # Choosing per tile needs the model's matching on its own; without it, stitch.
        return "stitch"
    return mode


# ---------------------------------------------------------------------- upscale


@torch.no_grad()
def upscale(
    lr: ImageLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    model: str | torch.nn.Module = "default",
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    tile: int | None = None,
    device: str | torch.device = "cpu",
    max_memory: int | str = DEFAULT_MAX_MEMORY,
    multi_ref: str = "auto",
    progress: bool | None = None,
    matching: str | None = None,
    precision: str = "auto",
) -> Image.Image | np.ndarray:
    """Super-resolve ``lr`` with the help of ``ref``.

    Args:
        lr: the low-resolution image: a PIL image (any mode), an ``HxW``/``HxWx3``/``HxWx4`` uint8 (or uint16)
            array, or a file path. Grey is replicated to RGB, alpha is dropped, 16-bit is scaled to 8.
        ref: the reference (same types), a list of references, or ``None`` for self-reference: the LR
            upscaled with PIL bicubic stands in as its own reference. When that whole self-reference does
            not fit ``max_memory`` (a large LR), each tile takes its own upscaled LR as its reference.
        model: a registered model name, ``"default"`` (the shipped default model), or an ``nn.Module``. A name
            runs with its shipped weights; one that ships none needs ``weights`` or ``random_weights``.
        weights: for a model name, a weights file (``.safetensors`` or an official ``.pth``) or ``"default"``;
            ``None``: the name's shipped weights.
        random_weights: run a name that ships no weights untrained, on purpose (e.g. for timing).
        tile: the tile side in LR pixels; ``None`` chooses it from ``max_memory`` (the whole image when it
            fits).
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        max_memory: the budget for the process's peak memory, in bytes or as ``"4G"``/``"512M"``.
        multi_ref: with several references, ``"stitch"`` (stacked into one, as MASA's multi-reference test),
            ``"per-tile"`` (each tile uses the reference it matches best) or ``"auto"``.
        progress: a progress bar over tiles on stderr; ``None``: only when stderr is a terminal.
        matching: for models that offer a choice (``model.matching_modes``: MASA's ``"exact"`` or
            ``"fast"`` coarse search), which one; ``None``: :data:`DEFAULT_MATCHING`.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bfloat16 on CPUs with bfloat16 hardware, for
            models that run in it: :func:`refsr.devices.resolve_precision`). A model passed as a module is
            converted on a copy; the caller's stays as it is.

    Returns:
        The SR image, ``scale`` times larger: a PIL image (RGB) for PIL input, otherwise an ``HxWx3`` uint8
        RGB array (also for a path).

    Raises:
        RefsrError: unreadable or bad input, an unusable device, or a budget too small for the reference.
    """
    budget = parse_memory(max_memory)
    if tile is not None and (isinstance(tile, bool) or int(tile) < 1):
        raise RefsrError(f"tile must be a positive number of LR pixels, got {tile}")
    dev = resolve_device(device)
    net, matching = prepare_model(model, weights, random_weights=random_weights, device=dev, matching=matching,
                                  precision=precision)
    rule, scale = net.size_rule, net.scale

    # Plan from the sizes first (a file's header only): an image that cannot fit the budget is refused
    # before it is decoded.
    given = None if ref is None else (list(ref) if isinstance(ref, (list, tuple)) else [ref])
    uses_ref = net.uses_ref
    plan = plan_upscale(
        net, image_size(lr), [image_size(r) for r in given] if given is not None and uses_ref else None,
        budget, tile=tile, multi_ref=multi_ref, lr_name=_input_name(lr, "the LR image"),
        ref_names=[_input_name(r, f"#{i + 1}") for i, r in enumerate(given or [])],
    )

    x = image_to_tensor(lr).to(dev)
    padded = pad_inputs(net, x)
    refs: list[torch.Tensor] = []
    if uses_ref and not plan.local_self_reference:
        refs = _reference_tensors(ref, x, scale, dev)
        if plan.multi_ref == "stitch" and len(refs) > 1:
            refs = [stitch_references(refs, rule)]
        refs = [pad_to_rule(r, rule.ref_multiple, rule.min_ref, rule.pad_mode, centre=False)[0] for r in refs]
    del x

    if plan.local_self_reference:
        sr = run_tiles(local_self_reference_runner(net, scale, matching), padded.lr, scale, plan.tiles, progress)
        out = output_to_image(padded.crop(sr))
    else:
        prepared = encode_references(net, refs, matching)
        if net.caches_reference:
            refs.clear()  # the caches are all that is needed now
        out = run_with_references(net, padded, prepared, plan.tiles, matching, progress)
    return Image.fromarray(out) if isinstance(lr, Image.Image) else out


def prepare_model(model: str | torch.nn.Module, weights: str | os.PathLike | None = None, *,
                  random_weights: bool = False, device: str | torch.device = "cpu", matching: str | None = None,
                  precision: str = "auto") -> tuple[RefSRModel, str | None]:
    """The model :func:`upscale` runs, on its device and in its dtype, and the matching to ask of it.

    A model passed as a module and run in another dtype is converted on a copy; the caller's stays as it is.
    The arguments are those of :func:`upscale`.
    """
    dev = resolve_device(device)
    net = resolve_model(model, weights, random_weights=random_weights).to(dev).eval()
    matching = resolve_matching(net, matching)
    dtype = resolve_precision(precision, dev, net.precisions)
    current = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    if dtype != current:
        net = copy.deepcopy(net).to(dtype) if isinstance(model, torch.nn.Module) else net.to(dtype)
    return net, matching


def output_to_image(sr: torch.Tensor) -> np.ndarray:
    """A cropped SR output ``(1,3,H,W)`` of any float dtype -> ``HxWx3`` uint8, rounded."""
    # In place: at 4096^2 every float copy of the output is 200 MB. Inputs and outputs are float32 whatever
    # the model computes in (MASA keeps its bicubic skip in float32).
    return sr[0].float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def run_with_references(net: RefSRModel, padded: PaddedInputs, prepared: Sequence[Any], tiles: TilePlan,
                        matching: str | None, progress: bool | None) -> np.ndarray:
    """The uint8 SR of ``padded.lr`` (cropped), with references from :func:`encode_references` (none: the
    model runs without).

    A model that tiles itself exactly (``tiles_exactly``) does so when the plan says so (``tiles.self_tiled``:
    it was made for one reference) and there is one; otherwise :func:`reference_runner` runs whole or in
    cross-faded tiles (:func:`run_tiles`).
    """
    if tiles.self_tiled and tiles.tile is not None and len(prepared) == 1:
        # The model tiles itself, exactly (MASA: stage by stage, whole-image matching and statistics).
        return _run_exact_tiles(net, prepared[0], padded.lr, tiles.tile, padded, matching, progress)
    sr = run_tiles(reference_runner(net, prepared, matching), padded.lr, net.scale, tiles, progress)
    return output_to_image(padded.crop(sr))


def resolve_matching(net: RefSRModel, matching: str | None) -> str | None:
    """The matching to ask of ``net``: ``None`` for a model without a choice, else ``matching`` checked
    against ``net.matching_modes`` (``None``: :data:`DEFAULT_MATCHING`).

    Raises:
        RefsrError: a matching the model does not offer, or any matching for a model without a choice.
    """
    if not net.matching_modes:
        if matching is not None:
            raise RefsrError(f"this model ({type(net).__name__}) has no choice of matching; leave matching unset")
        return None
    matching = DEFAULT_MATCHING if matching is None else matching
    if matching not in net.matching_modes:
        raise RefsrError(f"unknown matching {matching!r}; use one of {', '.join(net.matching_modes)}")
    return matching


def _matching_kwargs(matching: str | None) -> dict[str, str]:
    """The keyword a model with a choice of matching takes (none for the others)."""
    return {} if matching is None else {"matching": matching}


def _run_exact_tiles(net: RefSRModel, cache: Any, lr: torch.Tensor, tile: int, padded: PaddedInputs,
                     matching: str | None, progress: bool | None) -> np.ndarray:
    """``net.forward_tiled`` on the padded LR, its tiles written straight into the cropped uint8 result."""
    (top, left), (h, w), s = padded.offset, padded.size, padded.scale
    out = np.empty((h * s, w * s, 3), dtype=np.uint8)
    crop_top, crop_left = top * s, left * s

    def write(y: int, x: int, sr: torch.Tensor) -> None:
        # The part of this output tile inside the crop, in the tile's and in the result's coordinates.
        y0, x0 = max(y, crop_top), max(x, crop_left)
        y1, x1 = min(y + sr.shape[-2], crop_top + h * s), min(x + sr.shape[-1], crop_left + w * s)
        if y1 > y0 and x1 > x0:
            part = sr[..., y0 - y : y1 - y, x0 - x : x1 - x]
            out[y0 - crop_top : y1 - crop_top, x0 - crop_left : x1 - crop_left] = tensor_to_image(part.float())

    with _progress(0, progress, "tiles") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        net.forward_tiled(lr, cache, tile=tile, write=write, progress=advance, **_matching_kwargs(matching))
    return out


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(h, w)`` of an image :func:`image_to_tensor` accepts; a file's size comes from its header alone.

    Raises:
        RefsrError: an unreadable file, an unsupported type or a zero-size image.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image_size(image)
    if isinstance(image, Image.Image):
        size = (image.height, image.width)
    elif isinstance(image, np.ndarray) and image.ndim in (2, 3):
        size = (int(image.shape[0]), int(image.shape[1]))
    else:
        return tuple(image_to_tensor(image).shape[-2:])  # type: ignore[return-value]  # raises the error
    if 0 in size:
        raise RefsrError(f"the image has zero size ({size[1]}x{size[0]})")
    return size


def _input_name(image: ImageLike, fallback: str) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else fallback


def _local_self_reference_plan(net: RefSRModel, image_size: tuple[int, int], scale: int,
                               budget: int) -> TilePlan:
    """The largest tile whose run fits ``budget`` when its reference is the tile's own LR upscaled ``scale``x."""
    rule = net.size_rule
    h, w = image_size
    last_error: RefsrError | None = None
    # whole-image sides are skipped: the whole LR with its whole self-reference has just failed to fit
    for side in range(padded_size(max(h, w), rule.lr_multiple, 1) - rule.lr_multiple, 0, -rule.lr_multiple):
        th, tw = min(side, h), min(side, w)
        ref_pixels = th * scale * tw * scale
        try:
            plan = choose_tile(net, image_size, ref_pixels, budget, tile=side, ref_down_pixels=ref_pixels // 16)
        except RefsrError as error:
            last_error = error
            continue
        if plan.tile == side:  # below the smallest usable tile, choose_tile rounds up: our estimate was low
            return plan
    raise last_error or RefsrError(f"the memory budget of {_format_memory(budget)} is too small for this image")


def local_self_reference_runner(net: RefSRModel, scale: int,
                                matching: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A tile runner whose reference is each tile's own LR upscaled ``scale``x (see :class:`UpscalePlan`);
    ``matching`` from :func:`resolve_matching`."""
    rule = net.size_rule
    kwargs = _matching_kwargs(matching)

    def run(tile: torch.Tensor) -> torch.Tensor:
        ref = self_reference(tile, scale)
        ref = pad_to_rule(ref, rule.ref_multiple, rule.min_ref, rule.pad_mode, centre=False)[0]
        return net(tile, ref, **kwargs)

    return run


def _strip_rows(width: int) -> int:
    """Rows of a reference strip of about ``REF_STRIP_PIXELS`` pixels (a multiple of 4, at least 64)."""
    return max(64, REF_STRIP_PIXELS // max(width, 1) // 4 * 4)


def _strip_pixels(net: RefSRModel, ref_size: tuple[int, int]) -> int:
    """Pixels the model encodes at once for a reference of ``ref_size`` (h, w) when it encodes in strips."""
    halo = net.encoder_halo()
    height, width = ref_size
    return min(height, _strip_rows(width) + 2 * halo) * width


def encode_references(net: RefSRModel, refs: Sequence[torch.Tensor], matching: str | None = None) -> list[Any]:
    """Prepare each (padded) reference once, for any number of LR inputs (:func:`reference_runner`).

    Models that cache their reference (``caches_reference``, MASA) get its cache, encoded in strips (with the
    fast search's index when ``matching`` is ``"fast"``); for the others the tensor itself is what is reused.
    """
    if not net.caches_reference:
        return list(refs)
    kwargs = _matching_kwargs(matching)
    return [net.encode_reference(r, strip_rows=_strip_rows(r.shape[-1]), **kwargs) for r in refs]


def reference_runner(net: RefSRModel, prepared: Sequence[Any],
                     matching: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``lr tile (N,3,th,tw) -> SR (N,3,s*th,s*tw)`` over references from :func:`encode_references`.

    With several encoded references each tile is matched against every one and decoded with the one of the
    best mean match score (``multi_ref="per-tile"``). A model that cannot encode a reference on its own takes
    several references stitched (:func:`stitch_references`). ``matching`` from :func:`resolve_matching`.
    """
    prepared = list(prepared)
    kwargs = _matching_kwargs(matching)
    if not prepared:
        return lambda tile: net(tile, None, **kwargs)
    if not net.caches_reference:
        rule = net.size_rule
        ref = prepared[0]
        if len(prepared) > 1:
            ref = pad_to_rule(stitch_references(prepared, rule), rule.ref_multiple, rule.min_ref, rule.pad_mode,
                              centre=False)[0]
        return lambda tile: net(tile, ref, **kwargs)
    if len(prepared) == 1:
        cache = prepared[0]
        return lambda tile: net(tile, reference_cache=cache, **kwargs)

    def per_tile(tile: torch.Tensor) -> torch.Tensor:
        # Matching is cheap next to decoding: match the tile against every reference, decode with the best.
        scores = [float(net.match_reference(tile, c, **kwargs).score.mean()) for c in prepared]
        best = int(np.argmax(scores))
        return net(tile, reference_cache=prepared[best], **kwargs)

    return per_tile


def run_tiles(run_tile: Callable[[torch.Tensor], torch.Tensor], xp: torch.Tensor, scale: int, tiles: TilePlan,
              progress: bool | None) -> torch.Tensor:
    """``run_tile`` on the padded LR ``xp (N,3,h,w)``, whole or in the tiles of ``tiles`` -> ``(N,3,sh,sw)``."""
    if tiles.tile is None:
        return run_tile(xp)
    return _run_tiled(run_tile, xp, scale, tiles, progress)
