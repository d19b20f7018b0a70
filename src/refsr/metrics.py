"""PSNR and SSIM exactly as the published RefSR papers compute them.

RefSR numbers are only comparable when they are computed with the same *protocol*: which colour channel
is scored, how many border pixels are dropped, and whether the network output is rounded to 8 bits first.
A :class:`Protocol` names those choices, and every metric here takes one (by name or as an object):

========  ======================================  ===========  =======================================
name      channel                                  border crop  used by
========  ======================================  ===========  =======================================
``masa``  Y, BT.601 studio range (MATLAB            0            MASA-SR ``models/trainer.py``
          ``rgb2ycbcr``: 65.481, 128.553, 24.966
          over 255, plus 16)
``ttsr``  Y with TTSR's own coefficients            0            TTSR ``utils.py``
          (65.738, 129.057, 25.064 over 256,
          plus 16)
``c2``    Y, BT.601 studio range                    4            C2-Matching (``crop_border: ~`` = 4)
``amsa``  Y, BT.601 studio range                    4            AMSA (C2-Matching's code base)
``datsr`` Y, BT.601 studio range                    4            DATSR (same code base)
``rgb``   all three RGB channels                    0            BasicSR with ``test_y_channel: false``
========  ======================================  ===========  =======================================

Every protocol first turns a float network output into the 8-bit image the official code scores (their
``tensor2img``): cast to float32, clamp to [0, 1], multiply by 255 in float32, round half to even (numpy's
and torch's ``round``), convert to uint8. Y is then computed in float64 and *not* rounded again.
PSNR is ``20 * log10(255 / sqrt(MSE))`` over the scored pixels (``inf`` for identical images); SSIM uses
an 11x11 Gaussian window with sigma 1.5, keeps only the positions where the window fits inside the image
("valid"), uses C1 = (0.01 * 255)^2 and C2 = (0.03 * 255)^2, and averages the SSIM map. All arithmetic
after the rounding is float64.

Images may be given as:

* numpy ``uint8`` arrays, ``HxWx3`` RGB, ``HxW`` or ``HxWx1`` grey, or a batch ``NxHxWx3``;
* torch tensors ``(N, 3, H, W)`` or ``(3, H, W)``, RGB, float in [0, 1] (values outside are clamped, as the
  official code does) or ``uint8`` in [0, 255]; one channel instead of three means grey;
* ``PIL.Image.Image`` (grey modes stay grey, everything else is converted to RGB);
* a list or tuple of any of these, for datasets whose images have different sizes.

A grey image is scored as the RGB image ``(g, g, g)``, which is what the official loaders (``cv2.imread``)
make of a grey PNG; its Y is therefore ``16 + g * 219 / 255``, and a grey image and its three-channel copy
always get the same score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.errors import RefsrError

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
    "rgb_to_y",
    "quantize_uint8",
    "psnr",
    "ssim",
]

ImageLike = Union[np.ndarray, torch.Tensor, Image.Image]
Images = Union[ImageLike, Sequence[ImageLike]]
Reduction = Literal["mean", "none"]

# MATLAB rgb2ycbcr / ITU-R BT.601 studio range, for R, G, B in [0, 255]: Y = (w . rgb) / 255 + 16.
# The three weights add up to exactly 219, so Y spans [16, 235].
_BT601_WEIGHTS = (65.481, 128.553, 24.966)
_BT601_DIVISOR = 255.0
# TTSR writes the same transform with a divisor of 256. The two agree only to about 4e-6 relative, which
# moves PSNR by ~3e-5 dB, so the "ttsr" protocol keeps TTSR's own numbers to reproduce its results exactly.
_TTSR_WEIGHTS = (65.738, 129.057, 25.064)
_TTSR_DIVISOR = 256.0
_Y_OFFSET = 16.0

# SSIM constants from Wang et al. 2004 for 8-bit data, as in every official RefSR evaluation script.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


@dataclass(frozen=True)
class Protocol:
    """How a PSNR/SSIM number is computed.

    Attributes:
        name: short name, printed next to every reported number.
        y_channel: score the luma Y (``True``) or all three RGB channels (``False``).
        crop_border: pixels dropped from every edge before scoring (PSNR and SSIM alike).
        round_uint8: quantise float tensors to uint8 first, as the official ``tensor2img`` does. With
            ``False`` a float tensor is only clamped to [0, 1] and scaled to [0, 255] (handy for
            training-time validation, not for comparing with papers).
        y_weights: weights of R, G, B (in this order, values in [0, 255]) in the luma sum.
        y_divisor: the luma sum is divided by this ...
        y_offset: ... and this is added: ``Y = (wR R + wG G + wB B) / y_divisor + y_offset``.
        description: where the protocol comes from.
    """

    name: str
    y_channel: bool = True
    crop_border: int = 0
    round_uint8: bool = True
    y_weights: tuple[float, float, float] = _BT601_WEIGHTS
    y_divisor: float = _BT601_DIVISOR
    y_offset: float = _Y_OFFSET
    description: str = ""

    def __post_init__(self) -> None:
        crop = self.crop_border
        if not isinstance(crop, int) or isinstance(crop, bool) or crop < 0:
            raise RefsrError(f"Protocol crop_border must be a non-negative int, got {self.crop_border!r}")
        if len(self.y_weights) != 3:
            raise RefsrError(f"Protocol y_weights must hold 3 numbers (R, G, B), got {self.y_weights!r}")
        if not self.y_divisor > 0:
            raise RefsrError(f"Protocol y_divisor must be positive, got {self.y_divisor!r}")

    def __str__(self) -> str:
        if self.y_channel:
            weights = "/".join(f"{w:g}" for w in self.y_weights)
            channel = f"Y=({weights})/{self.y_divisor:g}+{self.y_offset:g}"
        else:
            channel = "RGB"
        rounding = "uint8-rounded" if self.round_uint8 else "unrounded"
        return f"{self.name} ({channel}, crop {self.crop_border}, {rounding})"


PROTOCOLS: dict[str, Protocol] = {
    "masa": Protocol(
        "masa",
        description="MASA-SR models/trainer.py: Y (BT.601 studio range, float), no border crop",
    ),
    "ttsr": Protocol(
        "ttsr",
        y_weights=_TTSR_WEIGHTS,
        y_divisor=_TTSR_DIVISOR,
        description="TTSR utils.py: Y with TTSR's /256 coefficients, no border crop",
    ),
    "c2": Protocol(
        "c2",
        crop_border=4,
        description="C2-Matching mmsr: Y (BT.601 studio range, float), crop_border = scale = 4",
    ),
    "amsa": Protocol(
        "amsa",
        crop_border=4,
        description="AMSA (C2-Matching's mmsr code): Y (BT.601 studio range, float), crop_border = 4",
    ),
    "datsr": Protocol(
        "datsr",
        crop_border=4,
        description="DATSR (C2-Matching's mmsr code): Y (BT.601 studio range, float), crop_border = 4",
    ),
    "rgb": Protocol(
        "rgb",
        y_channel=False,
        description="BasicSR with test_y_channel=false: all RGB channels, no border crop",
    ),
}


def get_protocol(name_or_protocol: str | Protocol) -> Protocol:
    """Look a protocol up by name (case-insensitive); a :class:`Protocol` passes through unchanged.

    Raises:
        RefsrError: for an unknown name; the message lists the known ones.
    """
    if isinstance(name_or_protocol, Protocol):
        return name_or_protocol
    if isinstance(name_or_protocol, str):
        protocol = PROTOCOLS.get(name_or_protocol.strip().lower())
        if protocol is not None:
            return protocol
    known = ", ".join(sorted(PROTOCOLS))
    raise RefsrError(
        f"unknown metric protocol {name_or_protocol!r}; use one of {known} or pass a refsr.metrics.Protocol"
    )


# ----------------------------------------------------------------------------------------------------
# Input normalisation: everything becomes a float64 tensor (N, C, H, W) on the CPU with values in
# [0, 255], C being 1 (grey) or 3 (RGB).


def quantize_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Round a float image tensor in [0, 1] to 8 bits exactly as the official ``tensor2img`` does.

    The official code casts to float32, clamps to [0, 1], multiplies by 255 *in float32* and rounds half
    to even (numpy ``round``); ``torch.round`` rounds half to even too, so the result is bit-identical.

    Args:
        tensor: any shape, any floating dtype, values nominally in [0, 1]. NaNs are rejected.

    Returns:
        A ``uint8`` tensor of the same shape on the CPU, values in [0, 255].
    """
    if not torch.is_tensor(tensor) or not tensor.is_floating_point():
        raise RefsrError("quantize_uint8 expects a floating-point tensor with values in [0, 1]")
    values = tensor.detach().to(device="cpu", dtype=torch.float32)
    if torch.isnan(values).any():
        raise RefsrError("the image tensor contains NaN; check the model output before scoring it")
    return values.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def _describe(image: object) -> str:
    if isinstance(image, (np.ndarray, torch.Tensor)):
        kind = "array" if isinstance(image, np.ndarray) else "tensor"
        return f"{kind} of shape {tuple(image.shape)} ({str(image.dtype).replace('torch.', '')})"
    if isinstance(image, Image.Image):
        return f"PIL image of size {image.size} (mode {image.mode})"
    return type(image).__name__


def _to_batch(image: ImageLike, protocol: Protocol, role: str) -> torch.Tensor:
    """One image or batch -> float64 (N, C, H, W) in [0, 255], C in {1, 3}."""
    if isinstance(image, Image.Image):
        # Grey modes stay grey (they are scored as (g, g, g) anyway); palette, RGBA, CMYK ... become RGB.
        image = np.asarray(image.convert("L" if image.mode in ("1", "L", "LA") else "RGB"))

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise RefsrError(
                f"{role} is a numpy array of dtype {image.dtype}; pass uint8 images in [0, 255] "
                "(or a float tensor in [0, 1])"
            )
        if image.ndim == 2:
            batch = image[None, :, :, None]
        elif image.ndim == 3:
            batch = image[None]
        elif image.ndim == 4:
            batch = image
        else:
            raise RefsrError(f"{role}: expected an HxWx3 or HxW array, got {_describe(image)}")
        if batch.shape[-1] not in (1, 3):
            raise RefsrError(
                f"{role}: expected 3 (RGB) or 1 (grey) channels last, got {_describe(image)}; "
                "drop any alpha channel first"
            )
        # astype copies, so read-only arrays (e.g. np.asarray of a PIL image) are fine for torch.
        values = torch.from_numpy(batch.astype(np.float64)).permute(0, 3, 1, 2)
    elif torch.is_tensor(image):
        if image.ndim == 2:
            batch = image[None, None]
        elif image.ndim == 3:
            batch = image[None]
        elif image.ndim == 4:
            batch = image
        else:
            raise RefsrError(f"{role}: expected an (N,3,H,W) or (3,H,W) tensor, got {_describe(image)}")
        if batch.shape[1] not in (1, 3):
            raise RefsrError(
                f"{role}: expected 3 (RGB) or 1 (grey) channels first, got {_describe(image)}"
            )
        if batch.dtype == torch.uint8:
            values = batch.detach().to(device="cpu", dtype=torch.float64)
        elif batch.is_floating_point():
            if protocol.round_uint8:
                values = quantize_uint8(batch).to(torch.float64)
            else:
                unrounded = batch.detach().to(device="cpu", dtype=torch.float64)
                if torch.isnan(unrounded).any():
                    raise RefsrError(f"{role} contains NaN; check the model output before scoring it")
                values = unrounded.clamp(0.0, 1.0) * 255.0
        else:
            raise RefsrError(
                f"{role} is a tensor of dtype {str(batch.dtype).replace('torch.', '')}; "
                "pass a float tensor in [0, 1] or a uint8 tensor"
            )
    else:
        raise RefsrError(
            f"{role} must be a numpy uint8 array, a torch tensor or a PIL image, got {_describe(image)}"
        )

    if values.shape[0] == 0 or values.shape[2] == 0 or values.shape[3] == 0:
        raise RefsrError(f"{role} is empty: {_describe(image)}")
    return values


def _luma(rgb255: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """(N, 3, H, W) float64 RGB in [0, 255] -> (N, 1, H, W) float64 Y, not rounded."""
    w_r, w_g, w_b = protocol.y_weights
    weighted = rgb255[:, 0:1] * w_r + rgb255[:, 1:2] * w_g + rgb255[:, 2:3] * w_b
    return weighted / protocol.y_divisor + protocol.y_offset


def _prepare_pair(
    sr: ImageLike, hr: ImageLike, protocol: Protocol
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise, check shapes, crop the border and select the scored channel(s).

    Returns two float64 tensors (N, C, h, w) with C = 1 for Y protocols.
    """
    sr_values = _to_batch(sr, protocol, "sr")
    hr_values = _to_batch(hr, protocol, "hr")
    n_sr, c_sr, h_sr, w_sr = sr_values.shape
    n_hr, c_hr, h_hr, w_hr = hr_values.shape
    if (n_sr, h_sr, w_sr) != (n_hr, h_hr, w_hr):
        raise RefsrError(
            f"sr and hr differ in size: sr is {_describe(sr)}, hr is {_describe(hr)}; "
            "crop the SR output to the HR size before scoring"
        )
    # A grey image is the RGB image (g, g, g): replicate it so that grey and colour images go through
    # the very same arithmetic (a grey image then scores exactly like its three-channel copy).
    if protocol.y_channel or c_sr != c_hr:
        if c_sr == 1:
            sr_values = sr_values.expand(-1, 3, -1, -1)
        if c_hr == 1:
            hr_values = hr_values.expand(-1, 3, -1, -1)

    crop = protocol.crop_border
    if crop:
        if h_sr <= 2 * crop or w_sr <= 2 * crop:
            raise RefsrError(
                f"images of {h_sr}x{w_sr} pixels are too small for protocol {protocol.name!r}, "
                f"which crops {crop} pixels from every edge"
            )
        sr_values = sr_values[:, :, crop:-crop, crop:-crop]
        hr_values = hr_values[:, :, crop:-crop, crop:-crop]

    if protocol.y_channel:
        return _luma(sr_values, protocol), _luma(hr_values, protocol)
    return sr_values, hr_values


def _pairs(sr: Images, hr: Images) -> list[tuple[ImageLike, ImageLike]]:
    """Split list inputs into image pairs; single images/batches stay one pair."""
    sr_is_list = isinstance(sr, (list, tuple))
    hr_is_list = isinstance(hr, (list, tuple))
    if not sr_is_list and not hr_is_list:
        return [(sr, hr)]
    if not (sr_is_list and hr_is_list) or len(sr) != len(hr):
        sr_n = len(sr) if sr_is_list else "a single image"
        hr_n = len(hr) if hr_is_list else "a single image"
        raise RefsrError(f"sr and hr must both be lists of the same length, got {sr_n} and {hr_n}")
    if len(sr) == 0:
        raise RefsrError("sr and hr are empty lists; pass at least one image pair")
    return list(zip(sr, hr))


def _reduce(values: list[float], reduction: str) -> float | list[float]:
    if reduction == "mean":
        return float(sum(values) / len(values))
    return values


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise RefsrError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ----------------------------------------------------------------------------------------------------
# Public metrics


def rgb_to_y(
    img: np.ndarray | torch.Tensor, *, protocol: str | Protocol = "masa"
) -> np.ndarray | torch.Tensor:
    """Luma Y in [16, 235] (float64, not rounded) of an RGB image.

    ``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16`` for R, G, B in [0, 255] (MATLAB ``rgb2ycbcr``,
    BT.601 studio range); the protocol may override the weights (``"ttsr"`` uses TTSR's /256 form).
    No rounding happens here: callers that want the official 8-bit rounding of a network output use
    :func:`quantize_uint8` first (``psnr``/``ssim`` do that for you).

    Args:
        img: numpy array ``HxWx3`` or ``NxHxWx3`` with values in [0, 255] (uint8 or float), or a tensor
            ``(..., 3, H, W)``: float in [0, 1] (scaled by 255) or uint8 in [0, 255]. Channel order RGB.
        protocol: the protocol whose Y coefficients to use.

    Returns:
        numpy input: float64 array ``HxW`` (or ``NxHxW``). Tensor input: float64 tensor ``(..., 1, H, W)``
        on the input's device.
    """
    proto = get_protocol(protocol)
    w_r, w_g, w_b = proto.y_weights
    if isinstance(img, np.ndarray):
        if img.ndim < 3 or img.shape[-1] != 3:
            raise RefsrError(f"rgb_to_y expects an HxWx3 RGB array, got {_describe(img)}")
        if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
            raise RefsrError(f"rgb_to_y expects a numeric array, got {_describe(img)}")
        rgb = img.astype(np.float64)
        return (rgb[..., 0] * w_r + rgb[..., 1] * w_g + rgb[..., 2] * w_b) / proto.y_divisor + proto.y_offset
    if torch.is_tensor(img):
        if img.ndim < 3 or img.shape[-3] != 3:
            raise RefsrError(f"rgb_to_y expects a (..., 3, H, W) RGB tensor, got {_describe(img)}")
        if img.dtype == torch.uint8:
            rgb = img.to(torch.float64)
        elif img.is_floating_point():
            rgb = img.to(torch.float64) * 255.0
        else:
            raise RefsrError(f"rgb_to_y expects a float tensor in [0, 1] or uint8, got {_describe(img)}")
        red, green, blue = rgb.unbind(dim=-3)
        luma = (red * w_r + green * w_g + blue * w_b) / proto.y_divisor + proto.y_offset
        return luma.unsqueeze(-3)
    raise RefsrError(f"rgb_to_y expects a numpy array or a torch tensor, got {_describe(img)}")


def _psnr_values(sr: torch.Tensor, hr: torch.Tensor) -> list[float]:
    mse = (sr - hr).square().mean(dim=(1, 2, 3))
    # Python's math on each float64 MSE, like the official scripts; exact zero means identical images.
    return [math.inf if m == 0.0 else 20.0 * math.log10(255.0 / math.sqrt(m)) for m in mse.tolist()]


def psnr(
    sr: Images,
    hr: Images,
    *,
    protocol: str | Protocol = "masa",
    reduction: Reduction = "mean",
) -> float | list[float]:
    """Peak signal-to-noise ratio in dB, ``20 * log10(255 / sqrt(MSE))``, under a named protocol.

    Args:
        sr: the super-resolved image(s); see the module docstring for accepted types (uint8 ``HxWx3``
            RGB arrays, RGB float tensors ``(N, 3, H, W)`` or ``(3, H, W)`` in [0, 1], grey images, lists).
        hr: the ground truth, same size as ``sr`` (types may differ, e.g. a tensor against an array).
        protocol: ``"masa"`` (default), ``"ttsr"``, ``"c2"``, ``"amsa"``, ``"datsr"``, ``"rgb"`` or a
            :class:`Protocol`.
        reduction: ``"mean"`` averages the per-image PSNRs (as the papers do); ``"none"`` returns them.

    Returns:
        A float (``inf`` when the images are identical), or a list with one float per image.

    Raises:
        RefsrError: unknown protocol, unsupported input, size mismatch, images too small for the crop.
    """
    proto = get_protocol(protocol)
    _check_reduction(reduction)
    values: list[float] = []
    for sr_item, hr_item in _pairs(sr, hr):
        sr_scored, hr_scored = _prepare_pair(sr_item, hr_item, proto)
        values.extend(_psnr_values(sr_scored, hr_scored))
    return _reduce(values, reduction)


def _gaussian_window_1d(size: int = _SSIM_WINDOW, sigma: float = _SSIM_SIGMA) -> torch.Tensor:
    """exp(-x^2 / (2 sigma^2)) for x = -(size-1)/2 .. (size-1)/2, normalised to sum 1, float64.

    The same numbers as ``cv2.getGaussianKernel(size, sigma)``, which the official code uses.
    """
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    weights = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _ssim_values(sr: torch.Tensor, hr: torch.Tensor) -> list[float]:
    """Mean SSIM map per image of two float64 (N, C, H, W) tensors in [0, 255]; channels averaged."""
    n, c, h, w = sr.shape
    # Five local statistics share one filtering pass. The 11x11 Gaussian is separable, so two 1-D passes
    # give the same weighted sums as the 2-D window (up to float64 rounding) at a fraction of the cost.
    stacked = torch.stack([sr, hr, sr * sr, hr * hr, sr * hr], dim=2).reshape(n * c * 5, 1, h, w)
    window = _gaussian_window_1d()
    filtered = F.conv2d(stacked, window.view(1, 1, -1, 1))  # valid: only full windows
    filtered = F.conv2d(filtered, window.view(1, 1, 1, -1))
    filtered = filtered.reshape(n, c, 5, h - _SSIM_WINDOW + 1, w - _SSIM_WINDOW + 1)
    mu_sr, mu_hr, sr_sq, hr_sq, sr_hr = filtered.unbind(dim=2)

    mu_sr_sq = mu_sr * mu_sr
    mu_hr_sq = mu_hr * mu_hr
    mu_sr_hr = mu_sr * mu_hr
    var_sr = sr_sq - mu_sr_sq
    var_hr = hr_sq - mu_hr_sq
    cov = sr_hr - mu_sr_hr
    ssim_map = ((2.0 * mu_sr_hr + _SSIM_C1) * (2.0 * cov + _SSIM_C2)) / (
        (mu_sr_sq + mu_hr_sq + _SSIM_C1) * (var_sr + var_hr + _SSIM_C2)
    )
    # Per-channel means averaged equal the mean over all channels, since every channel has the same size.
    return ssim_map.mean(dim=(1, 2, 3)).tolist()


def ssim(
    sr: Images,
    hr: Images,
    *,
    protocol: str | Protocol = "masa",
    reduction: Reduction = "mean",
) -> float | list[float]:
    """Structural similarity (Wang et al. 2004) as the official RefSR evaluation scripts compute it.

    11x11 Gaussian window with sigma 1.5, valid positions only (BasicSR's ``filter2D(...)[5:-5, 5:-5]``),
    C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, float64, on Y (or on each RGB channel, then averaged, for
    the ``"rgb"`` protocol), after the protocol's border crop.

    Args:
        sr, hr, protocol, reduction: as for :func:`psnr`.

    Returns:
        A float in [-1, 1] (1 for identical images), or a list with one float per image.

    Raises:
        RefsrError: as for :func:`psnr`, and when an image is smaller than 11x11 after the border crop.
    """
    proto = get_protocol(protocol)
    _check_reduction(reduction)
    values: list[float] = []
    for sr_item, hr_item in _pairs(sr, hr):
        sr_scored, hr_scored = _prepare_pair(sr_item, hr_item, proto)
        height, width = sr_scored.shape[-2:]
        if height < _SSIM_WINDOW or width < _SSIM_WINDOW:
            raise RefsrError(
                f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after the border crop "
                f"of protocol {proto.name!r}; got {height}x{width}"
            )
        values.extend(_ssim_values(sr_scored, hr_scored))
    return _reduce(values, reduction)
