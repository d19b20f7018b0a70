"""Figures as the RefSR papers draw them: side-by-side crops and the matched reference positions.

- :func:`crops_figure`: one strip of four equal panels, **LR↑ | SR | HR | Ref**, each a ``side x side`` crop
  of the same HR-resolution window (LR↑ is the PIL-bicubic upscaled LR), chosen where the HR has the most
  texture (:func:`texture_box`); the Ref panel shows the whole reference, shrunk to fit and centred. A
  label strip runs above the panels.
- :func:`correspondence_figure`: the LR (enlarged to HR size with PIL bicubic) next to the reference, with a
  grid of LR positions drawn as dots and, in the same colour, the reference position each one matched,
  joined by a line.

Where the correspondence comes from: a model whose ``forward`` takes ``return_correspondence=True`` (MASA's
MEM) hands over its own. For any other model (bicubic, single-image models, or models that do not expose
their matching) the figure shows what an exhaustive matcher finds on *simple features*:
:func:`simple_features` (each channel's local detail ``x - blur(x)`` plus a damped local colour
``0.25 * (blur(x) - 0.5)``, so flat regions still match by colour) of the LR and of Ref↓ (the reference
downscaled by the SR factor with PIL bicubic, at the LR's scale), matched with
``refsr.matching.match(..., method="dense")`` on 3x3 patches. Only the drawn grid positions are matched: the
3x3 patches are unfolded into channels (zero-padded, as the dense matcher pads) and matched as 1x1 patches,
which gives exactly the dense 3x3 result at those positions at a fraction of the cost.

:class:`FigureWriter` ties both to :func:`refsr.eval.runner.evaluate` (its ``on_image`` hook) and writes
``<name>_crops.png`` and ``<name>_matches.png`` atomically with :func:`refsr.io.write_image`.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from refsr.data.degrade import make_lr, to_tensor
from refsr.data.standard import upscale_pil
from refsr.errors import RefsrError
from refsr.eval.runner import safe_name, to_uint8
from refsr.io import write_image
from refsr.matching import match
from refsr.matching.correspondence import Correspondence

__all__ = [
    "CROP_LABELS",
    "FigureWriter",
    "correspondence_figure",
    "crops_figure",
    "dense_correspondence",
    "grid_points",
    "fit_panel",
    "labelled_row",
    "simple_features",
    "texture_box",
]

CROP_LABELS = ("LR up (bicubic)", "SR", "HR", "Ref")
LABEL_HEIGHT = 16
PANEL_GAP = 4
_BACKGROUND = (255, 255, 255)


def _check_image(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RefsrError(
            f"{what} must be an HxWx3 uint8 RGB image, got {getattr(image, 'shape', type(image))}"
        )


def texture_box(hr: np.ndarray, side: int) -> tuple[int, int]:
    """The top-left corner of the ``side x side`` window of ``hr`` with the most gradient energy.

    Args:
        hr: ``HxWx3`` uint8 RGB; ``side`` at most ``min(H, W)``.

    Returns:
        ``(top, left)``; ties go to the first window in row-major order.
    """
    _check_image(hr, "hr")
    h, w = hr.shape[:2]
    if not 1 <= side <= min(h, w):
        raise RefsrError(f"crop side {side} does not fit an image of {w}x{h}")
    grey = torch.from_numpy(hr.astype(np.float32)).mean(dim=2)
    energy = torch.zeros(h, w)
    energy[:, 1:] += (grey[:, 1:] - grey[:, :-1]).abs()
    energy[1:, :] += (grey[1:, :] - grey[:-1, :]).abs()
    # Window sums at every position: a box filter of the energy map (valid positions only).
    sums = F.avg_pool2d(energy[None, None], side, stride=1)[0, 0]
    best = int(torch.argmax(sums))
    return best // sums.shape[1], best % sums.shape[1]


def fit_panel(image: np.ndarray, width: int, height: int) -> Image.Image:
    """``image`` shrunk (or enlarged) to fit ``width x height`` with its aspect kept, centred on white."""
    pil = Image.fromarray(image)
    ratio = min(width / pil.width, height / pil.height)
    size = (max(1, round(pil.width * ratio)), max(1, round(pil.height * ratio)))
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    canvas.paste(pil.resize(size, Image.BICUBIC), ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def crops_figure(
    lr_up: np.ndarray,
    sr: np.ndarray,
    hr: np.ndarray,
    ref: np.ndarray,
    *,
    side: int = 128,
    box: tuple[int, int] | None = None,
    labels: Sequence[str] = CROP_LABELS,
    gap: int = PANEL_GAP,
    label_height: int = LABEL_HEIGHT,
) -> Image.Image:
    """LR↑ | SR | HR | Ref, side by side, with labels above.

    Args:
        lr_up, sr, hr: ``HxWx3`` uint8 RGB of one size (the HR's).
        ref: ``H'xW'x3`` uint8 RGB, any size: shown whole, fitted into a ``side x side`` panel.
        side: the crop side in HR pixels; clipped to ``min(H, W)``.
        box: ``(top, left)`` of the crop; default :func:`texture_box` of ``hr``.
        labels: the four panel titles.
        gap: white pixels between panels; label_height: the title strip's height.

    Returns:
        An RGB image of ``4 * side + 3 * gap`` by ``side + label_height`` pixels.
    """
    for image, what in ((lr_up, "lr_up"), (sr, "sr"), (hr, "hr"), (ref, "ref")):
        _check_image(image, what)
    if not lr_up.shape == sr.shape == hr.shape:
        raise RefsrError(f"lr_up, sr and hr must share one size; got {lr_up.shape}, {sr.shape}, {hr.shape}")
    if len(labels) != 4:
        raise RefsrError(f"crops_figure needs 4 labels, got {len(labels)}")
    side = min(int(side), hr.shape[0], hr.shape[1])
    top, left = texture_box(hr, side) if box is None else (int(box[0]), int(box[1]))
    if not (0 <= top <= hr.shape[0] - side and 0 <= left <= hr.shape[1] - side):
        raise RefsrError(
            f"crop box ({top}, {left}) of side {side} leaves the {hr.shape[1]}x{hr.shape[0]} image"
        )
    panels = [
        Image.fromarray(np.ascontiguousarray(img[top : top + side, left : left + side]))
        for img in (lr_up, sr, hr)
    ]
    panels.append(fit_panel(ref, side, side))
    return labelled_row(panels, labels, gap=gap, label_height=label_height)


def labelled_row(panels: Sequence[Image.Image], labels: Sequence[str], *, gap: int = PANEL_GAP,
                 label_height: int = LABEL_HEIGHT) -> Image.Image:
    """Equal-size panels side by side on white, ``gap`` apart, each with its title in a strip above."""
    width, height = panels[0].size
    figure = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, height + label_height), _BACKGROUND)
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (width + gap)
        figure.paste(panel, (x, label_height))
        draw.text((x + 2, 1), str(label), fill=(0, 0, 0), font=font)
    return figure


def simple_features(image: torch.Tensor, *, blur: int = 5) -> torch.Tensor:
    """Matching features that need no network: local detail and damped local colour.

    Args:
        image: ``(N, 3, H, W)`` RGB float in [0, 1].
        blur: side of the box blur (odd), with replicated borders.

    Returns:
        ``(N, 6, H, W)``: ``image - blur(image)`` then ``0.25 * (blur(image) - 0.5)``, same dtype.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise RefsrError(f"simple_features expects (N, 3, H, W) RGB, got {tuple(image.shape)}")
    radius = blur // 2
    smooth = F.avg_pool2d(F.pad(image, (radius,) * 4, mode="replicate"), blur, stride=1)
    return torch.cat((image - smooth, 0.25 * (smooth - 0.5)), dim=1)


def grid_points(height: int, width: int, per_side: int = 12) -> torch.Tensor:
    """A regular grid of about ``per_side`` positions along the longer side, at cell centres.

    Returns:
        ``LongTensor (P, 2)`` of ``(y, x)`` positions inside ``height x width``.
    """
    if height < 1 or width < 1 or per_side < 1:
        raise RefsrError(f"grid_points needs positive sizes, got {height}x{width} and {per_side}")
    step = max(1, math.ceil(max(height, width) / per_side))
    ys = torch.arange(step // 2, height, step)
    xs = torch.arange(step // 2, width, step)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_y.flatten(), grid_x.flatten()), dim=1)


def dense_correspondence(
    query_image: torch.Tensor, key_image: torch.Tensor, points: torch.Tensor, *, patch_size: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exhaustive 3x3 matching of :func:`simple_features` at ``points`` of the query among all key positions.

    Args:
        query_image: ``(1, 3, h, w)`` RGB float in [0, 1] (the LR).
        key_image: ``(1, 3, H, W)`` RGB float in [0, 1] (Ref↓, at the LR's scale).
        points: ``LongTensor (P, 2)`` of query ``(y, x)`` positions.
        patch_size: the patch side (odd).

    Returns:
        ``LongTensor (P, 2)`` matched key positions ``(y, x)`` and ``(P,)`` cosine scores: the same as
        ``match(features(query), features(key), method="dense", patch_size=patch_size)`` read at ``points``.
    """
    if query_image.shape[0] != 1 or key_image.shape[0] != 1:
        raise RefsrError("dense_correspondence takes one image pair (N = 1)")
    query = simple_features(query_image.float())
    key = simple_features(key_image.float())
    pad = patch_size // 2
    # Each position's 3x3 patch becomes one C*9 vector (zero-padded as the dense matcher pads), so matching
    # 1x1 "patches" of the unfolded maps is matching 3x3 patches of the maps, for just the wanted queries.
    h, w = query.shape[-2:]
    height, width = key.shape[-2:]
    query_patches = F.unfold(query, patch_size, padding=pad).view(1, -1, h, w)
    key_patches = F.unfold(key, patch_size, padding=pad).view(1, -1, height, width)
    chosen = query_patches[:, :, points[:, 0], points[:, 1]][..., None]  # (1, C*9, P, 1)
    corr = match(chosen, key_patches, method="dense", patch_size=1)
    return corr.coords[0, :, 0], corr.score[0, :, 0]


def _colours(points: torch.Tensor, height: int, width: int) -> list[tuple[int, int, int]]:
    """A colour per point: hue from the column, lightness from the row, so neighbours look alike."""
    colours = []
    for y, x in points.tolist():
        hue = x / max(1, width)
        value = 0.65 + 0.35 * (1 - y / max(1, height))
        r, g, b = colorsys.hsv_to_rgb(hue, 0.95, value)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def correspondence_figure(
    lr: np.ndarray,
    ref: np.ndarray,
    lr_points: torch.Tensor,
    ref_points: torch.Tensor,
    *,
    scale: int,
    gap: int = 8,
    radius: int = 3,
) -> Image.Image:
    """The LR (enlarged ``scale`` times) and the reference side by side, with matched positions joined.

    Args:
        lr: ``hxwx3`` uint8 RGB, drawn PIL-bicubic enlarged to ``scale*h x scale*w``.
        ref: ``HxWx3`` uint8 RGB, drawn as it is, right of the LR.
        lr_points: ``(P, 2)`` ``(y, x)`` LR pixel positions.
        ref_points: ``(P, 2)`` ``(y, x)`` reference positions in *reference pixels* (floats allowed).
        scale: the SR factor.
        gap: white pixels between the two images; radius: dot radius.

    Returns:
        An RGB image of ``scale*w + gap + W`` by ``max(scale*h, H)`` pixels.
    """
    _check_image(lr, "lr")
    _check_image(ref, "ref")
    if lr_points.shape != ref_points.shape or lr_points.ndim != 2 or lr_points.shape[1] != 2:
        raise RefsrError(
            f"lr_points and ref_points must both be (P, 2); got {tuple(lr_points.shape)} "
            f"and {tuple(ref_points.shape)}"
        )
    h, w = lr.shape[:2]
    lr_up = upscale_pil(lr, scale)
    width = lr_up.shape[1] + gap + ref.shape[1]
    height = max(lr_up.shape[0], ref.shape[0])
    figure = Image.new("RGB", (width, height), _BACKGROUND)
    figure.paste(Image.fromarray(lr_up), (0, 0))
    ref_x0 = lr_up.shape[1] + gap
    figure.paste(Image.fromarray(ref), (ref_x0, 0))
    draw = ImageDraw.Draw(figure)
    colours = _colours(lr_points, h, w)
    for (y, x), (ry, rx), colour in zip(lr_points.tolist(), ref_points.tolist(), colours):
        start = ((x + 0.5) * scale, (y + 0.5) * scale)
        end = (ref_x0 + rx, ry)
        draw.line([start, end], fill=colour, width=1)
        for cx, cy in (start, end):
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour, outline=(0, 0, 0))
    return figure


class FigureWriter:
    """The ``on_image`` hook of :func:`refsr.eval.runner.evaluate` that writes both figures per image.

    Args:
        folder: where ``<name>_crops.png`` and ``<name>_matches.png`` go (created if needed).
        side: crop side in HR pixels; points_per_side: density of the correspondence grid.

    Attributes:
        written: the paths written so far.
        sources: per image name, ``"model"`` or ``"dense"``: where its correspondence came from.
    """

    def __init__(self, folder: str | Path, *, side: int = 128, points_per_side: int = 12) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise RefsrError(f"{self.folder}: exists and is not a folder; choose another --figures folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.side = int(side)
        self.points_per_side = int(points_per_side)
        self.written: list[Path] = []
        self.sources: dict[str, str] = {}

    def __call__(
        self,
        index: int,
        sample: Mapping[str, Any],
        inputs: Any,
        sr: torch.Tensor,
        corr: Correspondence | None,
    ) -> None:
        name = safe_name(str(sample.get("name", index)))
        scale = int(inputs.scale)
        lr8 = to_uint8(sample["lr"])
        hr8 = to_uint8(sample["hr"])
        top, left, height, width = (int(v) for v in (*sample.get("pad", (0, 0)), *hr8.shape[:2]))
        lr_up = upscale_pil(lr8, scale)[top : top + height, left : left + width]
        # The reference the model saw (after any transform and padding); the dataset's for models without one.
        ref_tensor = inputs.ref[0] if inputs.ref is not None else sample["ref"]
        ref8 = to_uint8(ref_tensor.detach().float().cpu())
        sr8 = to_uint8(sr[0])
        crops = crops_figure(lr_up, sr8, hr8, ref8, side=self.side)
        self.written.append(write_image(self.folder / f"{name}_crops.png", crops))

        points = grid_points(lr8.shape[0], lr8.shape[1], self.points_per_side)
        if corr is not None:
            ref_points = self._from_model(corr, points, inputs, ref8.shape[:2])
            self.sources[name] = "model"
        else:
            ref_down = (
                to_tensor(make_lr(ref8, scale))[None]
                if min(ref8.shape[:2]) >= scale
                else to_tensor(ref8)[None]
            )
            coords, _ = dense_correspondence(sample["lr"][None].float(), ref_down, points)
            factor_y, factor_x = ref8.shape[0] / ref_down.shape[-2], ref8.shape[1] / ref_down.shape[-1]
            ref_points = torch.stack(
                ((coords[:, 0] + 0.5) * factor_y, (coords[:, 1] + 0.5) * factor_x), dim=1
            )
            self.sources[name] = "dense"
        matches = correspondence_figure(lr8, ref8, points, ref_points, scale=scale)
        self.written.append(write_image(self.folder / f"{name}_matches.png", matches))

    @staticmethod
    def _from_model(
        corr: Correspondence, points: torch.Tensor, inputs: Any, ref_size: tuple[int, int]
    ) -> torch.Tensor:
        """Reference positions (ref pixels) of ``points`` (dataset-LR pixels) from a model's correspondence.

        The correspondence lives on the model's padded LR grid (or a grid proportional to it) and points
        into its key map (Ref↓ for MASA), which covers the padded reference.
        """
        _, qh, qw = corr.index.shape
        lr_h, lr_w = inputs.lr.shape[-2:]
        top, left = inputs.lr_offset
        qy = ((points[:, 0] + top).double() * qh / lr_h).long().clamp(0, qh - 1)
        qx = ((points[:, 1] + left).double() * qw / lr_w).long().clamp(0, qw - 1)
        coords = corr.coords[0].cpu()[qy, qx]
        key_h, key_w = corr.key_size
        return torch.stack(
            ((coords[:, 0] + 0.5) * ref_size[0] / key_h, (coords[:, 1] + 0.5) * ref_size[1] / key_w), dim=1
        )
