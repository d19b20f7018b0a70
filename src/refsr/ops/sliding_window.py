"""Sliding-window fusion: overlapping patch predictions averaged back into one image.

RefSR-Net (Zheng et al., BMVC 2017, Sec. 4, "Sliding Windows Fusion") predicts a 64x64 HR patch for every
overlapping 8x8 LR patch and fuses them per pixel either by plain averaging (the scheme of its reference
[2]) or by a weighted average whose weights are the scale-0 masks ``M_i^(0)`` smoothed with a Gaussian,
``O_i = M_i^(0) * G(3)``. This module does both, for any patch layout:

* :func:`sliding_window_positions` lays patches over an image with a given stride, the last row and column
  of patches pushed flush against the bottom/right border so that every pixel is covered;
* :func:`gaussian_smooth` is the ``* G(sigma)`` of the paper (per patch, zeros outside the patch);
* :func:`sliding_window_fuse` is the per-pixel weighted average ``sum_i w_i p_i / sum_i w_i``, vectorised with
  one ``scatter_add`` over all patches (no Python loop over patches or pixels);
* :class:`SlidingWindowFusion` is the ``nn.Module`` wrapper.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError

__all__ = [
    "sliding_window_positions",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "sliding_window_fuse",
    "SlidingWindowFusion",
    "WEIGHT_MODES",
    "DEFAULT_SIGMA",
]

#: RefSR-Net's smoothing of the scale-0 masks: ``O_i = M_i^(0) * G(3)``.
DEFAULT_SIGMA = 3.0
WEIGHT_MODES = ("average", "mask-gaussian")


def sliding_window_positions(size: Sequence[int], patch: int, stride: int) -> torch.Tensor:
    """Top-left corners of ``patch``-sided windows laid over an image of ``size`` with ``stride``.

    Along each axis the corners are ``0, stride, 2*stride, ...`` while the window fits, plus one window flush
    with the far border when the stride does not land there, so every pixel is covered at least once.

    >>> sliding_window_positions((8, 12), 8, 4).tolist()
    [[0, 0], [0, 4]]

    Args:
        size: ``(height, width)``, each ``>= patch``.
        patch: window side.
        stride: step between windows, ``1 <= stride``.

    Returns:
        ``LongTensor (P, 2)`` of ``(y, x)`` corners in row-major order (``P = rows * cols``).
    """
    if patch < 1 or stride < 1:
        raise RefsrError(f"patch and stride must be positive; got patch={patch}, stride={stride}")
    axes = []
    for extent in size:
        if extent < patch:
            raise RefsrError(f"an image side of {extent} is smaller than the {patch}-pixel window; pad it")
        starts = list(range(0, extent - patch + 1, stride))
        if starts[-1] != extent - patch:
            starts.append(extent - patch)
        axes.append(torch.tensor(starts, dtype=torch.long))
    ys, xs = torch.meshgrid(axes[0], axes[1], indexing="ij")
    return torch.stack((ys.reshape(-1), xs.reshape(-1)), dim=1)


def gaussian_kernel1d(sigma: float, radius: int | None = None, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian ``exp(-t^2 / (2 sigma^2))`` at ``t = -radius..radius``.

    ``radius`` defaults to ``ceil(3 * sigma)`` (9 taps either side for sigma = 3, 99.7 % of the mass).
    """
    if not sigma > 0:
        raise RefsrError(f"sigma must be positive; got {sigma}")
    radius = int(math.ceil(3 * sigma)) if radius is None else int(radius)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_smooth(masks: torch.Tensor, sigma: float = DEFAULT_SIGMA, radius: int | None = None) -> torch.Tensor:
    """``masks * G(sigma)``: a separable, normalised Gaussian blur of each map, zeros outside the map.

    Each patch's mask is smoothed on its own (the paper smooths ``M_i^(0)`` per LR patch ``i``); outside its
    patch a mask counts as zero, so the weights fade towards the patch's edges (but stay positive wherever the
    mask is positive).

    Args:
        masks: ``(..., H, W)`` float maps (any leading dimensions).
        sigma: the Gaussian's standard deviation, in pixels.
        radius: taps either side; default ``ceil(3 * sigma)``.

    Returns:
        ``(..., H, W)``, same dtype.
    """
    kernel = gaussian_kernel1d(sigma, radius, dtype=masks.dtype, device=masks.device)
    r = kernel.numel() // 2
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    flat = masks.reshape(-1, 1, h, w)
    # Two 1-D passes (rows, then columns) instead of one (2r+1)^2 convolution: the Gaussian is separable.
    flat = F.conv2d(F.pad(flat, (0, 0, r, r)), kernel.view(1, 1, -1, 1))
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0)), kernel.view(1, 1, 1, -1))
    return flat.reshape(*lead, h, w)


def _check_positions(positions: torch.Tensor, n: int, p: int) -> torch.Tensor:
    if positions.dtype not in (torch.int32, torch.int64) or positions.shape[-1] != 2:
        raise RefsrError(f"positions must be an integer tensor (P, 2) or (N, P, 2); got {tuple(positions.shape)}")
    if positions.dim() == 2:
        positions = positions.unsqueeze(0).expand(n, -1, -1)
    if positions.dim() != 3 or positions.shape[:2] != (n, p):
        raise RefsrError(f"positions must be (P, 2) or (N, P, 2) with N={n}, P={p}; got {tuple(positions.shape)}")
    return positions.long()


def sliding_window_fuse(
    patches: torch.Tensor,
    positions: torch.Tensor,
    out_size: Sequence[int],
    weights: torch.Tensor | str | None = None,
    *,
    masks: torch.Tensor | None = None,
    sigma: float = DEFAULT_SIGMA,
    eps: float = 0.0,
) -> torch.Tensor:
    """Per-pixel weighted average of overlapping patches: ``out = sum_i w_i p_i / sum_i w_i``.

    Args:
        patches: ``(N, P, C, ph, pw)`` patch predictions, any float dtype.
        positions: ``LongTensor (P, 2)`` (shared by the batch) or ``(N, P, 2)``: each patch's top-left
            ``(y, x)`` in the output; every patch must lie inside the output.
        out_size: ``(H, W)`` of the output.
        weights: how the patches are weighted:

            - ``None`` or ``"average"``: equally (plain averaging, the scheme of the paper's ref. [2]);
            - ``"mask-gaussian"``: by ``gaussian_smooth(masks, sigma)`` (RefSR-Net's ``O_i = M_i^(0) * G(3)``);
            - a tensor ``(N, P, 1 or C, ph, pw)`` of non-negative per-pixel weights, used as given.
        masks: ``(N, P, 1, ph, pw)`` non-negative masks, for ``"mask-gaussian"`` only.
        sigma: the Gaussian's standard deviation for ``"mask-gaussian"``.
        eps: added to the weight sum before dividing (0: exact; pixels with zero total weight become 0).

    Returns:
        ``(N, C, H, W)``, dtype of ``patches``. Differentiable with respect to the patches and the weights.
    """
    if patches.dim() != 5:
        raise RefsrError(f"patches must be (N, P, C, ph, pw); got {tuple(patches.shape)}")
    n, p, c, ph, pw = patches.shape
    height, width = (int(s) for s in out_size)
    positions = _check_positions(positions, n, p).to(patches.device)
    if p == 0:
        raise RefsrError("sliding_window_fuse needs at least one patch")
    ys, xs = positions[..., 0], positions[..., 1]
    if bool((ys < 0).any() or (xs < 0).any() or (ys + ph > height).any() or (xs + pw > width).any()):
        raise RefsrError(f"every {ph}x{pw} patch must lie inside the {height}x{width} output")

    if weights is None or (isinstance(weights, str) and weights == "average"):
        weight_map = None
    elif isinstance(weights, str) and weights == "mask-gaussian":
        if masks is None:
            raise RefsrError("weights='mask-gaussian' needs masks=(N, P, 1, ph, pw)")
        if masks.shape != (n, p, 1, ph, pw):
            raise RefsrError(f"masks must be (N, P, 1, ph, pw) = {(n, p, 1, ph, pw)}; got {tuple(masks.shape)}")
        weight_map = gaussian_smooth(masks.to(patches.dtype), sigma)
    elif isinstance(weights, torch.Tensor):
        if weights.dim() != 5 or weights.shape[:2] != (n, p) or weights.shape[2] not in (1, c) \
                or weights.shape[3:] != (ph, pw):
            raise RefsrError(f"weights must be (N, P, 1 or C, ph, pw); got {tuple(weights.shape)}")
        weight_map = weights.to(patches.dtype)
    else:
        raise RefsrError(f"unknown weights {weights!r}; use None, 'average', 'mask-gaussian' or a tensor")

    # Flat output index of every patch pixel: (N, P, ph*pw).
    dy = torch.arange(ph, device=patches.device).view(ph, 1)
    dx = torch.arange(pw, device=patches.device).view(1, pw)
    offsets = (dy * width + dx).view(1, 1, ph * pw)
    index = (ys * width + xs).unsqueeze(-1) + offsets
    index = index.reshape(n, 1, p * ph * pw)

    def scatter(values: torch.Tensor) -> torch.Tensor:
        """(N, K, P, ph, pw) values -> (N, K, H*W) sums over the patches covering each pixel."""
        k = values.shape[1]
        flat = values.reshape(n, k, p * ph * pw)
        out = values.new_zeros(n, k, height * width)
        return out.scatter_add(2, index.expand(n, k, -1), flat)

    channels_first = patches.transpose(1, 2)  # (N, C, P, ph, pw)
    if weight_map is None:
        total = scatter(channels_first)
        count = scatter(torch.ones_like(channels_first[:, :1]))
    else:
        w = weight_map.transpose(1, 2)  # (N, 1 or C, P, ph, pw)
        total = scatter(channels_first * w)
        count = scatter(w)
    count = count + eps
    # Uncovered pixels (count 0) come out as 0 rather than NaN.
    out = torch.where(count > 0, total / torch.where(count > 0, count, torch.ones_like(count)), total.new_zeros(()))
    return out.view(n, c, height, width)


class SlidingWindowFusion(nn.Module):
    """``nn.Module`` wrapper of :func:`sliding_window_fuse` (no parameters).

    Args:
        weights: ``"mask-gaussian"`` (RefSR-Net's weighted fusion) or ``"average"``.
        sigma: the Gaussian's standard deviation for ``"mask-gaussian"`` (3).

    ``forward(patches, positions, out_size, masks=None)``, shapes as in :func:`sliding_window_fuse`.
    """

    def __init__(self, weights: str = "mask-gaussian", sigma: float = DEFAULT_SIGMA) -> None:
        super().__init__()
        if weights not in WEIGHT_MODES:
            raise RefsrError(f"unknown fusion weights {weights!r}; choose one of {', '.join(WEIGHT_MODES)}")
        if not sigma > 0:
            raise RefsrError(f"sigma must be positive; got {sigma}")
        self.weights = weights
        self.sigma = float(sigma)

    def forward(self, patches: torch.Tensor, positions: torch.Tensor, out_size: Sequence[int],
                masks: torch.Tensor | None = None) -> torch.Tensor:
        return sliding_window_fuse(patches, positions, out_size, self.weights, masks=masks, sigma=self.sigma)

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}, sigma={self.sigma}"
