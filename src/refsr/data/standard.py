"""Shared rules for the standard RefSR benchmark layouts: evaluation protocols, folders, seeding.

The datasets built on this module (:mod:`refsr.data.cufed`, :mod:`refsr.data.benchmarks`,
:mod:`refsr.data.sintel`, :mod:`refsr.data.lightfield`) all return the same kind of sample: a dict of
``(3, H, W)`` float32 RGB tensors in [0, 1]

- ``"hr"``: the ground truth the metric is computed on (never padded);
- ``"lr"``: the model input, ``make_lr(HR')`` where ``HR'`` is the HR after the protocol's size rule (for
  MASA: replicate-padded, so the LR is larger than ``hr / scale``);
- ``"ref"``, ``"ref_down"``: the reference after the protocol's size rule, and ``make_lr(ref)``;
- ``"name"`` (str), ``"pad"`` ``(top, left)`` and ``"hr_size"`` ``(h, w)``: the super-resolved output
  ``sr`` (of size ``scale * lr``) is cropped back with ``sr[..., top:top + h, left:left + w]`` and then
  compared with ``"hr"``.

Every LR and Ref↓ is made by :func:`refsr.data.degrade.make_lr` (PIL bicubic on uint8, bit-exact), as all
official pipelines do. The size rules, read from the official test loaders (MASA-SR ``dataloader/dataset.py``,
C2-Matching/AMSA ``mmsr/data``, TTSR ``dataset/cufed.py``), are chosen by ``protocol``:

============ =======================================================================================
``"masa"``   MASA-SR ``TestSet``: HR replicate-padded, **centred**, to a multiple of ``hr_multiple``
             (32 for CUFED5, 64 for Sun80 and Urban100), LR made from the padded HR; Ref
             replicate-padded to a multiple of 16 (bottom/right for CUFED5, centred for Sun80).
``"c2"``     C2-Matching: HR and Ref mod-cropped to 4 (bottom/right cut), then both zero-padded
             bottom/right to their common (max) size; LR and Ref↓ made from the padded pair.
``"amsa"``   AMSA: as ``"c2"`` with a mod-crop to 32 (``scale * 8``).
``"ttsr"``   TTSR: HR and Ref mod-cropped to 4, no padding.
============ =======================================================================================

The MASA multiples are MASA's numbers for x4; for another ``scale`` they grow in proportion (HR multiple
``8 * scale`` or ``16 * scale``, Ref multiple ``4 * scale``).

Random choices (which Sun80 reference, which Manga109 image, which light-field views, the training
augmentation) come from a :class:`torch.Generator` seeded by ``(seed, stream, epoch, index)``: the same seed
gives the same samples whatever the access order or the number of DataLoader workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from refsr.data.degrade import make_lr, mod_crop, pad_to_multiple, to_tensor
from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.io import IMAGE_EXTENSIONS, read_image

__all__ = [
    "PROTOCOLS",
    "SeededDataset",
    "check_protocol",
    "list_images",
    "zero_pad_to",
    "replicate_pad_centred_to",
    "stack_references",
    "prepare_test_sample",
    "prepare_self_reference_sample",
    "upscale_pil",
    "sample_to_tensors",
]

PathLike = Union[str, os.PathLike]

PROTOCOLS = ("masa", "c2", "amsa", "ttsr")

# Separate random streams, so that adding a random choice to one purpose never shifts another.
STREAM_REFERENCE = 1  # which reference a test image gets (Sun80, Manga109): never depends on the epoch
STREAM_VIEWS = 2  # light-field view positions
STREAM_TRANSFORM = 3  # training augmentation
STREAM_FRAMES = 4  # which still and chain a video frame gets (refsr.data.clips.ClipFrames)


def check_protocol(protocol: str) -> str:
    """``protocol`` lower-cased, or :class:`RefsrError` naming the known ones."""
    name = str(protocol).lower()
    if name not in PROTOCOLS:
        raise RefsrError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return name


def _check_scale(scale: int) -> int:
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1:
        raise RefsrError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


# --------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly in ``folder`` (hidden files skipped), sorted by name as ``sorted(os.listdir)``."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and
         p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


def resolve_root(
    root: PathLike, *, what: str, subfolders: Sequence[str], accept: Callable[[Path], bool], expected: str
) -> Path:
    """The first of ``root``, ``root / sub`` ... that ``accept`` says holds the layout.

    Users keep the benchmarks at the paths the official repos hard-code (``CUFED/test/CUFED5``,
    ``datasets/CUFED5``...); accepting the usual parents spares them a path edit.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise RefsrError(f"{what}: {base} does not exist; expected {expected}")
    if not base.is_dir():
        raise RefsrError(f"{what}: {base} is not a folder; expected {expected}")
    for sub in ("", *subfolders):
        candidate = base / sub if sub else base
        if candidate.is_dir() and accept(candidate):
            return candidate
    raise RefsrError(f"{what}: no dataset found under {base}; expected {expected}")


def read_rgb(path: Path) -> np.ndarray:
    """``HxWx3`` uint8 RGB (``refsr.io.read_image``)."""
    return read_image(path)


# --------------------------------------------------------------------------------------------------------
# Size rules
# --------------------------------------------------------------------------------------------------------


def zero_pad_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad ``img`` at the bottom and right to ``size = (h, w)`` (``mmcv.impad(..., pad_val=0)``)."""
    h, w = img.shape[:2]
    th, tw = size
    if h > th or w > tw:
        raise RefsrError(f"cannot pad a {w}x{h} image to the smaller size {tw}x{th}")
    pad = ((0, th - h), (0, tw - w)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=0)


def replicate_pad_centred_to(img: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Replicate-pad ``img`` to ``size = (h, w)`` centred: ``top = (h' - h) // 2``, odd pixel at the bottom.

    This is ``cv2.copyMakeBorder(..., BORDER_REPLICATE)`` with MASA's split. Returns the padded image and
    the ``(top, left)`` offset of the original inside it.
    """
    h, w = img.shape[:2]
    th, tw = size
    if h > th or w > tw:
        raise RefsrError(f"a {w}x{h} image does not fit the {tw}x{th} canvas; it can only be padded, not cut")
    top, left = (th - h) // 2, (tw - w) // 2
    pad = ((top, th - h - top), (left, tw - w - left)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="edge"), (top, left)


def stack_references(refs: Sequence[np.ndarray], canvas: int, *, mode: str) -> np.ndarray:
    """Put each reference on a ``canvas x canvas`` square and stack them vertically (``cv2.vconcat``).

    Args:
        refs: ``HxWx3`` uint8 images, each at most ``canvas`` on both sides.
        canvas: the square's side (MASA: 512; C2-style multi-reference loaders: 500, CUFED5's largest side).
        mode: ``"replicate-centred"`` (MASA ``TestSet_multi``: replicate padding, centred) or
            ``"zero-topleft"`` (the image in the top-left corner, zeros elsewhere).

    Returns:
        ``(len(refs) * canvas) x canvas x 3`` uint8.
    """
    if not refs:
        raise RefsrError("no references to stack")
    squares = []
    for ref in refs:
        if mode == "replicate-centred":
            squares.append(replicate_pad_centred_to(ref, (canvas, canvas))[0])
        elif mode == "zero-topleft":
            squares.append(zero_pad_to(ref, (canvas, canvas)))
        else:
            raise RefsrError(f"unknown stacking mode {mode!r}; use 'replicate-centred' or 'zero-topleft'")
    return np.concatenate(squares, axis=0)


def upscale_pil(img: np.ndarray, scale: int) -> np.ndarray:
    """``img`` enlarged ``scale`` times with PIL bicubic (how the official repos make ``LR↑``)."""
    h, w = img.shape[:2]
    return imresize(img, size=(h * scale, w * scale), kernel="pil")


def _masa_multiples(scale: int, hr_multiple_x4: int) -> tuple[int, int]:
    """MASA's HR and Ref multiples, given for x4, at ``scale``."""
    return hr_multiple_x4 // 4 * scale, 4 * scale


def prepare_test_sample(
    hr: np.ndarray,
    ref: np.ndarray,
    *,
    protocol: str,
    scale: int = 4,
    masa_hr_multiple: int = 32,
    masa_ref_centred: bool = False,
) -> dict[str, Any]:
    """Apply a protocol's test-time size rule to an (HR, Ref) pair and make LR and Ref↓.

    Args:
        hr: ``HxWx3`` uint8 RGB ground truth.
        ref: ``HxWx3`` uint8 RGB reference, any size.
        protocol: ``"masa"``, ``"c2"``, ``"amsa"`` or ``"ttsr"`` (see the module docstring).
        scale: the SR factor.
        masa_hr_multiple: MASA's HR multiple at x4 (32 in ``TestSet``/``TestSet_multi``, 64 in its Sun80
            and Urban100 loaders).
        masa_ref_centred: MASA pads the Ref centred in its Sun80 loader, bottom/right elsewhere.

    Returns:
        A dict of uint8 arrays ``hr`` (metric target), ``lr``, ``ref``, ``ref_down`` and the ints
        ``pad = (top, left)``, ``hr_size = (h, w)``.
    """
    protocol = check_protocol(protocol)
    scale = _check_scale(scale)
    if protocol == "masa":
        hr_multiple, ref_multiple = _masa_multiples(scale, masa_hr_multiple)
        hr_padded, pad = pad_to_multiple(hr, hr_multiple, centre=True)
        ref_padded, _ = pad_to_multiple(ref, ref_multiple, centre=masa_ref_centred)
        target = hr
        lr, ref_down = make_lr(hr_padded, scale), make_lr(ref_padded, scale)
    elif protocol in ("c2", "amsa"):
        multiple = scale if protocol == "c2" else scale * 8
        target = mod_crop(hr, multiple)
        ref_cropped = mod_crop(ref, multiple)
        common = (max(target.shape[0], ref_cropped.shape[0]), max(target.shape[1], ref_cropped.shape[1]))
        # Both sides zero-padded to one size: the C2/AMSA matching and restoration nets need input and
        # reference of the same size; the SR is cropped back to the original size before the metric.
        hr_padded, ref_padded = zero_pad_to(target, common), zero_pad_to(ref_cropped, common)
        pad = (0, 0)
        lr, ref_down = make_lr(hr_padded, scale), make_lr(ref_padded, scale)
    else:  # ttsr
        target = mod_crop(hr, scale)
        ref_padded = mod_crop(ref, scale)
        pad = (0, 0)
        lr, ref_down = make_lr(target, scale), make_lr(ref_padded, scale)
    return {
        "hr": target,
        "lr": lr,
        "ref": ref_padded,
        "ref_down": ref_down,
        "pad": (int(pad[0]), int(pad[1])),
        "hr_size": (int(target.shape[0]), int(target.shape[1])),
    }


def prepare_self_reference_sample(
    hr: np.ndarray,
    *,
    protocol: str,
    scale: int = 4,
    ref_mode: str = "lr",
    masa_hr_multiple: int = 64,
) -> dict[str, Any]:
    """The LR image as its own reference (Urban100 in MASA/AMSA/C2, AMSA Table 3 "LR as Ref").

    The LR is first made the protocol's way; the reference is then

    - ``ref_mode="lr"``: the LR itself, at LR size. This is MASA's Urban100 loader (``Ref = LR_pad``,
      ``Ref↓ = LR_pad / 4``) and the C2-style Urban100 loaders, which zero-pad the LR bottom/right to the HR
      size so that input and reference have one size.
    - ``ref_mode="up"``: the LR enlarged ``scale`` times with PIL bicubic (``LR↑``, the same size as the
      HR): the reference carries no detail the LR lacks but sits at the scale a RefSR model expects.

    The reference then goes through the protocol's reference rule (MASA: replicate-pad bottom/right to
    ``4 * scale``; C2/AMSA: zero-pad to the HR size; TTSR: mod-crop to ``scale``) and ``ref_down`` is
    ``make_lr(ref)``.

    Returns:
        The same keys as :func:`prepare_test_sample`.
    """
    protocol = check_protocol(protocol)
    scale = _check_scale(scale)
    if ref_mode not in ("lr", "up"):
        raise RefsrError(f"unknown self-reference mode {ref_mode!r}; use 'lr' or 'up'")
    if protocol == "masa":
        hr_multiple, ref_multiple = _masa_multiples(scale, masa_hr_multiple)
        hr_padded, pad = pad_to_multiple(hr, hr_multiple, centre=True)
        target, lr = hr, make_lr(hr_padded, scale)
        ref = lr if ref_mode == "lr" else upscale_pil(lr, scale)
        ref, _ = pad_to_multiple(ref, ref_multiple, centre=False)
    elif protocol in ("c2", "amsa"):
        multiple = scale if protocol == "c2" else scale * 8
        target = mod_crop(hr, multiple)
        pad = (0, 0)
        lr = make_lr(target, scale)
        ref = lr if ref_mode == "lr" else upscale_pil(lr, scale)
        ref = zero_pad_to(ref, target.shape[:2])
    else:  # ttsr
        target = mod_crop(hr, scale)
        pad = (0, 0)
        lr = make_lr(target, scale)
        ref = lr if ref_mode == "lr" else upscale_pil(lr, scale)
        ref = mod_crop(ref, scale)
    return {
        "hr": target,
        "lr": lr,
        "ref": ref,
        "ref_down": make_lr(ref, scale),
        "pad": (int(pad[0]), int(pad[1])),
        "hr_size": (int(target.shape[0]), int(target.shape[1])),
    }


def sample_to_tensors(sample: dict[str, Any], image_keys: Iterable[str] = ("hr", "lr", "ref", "ref_down")):
    """Turn the uint8 ``HxWx3`` arrays under ``image_keys`` into ``(3, H, W)`` float32 tensors in [0, 1]."""
    out = dict(sample)
    for key in image_keys:
        if key in out:
            # contiguous: to_tensor's permute leaves channels-last strides, which .view() rejects
            out[key] = to_tensor(np.ascontiguousarray(out[key])).contiguous()
    return out


# --------------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------------


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from a tuple of non-negative ints, well mixed.

    ``SeedSequence`` hashes the tuple, so (seed, index) and (seed, index + 1) give unrelated streams.
    """
    words = [int(e) for e in entropy]
    if any(w < 0 for w in words):
        raise RefsrError(f"seeds must be non-negative integers, got {tuple(words)}")
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class SeededDataset(Dataset):
    """Base for the benchmark datasets: a seed, an epoch counter and an optional sample transform.

    ``transform(sample, generator=g)`` is called on every sample (e.g. :class:`refsr.data.augment.Compose`),
    with ``g`` seeded by ``(seed, epoch, index)``: call :meth:`set_epoch` once per epoch (as with
    ``DistributedSampler``) to get new augmentations each epoch, reproducibly.
    """

    def __init__(self, *, seed: int = 0, transform: Callable[..., dict] | None = None) -> None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise RefsrError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that seeds the per-epoch random choices (augmentation, random views)."""
        if int(epoch) < 0:
            raise RefsrError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def generator(self, index: int, stream: int, *, per_epoch: bool) -> torch.Generator:
        """The generator for one random purpose (``stream``) of item ``index``."""
        return seeded_generator(self.seed, stream, self.epoch if per_epoch else 0, index)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return index

    def _finish(self, sample: dict[str, Any], index: int) -> dict[str, Any]:
        sample = sample_to_tensors(sample)
        if self.transform is not None:
            sample = self.transform(sample, generator=self.generator(index, STREAM_TRANSFORM, per_epoch=True))
        return sample

    def __len__(self) -> int:  # pragma: no cover - every subclass defines it
        raise NotImplementedError
