"""SSEN's sampling points, drawn as the paper's Fig. 7 draws them.

SSEN (:mod:`refsr.models.ssen`) aligns the reference features with ``L`` stacked 3x3 modulated deformable
convolutions. The aligned feature at LR-grid position ``p`` is made by the last layer from 9 positions
``p + p_k + Δp_k(p)`` of the previous layer's output, each of which was made from 9 positions of the layer
before, and so on: ``9^L`` positions of the reference features in all (729 for 3 layers), which this module
computes and draws on the reference image.

- :func:`capture_offsets`: runs the model once with a forward hook on every SSEN deformable layer and returns
  each layer's offsets and modulation masks, in the order the layers run.
- :func:`compose_sampling_points`: the ``9^L`` positions of chosen LR-grid pixels, composed from the last
  layer back to the first. An intermediate position is fractional; the offsets there are read from the
  layer's offset field by bilinear interpolation, with zeros outside the map (the deformable convolution
  reads zeros there too). Strictly, a fractional sample mixes the sampling sets of its four neighbours;
  one offset per point is the approximation that gives the paper's ``9^L`` points. The products of the
  modulation scalars along each path come with them.
- :func:`draw_sampling_points`: two panels side by side, the HR-sized query image (the LR upscaled with PIL
  bicubic) with the chosen pixels marked, and the reference image with their sampling points, each pixel's
  points in its own colour.
- :func:`sampling_figure`: the three together for one LR/Ref pair, written to a PNG.
- :class:`SamplingFigureWriter`: an ``on_image`` hook of :func:`refsr.eval.runner.evaluate` that writes
  ``<name>_offsets.png`` for SSEN models.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from refsr.data.standard import upscale_pil
from refsr.errors import RefsrError
from refsr.eval.figures import grid_points
from refsr.eval.runner import safe_name
from refsr.io import write_image
from refsr.models.ssen import SSEN

__all__ = [
    "SamplingFigureWriter",
    "has_sampling_offsets",
    "capture_offsets",
    "compose_sampling_points",
    "draw_sampling_points",
    "kernel_taps",
    "sampling_figure",
]

_KERNEL = 3
_GAP = 8
_BACKGROUND = (255, 255, 255)


def kernel_taps(kernel: int = _KERNEL, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed offsets ``p_k`` of a ``kernel x kernel`` convolution with ``padding = kernel // 2``.

    Returns:
        ``(kernel*kernel, 2)`` ``(dy, dx)`` in tap order ``k = i*kernel + j`` (torchvision's), e.g. for 3x3
        ``(-1,-1), (-1,0), ..., (1,1)``.
    """
    r = torch.arange(kernel, dtype=dtype) - kernel // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack((dy.flatten(), dx.flatten()), dim=1)


def _ssen_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [dcn for module in model.modules() if isinstance(module, SSEN) for dcn in module.dcns]


def has_sampling_offsets(model: torch.nn.Module) -> bool:
    """Whether ``model`` contains SSEN deformable layers whose sampling points can be drawn."""
    return bool(_ssen_layers(model))


@torch.no_grad()
def capture_offsets(
    model: torch.nn.Module, lr: torch.Tensor, ref: torch.Tensor | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model(lr, ref)`` once and capture the offsets and masks each SSEN deformable layer receives.

    Args:
        model: a model containing :class:`refsr.models.ssen.SSEN` (``ssen``, ``ssen-self`` and variants).
        lr: ``(N, 3, h, w)`` RGB float in [0, 1], sides as the model's size rule asks.
        ref: ``(N, 3, H, W)`` RGB float in [0, 1], or None for ``ssen-self``.

    Returns:
        Per deformable layer, in the order the layers run: ``(offset (N, 18, h, w), mask (N, 9, h, w))``,
        offsets in LR-grid pixels (channel ``2k`` dy, ``2k+1`` dx), masks in (0, 1).

    Raises:
        RefsrError: the model has no SSEN deformable layer.
    """
    layers = _ssen_layers(model)
    if not layers:
        raise RefsrError(
            f"{type(model).__name__} has no SSEN deformable layers whose sampling points could be drawn; "
            "use an ssen model with num_dcn_layers >= 1"
        )
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        # SSEN calls each layer as dcn(features, offset, mask), positionally.
        captured.append((args[1].detach(), args[2].detach()))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        model(lr, ref)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _sample_field(field: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bilinear ``field (C, h, w)`` at ``positions (..., 2)`` (y, x) pixels, zero outside -> ``(..., C)``."""
    c, h, w = field.shape
    flat = positions.reshape(1, -1, 1, 2)
    # grid_sample with align_corners=False puts pixel centre i at (2i + 1) / size - 1.
    grid = torch.stack(((2 * flat[..., 1] + 1) / w - 1, (2 * flat[..., 0] + 1) / h - 1), dim=-1)
    values = F.grid_sample(field[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return values[0, :, :, 0].t().reshape(*positions.shape[:-1], c)


def compose_sampling_points(
    offsets: Sequence[torch.Tensor],
    pixels: torch.Tensor,
    masks: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``9^L`` reference-feature positions the stacked deformable layers sample for each pixel.

    Args:
        offsets: per layer, in the order the layers run, ``(18, h, w)`` offsets of one image (channel ``2k``
            dy, ``2k+1`` dx of tap ``k``), in feature-grid pixels.
        pixels: ``(P, 2)`` ``(y, x)`` positions on the ``h x w`` feature grid (the LR grid).
        masks: per layer ``(9, h, w)`` modulation scalars, or None (all ones).

    Returns:
        ``positions (P, 9^L, 2)`` ``(y, x)`` on the feature grid of the first layer's input (the reference
        features), float; and ``weights (P, 9^L)``, the product of the modulation scalars along each path.
        Point ``m`` enumerates the taps last layer first: ``m = k_L * 9^(L-1) + ... + k_1``.
    """
    if not offsets:
        raise RefsrError("compose_sampling_points needs the offsets of at least one layer")
    if masks is not None and len(masks) != len(offsets):
        raise RefsrError(f"got {len(offsets)} offset fields but {len(masks)} masks")
    dtype = offsets[0].dtype
    taps = kernel_taps(_KERNEL, dtype).to(offsets[0].device)
    positions = pixels.to(offsets[0].device, dtype)[:, None, :]  # (P, 1, 2)
    weights = torch.ones(positions.shape[:2], dtype=dtype, device=positions.device)
    for layer in reversed(range(len(offsets))):
        field = offsets[layer]
        if field.dim() != 3 or field.shape[0] != 2 * taps.shape[0]:
            raise RefsrError(
                f"offsets must be (18, h, w) per layer; got {tuple(field.shape)} at layer {layer}"
            )
        shift = _sample_field(field, positions).unflatten(-1, (taps.shape[0], 2))  # (P, M, 9, 2)
        if masks is None:
            scalars = torch.ones_like(shift[..., 0])
        else:
            # The layer's modulation of tap k, at the position whose output the layer computes.
            scalars = _sample_field(masks[layer], positions)  # (P, M, 9)
        weights = (weights[:, :, None] * scalars).flatten(1, 2)
        positions = (positions[:, :, None, :] + taps + shift).flatten(1, 2)
    return positions, weights


def _colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated saturated colours (hues spread evenly)."""
    out = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb(i / max(1, count), 0.9, 1.0)
        out.append((round(255 * r), round(255 * g), round(255 * b)))
    return out


def _dot(draw: ImageDraw.ImageDraw, y: float, x: float, radius: int, color: tuple[int, int, int],
         outline: tuple[int, int, int] | None = None) -> None:
    cy, cx = int(round(y)), int(round(x))
    if radius <= 0:
        draw.point((cx, cy), fill=color)
    else:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=color, outline=outline)


def draw_sampling_points(
    query_image: np.ndarray,
    ref_image: np.ndarray,
    query_points: torch.Tensor,
    sample_points: torch.Tensor,
    *,
    colors: Sequence[tuple[int, int, int]] | None = None,
    radius: int = 1,
    query_radius: int = 3,
    gap: int = _GAP,
) -> np.ndarray:
    """Fig. 7: the query image with the chosen pixels, and the reference with their sampling points.

    Args:
        query_image: ``HxWx3`` uint8 RGB, the left panel (e.g. the LR upscaled to HR size).
        ref_image: ``H'xW'x3`` uint8 RGB, the right panel (the reference).
        query_points: ``(P, 2)`` ``(y, x)`` pixel positions in ``query_image``.
        sample_points: ``(P, M, 2)`` ``(y, x)`` pixel positions in ``ref_image``; points outside are skipped.
        colors: one RGB colour per query point (default: evenly spread hues).
        radius: dot radius of a sampling point; 0 draws single pixels, at the rounded position.
        query_radius: marker radius of a query point (drawn with a black outline).
        gap: white columns between the panels.

    Returns:
        ``max(H, H') x (W + gap + W') x 3`` uint8 RGB on white; the reference panel starts at column
        ``W + gap``, both panels at row 0. Points are drawn in the order given, later on top.
    """
    for name, image in (("query_image", query_image), ("ref_image", ref_image)):
        rgb8 = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
        if not rgb8 or image.shape[2] != 3:
            raise RefsrError(f"{name} must be an HxWx3 uint8 RGB array")
    count = int(query_points.shape[0])
    if sample_points.dim() != 3 or sample_points.shape[0] != count or sample_points.shape[2] != 2:
        raise RefsrError(
            f"sample_points must be (P, M, 2) with P = {count} query points; got {tuple(sample_points.shape)}"
        )
    palette = list(colors) if colors is not None else _colors(count)
    if len(palette) < count:
        raise RefsrError(f"{count} query points but only {len(palette)} colours")
    (h_q, w_q), (h_r, w_r) = query_image.shape[:2], ref_image.shape[:2]
    canvas = Image.new("RGB", (w_q + gap + w_r, max(h_q, h_r)), _BACKGROUND)
    canvas.paste(Image.fromarray(query_image), (0, 0))
    canvas.paste(Image.fromarray(ref_image), (w_q + gap, 0))
    draw = ImageDraw.Draw(canvas)
    points = sample_points.detach().double().cpu()
    for index in range(count):
        inside = ((points[index, :, 0] > -0.5) & (points[index, :, 0] < h_r - 0.5)
                  & (points[index, :, 1] > -0.5) & (points[index, :, 1] < w_r - 0.5))
        for y, x in points[index][inside].tolist():
            _dot(draw, y, w_q + gap + x, radius, palette[index])
    for index, (y, x) in enumerate(query_points.detach().double().cpu().tolist()):
        _dot(draw, y, x, query_radius, palette[index], outline=(0, 0, 0))
    return np.asarray(canvas)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``HxWx3`` uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def sampling_figure(
    model: torch.nn.Module,
    lr: torch.Tensor,
    ref: torch.Tensor | None,
    pixels: torch.Tensor | Sequence[Sequence[int]],
    path: str | Path | None = None,
    *,
    radius: int = 1,
) -> tuple[np.ndarray, torch.Tensor]:
    """Draw where SSEN samples the reference for the chosen LR pixels (the paper's Fig. 7).

    Args:
        model: an SSEN model (``ssen``, ``ssen-self``, their variants), in eval mode.
        lr: ``(1, 3, h, w)`` RGB float in [0, 1], sides as the model's size rule asks.
        ref: ``(1, 3, H, W)`` RGB float in [0, 1]; None for ``ssen-self`` (its reference is the LR).
        pixels: ``(P, 2)`` integer ``(y, x)`` LR pixels (= feature-grid positions).
        path: where to write the PNG (atomically), or None.
        radius: dot radius of the sampling points.

    Returns:
        The figure (``HxWx3`` uint8; left: LR↑ with the pixels, right: the reference with their points) and
        the sampling points ``(P, 9^L, 2)`` in reference-image pixels.
    """
    if lr.dim() != 4 or lr.shape[0] != 1:
        raise RefsrError(f"sampling_figure draws one image: lr must be (1, 3, h, w); got {tuple(lr.shape)}")
    geometry_of = getattr(model, "sampling_geometry", None)
    if geometry_of is None:
        raise RefsrError(f"{type(model).__name__} does not say where its features lie (no sampling_geometry)")
    h, w = lr.shape[-2:]
    pixels = torch.as_tensor(pixels, dtype=torch.float64).reshape(-1, 2)
    if ((pixels[:, 0] < 0) | (pixels[:, 0] > h - 1) | (pixels[:, 1] < 0) | (pixels[:, 1] > w - 1)).any():
        raise RefsrError(f"pixels must lie inside the {h}x{w} LR; got {pixels.tolist()}")
    captured = capture_offsets(model, lr, ref)
    offsets = [offset[0].double().cpu() for offset, _ in captured]
    masks = [mask[0].double().cpu() for _, mask in captured]
    positions, _ = compose_sampling_points(offsets, pixels, masks)
    ref_size = tuple(ref.shape[-2:]) if ref is not None else (h, w)
    geometry = geometry_of((h, w), ref_size)
    ref_scale = torch.tensor(geometry.ref_scale, dtype=torch.float64)
    ref_shift = torch.tensor(geometry.ref_shift, dtype=torch.float64)
    ref_points = positions * ref_scale + ref_shift
    query_points = pixels * torch.tensor(geometry.query_scale, dtype=torch.float64) + torch.tensor(
        geometry.query_shift, dtype=torch.float64)
    scale = model.scale
    lr_up = upscale_pil(_to_uint8(lr[0]), scale)
    ref_image = lr_up if geometry.ref_is_lr or ref is None else _to_uint8(ref[0])
    figure = draw_sampling_points(lr_up, ref_image, query_points, ref_points, radius=radius)
    if path is not None:
        write_image(path, figure)
    return figure, ref_points


class SamplingFigureWriter:
    """The ``on_image`` hook of :func:`refsr.eval.runner.evaluate` that writes ``<name>_offsets.png``.

    Args:
        folder: where the figures go (created if needed).
        model: the SSEN model being evaluated (the hook runs it once more, to capture its offsets).
        points_per_side: density of the grid of drawn LR pixels (:func:`refsr.eval.figures.grid_points`).

    Attributes:
        written: the paths written so far.
    """

    def __init__(self, folder: str | Path, model: torch.nn.Module, *, points_per_side: int = 3) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise RefsrError(f"{self.folder}: exists and is not a folder; choose another --figures folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.points_per_side = int(points_per_side)
        self.written: list[Path] = []

    def __call__(
        self, index: int, sample: Mapping[str, Any], inputs: Any, sr: torch.Tensor, corr: Any
    ) -> None:
        name = safe_name(str(sample.get("name", index)))
        lr = inputs.lr
        h, w = lr.shape[-2:]
        points = grid_points(h, w, self.points_per_side)
        self.written.append(self.folder / f"{name}_offsets.png")
        sampling_figure(self.model, lr, inputs.ref, points, self.written[-1])
