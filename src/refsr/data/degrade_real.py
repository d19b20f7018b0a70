"""Real-world degradations: a second-order blur / resize / noise / JPEG pipeline in the manner of Real-ESRGAN.

Bicubic-made LR images are clean; a user's LR is a phone frame or a web JPEG, blurred by optics, noisy and
compressed. Wang et al., *Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data*
(ICCVW 2021), model that with a "second-order" degradation: the classical blur -> resize -> noise -> JPEG
chain applied twice, then a resize to the LR size with a sinc (ringing) filter and a last JPEG in random
order. This module draws and applies that degradation to one ``HxWx3`` uint8 image at a time (written here
on numpy, torch and Pillow; no basicsr, OpenCV or scipy), so that it runs in data-loader workers.

The stages, for an HR image of size ``H x W`` and SR factor ``s`` (``refsr.data.degrade`` is the entry point;
:class:`RealDegradation` holds the options, one :class:`DegradationRound` per round):

1. **First round**, at HR size: blur with a random kernel (always: ``first.blur_prob = 1``); resize by a
   factor drawn per ``resize_prob`` as up ``U[1, resize_range[1]]``, down ``U[resize_range[0], 1]`` or keep,
   mode uniform among area / bilinear / bicubic; Gaussian noise (prob. ``gaussian_noise_prob``, sigma
   ``U[noise_range]`` in 8-bit levels) or else Poisson noise (scale ``U[poisson_scale_range]``), grey (the
   same on every channel) with prob. ``gray_noise_prob``; clip to [0, 1]; JPEG at quality ``U[jpeg_range]``.
2. **Second round**: blur with prob. ``second.blur_prob`` (0.8); resize to ``(H / s * f, W / s * f)`` with
   ``f`` drawn from the second round's ``resize_prob`` / ``resize_range``; noise as above with its ranges.
3. **Final**: with prob. 1/2 [resize to ``(H // s, W // s)`` + sinc filter] then JPEG (``second.jpeg_range``),
   otherwise JPEG then [resize + sinc]; the sinc filter is drawn with prob. ``final_sinc_prob`` (else none);
   the result is rounded to 8 bits.

**Blur kernels** (size odd, uniform in ``kernel_range``, 7..21), on the grid ``c = (x, y)`` of integer offsets
from the centre, with ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` and the squared Mahalanobis
distance ``d2 = c^T Sigma^-1 c``, all normalised to sum to 1:

- ``iso`` / ``aniso``: Gaussian ``exp(-d2 / 2)``; iso has ``sigma_y = sigma_x``, ``theta = 0``; aniso draws
  both sigmas in ``blur_sigma`` and ``theta`` in ``[-pi, pi]``.
- ``generalized_*``: ``exp(-d2^beta / 2)``, ``beta`` from ``betag_range``. This is Real-ESRGAN's
  parameterisation: ``beta`` is the exponent on the *squared* distance, so ``beta = 1`` is the Gaussian (the
  usual generalised-Gaussian shape parameter is ``2 beta``); ``beta < 1`` gives heavier tails, ``beta > 1``
  flatter tops.
- ``plateau_*``: ``1 / (1 + d2^beta)``, ``beta`` from ``betap_range``: half the peak at ``d2 = 1`` whatever
  ``beta`` is.
- ``beta`` is drawn as Real-ESRGAN does: with prob. 1/2 from ``U[low, 1]``, else from ``U[1, high]``.
- ``sinc`` (replaces the round's kernel with prob. ``sinc_prob``; it is also the final filter): the circular
  low-pass ``omega J1(omega r) / (2 pi r)`` (``omega^2 / (4 pi)`` at ``r = 0``), cut-off ``omega`` drawn in
  ``[pi/3, pi]`` (``[pi/5, pi]`` for kernels of 13 or more taps in the two rounds).

Filters reflect-pad by half the kernel (replicate-pad where the image is too small to reflect).

**Noise** is added to float images in [0, 1] and clipped. Gaussian: ``N(0, (sigma / 255)^2)`` per pixel and
channel (grey: one value per pixel). Poisson: the image rounded to 8 bits ``q`` gives
``(Poisson(q * v) / v - q) * scale`` with ``v = 2^ceil(log2(number of distinct 8-bit levels))`` (256 for a
typical photo); grey Poisson noise is drawn on the luma ``0.2989 R + 0.587 G + 0.114 B``.

**JPEG** goes through Pillow (libjpeg, 4:2:0 chroma), quality an integer drawn uniformly in the range; the
image is rounded to 8 bits before encoding.

Sources of the defaults: the paper (Sec. 3 and 4.1) and the official options file
``options/train_realesrnet_x4plus.yml`` with ``realesrgan/data/realesrgan_dataset.py`` (kernel sizes 7-21 and
the sinc cut-off ranges) of github.com/xinntao/Real-ESRGAN. What differs from the official pipeline:

- The official code degrades a batch on the GPU with one resize factor and mode per resize, one noise kind
  per round, one order of the final stage and one use of the second blur per batch (it then shuffles a
  queue of 180 samples to mix them); here every sample draws all of its own.
- The official option names of the second round carry a ``2`` (``second_blur_prob``, ``blur_sigma2``,
  ``jpeg_range2``...); here they are the fields of ``RealDegradation.second``.
- JPEG uses Pillow at an integer quality, not the differentiable DiffJPEG at a real-valued one, and images
  are rounded to 8 bits before each JPEG (the official code keeps floats between stages).
- Resizing passes the target size to ``torch.nn.functional.interpolate`` (the official first-round resize
  passes the scale factor, which differs by under a pixel in where samples fall).
- Grey images (three equal channels) are degraded on one channel and stay grey; the official pipeline
  would add colour noise to them.
- The official trainer also sharpens its HR targets (unsharp mask, ``gt_usm``); that is a training choice
  left to the caller, not part of making the LR.

Determinism: every random choice comes from ``numpy.random.default_rng(seed)`` in a fixed order, each draw
made whether or not it is used, and the pixel noise from a generator seeded by one of those draws. The same
seed gives the same LR in any process and any worker (no global random state is read or changed).
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.errors import RefsrError

__all__ = [
    "KERNEL_TYPES",
    "RESIZE_MODES",
    "RealDegradation",
    "DegradationRound",
    "SECOND_ROUND",
    "BlurKernel",
    "NoiseDraw",
    "RoundDraw",
    "DegradationDraw",
    "degrade_real",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "filter2d",
    "resize",
    "add_gaussian_noise",
    "add_poisson_noise",
    "jpeg_compress",
]

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
#: Luma weights of torchvision's ``rgb_to_grayscale``, which Real-ESRGAN's grey Poisson noise uses.
_LUMA = (0.2989, 0.587, 0.114)

Seed = int | Sequence[int]


# ------------------------------------------------------------------------------------------------ kernels
def _check_kernel_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise RefsrError(f"a kernel size must be a positive odd integer, got {size!r}")
    return int(size)


def _mahalanobis_sq(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``c^T Sigma^-1 c`` on the ``size x size`` grid of offsets ``c = (x, y)`` from the centre (float64)."""
    size = _check_kernel_size(size)
    if not (sigma_x > 0 and sigma_y > 0):
        raise RefsrError(f"kernel sigmas must be positive, got {sigma_x!r} and {sigma_y!r}")
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    cos, sin = math.cos(theta), math.sin(theta)
    # Coordinates along the kernel's own axes: R^T c; then Sigma^-1 is diagonal there.
    u = cos * x + sin * y
    v = -sin * x + cos * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0
) -> np.ndarray:
    """A Gaussian blur kernel ``exp(-d2 / 2)``, normalised (see the module docstring).

    Args:
        size: odd kernel side.
        sigma_x, sigma_y: standard deviations along the kernel's axes (``sigma_y`` defaults to ``sigma_x``:
            isotropic).
        theta: rotation of the kernel's x axis, radians.

    Returns:
        ``(size, size)`` float64 summing to 1; row = y offset, column = x offset.
    """
    d2 = _mahalanobis_sq(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * d2))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Real-ESRGAN's generalised Gaussian ``exp(-d2^beta / 2)`` (``beta = 1``: the Gaussian), normalised."""
    if not beta > 0:
        raise RefsrError(f"beta must be positive, got {beta!r}")
    d2 = _mahalanobis_sq(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(np.exp(-0.5 * d2**beta))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Real-ESRGAN's plateau kernel ``1 / (1 + d2^beta)``, normalised."""
    if not beta > 0:
        raise RefsrError(f"beta must be positive, got {beta!r}")
    d2 = _mahalanobis_sq(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalised(1.0 / (1.0 + d2**beta))


def sinc_kernel(size: int, omega: float) -> np.ndarray:
    """The circular low-pass (2-D sinc) ``omega J1(omega r) / (2 pi r)``, normalised; ``omega`` in radians
    per pixel (``pi`` passes everything a pixel grid holds). It rings: its values change sign.

    ``J1`` is ``torch.special.bessel_j1``, good to about 3e-8 absolute: far below what 8 bits can show."""
    size = _check_kernel_size(size)
    if not 0 < omega <= math.pi:
        raise RefsrError(f"the sinc cut-off omega must be within (0, pi], got {omega!r}")
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    r = np.hypot(x, y)
    j1 = torch.special.bessel_j1(torch.from_numpy(omega * r)).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(r > 0, omega * j1 / (2 * math.pi * r), omega**2 / (4 * math.pi))
    return _normalised(kernel)


@dataclass(frozen=True)
class BlurKernel:
    """One drawn filter: its family (one of :data:`KERNEL_TYPES` or ``"sinc"``) and shape.

    Attributes:
        kind: the family; size: odd side; sigma_x, sigma_y, theta: the Gaussian families' shape (radians);
        beta: the generalised and plateau shape; omega: the sinc cut-off (radians per pixel).
    """

    kind: str
    size: int
    sigma_x: float = 1.0
    sigma_y: float = 1.0
    theta: float = 0.0
    beta: float = 1.0
    omega: float = math.pi

    def kernel(self) -> np.ndarray:
        """The ``(size, size)`` float64 kernel, summing to 1."""
        if self.kind == "sinc":
            return sinc_kernel(self.size, self.omega)
        family = self.kind.rsplit("_", 1)[0] if "_" in self.kind else "gaussian"
        shape = (self.size, self.sigma_x, self.sigma_y, self.theta)
        if family == "generalized":
            return generalized_gaussian_kernel(*shape, beta=self.beta)
        if family == "plateau":
            return plateau_kernel(*shape, beta=self.beta)
        if self.kind not in ("iso", "aniso"):
            raise RefsrError(f"unknown kernel type {self.kind!r}; use one of {', '.join(KERNEL_TYPES)} "
                             "or sinc")
        return gaussian_kernel(*shape)

    @property
    def separable(self) -> bool:
        """Whether the kernel is an outer product of two 1-D kernels (the isotropic Gaussian)."""
        return self.kind == "iso"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """:func:`filter2d` of ``image`` (``(C, H, W)`` float32) with this kernel."""
        return filter2d(image, self.kernel(), separable=self.separable)


# ---------------------------------------------------------------------------------------------- stages
def _pad_mode(image: torch.Tensor, pad: int) -> str:
    return "reflect" if pad < min(image.shape[-2:]) else "replicate"


def filter2d(image: np.ndarray, kernel: np.ndarray, *, separable: bool = False) -> np.ndarray:
    """Convolve every channel of ``image`` (``(C, H, W)`` float32) with ``kernel`` (``(k, k)``, ``k`` odd).

    The image is reflect-padded by ``k // 2`` (replicate-padded when it is too small to reflect), so the
    output has the input's size. The kernels here are point-symmetric, so correlation (what
    ``torch.nn.functional.conv2d`` computes) and convolution agree.

    ``separable=True`` says that ``kernel`` is an outer product ``col row^T`` (the isotropic Gaussian): it is
    then applied as a vertical and a horizontal 1-D pass, ``2k`` instead of ``k^2`` multiplies per pixel.
    Other kernels of 11 taps or more on images of 64x64 pixels or more go through the FFT. Every path gives
    the same result up to float32 rounding.
    """
    k = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != k or k % 2 == 0:
        raise RefsrError(f"expected a square kernel of odd side, got shape {kernel.shape}")
    if k == 1:
        return image * np.float32(kernel[0, 0])
    channels = image.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    pad = k // 2
    x = F.pad(x, (pad, pad, pad, pad), mode=_pad_mode(x, pad))
    if separable:
        # For k = a b^T: k[:, c] = a b_c and k[c, :] = a_c b, so k = k[:, c] k[c, :]^T / k[c, c] (c the
        # centre, where a Gaussian is largest); the 1 / k[c, c] is split evenly between the two passes.
        centre = kernel[pad, pad]
        col = (kernel[:, pad] / math.sqrt(centre)).astype(np.float32)
        row = (kernel[pad, :] / math.sqrt(centre)).astype(np.float32)
        vertical = torch.from_numpy(col).view(1, 1, k, 1).expand(channels, 1, k, 1)
        horizontal = torch.from_numpy(row).view(1, 1, 1, k).expand(channels, 1, 1, k)
        x = F.conv2d(x, vertical, groups=channels)
        return F.conv2d(x, horizontal, groups=channels)[0].numpy()
    h, w = image.shape[-2:]
    if k >= _FFT_FROM_TAPS and h * w >= _FFT_FROM_PIXELS:
        # Large kernels: multiply spectra (the circular convolution of the padded image with the flipped kernel,
        # on a grid at least as large as the padded image, is exact on the window kept: no wrap-around there).
        grid = (_fft_size(h + 2 * pad), _fft_size(w + 2 * pad))
        flipped = torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32))
        spectrum = torch.fft.rfft2(x[0], s=grid) * torch.fft.rfft2(flipped, s=grid)
        return torch.fft.irfft2(spectrum, s=grid)[:, k - 1 : k - 1 + h, k - 1 : k - 1 + w].numpy()
    weight = torch.from_numpy(kernel.astype(np.float32)).expand(channels, 1, k, k)
    return F.conv2d(x, weight, groups=channels)[0].numpy()


# A 2-D kernel of this many taps or more on an image of this many pixels or more is applied through the FFT:
# measured on one thread, a 160x160 image with 11x11 taps takes about the same either way, 21x21 taps four
# times longer directly.
_FFT_FROM_TAPS = 11
_FFT_FROM_PIXELS = 64 * 64


def _fft_size(n: int) -> int:
    """The smallest ``m >= n`` with no prime factor above 5 (sizes pocketfft transforms fastest)."""
    m = n
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def resize(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``image`` (``(C, H, W)`` float32) resized to ``size = (h, w)`` by ``area`` (box average), ``bilinear``
    or ``bicubic`` (``torch.nn.functional.interpolate``, ``align_corners=False``, no antialiasing: a
    bilinear or bicubic shrink aliases, as the official pipeline's does). Values may leave [0, 1]."""
    if mode not in RESIZE_MODES:
        raise RefsrError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise RefsrError(f"cannot resize to {w}x{h}")
    if (h, w) == tuple(image.shape[-2:]):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    if mode == "area":
        out = F.interpolate(x, size=(h, w), mode="area")
    else:
        out = F.interpolate(x, size=(h, w), mode=mode, align_corners=False)
    return out[0].numpy()


def add_gaussian_noise(image: np.ndarray, sigma: float, grey: bool, rng: np.random.Generator) -> np.ndarray:
    """``image`` (``(C, H, W)`` float32 in [0, 1]) plus ``N(0, (sigma / 255)^2)`` noise, clipped to [0, 1].

    ``grey``: one noise value per pixel, the same on every channel; otherwise independent per channel."""
    shape = (1, *image.shape[1:]) if grey else image.shape
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(image + noise, 0.0, 1.0)


def _poisson_noise(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``Poisson(q v) / v - q`` for ``q`` = ``plane`` rounded to 8 bits, ``v`` = the next power of two of the
    number of distinct levels (Real-ESRGAN's estimate of the photon count at full scale)."""
    levels = np.clip(np.rint(plane * 255.0), 0, 255).astype(np.intp)
    distinct = int(np.count_nonzero(np.bincount(levels.ravel(), minlength=256)))
    v = float(2 ** math.ceil(math.log2(distinct))) if distinct > 1 else 1.0
    q = levels.astype(np.float64) / 255.0
    return (rng.poisson(q * v) / v - q).astype(np.float32)


def add_poisson_noise(image: np.ndarray, scale: float, grey: bool, rng: np.random.Generator) -> np.ndarray:
    """``image`` (``(C, H, W)`` float32 in [0, 1]) plus ``scale`` times Poisson noise, clipped to [0, 1].

    ``grey``: the noise is drawn on the luma (``0.2989 R + 0.587 G + 0.114 B``, or the single channel) and
    added to every channel; otherwise per channel. See the module docstring for the photon-count rule."""
    if grey and image.shape[0] == 3:
        plane = np.tensordot(np.asarray(_LUMA, np.float32), image, axes=1)[None]
    elif grey:
        plane = image[:1]
    else:
        plane = image
    noise = _poisson_noise(plane, rng) * np.float32(scale)
    return np.clip(image + noise, 0.0, 1.0)


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (``HxW`` or ``HxWx3`` uint8) encoded as JPEG at ``quality`` (1-95 as Pillow advises; up to
    100 accepted) with Pillow's defaults (4:2:0 chroma for colour) and decoded back: same shape, uint8."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise RefsrError("jpeg_compress expects an HxW or HxWx3 uint8 image")
    if image.ndim == 3 and image.shape[2] != 3:
        raise RefsrError(f"jpeg_compress expects 3 channels, got {image.shape[2]}")
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise RefsrError(f"JPEG quality must be within 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L" if image.ndim == 2 else "RGB"))


def _to_u8(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> ``HxW`` (one channel) or ``HxWx3`` uint8, rounded."""
    u8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0)


def _from_u8(image: np.ndarray) -> np.ndarray:
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32) / np.float32(255.0)


def _jpeg_float(image: np.ndarray, quality: int) -> np.ndarray:
    return _from_u8(jpeg_compress(_to_u8(image), quality))


# ---------------------------------------------------------------------------------------------- draws
@dataclass(frozen=True)
class NoiseDraw:
    """One round's noise: ``kind`` ``"gaussian"`` (``sigma`` in 8-bit levels) or ``"poisson"`` (``scale``);
    ``grey``: the same noise on every channel."""

    kind: str
    sigma: float
    scale: float
    grey: bool


@dataclass(frozen=True)
class RoundDraw:
    """One round of blur -> resize -> noise (-> JPEG in the first round).

    Attributes:
        blur: the kernel, or None (a round blurs with prob. ``blur_prob``: 1 first, 0.8 second).
        resize: the resize factor: of the HR size in the first round, of the LR size in the second.
        resize_mode: one of :data:`RESIZE_MODES`.
        noise: the noise.
        jpeg_quality: the round's JPEG quality (the second round's is applied in the final stage).
    """

    blur: BlurKernel | None
    resize: float
    resize_mode: str
    noise: NoiseDraw
    jpeg_quality: int


@dataclass(frozen=True)
class DegradationDraw:
    """Every random choice of one degradation (:meth:`RealDegradation.draw`); :meth:`apply` makes the LR.

    Attributes:
        first, second: the two rounds.
        sinc_first: the final stage does [resize + sinc] before the JPEG (else after it).
        final_mode: the final resize's mode.
        final_sinc: the final sinc filter, or None.
        noise_seed: seeds the pixel noise of both rounds.
    """

    first: RoundDraw
    second: RoundDraw
    sinc_first: bool
    final_mode: str
    final_sinc: BlurKernel | None
    noise_seed: int

    def apply(self, hr: np.ndarray, scale: int = 4, *, grey: bool | None = None) -> np.ndarray:
        """Degrade ``hr`` into an LR image.

        Args:
            hr: ``HxWx3`` (or ``HxW``) uint8 RGB.
            scale: the SR factor (a positive integer).
            grey: degrade on one channel and keep the result grey; None: when ``hr``'s channels are equal.

        Returns:
            uint8 of size ``(H // scale, W // scale)`` (as :func:`refsr.data.degrade.make_lr` gives), with
            ``hr``'s number of channels.
        """
        if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8 or hr.ndim not in (2, 3) or (
            hr.ndim == 3 and hr.shape[2] != 3
        ):
            raise RefsrError("the degradation expects an HxWx3 uint8 image, got "
                             f"{getattr(hr, 'dtype', type(hr).__name__)} {getattr(hr, 'shape', '')}")
        if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
            raise RefsrError(f"scale must be a positive integer, got {scale!r}")
        h, w = hr.shape[:2]
        if h < scale or w < scale:
            raise RefsrError(f"image {w}x{h} is too small to downscale by {scale}")
        if grey is None:
            grey = hr.ndim == 2 or bool((hr[..., 0] == hr[..., 1]).all() and (hr[..., 1] == hr[..., 2]).all())
        img = _from_u8(hr[..., 0] if (grey and hr.ndim == 3) else hr)
        rng = np.random.default_rng(self.noise_seed)
        lr_h, lr_w = h // scale, w // scale

        first = self.first
        img = first.blur.apply(img) if first.blur is not None else img
        img = resize(img, (max(1, int(h * first.resize)), max(1, int(w * first.resize))), first.resize_mode)
        img = self._noise(img, first.noise, rng)
        img = _jpeg_float(img, first.jpeg_quality)

        second = self.second
        img = second.blur.apply(img) if second.blur is not None else img
        size = (max(1, int(h / scale * second.resize)), max(1, int(w / scale * second.resize)))
        img = resize(img, size, second.resize_mode)
        img = self._noise(img, second.noise, rng)

        if self.sinc_first:
            img = self._resize_and_sinc(img, (lr_h, lr_w))
            img = _jpeg_float(img, second.jpeg_quality)
        else:
            img = _jpeg_float(img, second.jpeg_quality)
            img = self._resize_and_sinc(img, (lr_h, lr_w))
        out = _to_u8(img)
        if grey and hr.ndim == 3:
            out = np.repeat(out[..., None], 3, axis=2)
        return out

    @staticmethod
    def _noise(img: np.ndarray, noise: NoiseDraw, rng: np.random.Generator) -> np.ndarray:
        if noise.kind == "gaussian":
            return add_gaussian_noise(img, noise.sigma, noise.grey, rng)
        return add_poisson_noise(img, noise.scale, noise.grey, rng)

    def _resize_and_sinc(self, img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        img = resize(img, size, self.final_mode)
        if self.final_sinc is not None:
            img = self.final_sinc.apply(img)
        return img


# ---------------------------------------------------------------------------------------------- options
_Range = tuple[float, float]


@dataclass(frozen=True)
class DegradationRound:
    """The options of one round, with Real-ESRGAN's first-round defaults (``SECOND_ROUND`` has the second's).

    Names follow the official options file, where the second round's carry a ``2`` (``jpeg_range2``...).
    Ranges are ``(low, high)`` drawn uniformly; probabilities in [0, 1]; ``*_prob`` tuples are weights.

    Attributes:
        blur_prob: probability that the round blurs (first 1, the official code always does; second 0.8,
            ``second_blur_prob``).
        kernel_list / kernel_prob: kernel families of :data:`KERNEL_TYPES` and their weights
            (0.45, 0.25, 0.12, 0.03, 0.12, 0.03).
        sinc_prob: probability that the round's kernel is a sinc instead (0.1).
        blur_sigma: sigma range in pixels ((0.2, 3); second (0.2, 1.5)).
        betag_range: generalised-Gaussian beta ((0.5, 4)); betap_range: plateau beta ((1, 2)).
        resize_prob: weights of (up, down, keep) ((0.2, 0.7, 0.1); second (0.3, 0.4, 0.3)).
        resize_range: resize factor range ((0.15, 1.5) of the HR; second (0.3, 1.2) of the LR).
        gaussian_noise_prob: Gaussian (else Poisson) noise (0.5).
        noise_range: Gaussian sigma in 8-bit levels ((1, 30); second (1, 25)).
        poisson_scale_range: Poisson scale ((0.05, 3); second (0.05, 2.5)).
        gray_noise_prob: grey noise (0.4).
        jpeg_range: JPEG quality ((30, 95)); the second round's JPEG is the final stage's.
    """

    blur_prob: float = 1.0
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: _Range = (0.2, 3.0)
    betag_range: _Range = (0.5, 4.0)
    betap_range: _Range = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: _Range = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: _Range = (1.0, 30.0)
    poisson_scale_range: _Range = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: _Range = (30.0, 95.0)

    def check(self, path: str) -> None:
        """Raise a :class:`RefsrError` naming ``path.<option>`` for the first option out of its range."""
        for key in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            _check_probability(getattr(self, key), f"{path}.{key}")
        _check_weights(self.kernel_prob, f"{path}.kernel_prob", len(self.kernel_list))
        _check_weights(self.resize_prob, f"{path}.resize_prob", 3)
        if not self.kernel_list or any(k not in KERNEL_TYPES for k in self.kernel_list):
            raise RefsrError(f"{path}.kernel_list: use kernel types from {', '.join(KERNEL_TYPES)}, "
                             f"got {list(self.kernel_list)}")
        bounds = {  # option: (lowest low, a value the range must hold, highest high)
            "blur_sigma": (1e-6, None, None), "betag_range": (1e-6, 1.0, None),
            "betap_range": (1e-6, 1.0, None), "resize_range": (1e-6, 1.0, None),
            "noise_range": (0.0, None, None), "poisson_scale_range": (0.0, None, None),
            "jpeg_range": (1.0, None, 100.0),
        }
        for key, (lowest, inside, highest) in bounds.items():
            _check_range(getattr(self, key), f"{path}.{key}", lowest, inside, highest)


#: Real-ESRGAN's second round (``second_blur_prob``, ``blur_sigma2``, ``resize_prob2``, ``resize_range2``,
#: ``noise_range2``, ``poisson_scale_range2``; the rest as the first round).
SECOND_ROUND = DegradationRound(
    blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_prob=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
    noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5),
)


@dataclass(frozen=True)
class RealDegradation:
    """The options of the second-order degradation, with Real-ESRGAN's defaults (``train_realesrnet_x4plus``).

    Attributes:
        first, second: the two rounds' options (:class:`DegradationRound`; ``second`` defaults to
            :data:`SECOND_ROUND`).
        final_sinc_prob: the final stage has a sinc filter (0.8).
        kernel_range: the blur and sinc kernel sides: odd values from ``low`` to ``high`` (7..21), equally
            likely.
        resize_modes: the resize modes, equally likely (area, bilinear, bicubic).
    """

    first: DegradationRound = DegradationRound()
    second: DegradationRound = SECOND_ROUND
    final_sinc_prob: float = 0.8
    kernel_range: tuple[int, int] = (7, 21)
    resize_modes: tuple[str, ...] = RESIZE_MODES

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> RealDegradation:
        """The defaults with ``options`` changed, e.g. ``{"second": {"jpeg_range": [60, 95]}}`` (lists become
        tuples), checked; errors name the option (``second.jpeg_range: ...``)."""
        changes: dict[str, Any] = {}
        for key, value in dict(options or {}).items():
            if key in ("first", "second"):
                if not isinstance(value, Mapping):
                    raise RefsrError(f"{key}: give a mapping of the round's options, got {value!r}")
                default = getattr(cls(), key)
                changes[key] = dataclasses.replace(default, **_known(DegradationRound, value, key))
            else:
                changes.update(_known(cls, {key: value}, ""))
        made = cls(**changes)
        made.check()
        return made

    def check(self) -> None:
        """Raise a :class:`RefsrError` naming the first option out of its range."""
        self.first.check("first")
        self.second.check("second")
        _check_probability(self.final_sinc_prob, "final_sinc_prob")
        lo, hi = self.kernel_range
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi and lo % 2 and hi % 2):
            raise RefsrError(f"kernel_range: give two odd sizes low <= high, got {self.kernel_range}")
        if not self.resize_modes or any(m not in RESIZE_MODES for m in self.resize_modes):
            raise RefsrError(f"resize_modes: use modes from {', '.join(RESIZE_MODES)}, "
                             f"got {list(self.resize_modes)}")

    # -- drawing -------------------------------------------------------------------------------------------
    def draw(self, seed: Seed) -> DegradationDraw:
        """Every random choice of one degradation, from ``numpy.random.default_rng(seed)``.

        Args:
            seed: a non-negative int or a sequence of them (e.g. ``(run_seed, epoch, index)``).
        """
        rng = np.random.default_rng(_check_seed(seed))
        first = self._draw_round(rng, self.first)
        second = self._draw_round(rng, self.second)
        sinc_first = bool(rng.random() < 0.5)
        final_mode = _choose(rng, self.resize_modes)
        use_final_sinc = bool(rng.random() < self.final_sinc_prob)
        sinc = BlurKernel("sinc", self._kernel_size(rng), omega=float(rng.uniform(math.pi / 3, math.pi)))
        noise_seed = int(rng.integers(2**63 - 1))
        final_sinc = sinc if use_final_sinc else None
        return DegradationDraw(first, second, sinc_first, final_mode, final_sinc, noise_seed)

    def _draw_round(self, rng: np.random.Generator, options: DegradationRound) -> RoundDraw:
        # Every draw is made, used or not, so that one option never shifts the others' random stream.
        blurs = bool(rng.random() < options.blur_prob)
        size = self._kernel_size(rng)
        is_sinc = bool(rng.random() < options.sinc_prob)
        omega = float(rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi))
        kind = _choose(rng, options.kernel_list, options.kernel_prob)
        sigma_x, sigma_y = (float(v) for v in rng.uniform(*options.blur_sigma, size=2))
        theta = float(rng.uniform(-math.pi, math.pi))
        below = bool(rng.random() < 0.5)  # beta below or above 1, each half the time
        u = float(rng.random())
        kernel: BlurKernel | None = None
        if blurs and is_sinc:
            kernel = BlurKernel("sinc", size, omega=omega)
        elif blurs:
            if not kind.endswith("aniso"):
                sigma_y, theta = sigma_x, 0.0
            beta = 1.0
            if kind.startswith(("generalized", "plateau")):
                lo, hi = options.betag_range if kind.startswith("generalized") else options.betap_range
                beta = lo + (1.0 - lo) * u if below else 1.0 + (hi - 1.0) * u
            kernel = BlurKernel(kind, size, sigma_x, sigma_y, theta, beta)
        direction = _choose(rng, ("up", "down", "keep"), options.resize_prob)
        lo_r, hi_r = options.resize_range
        u = float(rng.random())
        factor = {"up": 1.0 + (hi_r - 1.0) * u, "down": lo_r + (1.0 - lo_r) * u, "keep": 1.0}[direction]
        mode = _choose(rng, self.resize_modes)
        gaussian = bool(rng.random() < options.gaussian_noise_prob)
        sigma = float(rng.uniform(*options.noise_range))
        poisson_scale = float(rng.uniform(*options.poisson_scale_range))
        grey = bool(rng.random() < options.gray_noise_prob)
        noise = NoiseDraw("gaussian" if gaussian else "poisson", sigma, poisson_scale, grey)
        quality = round(float(rng.uniform(*options.jpeg_range)))
        return RoundDraw(kernel, factor, mode, noise, quality)

    def _kernel_size(self, rng: np.random.Generator) -> int:
        lo, hi = self.kernel_range
        return lo + 2 * int(rng.integers((hi - lo) // 2 + 1))


def _choose(rng: np.random.Generator, items: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """One of ``items``, equally likely or by ``weights``, from one uniform draw."""
    u = float(rng.random())
    if weights is None:
        return items[min(int(u * len(items)), len(items) - 1)]
    cumulative = np.cumsum(np.asarray(weights, np.float64))
    index = int(np.searchsorted(cumulative / cumulative[-1], u, side="right"))
    return items[min(index, len(items) - 1)]


def degrade_real(
    hr: np.ndarray, scale: int = 4, *, seed: Seed, options: RealDegradation | None = None,
    grey: bool | None = None,
) -> np.ndarray:
    """``hr`` (``HxWx3`` uint8) degraded by one draw of the second-order pipeline: uint8 of size
    ``(H // scale, W // scale)``.

    ``degrade_real(hr, 4, seed=s)`` is ``RealDegradation().draw(s).apply(hr, 4)``: the same seed gives the
    same LR anywhere. ``options`` changes the ranges (:class:`RealDegradation`); ``grey`` see
    :meth:`DegradationDraw.apply`.
    """
    return (options or RealDegradation()).draw(seed).apply(hr, scale, grey=grey)


# ---------------------------------------------------------------------------------------------- checks
def _check_seed(seed: Seed) -> list[int]:
    """``seed`` as a list of non-negative ints (``default_rng(n)`` and ``default_rng([n])`` are the same)."""
    items = [seed] if isinstance(seed, (int, np.integer)) else seed
    valid = isinstance(items, Sequence) and not isinstance(items, str) and len(items) > 0 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in items
    )
    if not valid:
        raise RefsrError(f"a degradation seed must be a non-negative int or a sequence of them, got {seed!r}")
    return [int(v) for v in items]


def _known(cls: type, options: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``options`` for dataclass ``cls`` with lists made tuples; an unknown key is an error naming it."""
    known = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in options.items():
        name = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RefsrError(f"{name}: unknown degradation option{hint}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _check_probability(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RefsrError(f"{name}: a probability within [0, 1], got {value!r}")


def _check_weights(values: Any, name: str, length: int) -> None:
    ok = isinstance(values, tuple) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values
    )
    if not ok or len(values) != length or sum(values) <= 0:
        raise RefsrError(f"{name}: give {length} non-negative weights, not all zero, got {values!r}")


def _check_range(values: Any, name: str, lowest: float, inside: float | None, highest: float | None) -> None:
    ok = isinstance(values, tuple) and len(values) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )
    if not ok or values[0] > values[1]:
        raise RefsrError(f"{name}: give a range [low, high] with low <= high, got {values!r}")
    lo, hi = values
    out_of_bounds = lo < lowest or (highest is not None and hi > highest)
    if out_of_bounds or (inside is not None and not lo <= inside <= hi):
        limits = f"within [{lowest:g}, {highest:g}]" if highest is not None else f"from {lowest:g} up"
        holds = f", holding {inside:g}" if inside is not None else ""
        raise RefsrError(f"{name}: the range must lie {limits}{holds}, got {values!r}")
