"""Run a model over an evaluation dataset and score every image: :func:`evaluate`.

For each sample the runner

1. takes the LR, Ref and Ref↓ exactly as the dataset made them under the protocol's size rule (the official
   test loader's padding or cropping, :mod:`refsr.data.standard`);
2. optionally replaces the reference (``ref_source="lr_up"``: the PIL-bicubic LR↑, the "what does the
   reference add" baseline) and/or transforms it (:mod:`refsr.eval.robustness`);
3. pads LR and Ref further when the *model's* :class:`~refsr.models.SizeRule` asks for more than the
   dataset did (:func:`refsr.models.pad_inputs`); models that take Ref↓ (``takes_ref_down``) get the
   dataset's, or make it themselves from a padded or replaced 8-bit Ref with PIL bicubic, as the official
   loaders make it;
4. runs the model, crops the SR back to the ground truth (the model's padding, then the dataset's
   ``pad``/``hr_size``) and scores it with :func:`refsr.metrics.psnr` and :func:`refsr.metrics.ssim` under
   the metric protocol (grey sources come as three equal channels and score on Y like any image).

Everything runs under ``torch.inference_mode`` on one device, one image at a time (batch size 1, as the
official test loops do).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refsr.data.degrade import to_tensor
from refsr.data.standard import upscale_pil
from refsr.devices import resolve_device
from refsr.errors import RefsrError
from refsr.eval.robustness import RefTransform
from refsr.io import write_image
from refsr.matching.correspondence import Correspondence
from refsr.metrics import Protocol, get_protocol, psnr, quantize_uint8, ssim
from refsr.models import RefSRModel, pad_inputs

__all__ = [
    "ImageResult",
    "ModelInputs",
    "RunResult",
    "crop_output",
    "evaluate",
    "mean_or_nan",
    "prepare_inputs",
    "run_model",
    "safe_name",
    "to_uint8",
]

REF_SOURCES = ("dataset", "lr_up")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] (the datasets' ``k / 255`` values) -> ``HxWx3`` uint8 RGB, exactly."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise RefsrError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
    return quantize_uint8(image).permute(1, 2, 0).contiguous().numpy()


def safe_name(name: str) -> str:
    """``name`` made safe as a file name: anything but letters, digits, ``.``, ``-``, ``+`` becomes ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(name)).strip("._")
    return cleaned or "image"


def mean_or_nan(values: Sequence[float]) -> float:
    """The arithmetic mean (``inf`` if any value is ``inf``), or NaN for no values."""
    return float(sum(values) / len(values)) if values else float("nan")


@dataclass
class ModelInputs:
    """What one forward pass gets, and how to crop its output.

    Attributes:
        lr: ``(1, 3, h, w)`` float32 RGB in [0, 1], padded to the model's rule.
        ref: ``(1, 3, H, W)`` or ``None`` for models that ignore the reference.
        ref_down: ``(1, 3, H/s, W/s)`` for models whose ``forward`` takes ``ref_down=``, else ``None``.
        lr_offset: ``(top, left)`` LR pixels the runner padded in front of the dataset's LR.
        crop: ``(top, left, height, width)`` of the ground truth inside the model's output.
        scale: the model's SR factor.
    """

    lr: torch.Tensor
    ref: torch.Tensor | None
    ref_down: torch.Tensor | None
    lr_offset: tuple[int, int]
    crop: tuple[int, int, int, int]
    scale: int


def prepare_inputs(
    model: RefSRModel,
    sample: Mapping[str, Any],
    *,
    ref_source: str = "dataset",
    ref_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    device: torch.device | str = "cpu",
) -> ModelInputs:
    """Turn a dataset sample into the model's inputs (see the module docstring, steps 2 and 3).

    Args:
        model: a refsr model (``scale``, ``size_rule``, ``uses_ref``).
        sample: a dataset sample: ``lr``, ``hr``, ``ref`` and optionally ``ref_down`` as ``(3, H, W)``
            float32 RGB in [0, 1]; optionally ``pad`` ``(top, left)`` and ``hr_size`` ``(h, w)``.
        ref_source: ``"dataset"`` (the sample's reference) or ``"lr_up"`` (the LR enlarged with PIL bicubic).
        ref_transform: applied to the 8-bit reference (``HxWx3`` uint8 -> uint8), e.g. a
            :class:`~refsr.eval.robustness.RefTransform`.
        device: where the tensors go.
    """
    if ref_source not in REF_SOURCES:
        raise RefsrError(f"unknown reference source {ref_source!r}; use one of {', '.join(REF_SOURCES)}")
    scale = model.scale
    lr = sample["lr"]
    hr = sample["hr"]
    expected = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    top, left = (int(v) for v in sample.get("pad", (0, 0)))
    height, width = (int(v) for v in sample.get("hr_size", tuple(hr.shape[-2:])))
    if top + height > expected[0] or left + width > expected[1]:
        raise RefsrError(
            f"sample {sample.get('name', '?')!r}: the HR ({height}x{width} at {top},{left}) does not fit "
            f"{scale} x the LR ({lr.shape[-2]}x{lr.shape[-1]}); was the dataset made for scale {scale}?"
        )

    ref = ref_down = None
    if model.uses_ref:
        if ref_source == "lr_up":
            ref8: np.ndarray | None = upscale_pil(to_uint8(lr), scale)
            ref_t, ref_down_t = None, None
        else:
            ref8, ref_t, ref_down_t = None, sample["ref"], sample.get("ref_down")
        if ref_transform is not None:
            ref8 = ref_transform(ref8 if ref8 is not None else to_uint8(ref_t))
            if not isinstance(ref8, np.ndarray) or ref8.dtype != np.uint8 or ref8.ndim != 3:
                raise RefsrError("a reference transform must return an HxWx3 uint8 image")
        if ref8 is not None:
            # A new reference: the model makes its Ref↓ from it (PIL bicubic on the 8-bit image, as the
            # official loaders do).
            ref_t, ref_down_t = to_tensor(np.ascontiguousarray(ref8)), None
        ref = ref_t[None]
        ref_down = ref_down_t[None] if ref_down_t is not None else None
    padded = pad_inputs(model, lr[None], ref, ref_down=ref_down)
    lr_top, lr_left = padded.offset
    crop = (lr_top * scale + top, lr_left * scale + left, height, width)
    return ModelInputs(
        padded.lr.to(device),
        None if padded.ref is None else padded.ref.to(device),
        None if padded.ref_down is None else padded.ref_down.to(device),
        padded.offset, crop, scale,
    )


def run_model(
    model: RefSRModel, inputs: ModelInputs, *, want_correspondence: bool = False
) -> tuple[torch.Tensor, Correspondence | None]:
    """One forward pass. Returns the full SR ``(1, 3, s*h, s*w)`` and, when asked and the model's ``forward``
    has a ``return_correspondence`` parameter (MASA), its :class:`~refsr.matching.Correspondence`."""
    kwargs: dict[str, Any] = {}
    if inputs.ref_down is not None:
        kwargs["ref_down"] = inputs.ref_down
    corr = None
    with torch.inference_mode():
        if want_correspondence and model.exposes_correspondence:
            sr, corr = model(inputs.lr, inputs.ref, return_correspondence=True, **kwargs)
        else:
            sr = model(inputs.lr, inputs.ref, **kwargs)
    if not isinstance(sr, torch.Tensor) or sr.ndim != 4 or sr.shape[1] != 3:
        raise RefsrError(
            f"the model returned {type(sr).__name__} {getattr(sr, 'shape', '')}, "
            "expected an (N, 3, H, W) tensor"
        )
    expected = (inputs.lr.shape[-2] * inputs.scale, inputs.lr.shape[-1] * inputs.scale)
    if tuple(sr.shape[-2:]) != expected:
        raise RefsrError(
            f"the model returned {tuple(sr.shape[-2:])} for an LR of {tuple(inputs.lr.shape[-2:])}; "
            f"expected {expected} (scale {inputs.scale})"
        )
    return sr, corr


def crop_output(sr: torch.Tensor, inputs: ModelInputs) -> torch.Tensor:
    """The part of the model output that the ground truth covers: ``(1, 3, h, w)``."""
    top, left, height, width = inputs.crop
    return sr[..., top : top + height, left : left + width]


@dataclass
class ImageResult:
    """The score of one image.

    Attributes:
        name: the sample's name.
        psnr, ssim: under the run's metric protocol.
        meta: what else the sample says (``kind``, ``gap``, ``grey``, ``ref_name``, ``hr_size``...).
        sr_path: where the SR image was written, if it was.
    """

    name: str
    psnr: float
    ssim: float
    meta: dict[str, Any] = field(default_factory=dict)
    sr_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "psnr": _json_float(self.psnr), "ssim": _json_float(self.ssim), **self.meta}
        if self.sr_path is not None:
            out["sr_path"] = self.sr_path
        return out


def _json_float(value: float) -> float | str:
    """JSON has no infinity: PSNR of an exact result is written as the string ``"inf"``."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return float(value)


@dataclass
class RunResult:
    """One method on one dataset (one cell of a table), with every image's score.

    Attributes:
        dataset: the dataset's column label; ``method``: the method's row label.
        variant: what this run changes (``{"level": 3}``, ``{"ref_transform": {...}}``...), for the JSON.
        images: per-image results, in dataset order.
    """

    dataset: str
    method: str
    variant: dict[str, Any] = field(default_factory=dict)
    images: list[ImageResult] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def psnr(self) -> float:
        """Mean PSNR over the images (the papers average per-image PSNR)."""
        return mean_or_nan([r.psnr for r in self.images])

    @property
    def ssim(self) -> float:
        return mean_or_nan([r.ssim for r in self.images])

    def group(self, key: str) -> dict[Any, tuple[float, float, int]]:
        """Mean PSNR, mean SSIM and count per value of ``meta[key]`` (images without it are left out)."""
        groups: dict[Any, list[ImageResult]] = {}
        for image in self.images:
            value = image.meta.get(key)
            if value is not None:
                groups.setdefault(value, []).append(image)
        return {
            value: (mean_or_nan([r.psnr for r in rs]), mean_or_nan([r.ssim for r in rs]), len(rs))
            for value, rs in groups.items()
        }

    def summary(self) -> dict[str, Any]:
        return {"psnr": _json_float(self.psnr), "ssim": _json_float(self.ssim), "count": self.count}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "method": self.method,
            "variant": self.variant,
            "summary": self.summary(),
            "images": [r.to_dict() for r in self.images],
        }


#: Called for each image as ``hook(index, sample, inputs, sr, corr)`` with ``sr`` the cropped SR.
ImageHook = Callable[[int, Mapping[str, Any], ModelInputs, torch.Tensor, "Correspondence | None"], None]

_META_KEYS = ("kind", "grey", "gap", "ref_name")


def _sample_meta(dataset: Any, index: int, sample: Mapping[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in _META_KEYS:
        if key in sample:
            value = sample[key]
            meta[key] = value.item() if isinstance(value, torch.Tensor) else value
    # Open-benchmark video pairs: the frame gap, from the manifest row when the sample does not carry it.
    rows = getattr(dataset, "rows", None)
    if "gap" not in meta and isinstance(rows, list) and index < len(rows) and isinstance(rows[index], dict):
        gap = str(rows[index].get("gap", "")).strip()
        if gap:
            meta["gap"] = gap
    if "gap" in meta:
        try:
            meta["gap"] = int(meta["gap"])
        except (TypeError, ValueError):
            pass
    if "grey" in meta:
        meta["grey"] = bool(meta["grey"])
    hr = sample["hr"]
    meta["hr_size"] = [int(v) for v in sample.get("hr_size", tuple(hr.shape[-2:]))]
    return meta


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    protocol: str | Protocol = "masa",
    ref_source: str = "dataset",
    ref_transform: RefTransform | Callable[[np.ndarray], np.ndarray] | None = None,
    limit: int | None = None,
    every: int = 1,
    device: str | torch.device = "cpu",
    save_sr: str | os.PathLike | None = None,
    dataset_label: str = "",
    method_label: str = "",
    variant: dict[str, Any] | None = None,
    on_image: ImageHook | None = None,
    hook_count: int = 0,
    progress: bool | None = False,
) -> RunResult:
    """Run ``model`` on ``dataset`` and score every image.

    Args:
        model: a refsr model (any ``nn.Module`` with ``scale``, ``size_rule``, ``uses_ref`` and
            ``forward(lr, ref, **kwargs)`` on ``(N, 3, H, W)`` RGB float in [0, 1]).
        dataset: a map-style dataset of samples as :mod:`refsr.data.standard` describes them, made for the
            model's scale.
        protocol: the metric protocol (a :mod:`refsr.metrics` name such as ``"masa"``, ``"c2"``, or object).
        ref_source: ``"dataset"`` or ``"lr_up"`` (see :func:`prepare_inputs`).
        ref_transform: a reference transform (see :mod:`refsr.eval.robustness`).
        limit: score only the first ``limit`` images (of those ``every`` keeps).
        every: score images ``0, every, 2 * every, ...`` only: a quicker run that still spans the whole
            dataset (the open benchmark lists each clip's pairs together, so the first N would be one clip).
        device: ``"cpu"``, ``"cuda"``, ``"mps"``.
        save_sr: a folder: each SR image (cropped, 8-bit) is written there as ``<name>.png``, atomically.
        dataset_label, method_label, variant: copied into the result.
        on_image: called as ``on_image(index, sample, inputs, sr, corr)`` for the first ``hook_count`` images
            (figures); ``corr`` is the model's own correspondence when it exposes one, else ``None``.
        progress: show a tqdm bar (``None``: only on a terminal).

    Returns:
        A :class:`RunResult`.
    """
    metric = get_protocol(protocol)
    dev = resolve_device(device)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise RefsrError(f"limit must be a positive number of images, got {limit!r}")
    if isinstance(every, bool) or int(every) < 1:
        raise RefsrError(f"every must be a positive step between images, got {every!r}")
    indices = range(0, len(dataset), int(every))
    if limit is not None:
        indices = indices[: int(limit)]
    out_dir = Path(save_sr) if save_sr is not None else None
    if out_dir is not None:
        _make_folder(out_dir)
    model = model.to(dev).eval()
    result = RunResult(dataset_label, method_label, dict(variant or {}))

    from tqdm.auto import tqdm

    bar = tqdm(
        indices,
        desc=f"{dataset_label} | {method_label}".strip(" |"),
        unit="img",
        disable=(None if progress is None else not progress),
        leave=False,
    )
    for index in bar:
        sample = dataset[index]
        inputs = prepare_inputs(model, sample, ref_source=ref_source, ref_transform=ref_transform, device=dev)
        wants_hook = on_image is not None and len(result.images) < hook_count
        sr_full, corr = run_model(model, inputs, want_correspondence=wants_hook)
        sr = crop_output(sr_full, inputs).float().cpu()
        hr = quantize_uint8(sample["hr"][None].float())
        name = str(sample.get("name", index))
        image = ImageResult(
            name,
            float(psnr(sr, hr, protocol=metric)),
            float(ssim(sr, hr, protocol=metric)),
            _sample_meta(dataset, index, sample),
        )
        if out_dir is not None:
            path = out_dir / f"{safe_name(name)}.png"
            write_image(path, quantize_uint8(sr[0]).permute(1, 2, 0).numpy())
            image.sr_path = str(path)
        result.images.append(image)
        if wants_hook:
            on_image(index, sample, inputs, sr, corr)
    bar.close()
    return result


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise RefsrError(f"{folder}: exists and is not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefsrError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
