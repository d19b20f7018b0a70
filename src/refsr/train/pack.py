"""``refsr data pack CONFIG... -o DIR``: a self-contained data root holding only what some training configs read.

For a machine with no network and no PyAV (the GPU machine): ``REFSR_DATA=DIR refsr train CONFIG`` reads the
pack as it would the data cache (:mod:`refsr.data.packed`). What each source of ``data.train`` (and
``data.val``) reads is stored the way its loader uses it:

- ``open-synthetic`` photos **pre-scaled** (JPEG and WebP photos halved with PIL bicubic, as
  :class:`~refsr.data.synthetic.SyntheticRefPairs` does before cutting its samples), so a 20-megapixel
  wallpaper becomes the 5-megapixel image the loader works on;
- ``open`` pairs' images as the loader reads them: each needed **video frame decoded** (PyAV's ``rgb24``),
  each still as it is decoded.

With ``lossless`` every image is a lossless WebP file, and samples drawn from the pack equal those drawn from
the cache bit for bit. Otherwise each is a JPEG without chroma subsampling at the lowest quality of
:data:`QUALITIES` whose PSNR against the exact pixels is at least ``min_psnr``, or lossless WebP when none is;
so a sample's PSNR against the cache's stays near that floor. (Lossy WebP subsamples colour, which caps it near
42 dB on these photos: JPEG 4:4:4 reaches 44-48 dB in fewer bytes than lossless.) When the images outgrow ``max_size``,
photos are dropped first, largest first, then video frames (with the pairs that need them); the report and
the pack's index name what was dropped, and the datasets read from the pack leave it out.

Only the open benchmark's datasets can be packed; others (CUFED, Sintel...) live in folders of their own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from refsr.data.cache import MARKER_NAME, PathLike, data_root
from refsr.data.degrade import make_lr, mod_crop
from refsr.data.open_pairs import OpenPairs
from refsr.data.packed import PACK_INDEX, frame_key
from refsr.data.registry import build_dataset
from refsr.data.synthetic import SyntheticRefPairs
from refsr.errors import RefsrError
from refsr.io import read_image
from refsr.metrics import psnr
from refsr.models._registry import model_scale
from refsr.train.config import load_config
from refsr.train.schema import Config

__all__ = ["QUALITIES", "PackReport", "pack_training_data"]

#: The JPEG (4:4:4) qualities tried, lowest first, before lossless WebP.
QUALITIES = (90, 93, 95, 97, 98, 99)
_PACKABLE = ("open", "open-synthetic")


@dataclass
class _Image:
    """One image to store: where it comes from and how it is encoded."""

    key: str
    source: str  # "photo" or "pair"
    prescale: int
    load: Callable[[], np.ndarray]
    data: bytes = b""
    encoding: str = ""
    psnr: float = float("inf")
    pairs: list[str] = field(default_factory=list)  # the open pairs that read it


@dataclass
class PackReport:
    """What :func:`pack_training_data` wrote.

    Attributes:
        out: the pack folder.
        images: images stored; ``bytes``: their total size.
        photos, frames_and_stills: how many of each.
        lossless: how many are stored losslessly.
        min_psnr: the lowest PSNR of a lossy image against its exact pixels (``inf`` when all are lossless).
        dropped: the keys left out to meet the size budget (and the open pairs left out with them).
    """

    out: Path
    images: int
    bytes: int
    photos: int
    frames_and_stills: int
    lossless: int
    min_psnr: float
    dropped: list[str]

    def render(self) -> str:
        mib = self.bytes / 2**20
        lines = [f"{self.out}: {self.images} images ({self.photos} photos, {self.frames_and_stills} frames and "
                 f"stills), {mib:.1f} MiB; {self.lossless} lossless"
                 + ("" if self.lossless == self.images else f", the lossy ones >= {self.min_psnr:.1f} dB")]
        if self.dropped:
            lines.append(f"dropped to meet the size budget: {len(self.dropped)}: " + ", ".join(self.dropped))
        return "\n".join(lines)


def _scale(cfg: Config) -> int:
    """The scale the config's datasets are built at (the model's, as the training loop builds them)."""
    if cfg.task == "ccnet":
        return cfg.ccnet.scale
    if cfg.task != "restoration":
        return 4  # the contrastive extractor's (see refsr.train.tasks.contrastive)
    return model_scale(cfg.model.name, cfg.model.overrides)


def _sources(cfg: Config) -> Iterable[tuple[str, str, dict]]:
    """``(path in the config, dataset name, options)`` of every source the config reads."""
    for i, source in enumerate(cfg.data.train.sources):
        yield f"data.train.sources[{i}]", source.dataset, dict(source.options)
    if cfg.data.val is not None:
        yield "data.val", cfg.data.val.dataset, dict(cfg.data.val.options)


def _photo_loader(path: Path, factor: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        image = read_image(path)
        return make_lr(mod_crop(image, factor), factor) if factor > 1 else image
    return load


def _collect(configs: Sequence[PathLike], cache: Path) -> dict[str, _Image]:
    images: dict[str, _Image] = {}
    for config in configs:
        cfg = load_config(config)
        scale = _scale(cfg)
        for where, name, options in _sources(cfg):
            if name not in _PACKABLE:
                raise RefsrError(f"{config}: {where}: dataset {name!r} is not the open benchmark's; a data pack "
                                 f"holds only {', '.join(_PACKABLE)} (give the other datasets their folder)")
            if "paths" in options:
                raise RefsrError(f"{config}: {where}: photos listed by 'paths' are not the open benchmark's; a "
                                 "data pack holds the manifest's photos only")
            dataset = build_dataset(name, cache, options, seed=cfg.seed, scale=scale, path=f"{config}: {where}")
            if isinstance(dataset, SyntheticRefPairs):
                for photo in dataset.photos:
                    key = photo.path.relative_to(cache).as_posix()
                    images.setdefault(key, _Image(key, "photo", photo.factor, _photo_loader(photo.path, photo.factor)))
            else:
                assert isinstance(dataset, OpenPairs)
                for row in dataset.rows:
                    for column in ("target", "ref"):
                        path, index = row[column], row[f"{column}_index"]
                        key = frame_key(path, int(index)) if index else path
                        entry = images.setdefault(key, _Image(
                            key, "pair", 1, lambda d=dataset, p=path, i=index: d._load(p, i)))
                        entry.pairs.append(row["pair_id"])
    return images


def _encode(image: np.ndarray, *, lossless: bool, min_psnr: float) -> tuple[bytes, str, float]:
    """The image's stored bytes, their encoding (``jpeg-q95``, ``webp-lossless``) and PSNR (inf: exact)."""
    pil = Image.fromarray(image)
    if not lossless:
        for quality in QUALITIES:
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=quality, subsampling=0)
            decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
            score = float(psnr(decoded, image, protocol="rgb"))
            if score >= min_psnr:
                return buffer.getvalue(), f"jpeg-q{quality}", score
    buffer = io.BytesIO()
    pil.save(buffer, format="WEBP", lossless=True, method=4)
    return buffer.getvalue(), "webp-lossless", float("inf")


def _file_of(key: str, encoding: str) -> str:
    suffix = ".webp" if encoding.startswith("webp") else ".jpg"
    path, _, index = key.partition("#")
    return f"{path}.frames/{int(index):06d}{suffix}" if index else f"{path}{suffix}"


def _fit(images: dict[str, _Image], max_size: int | None) -> list[_Image]:
    """Drop images until the rest fit ``max_size``: photos first, then frames and stills, largest first."""
    if max_size is None:
        return []
    dropped = []
    total = sum(len(i.data) for i in images.values())
    for image in sorted(images.values(), key=lambda i: (i.source != "photo", -len(i.data))):
        if total <= max_size:
            break
        dropped.append(image)
        total -= len(image.data)
        del images[image.key]
    return dropped


def pack_training_data(configs: Sequence[PathLike], out: PathLike, *, cache: PathLike | None = None,
                       max_size: int | None = None, min_psnr: float = 44.0, lossless: bool = False,
                       progress: Callable[[str], None] | None = None) -> PackReport:
    """Write a data pack of what ``configs`` read from the open benchmark (see the module docstring).

    Args:
        configs: training config files.
        out: the pack folder; it must not exist yet (it is written beside it and renamed into place).
        cache: the data cache to read (default: :func:`refsr.data.cache.data_root`).
        max_size: the budget in bytes for the stored images; ``None``: no limit.
        min_psnr: the PSNR floor (dB, RGB) of a lossy image against its exact pixels.
        lossless: store every image losslessly (samples then equal the cache's bit for bit).
        progress: called with a line of text now and then.

    Raises:
        RefsrError: a config that cannot be read or names a dataset the pack cannot hold, a missing cache, an
            ``out`` that exists.
    """
    out = Path(out).expanduser()
    if out.exists():
        raise RefsrError(f"{out}: exists; a data pack is written to a new folder")
    if not out.parent.is_dir():
        raise RefsrError(f"{out}: the folder {out.parent} does not exist")
    if not (min_psnr > 0):
        raise RefsrError(f"--min-psnr must be positive, got {min_psnr}")
    source = data_root(cache)
    images = _collect(configs, source)
    if not images:
        raise RefsrError("the configs read no image of the open benchmark; nothing to pack")
    for n, image in enumerate(images.values(), 1):
        image.data, image.encoding, image.psnr = _encode(image.load(), lossless=lossless, min_psnr=min_psnr)
        if progress is not None and n % 20 == 0:
            progress(f"encoded {n}/{len(images)} images")
    dropped = _fit(images, max_size)
    dropped_pairs = sorted({pair for image in dropped for pair in image.pairs})

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for image in images.values():
            target = staging / _file_of(image.key, image.encoding)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.data)
        for package in sorted({key.split("/", 1)[0] for key in images}):
            # The datasets check that a package folder is complete by its marker, as in the cache.
            shutil.copyfile(source / package / MARKER_NAME, staging / package / MARKER_NAME)
        index = {
            "format": 1,
            "configs": [str(c) for c in configs],
            "images": {i.key: {"file": _file_of(i.key, i.encoding), "prescale": i.prescale, "encoding": i.encoding,
                               "psnr": None if i.psnr == float("inf") else round(i.psnr, 3), "bytes": len(i.data)}
                       for i in images.values()},
            "dropped": [i.key for i in dropped],
            "dropped_pairs": dropped_pairs,
        }
        (staging / PACK_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    lossy = [i.psnr for i in images.values() if i.psnr != float("inf")]
    return PackReport(out=out, images=len(images), bytes=sum(len(i.data) for i in images.values()),
                      photos=sum(i.source == "photo" for i in images.values()),
                      frames_and_stills=sum(i.source == "pair" for i in images.values()),
                      lossless=len(images) - len(lossy), min_psnr=min(lossy, default=float("inf")),
                      dropped=[i.key for i in dropped] + [f"pair {p}" for p in dropped_pairs])
