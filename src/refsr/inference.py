"""Running a model on one's own images: :func:`upscale`.

This is the path users want most (see ``ecosystem.md``, part 1): any LR and reference size, no ground truth.
It turns images into tensors, pads them to the model's :class:`~refsr.models.SizeRule`, runs the model (in
overlapping tiles if asked), crops the padding away and turns the result back into the caller's image type.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.io import read_image
from refsr.models import DEFAULT_MODEL
from refsr.models._size import SizeRule, padded_size

__all__ = ["upscale", "resolve_model", "resolve_device", "image_to_tensor", "tensor_to_image", "pad_to_rule"]

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]


def image_to_tensor(image: ImageLike) -> torch.Tensor:
    """A PIL image, ``HxWx3`` uint8 array or file path as a ``(1,3,H,W)`` float32 RGB tensor in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        arr = read_image(image)
    elif isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise RefsrError(f"expected an HxWx3 uint8 RGB array, got shape {arr.shape} and dtype {arr.dtype}")
    else:
        raise RefsrError(f"expected a PIL image, a uint8 array or a file path, got {type(image).__name__}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RefsrError(f"the image has zero size ({arr.shape[1]}x{arr.shape[0]})")
    # torch.tensor copies, so read-only arrays (np.asarray of a PIL image) are fine.
    return torch.tensor(arr).permute(2, 0, 1)[None].float().div_(255)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """``(1,3,H,W)`` float in [0,1] -> ``HxWx3`` uint8, rounded as the official ``tensor2img`` does."""
    return t[0].detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"``, checked to be usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RefsrError(f"unknown device {device!r} ({exc}); use cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RefsrError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RefsrError("device 'mps' was asked for, but Apple's MPS is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise RefsrError(f"unsupported device {device!r}; use cpu, cuda or mps")
    return dev


def resolve_model(model: str | torch.nn.Module, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """A model from a registered name (``"default"`` is the shipped default model) or a module as it is."""
    if isinstance(model, torch.nn.Module):
        return model
    from refsr.hub import create_model

    if model == "default":
        return create_model(DEFAULT_MODEL, weights="default" if weights is None else weights)
    return create_model(model, weights=weights)


def pad_to_rule(x: torch.Tensor, multiple: int, minimum: int, mode: str, centre: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x (N,C,H,W)`` so both sides divide by ``multiple`` and are at least ``minimum``.

    Returns the padded tensor and the ``(top, left)`` padding, so the caller can crop the output back.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple, minimum) - h, padded_size(w, multiple, minimum) - w
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = (ph // 2, pw // 2) if centre else (0, 0)
    # "replicate" needs pad < size only for "reflect"; replicate and constant pad any amount.
    x = F.pad(x, (left, pw - left, top, ph - top), mode=mode)
    return x, (top, left)


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


def _blend_window(size: int, ramp: int, at_start: bool, at_end: bool, device: torch.device) -> torch.Tensor:
    """A 1-D weight that is 1 inside and ramps linearly to near 0 over ``ramp`` pixels at inner tile edges."""
    w = torch.ones(size, device=device)
    if ramp > 0:
        rising = (torch.arange(ramp, device=device, dtype=torch.float32) + 0.5) / ramp
        if not at_start:
            w[:ramp] = rising
        if not at_end:
            w[size - ramp:] = rising.flip(0)
    return w


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return starts


def _run_tiled(model: torch.nn.Module, lr: torch.Tensor, ref: torch.Tensor | None, tile: int, rule: SizeRule) -> torch.Tensor:
    """Run ``model`` on overlapping LR tiles (each matched against the whole reference) and blend the seams."""
    scale = model.scale
    tile = padded_size(max(tile, rule.min_lr), rule.lr_multiple, 1)
    overlap = min(tile // 4, 16)
    overlap = (overlap // rule.lr_multiple) * rule.lr_multiple or min(rule.lr_multiple, tile // 2)
    h, w = lr.shape[-2:]
    out = torch.zeros(lr.shape[0], 3, h * scale, w * scale, device=lr.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, device=lr.device)
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    from tqdm.auto import tqdm

    with tqdm(total=len(ys) * len(xs), desc="tiles", unit="tile", disable=len(ys) * len(xs) == 1, leave=False) as bar:
        for y in ys:
            for x in xs:
                patch = lr[..., y : y + tile, x : x + tile]
                sr = model(patch, ref)
                th, tw = sr.shape[-2:]
                wy = _blend_window(th, overlap * scale, y == 0, y + tile >= h, lr.device)
                wx = _blend_window(tw, overlap * scale, x == 0, x + tile >= w, lr.device)
                wgt = wy[:, None] * wx[None, :]
                out[..., y * scale : y * scale + th, x * scale : x * scale + tw] += sr * wgt
                weight[..., y * scale : y * scale + th, x * scale : x * scale + tw] += wgt
                bar.update(1)
    return out / weight


@torch.no_grad()
def upscale(
    lr: ImageLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    model: str | torch.nn.Module = "default",
    weights: str | os.PathLike | None = None,
    tile: int | None = None,
    device: str | torch.device = "cpu",
) -> Image.Image | np.ndarray:
    """Super-resolve ``lr`` with the help of ``ref``.

    Args:
        lr: the low-resolution image: a PIL image, an ``HxWx3`` uint8 RGB array, or a file path.
        ref: the reference (same types), a list of references (stacked as MASA does), or ``None`` for
            self-reference: the LR upscaled with PIL bicubic stands in as its own reference.
        model: a registered model name, ``"default"`` (the shipped default model), or an ``nn.Module``.
        weights: for a model name, what :func:`refsr.create_model` should load; ``None`` means the shipped
            weights for ``"default"`` and random initialisation otherwise.
        tile: the tile side in LR pixels; ``None`` runs the whole image at once.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"``.

    Returns:
        The SR image, ``scale`` times larger: a PIL image for PIL input, otherwise an ``HxWx3`` uint8 array.
    """
    dev = resolve_device(device)
    net = resolve_model(model, weights).to(dev).eval()
    rule: SizeRule = getattr(net, "size_rule", SizeRule())
    scale = int(getattr(net, "scale", 4))

    x = image_to_tensor(lr).to(dev)
    h, w = x.shape[-2:]
    r: torch.Tensor | None = None
    if getattr(net, "uses_ref", True):
        if ref is None:
            r = imresize((x * 255).round().to(torch.uint8), size=(h * scale, w * scale)).float() / 255
        elif isinstance(ref, (list, tuple)):
            if not ref:
                raise RefsrError("an empty list of references was given; pass None for self-reference")
            refs = [image_to_tensor(item).to(dev) for item in ref]
            r = refs[0] if len(refs) == 1 else stitch_references(refs, rule)
        else:
            r = image_to_tensor(ref).to(dev)
        r, _ = pad_to_rule(r, rule.ref_multiple, rule.min_ref, rule.pad_mode, centre=False)

    xp, (top, left) = pad_to_rule(x, rule.lr_multiple, rule.min_lr, rule.pad_mode, rule.centre_lr)
    if tile is not None and int(tile) < 1:
        raise RefsrError(f"tile must be a positive number of LR pixels, got {tile}")
    if tile is not None and (xp.shape[-2] > tile or xp.shape[-1] > tile):
        sr = _run_tiled(net, xp, r, int(tile), rule)
    else:
        sr = net(xp, r)
    sr = sr[..., top * scale : (top + h) * scale, left * scale : (left + w) * scale]
    out = tensor_to_image(sr)
    return Image.fromarray(out) if isinstance(lr, Image.Image) else out
