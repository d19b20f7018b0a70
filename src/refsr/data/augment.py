"""Training crops and augmentations as the official RefSR pipelines apply them.

What the papers' official code does (each repository's training data loader):

- **MASA-SR**: swap the input and reference roles with p = 0.5; brightness/contrast jitter
  ``cv2.convertScaleAbs(img, alpha ~ U[0.7, 1.3], beta ~ U[-20, 20])`` on *one* of the two images (each with
  p = 0.5) before the LR / Ref↓ are made; then vertical flip, horizontal flip (p = 0.5 each) and, with
  p = 0.5, a rotation by ``k * 90°`` (k uniform in 0..3), drawn **independently** for (HR, LR) and for
  (Ref, Ref↓). No crop: whole 160x160 CUFED images. :func:`masa_augment`.
- **C2-Matching / AMSA**: horizontal flip, vertical flip and transpose (p = 0.5 each, i.e. uniform over the
  eight flips/rotations), the **same** for input and reference. :func:`c2_augment`.
- **TTSR**: flips (p = 0.5 each) and a uniform ``k * 90°`` rotation, independent for input and reference.
  :func:`ttsr_augment`.

Samples are the dicts the datasets return: ``"hr"``, ``"lr"``, ``"ref"``, ``"ref_down"`` ``(3, H, W)`` float32
RGB tensors in [0, 1] (any leading batch dims work for the geometric ops), optionally ``"flow"`` ``(2, H, W)``
(u, v in HR pixels, defined on the reference grid and pointing into the HR frame, as
:class:`refsr.data.sintel.SintelPairs` returns it), which the geometric transforms keep consistent.

Every random choice is drawn from a :class:`torch.Generator` passed in (or the transform's own, seeded at
construction), so the same seed gives the same output. Datasets pass a generator seeded by
``(seed, epoch, index)`` (see :class:`refsr.data.standard.SeededDataset`).

Functional ops: :func:`apply_dihedral`, :func:`transform_flow`, :func:`random_dihedral`, :func:`crop`,
:func:`random_crop_position`, :func:`paired_random_crop`, :func:`brightness_contrast`,
:func:`random_brightness_contrast`, :func:`swap_roles`. Composable transforms (thin ``nn.Module`` wrappers
called as ``t(sample, generator=g)``): :class:`RandomRoleSwap`, :class:`RandomBrightnessContrast`,
:class:`PairedRandomCrop`, :class:`RandomDihedral`, :class:`Compose`; and :class:`RandomRealDegradation`,
which remakes the LR with the real-world degradation of :mod:`refsr.data.degrade` (last, on the final HR
crop).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from refsr.data.degrade import RealDegradation, jpeg_compress, make_lr, to_tensor
from refsr.errors import RefsrError

__all__ = [
    "Dihedral",
    "apply_dihedral",
    "transform_flow",
    "random_dihedral",
    "crop",
    "random_crop_position",
    "paired_random_crop",
    "brightness_contrast",
    "random_brightness_contrast",
    "swap_roles",
    "RandomRoleSwap",
    "RandomBrightnessContrast",
    "PairedRandomCrop",
    "RandomDihedral",
    "RandomRealDegradation",
    "Compose",
    "masa_augment",
    "c2_augment",
    "ttsr_augment",
]

Sample = dict[str, Any]
ImageLike = Union[np.ndarray, Tensor]

# --------------------------------------------------------------------------------------------------------
# Random draws (all from an explicit generator)
# --------------------------------------------------------------------------------------------------------


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _bernoulli(generator: torch.Generator, p: float) -> bool:
    # Always draw, so that the stream advances the same way whatever p is.
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < p


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform in ``0 .. high - 1``."""
    return int(torch.randint(high, (), generator=generator))


def _check_probability(p: float, what: str) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise RefsrError(f"{what} must be a probability in [0, 1], got {p}")
    return float(p)


# --------------------------------------------------------------------------------------------------------
# Flips and rotations
# --------------------------------------------------------------------------------------------------------


class Dihedral(NamedTuple):
    """One of the eight flips/rotations: vertical flip, then horizontal flip, then ``k`` quarter turns.

    The quarter turn is ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise on screen).
    """

    vflip: bool = False
    hflip: bool = False
    k: int = 0


def apply_dihedral(x: Tensor, d: Dihedral) -> Tensor:
    """Apply ``d`` to the last two (H, W) dims of ``x``; any dtype, any leading dims."""
    if d.vflip:
        x = x.flip(-2)
    if d.hflip:
        x = x.flip(-1)
    if d.k % 4:
        x = torch.rot90(x, d.k % 4, dims=(-2, -1))
    return x


def transform_flow(
    flow: Tensor, d: Dihedral, *, target_size: tuple[int, int] | None = None
) -> Tensor:
    """Apply ``d`` to a flow field *and* to the frames it links, so that it stays a correspondence.

    Args:
        flow: ``(..., 2, H, W)``: channel 0 = u (x displacement), 1 = v (y), in pixels; defined on a source
            grid of size ``(H, W)`` and pointing into a target frame of size ``target_size`` (default: the
            same size). Both frames are assumed to get the same ``d``.
        d: the flip/rotation.

    Returns:
        The flow on the transformed source grid, pointing into the transformed target, ``(..., 2, H', W')``.

    With source size ``(Hs, Ws)`` and target ``(Ht, Wt)``: a vertical flip maps ``v -> (Ht - Hs) - v``; a
    horizontal flip ``u -> (Wt - Ws) - u``; a quarter turn (``y' = W - 1 - x``, ``x' = y``) maps
    ``(u, v) -> (v, (Wt - Ws) - u)`` and swaps the sides.
    """
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise RefsrError(f"expected a flow of shape (..., 2, H, W), got {tuple(flow.shape)}")
    hs, ws = flow.shape[-2:]
    ht, wt = target_size if target_size is not None else (hs, ws)
    u, v = flow.unbind(-3)
    if d.vflip:
        u, v = u.flip(-2), (ht - hs) - v.flip(-2)
    if d.hflip:
        u, v = (wt - ws) - u.flip(-1), v.flip(-1)
    for _ in range(d.k % 4):
        u, v = torch.rot90(u, 1, dims=(-2, -1)), torch.rot90(v, 1, dims=(-2, -1))
        u, v = v, (wt - ws) - u
        hs, ws, ht, wt = ws, hs, wt, ht
    return torch.stack([u, v], dim=-3)


def random_dihedral(
    generator: torch.Generator, *, flip: bool = True, rotate: bool = True, rot_prob: float = 0.5
) -> Dihedral:
    """Draw a flip/rotation: each flip with p = 0.5 (if ``flip``), and with p = ``rot_prob`` (if ``rotate``)
    ``k`` uniform in 0..3 (MASA: ``rot_prob = 0.5``; ``rot_prob = 1`` makes all eight equally likely)."""
    _check_probability(rot_prob, "rot_prob")
    vflip, hflip = _bernoulli(generator, 0.5), _bernoulli(generator, 0.5)
    turn = _bernoulli(generator, rot_prob)
    k = _randint(generator, 4)
    return Dihedral(vflip and flip, hflip and flip, k if (rotate and turn) else 0)


# --------------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------------


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """``x[..., top:top + height, left:left + width]``, checked to lie inside ``x``."""
    h, w = x.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w or height < 1 or width < 1:
        raise RefsrError(f"crop {width}x{height} at (top={top}, left={left}) does not fit a {w}x{h} image")
    return x[..., top : top + height, left : left + width]


def random_crop_position(
    size: tuple[int, int], patch: tuple[int, int], generator: torch.Generator
) -> tuple[int, int]:
    """A uniform ``(top, left)`` for a ``patch = (h, w)`` window inside ``size = (H, W)``."""
    (h, w), (ph, pw) = size, patch
    if ph > h or pw > w or ph < 1 or pw < 1:
        raise RefsrError(f"a {pw}x{ph} patch does not fit a {w}x{h} image; use a smaller patch")
    return _randint(generator, h - ph + 1), _randint(generator, w - pw + 1)


def _scale_between(big: Tensor, small: Tensor, what: str) -> int:
    (bh, bw), (sh, sw) = big.shape[-2:], small.shape[-2:]
    if sh < 1 or sw < 1 or bh % sh or bw % sw or bh // sh != bw // sw:
        raise RefsrError(f"{what}: {bw}x{bh} is not an integer multiple of {sw}x{sh}")
    return bh // sh


def paired_random_crop(
    hr: Tensor, lr: Tensor, lr_patch: int | tuple[int, int], *, generator: torch.Generator
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Crop ``lr`` at a random position and ``hr`` at the same place, ``scale`` times larger.

    Args:
        hr: ``(..., s*h, s*w)``; lr: ``(..., h, w)``; the scale ``s`` is read from the shapes.
        lr_patch: the LR patch side (or ``(h, w)``); the HR patch is ``s`` times that.

    Returns:
        ``(hr_patch, lr_patch, (top, left))`` with ``top, left`` in LR pixels (HR: ``s * top, s * left``).
        The LR patch is cut out of the whole image's LR (the BasicSR convention), so near its borders it
        is not ``make_lr(hr_patch)``, which would see a truncated kernel.
    """
    s = _scale_between(hr, lr, "paired_random_crop")
    ph, pw = (lr_patch, lr_patch) if isinstance(lr_patch, int) else lr_patch
    top, left = random_crop_position(tuple(lr.shape[-2:]), (ph, pw), generator)
    return crop(hr, s * top, s * left, s * ph, s * pw), crop(lr, top, left, ph, pw), (top, left)


# --------------------------------------------------------------------------------------------------------
# Brightness / contrast
# --------------------------------------------------------------------------------------------------------


def brightness_contrast(img: ImageLike, alpha: float, beta: float) -> ImageLike:
    """MASA's jitter ``cv2.convertScaleAbs(img, alpha=alpha, beta=beta)``: ``sat(round(|alpha x + beta|))``.

    On 8-bit values: ``alpha * x + beta`` in float32 (one rounding, as OpenCV's fused multiply-add), its
    **absolute value** (an OpenCV quirk: with ``beta < 0`` dark pixels fold back up, ``0 -> -beta``), rounded
    half to even and saturated to 0..255.

    Args:
        img: uint8 numpy array or tensor (any shape), or a float tensor in [0, 1] whose values are taken as
            8-bit levels ``round(255 * x)`` (as the datasets' tensors are exactly).
        alpha: contrast gain (MASA: U[0.7, 1.3]); beta: brightness offset in 8-bit levels (MASA: U[-20, 20]).

    Returns:
        The same type and dtype as ``img``; float tensors come back as ``level / 255``.
    """
    a, b = np.float64(np.float32(alpha)), np.float64(np.float32(beta))

    def levels(x: np.ndarray) -> np.ndarray:
        # x * a is exact in float64 (24-bit by 24-bit mantissas); rounding the sum once to float32 is the
        # fused multiply-add OpenCV's SIMD path computes.
        y = np.abs((x.astype(np.float64) * a + b).astype(np.float32))
        return np.clip(np.rint(y), 0, 255)

    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise RefsrError(f"brightness_contrast expects a uint8 array, got {img.dtype}")
        return levels(img).astype(np.uint8)
    if not isinstance(img, Tensor):
        raise RefsrError(f"brightness_contrast expects a numpy array or a tensor, got {type(img).__name__}")
    if img.dtype == torch.uint8:
        return torch.from_numpy(levels(img.cpu().numpy()).astype(np.uint8)).to(img.device)
    if not img.is_floating_point():
        raise RefsrError(f"brightness_contrast expects uint8 or float in [0, 1], got {img.dtype}")
    x = np.rint(img.detach().cpu().double().numpy() * 255.0).clip(0, 255)
    # Divide in float32, as to_tensor does, so that jittered and loaded images share one set of levels.
    out = torch.from_numpy(levels(x).astype(np.float32)).div_(255.0)
    return out.to(dtype=img.dtype, device=img.device)


def random_brightness_contrast(
    generator: torch.Generator,
    *,
    alpha_range: tuple[float, float] = (0.7, 1.3),
    beta_range: tuple[float, float] = (-20.0, 20.0),
) -> tuple[float, float]:
    """Draw ``(alpha, beta)`` uniformly from the ranges (MASA's defaults)."""
    return _uniform(generator, *alpha_range), _uniform(generator, *beta_range)


# --------------------------------------------------------------------------------------------------------
# Helpers on samples
# --------------------------------------------------------------------------------------------------------


def _to_uint8(x: Tensor) -> np.ndarray:
    """``(3, H, W)`` float in [0, 1] -> ``HxWx3`` uint8 (exact for the datasets' ``k / 255`` values)."""
    if x.ndim != 3:
        raise RefsrError(f"expected a (3, H, W) image tensor, got shape {tuple(x.shape)}")
    return np.rint(x.detach().cpu().double().clamp(0, 1).numpy() * 255).astype(np.uint8).transpose(1, 2, 0)


def _remake_low(sample: Sample, high_key: str, low_key: str) -> None:
    """Re-make ``sample[low_key]`` as ``make_lr(sample[high_key])`` after the high-res image changed."""
    if low_key not in sample:
        return
    s = _scale_between(sample[high_key], sample[low_key], f"{high_key}/{low_key}")
    low = to_tensor(make_lr(_to_uint8(sample[high_key]), s)).contiguous()
    sample[low_key] = low.to(sample[low_key].dtype)


def _refuse_chain(sample: Sample, what: str) -> None:
    """A sample with a chain of LR frames (``chain_lr``, :class:`refsr.data.clips.ClipFrames`) must keep them
    consistent with its ``lr``; transforms that remake or exchange one frame alone cannot."""
    if "chain_lr" in sample:
        raise RefsrError(f"cannot {what} a sample with a chain of frames (chain_lr): the chain would no longer "
                         "match its input; turn this augmentation off for it")


_SWAPS = (("hr", "ref"), ("lr", "ref_down"), ("name", "ref_name"))


def swap_roles(sample: Sample) -> Sample:
    """Exchange the input and reference roles: ``hr <-> ref``, ``lr <-> ref_down``, ``name <-> ref_name``.

    Exact for training samples whose two images follow one size rule (MASA's: both padded to 16, LR and
    Ref↓ both ``make_lr`` of them), which is why MASA can swap before or after degrading.
    """
    for key in ("hr", "ref"):
        if key not in sample:
            raise RefsrError(f"cannot swap roles: the sample has no {key!r}")
    if "flow" in sample:
        raise RefsrError("cannot swap roles of a sample with a flow: the reverse flow is not known")
    _refuse_chain(sample, "swap the roles of")
    if ("lr" in sample) != ("ref_down" in sample):
        raise RefsrError("cannot swap roles: the sample needs both 'lr' and 'ref_down', or neither")
    out = dict(sample)
    for a, b in _SWAPS:
        if a in sample or b in sample:
            out[a], out[b] = sample.get(b), sample.get(a)
            if out[a] is None:
                del out[a]
            if out[b] is None:
                del out[b]
    return out


# --------------------------------------------------------------------------------------------------------
# Composable transforms
# --------------------------------------------------------------------------------------------------------


class _RandomTransform(nn.Module):
    """Base: ``forward(sample, generator=None)``; without a generator, the transform's own (seeded) one."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self._own: torch.Generator | None = None

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        if self._own is None:
            self._own = torch.Generator().manual_seed(self.seed)
        return self._own

    def __getstate__(self) -> dict:
        # A torch.Generator does not pickle; DataLoader workers rebuild it from the seed.
        state = self.__dict__.copy()
        state["_own"] = None
        return state


class RandomRoleSwap(_RandomTransform):
    """With probability ``p``, :func:`swap_roles` (MASA: p = 0.5). Sets ``sample["swapped"]``."""

    def __init__(self, p: float = 0.5, *, seed: int = 0) -> None:
        super().__init__(seed)
        self.p = _check_probability(p, "p")

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        swap = _bernoulli(self._generator(generator), self.p)
        out = swap_roles(sample) if swap else dict(sample)
        out["swapped"] = swap
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RandomBrightnessContrast(_RandomTransform):
    """MASA's jitter on one of the two images, then its low-res partner re-made with ``make_lr``.

    With probability ``p``, draw ``alpha``, ``beta`` and apply :func:`brightness_contrast` to ``ref`` (with
    probability ``ref_prob``) or to ``hr``; then ``ref_down = make_lr(ref)`` or ``lr = make_lr(hr)``, as MASA
    jitters before degrading. Meant for training samples (``lr`` is ``make_lr(hr)``).
    """

    def __init__(
        self,
        p: float = 1.0,
        *,
        alpha_range: tuple[float, float] = (0.7, 1.3),
        beta_range: tuple[float, float] = (-20.0, 20.0),
        ref_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.p, self.ref_prob = _check_probability(p, "p"), _check_probability(ref_prob, "ref_prob")
        if alpha_range[0] > alpha_range[1] or beta_range[0] > beta_range[1]:
            raise RefsrError(f"ranges must be (low, high), got alpha {alpha_range} and beta {beta_range}")
        self.alpha_range, self.beta_range = tuple(alpha_range), tuple(beta_range)

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        _refuse_chain(sample, "jitter the brightness of")
        g = self._generator(generator)
        apply = _bernoulli(g, self.p)
        alpha, beta = random_brightness_contrast(g, alpha_range=self.alpha_range, beta_range=self.beta_range)
        on_ref = _bernoulli(g, self.ref_prob)
        out = dict(sample)
        if apply:
            high, low = ("ref", "ref_down") if on_ref else ("hr", "lr")
            out[high] = brightness_contrast(sample[high], alpha, beta)
            _remake_low(out, high, low)
        return out

    def extra_repr(self) -> str:
        return (f"p={self.p}, alpha_range={self.alpha_range}, beta_range={self.beta_range}, "
                f"ref_prob={self.ref_prob}")


class PairedRandomCrop(_RandomTransform):
    """Crop (HR, LR) at a random LR position, and the reference pair as ``ref`` says.

    Args:
        lr_patch: the LR patch side (HR: ``scale`` times, the scale read from the shapes).
        ref: ``"independent"`` (the (Ref, Ref↓) pair cropped at its own random position, ``ref_patch``
            Ref↓ pixels), ``"aligned"`` (at the input's LR position: for aligned pairs such as stereo,
            video or synthetic references; needs Ref↓ of the LR's size) or ``"none"`` (the whole
            reference, as MASA and C2 train).
        ref_patch: the Ref↓ patch side for ``"independent"`` (default ``lr_patch``).

    A ``"flow"`` (reference grid -> HR frame) is cropped with the reference and shifted by the offset
    between the two crops, so it still links the cropped frames.
    """

    def __init__(
        self, lr_patch: int, *, ref: str = "independent", ref_patch: int | None = None, seed: int = 0
    ) -> None:
        super().__init__(seed)
        if ref not in ("independent", "aligned", "none"):
            raise RefsrError(f"unknown reference crop {ref!r}; use 'independent', 'aligned' or 'none'")
        if int(lr_patch) < 1:
            raise RefsrError(f"lr_patch must be positive, got {lr_patch}")
        self.lr_patch, self.ref = int(lr_patch), ref
        self.ref_patch = int(ref_patch) if ref_patch is not None else self.lr_patch

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        g = self._generator(generator)
        out = dict(sample)
        out["hr"], out["lr"], (top, left) = paired_random_crop(sample["hr"], sample["lr"], self.lr_patch,
                                                               generator=g)
        s = _scale_between(sample["hr"], sample["lr"], "hr/lr")
        ref_offset = (0, 0)  # HR-pixel position of the reference crop
        if self.ref != "none":
            if "ref_down" not in sample:
                raise RefsrError("cropping the reference needs 'ref_down' in the sample")
            rs = _scale_between(sample["ref"], sample["ref_down"], "ref/ref_down")
            if self.ref == "aligned":
                if tuple(sample["ref_down"].shape[-2:]) != tuple(sample["lr"].shape[-2:]) or rs != s:
                    raise RefsrError(
                        "an aligned reference crop needs Ref↓ of the LR's size; use 'independent'"
                    )
                rt, rl, patch = top, left, self.lr_patch
            else:
                patch = self.ref_patch
                rt, rl = random_crop_position(tuple(sample["ref_down"].shape[-2:]), (patch, patch), g)
            out["ref"] = crop(sample["ref"], rs * rt, rs * rl, rs * patch, rs * patch)
            out["ref_down"] = crop(sample["ref_down"], rt, rl, patch, patch)
            ref_offset = (rs * rt, rs * rl)
        if "chain_lr" in sample:  # the LR frames of a chain (ClipFrames): the input's window in each
            out["chain_lr"] = crop(sample["chain_lr"], top, left, self.lr_patch, self.lr_patch)
        if "flow" in sample:
            flow = sample["flow"]
            if self.ref != "none":
                ph, pw = out["ref"].shape[-2:]
                flow = crop(flow, ref_offset[0], ref_offset[1], ph, pw)
            # A reference pixel at p (crop coords) is at p + ref_offset in the frame; its match, at
            # p + ref_offset + f, is at p + ref_offset + f - input_offset in the cropped HR.
            dy, dx = ref_offset[0] - s * top, ref_offset[1] - s * left
            shift = torch.tensor([dx, dy], dtype=flow.dtype).view(2, 1, 1)
            out["flow"] = flow + shift
        return out

    def extra_repr(self) -> str:
        return f"lr_patch={self.lr_patch}, ref={self.ref!r}, ref_patch={self.ref_patch}"


class RandomDihedral(_RandomTransform):
    """Random flips and quarter turns: the same for (HR, LR), and for (Ref, Ref↓) as ``ref`` says.

    Args:
        flip, rotate, rot_prob: see :func:`random_dihedral`.
        ref: ``"independent"`` (MASA, TTSR: a second draw for the reference pair) or ``"joint"`` (C2, AMSA:
            the input's draw). A ``"flow"`` in the sample is transformed with :func:`transform_flow` and
            needs ``"joint"``.
    """

    def __init__(
        self, *, flip: bool = True, rotate: bool = True, rot_prob: float = 0.5, ref: str = "independent",
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if ref not in ("independent", "joint"):
            raise RefsrError(f"unknown reference mode {ref!r}; use 'independent' or 'joint'")
        self.flip, self.rotate, self.ref = bool(flip), bool(rotate), ref
        self.rot_prob = _check_probability(rot_prob, "rot_prob")

    def draw(self, generator: torch.Generator) -> tuple[Dihedral, Dihedral]:
        """The (input, reference) transforms; both always drawn, so the stream does not depend on ``ref``."""
        d_in = random_dihedral(generator, flip=self.flip, rotate=self.rotate, rot_prob=self.rot_prob)
        d_ref = random_dihedral(generator, flip=self.flip, rotate=self.rotate, rot_prob=self.rot_prob)
        return d_in, (d_in if self.ref == "joint" else d_ref)

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        d_in, d_ref = self.draw(self._generator(generator))
        out = dict(sample)
        if "flow" in sample:
            if self.ref != "joint":
                raise RefsrError("a sample with a flow needs RandomDihedral(ref='joint'); independent "
                                 "flips of input and reference would break the correspondence")
            out["flow"] = transform_flow(sample["flow"], d_in, target_size=tuple(sample["hr"].shape[-2:]))
        for key in ("hr", "lr", "chain_lr"):  # a chain of LR frames turns with its input
            if key in sample:
                out[key] = apply_dihedral(sample[key], d_in)
        for key in ("ref", "ref_down"):
            if key in sample:
                out[key] = apply_dihedral(sample[key], d_ref)
        return out

    def extra_repr(self) -> str:
        return f"flip={self.flip}, rotate={self.rotate}, rot_prob={self.rot_prob}, ref={self.ref!r}"


class RandomRealDegradation(_RandomTransform):
    """Remake ``lr`` from ``hr`` with one draw of the real-world degradation (:class:`RealDegradation`), and
    optionally JPEG-compress the reference (``ref_down`` then remade from it with ``make_lr``).

    Put it last, after crops and flips: the LR is made from the final HR, so the two stay aligned (the
    sources' own bicubic LR is discarded). The scale is read from the ``hr``/``lr`` shapes.

    Args:
        options: the degradation's options (default: Real-ESRGAN's).
        ref_jpeg: ``(low, high)``: the reference is JPEG-compressed at an integer quality drawn uniformly in
            it; None leaves the reference clean.

    Draws, always both: a degradation seed (63 bits) and the reference's quality, so the same generator
    state gives the same sample whatever the options.
    """

    def __init__(
        self,
        options: RealDegradation | None = None,
        *,
        ref_jpeg: tuple[int, int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        self.options = options if options is not None else RealDegradation()
        self.options.check()
        if ref_jpeg is not None:
            lo, hi = (int(q) for q in ref_jpeg)
            if not 1 <= lo <= hi <= 100:
                raise RefsrError(f"ref_jpeg must be qualities low <= high within 1..100, got {ref_jpeg}")
            ref_jpeg = (lo, hi)
        self.ref_jpeg = ref_jpeg

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        g = self._generator(generator)
        seed = int(torch.randint(2**63 - 1, (), generator=g))
        quality_draw = float(torch.rand((), generator=g, dtype=torch.float64))
        for key in ("hr", "lr"):
            if key not in sample:
                raise RefsrError(f"the real degradation needs {key!r} in the sample")
        _refuse_chain(sample, "degrade")
        out = dict(sample)
        s = _scale_between(sample["hr"], sample["lr"], "hr/lr")
        lr = self.options.draw(seed).apply(_to_uint8(sample["hr"]), s)
        out["lr"] = to_tensor(lr).to(sample["lr"].dtype)
        if self.ref_jpeg is not None and "ref" in sample:
            lo, hi = self.ref_jpeg
            quality = lo + min(int(quality_draw * (hi - lo + 1)), hi - lo)
            out["ref"] = to_tensor(jpeg_compress(_to_uint8(sample["ref"]), quality)).to(sample["ref"].dtype)
            _remake_low(out, "ref", "ref_down")
        return out

    def extra_repr(self) -> str:
        return f"ref_jpeg={self.ref_jpeg}"


class Compose(_RandomTransform):
    """Apply transforms in order, all drawing from one generator (the one passed in, or this one's own)."""

    def __init__(self, *transforms: nn.Module, seed: int = 0) -> None:
        super().__init__(seed)
        if len(transforms) == 1 and isinstance(transforms[0], Sequence):
            transforms = tuple(transforms[0])
        self.transforms = nn.ModuleList(transforms)

    def forward(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        g = self._generator(generator)
        for t in self.transforms:
            sample = t(sample, generator=g)
        return sample


def masa_augment(
    *, swap_prob: float = 0.5, jitter: bool = True, geometric: bool = True, seed: int = 0
) -> Compose:
    """MASA-SR's training augmentation: role swap, brightness/contrast jitter, independent flips/rotations.

    MASA switches the flips/rotations on only after a warm-up (from epoch 30, once the test PSNR improves);
    build a second pipeline with ``geometric=False`` for the warm-up.
    """
    steps: list[nn.Module] = [RandomRoleSwap(swap_prob)]
    if jitter:
        steps.append(RandomBrightnessContrast())
    if geometric:
        steps.append(RandomDihedral(rot_prob=0.5, ref="independent"))
    return Compose(*steps, seed=seed)


def c2_augment(*, seed: int = 0) -> Compose:
    """C2-Matching / AMSA: a flip/rotation uniform over the eight, shared by input and reference."""
    return Compose(RandomDihedral(rot_prob=1.0, ref="joint"), seed=seed)


def ttsr_augment(*, seed: int = 0) -> Compose:
    """TTSR: flips and a uniform quarter-turn rotation, drawn independently for input and reference."""
    return Compose(RandomDihedral(rot_prob=1.0, ref="independent"), seed=seed)
