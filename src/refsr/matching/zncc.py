"""Zero-normalised cross-correlation (ZNCC) block matching, RefSR-Net's Table 2 baseline.

RefSR-Net (Zheng et al., BMVC 2017, Sec. 5.1, Table 2) compares CC-Net with "ZNCC" (patches of the
bilinearly upsampled LR matched against the HR reference) and "ZNCC_blurry" (the same, but against the
reference "bicubic downsampled and upsampled", so both sides carry the same blur). :func:`match_zncc` is that
matcher on images or feature maps; :func:`blur_like_lr` makes the blurred reference.

Semantics (what the paper leaves open is decided here):

* **Patches**: ``patch_size`` x ``patch_size``, centred at every position, zero-padded at the borders,
  flattened in ``F.unfold`` order, as for every matcher of :mod:`refsr.matching`.
* **Normalisation, per channel group**: the ``C`` channels are split into ``groups`` consecutive groups of
  ``C / groups`` channels (``groups=1``, the default: one group holding all channels; ``groups=C``: every
  channel on its own). Within a group, the ``n = (C / groups) * patch_size**2`` values of a patch have their
  mean subtracted; the centred vector ``v`` is divided by ``max(|v|, eps)`` (equivalently by ``sqrt(n)``
  times the population standard deviation). The ZNCC of two patches is the mean over groups of the inner
  products of their normalised group vectors, so it lies in [-1, 1]; a flat group (``|v| = 0``) contributes
  0, not NaN.
* **Window**: with ``search_range=R`` (an int) query position ``(y, x)`` searches key positions with
  ``|Y - cy| <= R`` and ``|X - cx| <= R``, clipped to the key, where ``(cy, cx)`` is the query position
  scaled to key coordinates (:func:`refsr.matching.ccnet.scaled_centres`) or given with ``centres=``:
  exactly :func:`refsr.matching.ccnet.match_ccnet`'s window. ``search_range=None`` searches the whole key.
* **Ties**: the lowest flat key index wins.
* **Score**: :class:`~refsr.matching.Correspondence` ``score`` is the ZNCC of the matched patches,
  recomputed from box sums so that it is differentiable with respect to both maps.

Memory: query positions are processed in square tiles, as in ``match_ccnet``: a tile's candidates are the
key rectangle covering all its windows, both sides are unfolded and normalised inside the tile only, scored
with one batched matrix product and masked to each position's window. The tile side is the largest whose
working set fits ``max_bytes``. Nothing of size ``C * patch_size**2 * H * W`` is ever built for the whole map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refsr.data.degrade import make_lr
from refsr.errors import RefsrError
from refsr.matching._patches import box_sum, check_pair, check_patch_size, element_size
from refsr.matching._window import tile_side, window_centres, windowed_argmax
from refsr.matching.ccnet import scaled_centres, upsample_lr
from refsr.matching.correspondence import Correspondence

__all__ = ["match_zncc", "ZNCCMatcher", "blur_like_lr", "DEFAULT_ZNCC_EPS", "DEFAULT_MAX_BYTES"]

#: Lower bound on the norm of a centred group vector before dividing (flat patches score 0).
DEFAULT_ZNCC_EPS = 1e-6
#: Default working-memory budget of one tile.
DEFAULT_MAX_BYTES = 128 * 2**20


def _check_groups(channels: int, groups: int) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
        raise RefsrError(f"groups must be a positive integer dividing the {channels} channels; got {groups!r}")


def _normalise_columns(columns: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """``(N, C*p*p, L)`` unfolded patches -> the same shape, each group centred, scaled to unit norm and by
    ``1 / sqrt(groups)`` so that one inner product gives the mean of the per-group correlations.

    ``F.unfold`` orders a column channel-major, so consecutive channels are consecutive rows: a group is a
    contiguous block of ``(C / groups) * p * p`` rows.
    """
    n, length, positions = columns.shape
    grouped = columns.view(n, groups, length // groups, positions)
    centred = grouped - grouped.mean(dim=2, keepdim=True)
    norm = centred.norm(dim=2, keepdim=True).clamp_min(eps)
    return (centred / (norm * groups**0.5)).view(n, length, positions)


def _group_box_stats(padded: torch.Tensor, groups: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position and group: the sum and the sum of squares of the patch's values.

    ``padded (N, C, H+2r, W+2r)`` -> two ``(N, G, H*W)`` tensors (``G = groups``).
    """
    n, c, hp, wp = padded.shape
    per_group = padded.view(n, groups, c // groups, hp, wp)
    total = box_sum(per_group.sum(dim=2).reshape(n * groups, 1, hp, wp), patch_size)
    squares = box_sum(per_group.pow(2).sum(dim=2).reshape(n * groups, 1, hp, wp), patch_size)
    return total.view(n, groups, -1), squares.view(n, groups, -1)


def _zncc_at(query_padded: torch.Tensor, key_padded: torch.Tensor, index: torch.Tensor,
             key_size: tuple[int, int], patch_size: int, groups: int, eps: float) -> torch.Tensor:
    """ZNCC between each query patch and the key patch ``index`` picks, differentiable in both maps.

    Uses ``sum((q - mq)(k - mk)) = sum(q k) - sum(q) sum(k) / n`` per group; the ``sum(q k)`` of the picked
    pairs is accumulated over the ``p * p`` taps with one gather each (no unfold of the whole map).
    """
    radius = patch_size // 2
    n, c, hp, wp = query_padded.shape
    h, w = hp - 2 * radius, wp - 2 * radius
    height, width = key_size
    padded_width = width + 2 * radius
    count = (c // groups) * patch_size * patch_size
    top_left = (index // width) * padded_width + index % width  # (N, h, w) in the padded key
    key_flat = key_padded.flatten(2)
    products = query_padded.new_zeros(n, c, h, w)
    for dy in range(patch_size):
        for dx in range(patch_size):
            tap = (top_left + dy * padded_width + dx).flatten(1).unsqueeze(1).expand(n, c, h * w)
            key_tap = torch.gather(key_flat, 2, tap).view(n, c, h, w)
            products = products + query_padded[:, :, dy : dy + h, dx : dx + w] * key_tap
    cross = products.view(n, groups, c // groups, h * w).sum(dim=2)  # (N, G, h*w)
    q_sum, q_squares = _group_box_stats(query_padded, groups, patch_size)
    k_sum_all, k_squares_all = _group_box_stats(key_padded, groups, patch_size)
    flat = index.flatten(1).unsqueeze(1).expand(n, groups, h * w)
    k_sum, k_squares = torch.gather(k_sum_all, 2, flat), torch.gather(k_squares_all, 2, flat)
    centred_cross = cross - q_sum * k_sum / count
    # Rounding can leave a tiny negative centred energy; clamp before the root.
    q_norm = (q_squares - q_sum.pow(2) / count).clamp_min(0).sqrt().clamp_min(eps)
    k_norm = (k_squares - k_sum.pow(2) / count).clamp_min(0).sqrt().clamp_min(eps)
    return (centred_cross / (q_norm * k_norm)).mean(dim=1).view(n, h, w)


def match_zncc(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    patch_size: int = 3,
    search_range: int | None = None,
    groups: int = 1,
    centres: torch.Tensor | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    eps: float = DEFAULT_ZNCC_EPS,
) -> Correspondence:
    """Top-1 ZNCC match of each query patch among the key patches of its window (or the whole key).

    See the module docstring for the rules (normalisation per group, window, ties, score, memory).

    Args:
        query: ``(N, C, h, w)`` images (e.g. RGB in [0, 1]) or features, any float dtype.
        key: ``(N, C, H, W)``, same N, C, dtype and device.
        patch_size: odd patch side.
        search_range: window half-side ``R`` in key pixels, or ``None`` for the whole key.
        groups: number of channel groups normalised separately; must divide ``C`` (1: all channels
            together; ``C``: per channel).
        centres: optional ``LongTensor (h, w, 2)`` or ``(N, h, w, 2)`` window centres ``(cy, cx)`` in key
            pixels; default :func:`refsr.matching.ccnet.scaled_centres`. Ignored when ``search_range`` is None.
        max_bytes: working-memory budget of one tile.
        eps: lower bound on a centred group vector's norm.

    Returns:
        :class:`Correspondence`: ``index`` ``(N, h, w)`` int64 flat key positions ``Y * W + X``; ``score``
        ``(N, h, w)`` the ZNCC in [-1, 1]; ``extras`` ``{"search_range", "groups"}``.
    """
    check_pair(query, key)
    check_patch_size(patch_size)
    n, c, h, w = query.shape
    _check_groups(c, groups)
    if search_range is not None and (
            isinstance(search_range, bool) or not isinstance(search_range, int) or search_range < 0):
        raise RefsrError(f"search_range must be None or a non-negative integer; got {search_range!r}")
    if max_bytes <= 0:
        raise RefsrError(f"max_bytes must be positive; got {max_bytes}")
    if eps <= 0:
        raise RefsrError(f"eps must be positive; got {eps}")
    height, width = key.shape[-2:]
    if search_range is None:
        # A window this wide around any clamped centre covers the whole key.
        big = max(height, width)
        centres = None
    else:
        big = search_range
    if centres is None:
        centres = scaled_centres((h, w), (height, width), device=query.device)
    cy, cx = window_centres(centres.to(query.device), n, (h, w), (height, width))
    radius = patch_size // 2
    patch_len = c * patch_size * patch_size
    # Normalised key columns double the key's share of the working set; budget for it.
    side = tile_side(n, h, w, height, width, big, 2 * patch_len, element_size(query.dtype), max_bytes)
    index, _ = windowed_argmax(query, key, cy, cx, search_range=big, patch_size=patch_size, tile_side=side,
                               columns=lambda cols: _normalise_columns(cols, groups, eps),
                               masked=search_range is not None)

    query_padded = F.pad(query, (radius,) * 4)
    key_padded = F.pad(key, (radius,) * 4)
    score = _zncc_at(query_padded, key_padded, index, (height, width), patch_size, groups, eps)
    return Correspondence(index=index, score=score, key_size=(height, width),
                          extras={"search_range": search_range, "groups": groups})


class ZNCCMatcher(nn.Module):
    """``nn.Module`` wrapper of :func:`match_zncc` (no parameters); ``forward(query, key, centres=None)``."""

    def __init__(self, patch_size: int = 3, search_range: int | None = None, groups: int = 1,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        self.search_range = search_range
        self.groups = groups
        self.max_bytes = max_bytes

    def forward(self, query: torch.Tensor, key: torch.Tensor, centres: torch.Tensor | None = None) -> Correspondence:
        return match_zncc(query, key, patch_size=self.patch_size, search_range=self.search_range,
                          groups=self.groups, centres=centres, max_bytes=self.max_bytes)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, search_range={self.search_range}, groups={self.groups}, "
                f"max_bytes={self.max_bytes}")


def blur_like_lr(image: torch.Tensor, scale: int) -> torch.Tensor:
    """The reference blurred "like the LR" (RefSR-Net's ZNCC_blurry / denseSIFT_blurry input).

    The exact degradation of the query side: PIL bicubic ÷``scale`` on the 8-bit image (``make_lr``, how the
    LR is made), then bilinear ×``scale`` (:func:`refsr.matching.ccnet.upsample_lr`, how the LR is enlarged
    for CC-Net and ZNCC). So the blurred reference and the upsampled LR differ only in content, not in blur.

    Args:
        image: ``(N, 3, H, W)`` RGB float in [0, 1]; ``H`` and ``W`` must divide by ``scale``.
        scale: the SR factor (8 in RefSR-Net).

    Returns:
        ``(N, 3, H, W)`` float32 RGB in [0, 1] (quantised to 8 bits at the LR stage), on ``image``'s device.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise RefsrError(f"image must be (N, 3, H, W) RGB; got {tuple(image.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise RefsrError(f"scale must be a positive integer; got {scale!r}")
    height, width = image.shape[-2:]
    if height % scale or width % scale:
        raise RefsrError(f"image sides {height}x{width} must divide by scale {scale}; crop it first")
    small = []
    for one in image.detach().float().cpu():
        pixels = (one.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        low = make_lr(np.ascontiguousarray(pixels), scale)
        small.append(torch.from_numpy(np.ascontiguousarray(low)).permute(2, 0, 1).float() / 255)
    return upsample_lr(torch.stack(small), scale).to(image.device)
