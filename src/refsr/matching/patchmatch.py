"""AMSA's Coarse-to-Fine Embedded PatchMatch (CFE-PatchMatch) as a reusable matching op.

AMSA (Xia et al., AAAI 2022) replaces enumerated patch matching with PatchMatch run on a feature pyramid,
coarse to fine. :func:`match_patchmatch` implements that scheme; where it departs from the official code
(``AMSA/mmsr/models/archs/patch_match_arch.py``) it says so below.

Algorithm (per pyramid level, coarsest first):

1. **Initialisation.** At the coarsest level every query position gets a uniformly random key position drawn
   from a ``torch.Generator`` seeded with ``seed`` (the official code calls the unseeded ``torch.rand``, so
   its test-time output varies from run to run). The draw is made once for a single item and shared by the
   whole batch, like the search jitter below, and the projection axes are fitted per item: each item's
   result is exactly what it would be alone. Finer levels start from the coarser level's field,
   upsampled by nearest neighbour on the query grid with the key coordinates rescaled and the query's
   sub-cell position added (so a constant displacement stays exactly constant across levels), rounded and
   clamped to the key.
   The official code rescales with ``round(x * (W - 1) / (W_prev - 1))`` and repeats each value 2x2.
2. **Iterations** (``schedule`` gives how many per level). One iteration is

   a. *propagation* by jump flooding: for dilations ``d = 1, 2, 4, ..., 2**(T-1)`` with
      ``T = max(1, floor(log2(L / 8)))``, ``L`` the smaller query side of that level (the paper's
      ``t = 0 .. log(sqrt(N) / 8) - 1`` with ``N`` the size of that level; the official code uses the
      finest level's bound at every level), every position considers the matches of its 8 neighbours at
      distance ``d`` and keeps the best of its current match and those candidates. By default a
      neighbour's match is *shifted by the neighbour offset* (the neighbour at ``p + d*u`` matched ``m``,
      so ``p`` tries ``m - d*u``): classic PatchMatch propagation of displacements, which keeps a
      translated region coherent. The official code (and the paper's equation 5) propagates the *index*:
      it copies the neighbour's key position unchanged (reflection-padded at the border), which only its
      following radius-1 search turns into a shift; ``propagation="index"`` selects that behaviour.
   b. *search* around the current best at radii ``r = 1, 2, 4, ...``: 8 candidates at ``best + r*u``
      (``u`` the 8 unit directions), each displaced by a seeded random jitter of up to ``r // 2`` pixels per
      axis, so that repeated iterations cover whole rings instead of 8 fixed points. The coarsest level
      searches up to half the key's larger side (a global search that rescues a poor random start); finer
      levels up to ``search_radius`` (default :func:`default_search_radius`: the official code's bound, about
      1/16 of the finest key, which it applies at every level). The official code searches the same
      widening 3x3 grid around the best match, with a deterministic ``iteration % k`` nudge instead of the
      jitter and wrap-around at the key border instead of clamping.

   With ``key_margin=m`` every candidate at the finest level (initial, propagated, searched) is clamped into
   the key positions at least ``m`` pixels from the border; ``m = 1`` gives the official finest level,
   which matches only interior (unpadded) 3x3 key patches.

3. **Exact polish.** Candidates are ranked with projected patch vectors (below); ``polish`` extra passes at
   the finest level (dilation-1 propagation, then the radius-1 search) rank each position's two best
   candidates by projection exactly, which settles the near-ties the projection cannot resolve.
4. **Score.** ``score`` is the exact cosine of the matched ``patch_size`` patches, recomputed from ``query``
   and ``key`` with :func:`refsr.matching._patches.patch_cosine_at` (differentiable with respect to both, as
   for :func:`refsr.matching.dense.match_dense`). A candidate replaces the current match only if strictly
   better, so ties keep the earlier match.

Candidate evaluation (speed). A candidate costs a dot product of two ``C * p**2``-vectors at every query
position. Gathered from memory that is bandwidth-bound: at 256x256, C=64, one candidate per position costs
about what a GEMM needs for a thousand, and PatchMatch evaluates hundreds. So candidates are ranked with a
``proxy_dim``-dimensional projection (default 32) of the patch vectors onto the leading principal axes of
that level's L2-normalised patches (their uncentred second moment, from ``pca_samples`` random query and
key patches, by randomised subspace iteration). Projecting is a ``p x p`` convolution with ``proxy_dim``
output channels; the projections are then L2-normalised again, so the estimate is the cosine of the
projections and two identical patches score exactly 1 however much energy the axes miss (zero-padded
border patches, which the axes fit worst, would otherwise lose to interior look-alikes). For CNN features
of natural images the leading 32 axes keep 98-99.9 % of the patch energy (``extras["proxy_energy"]``;
measured with random 2-layer CNNs, C=32..256), and the exact polish recovers nearly all of the remaining
ranking errors. For unstructured features (white noise) they keep little (8 % at C=64) and the matches are
poor: a warning says so, and ``proxy_dim=None`` ranks with exact inner products instead (per-pixel gathers,
no unfolded copy; several times slower). Short patch vectors (at most 64 values, e.g. raw RGB) are always
ranked exactly. Bookkeeping runs on int32 coordinates, and propagated candidates equal to the current match
are skipped, which makes coherent regions cheap.

Pyramid. By default level ``l`` (``l = 0`` finest) is ``adaptive_avg_pool2d`` (area averaging) of the given
features to ``ceil(h / 2**l) x ceil(w / 2**l)`` (likewise for the key), so sizes need not be divisible by 8.
``query_pyramid`` / ``key_pyramid`` replace this with the maps the official model uses (features of the
chained bicubic x1/2, x1/4, x1/8 images). Levels whose smaller side (query or key) would fall below
``min_level_size`` (default 4) pixels are dropped, and the schedule's *finest* entries are used: a 16x20
query with the paper schedule runs 3 levels (4x5, 8x10, 16x20) with (1, 2, 6) iterations.

Official-specific output. The official function returns ``S`` = inner product of the (per-pixel normalised,
so norm-3) query patch with the normalised key patch, in [-3, 3], and matches without padding at the finest
level. ``extras["inner_product"]`` holds ``score * |query patch|``, which equals that ``S`` when the query is
per-pixel L2-normalised and the patch lies inside the map.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching._patches import (
    DEFAULT_NORM_EPS,
    check_pair,
    check_patch_size,
    leading_axes,
    patch_cosine_at,
    patch_norms,
)
from refsr.matching.correspondence import Correspondence

__all__ = [
    "SCHEDULES",
    "DEFAULT_PROXY_DIM",
    "match_patchmatch",
    "PatchMatcher",
    "resolve_schedule",
    "default_pyramid",
    "propagation_dilations",
    "search_radii",
    "default_search_radius",
]

#: Iterations per pyramid level, coarsest first: the paper's section 4.2 and the official code.
SCHEDULES: dict[str, tuple[int, ...]] = {"paper": (1, 1, 2, 6), "official": (1, 1, 1, 4)}

#: Dimension of the projected patch vectors used to rank candidates.
DEFAULT_PROXY_DIM = 32

#: Patch vectors up to this long are ranked exactly with their unfolded copies (one gather per candidate).
_SMALL_PATCH_DIM = 64

#: Below this share of kept patch energy the projection is too lossy to rank candidates; warn.
_LOW_PROXY_ENERGY = 0.5

#: The 8 unit directions (dy, dx) around a position, in raster order.
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

#: Elements of one gathered chunk of candidate vectors (4 MB of float32): small enough for the cache, large
#: enough that the per-op thread synchronisation stays negligible.
_CHUNK_ELEMENTS = 1 << 20

#: Coordinates and key rows are int32: index_select takes them, and integer arithmetic on them vectorises
#: (int64 multiplies do not on AVX2), which matters because bookkeeping is half of each step's work.
_COORD = torch.int32


def resolve_schedule(schedule: str | Sequence[int]) -> tuple[int, ...]:
    """Iterations per level, coarsest first, from a preset name (``"paper"``, ``"official"``) or a sequence.

    Raises:
        RefsrError: unknown preset, empty sequence, or a count that is not a non-negative integer.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise RefsrError(
                f"unknown PatchMatch schedule {schedule!r}; use {', '.join(map(repr, SCHEDULES))} "
                "or a tuple of iteration counts, coarsest level first"
            )
        return SCHEDULES[schedule]
    counts = tuple(schedule)
    if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise RefsrError(
            f"schedule must be a preset name or a non-empty tuple of non-negative ints; got {schedule!r}"
        )
    return counts


def propagation_dilations(height: int, width: int) -> list[int]:
    """Jump-flooding dilations at a level whose query map is ``height x width``: ``1, 2, ..., 2**(T-1)``.

    ``T = max(1, floor(log2(min(height, width) / 8)))``, the paper's ``log(sqrt(N) / 8)`` for that level.
    """
    side = min(height, width)
    steps = max(1, int(math.floor(math.log2(side / 8))) if side >= 16 else 1)
    return [2**t for t in range(steps)]


def search_radii(height: int, width: int, limit: int | None = None) -> list[int]:
    """Search radii ``1, 2, 4, ...`` around the current match in a key map of ``height x width``.

    The largest is the biggest power of two not above half the key's larger side, nor above ``limit``
    when given; there is always at least radius 1.
    """
    bound = max(height, width) / 2 if limit is None else min(limit, max(height, width) / 2)
    radii = [1]
    while radii[-1] * 2 <= bound:
        radii.append(radii[-1] * 2)
    return radii


def default_search_radius(height: int, width: int) -> int:
    """Largest search radius below the coarsest level, for a finest key map of ``height x width``.

    The official code's bound: ``2 ** floor(log2((min(height, width) - 3) // 8))``, at least 1; e.g. 16 at
    256x256, 8 at 96x96, 4 at 40x40.
    """
    eighth = (min(height, width) - 3) // 8
    return 2 ** int(math.floor(math.log2(eighth))) if eighth >= 1 else 1


def _level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    return [(-(-height // 2**level), -(-width // 2**level)) for level in range(levels)]


def default_pyramid(features: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Area-averaged pyramid of ``features``, finest (the input itself) first.

    Args:
        features: ``(N, C, H, W)``.
        levels: number of levels including the input.

    Returns:
        ``levels`` maps; level ``l`` is ``(N, C, ceil(H / 2**l), ceil(W / 2**l))``, computed directly from the
        input with ``adaptive_avg_pool2d`` (so odd sizes need no cropping).
    """
    height, width = features.shape[-2:]
    return [
        features if level == 0 else F.adaptive_avg_pool2d(features, size)
        for level, size in enumerate(_level_sizes(height, width, levels))
    ]


class _PatchVectors:
    """Cosines as inner products of L2-normalised patch vectors, one row per position.

    The vectors are either the projections onto a level's principal axes (approximate cosines) or, for
    short patches, the unfolded patches themselves (exact).
    """

    def __init__(self, query_vectors: torch.Tensor, key_vectors: torch.Tensor) -> None:
        self.query_vectors = query_vectors  # (N*h*w, D)
        self.key_vectors = key_vectors  # (N*H*W, D)

    def pairs(self, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Cosines ``(M,)`` of query positions ``(M,)`` with key rows ``(M,)``."""
        out = self.query_vectors.new_empty(positions.shape[0])
        chunk = max(1, _CHUNK_ELEMENTS // self.query_vectors.shape[1])
        for start in range(0, positions.shape[0], chunk):
            stop = start + chunk
            keys = self.key_vectors.index_select(0, rows[start:stop])
            keys.mul_(self.query_vectors.index_select(0, positions[start:stop]))
            torch.sum(keys, dim=1, out=out[start:stop])
        return out

    def grid(self, rows: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Cosines ``(P, K)`` of every query position with its ``K`` key rows ``(P, K)``.

        Entries where ``fresh`` ``(P, K)`` is False come back as -inf.
        """
        positions, count = rows.shape
        dim = self.query_vectors.shape[1]
        out = self.query_vectors.new_empty(positions, count)
        chunk = max(1, _CHUNK_ELEMENTS // (count * dim))
        for start in range(0, positions, chunk):
            stop = min(start + chunk, positions)
            keys = self.key_vectors.index_select(0, rows[start:stop].reshape(-1))
            keys = keys.view(stop - start, count, dim)
            keys.mul_(self.query_vectors[start:stop].unsqueeze(1))
            torch.sum(keys, dim=2, out=out[start:stop])
        return out.masked_fill_(~fresh, float("-inf"))


class _ExactPatches:
    """Exact cosines from per-pixel feature rows of the zero-padded maps: ``p*p`` gathers of C values each.

    A patch inner product is the sum of ``p*p`` per-pixel inner products, so no unfolded copy (``C*p*p``
    values per position) is ever built; the per-pixel rows are small enough to stay in cache.
    """

    def __init__(self, query: torch.Tensor, key: torch.Tensor, patch_size: int, eps: float) -> None:
        n, c, h, w = query.shape
        height, width = key.shape[-2:]
        r = patch_size // 2
        query_padded = F.pad(query, (r,) * 4)
        key_padded = F.pad(key, (r,) * 4)
        self.query_norm = patch_norms(query_padded, patch_size).clamp_min(eps).reshape(-1)
        self.key_norm = patch_norms(key_padded, patch_size).clamp_min(eps).reshape(-1)
        self.query_rows = query_padded.permute(0, 2, 3, 1).reshape(-1, c).contiguous()
        self.key_rows = key_padded.permute(0, 2, 3, 1).reshape(-1, c).contiguous()
        query_width, key_width = w + 2 * r, width + 2 * r
        self.taps = [
            (ky * query_width + kx, ky * key_width + kx)
            for ky in range(patch_size)
            for kx in range(patch_size)
        ]
        # Flat index, in the padded maps, of the top-left corner of each position's patch.
        self.query_corner = _padded_corners(n, h, w, r, query.device)
        self.key_corner = _padded_corners(n, height, width, r, key.device)

    def pairs(self, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Exact cosines ``(M,)`` for query positions ``(M,)`` against key rows ``(M,)``."""
        return self._dot(self.query_corner[positions], rows.unsqueeze(1)).squeeze(1) / (
            self.key_norm[rows] * self.query_norm[positions]
        )

    def grid(self, rows: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Exact cosines ``(P, K)`` of every query position against its ``K`` key rows ``(P, K)``.

        Entries where ``fresh`` ``(P, K)`` is False come back as -inf.
        """
        out = self._dot(self.query_corner, rows) / (self.key_norm[rows] * self.query_norm.unsqueeze(1))
        return out.masked_fill_(~fresh, float("-inf"))

    def _dot(self, query_corner: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Patch inner products ``(M, K)`` of the query patches at ``query_corner`` ``(M,)`` with key rows."""
        count, channels = rows.shape[1], self.key_rows.shape[1]
        out = self.key_rows.new_zeros(rows.shape)
        chunk = max(1, _CHUNK_ELEMENTS // (count * channels))
        for start in range(0, rows.shape[0], chunk):
            stop = min(start + chunk, rows.shape[0])
            key_corner = self.key_corner[rows[start:stop]].reshape(-1)
            for query_tap, key_tap in self.taps:
                keys = self.key_rows.index_select(0, key_corner + key_tap).view(stop - start, count, channels)
                keys.mul_(self.query_rows.index_select(0, query_corner[start:stop] + query_tap).unsqueeze(1))
                out[start:stop] += keys.sum(dim=2)
        return out


class _Reranked:
    """Exact cosines for the ``keep`` best candidates by the projection, -inf for the others.

    Used by the final exact pass: the projection narrows each position's candidates down to a couple, and
    only those pay for an exact evaluation.
    """

    def __init__(self, proxy: _PatchVectors, exact: _ExactPatches, keep: int = 2) -> None:
        self.proxy, self.exact, self.keep = proxy, exact, keep

    def pairs(self, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.exact.pairs(positions, rows)

    def grid(self, rows: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        estimate = self.proxy.grid(rows, fresh)
        top_estimate, top = estimate.topk(min(self.keep, rows.shape[1]), dim=1)
        exact = self.exact.grid(rows.gather(1, top), top_estimate > float("-inf"))
        return torch.full_like(estimate, float("-inf")).scatter_(1, top, exact)


def _padded_corners(n: int, h: int, w: int, r: int, device: torch.device) -> torch.Tensor:
    """``(n*h*w,)`` flat indices into ``(n, h+2r, w+2r)`` of the top-left of the patch at each position."""
    flat = torch.arange(n * h * w, device=device, dtype=_COORD)
    b, rest = flat // (h * w), flat % (h * w)
    return b * ((h + 2 * r) * (w + 2 * r)) + (rest // w) * (w + 2 * r) + rest % w


_Evaluator = _PatchVectors | _ExactPatches | _Reranked


@dataclass
class _Level:
    """One pyramid level, ready for candidate evaluation."""

    evaluator: _Evaluator
    query_size: tuple[int, int]
    key_size: tuple[int, int]
    proxy_energy: float  # share of the sampled patch energy that the projection keeps (1.0 when exact)
    exact: bool  # whether the evaluator's cosines are exact


def _sample_patches(padded: torch.Tensor, patch_size: int, count: int) -> torch.Tensor:
    """``(S, C*p*p)`` patch vectors (``F.unfold`` order) of one map ``(1, C, H+2r, W+2r)`` at up to ``count``
    random (fixed-seed) positions; the positions depend only on the map's size, never on other samples."""
    _, c, hp, wp = padded.shape
    h, w = hp - patch_size + 1, wp - patch_size + 1
    total = h * w
    # A fixed-seed random subset: a regular stride would alias with the row length and could skip whole
    # columns (e.g. the zero-padded border patches, which need axes of their own).
    if count >= total:
        flat = torch.arange(total, device=padded.device)
    else:
        generator = torch.Generator(device="cpu").manual_seed(0x5A3D)
        flat = torch.randperm(total, generator=generator)[:count].sort().values.to(padded.device)
    y, x = flat // w, flat % w
    plane = padded[0]
    taps = [plane[:, y + ky, x + kx] for ky in range(patch_size) for kx in range(patch_size)]  # (C, S) each
    return torch.stack(taps, dim=1).reshape(c * patch_size * patch_size, flat.numel()).T


def _principal_axes(
    query_padded: torch.Tensor, key_padded: torch.Tensor, patch_size: int, dim: int, samples: int, eps: float
) -> tuple[torch.Tensor, float]:
    """Leading ``dim`` principal axes ``(C*p*p, dim)`` of the normalised patches, and the energy they hold.

    ``query_padded`` and ``key_padded`` are one batch item each, ``(1, C, ·, ·)``: the axes of a pair depend
    on that pair alone. :func:`~refsr.matching._patches.leading_axes` of the sampled, normalised patches.
    Uncentred, because it is inner products we approximate: their error is the energy outside the kept
    subspace.
    """
    rows = torch.cat(
        [
            _sample_patches(query_padded, patch_size, samples),
            _sample_patches(key_padded, patch_size, samples),
        ]
    ).float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(eps)
    return leading_axes(rows, dim)


def _prepare_level(
    query: torch.Tensor,
    key: torch.Tensor,
    patch_size: int,
    proxy_dim: int | None,
    pca_samples: int,
    eps: float,
) -> _Level:
    n, c, h, w = query.shape
    height, width = key.shape[-2:]
    radius = patch_size // 2
    query_padded = F.pad(query, (radius,) * 4)
    key_padded = F.pad(key, (radius,) * 4)
    full_dim = c * patch_size * patch_size
    if full_dim <= _SMALL_PATCH_DIM and (proxy_dim is None or proxy_dim >= full_dim):
        # Short patch vectors (e.g. raw RGB): the unfolded, normalised vectors are the exact ranking and
        # one gather per candidate is cheaper than p*p gathers of C values.
        query_vectors = F.normalize(F.unfold(query_padded, patch_size), dim=1, eps=eps)
        key_vectors = F.normalize(F.unfold(key_padded, patch_size), dim=1, eps=eps)
        query_vectors = query_vectors.transpose(1, 2).reshape(n * h * w, full_dim).contiguous()
        key_vectors = key_vectors.transpose(1, 2).reshape(n * height * width, full_dim).contiguous()
        return _Level(_PatchVectors(query_vectors, key_vectors), (h, w), (height, width), 1.0, True)
    if proxy_dim is None or proxy_dim >= full_dim:
        return _Level(_ExactPatches(query, key, patch_size, eps), (h, w), (height, width), 1.0, True)
    # Axes and projections per batch item, each computed exactly as for that item alone (same shapes, so
    # the same kernels and the same rounding): a sample's matches must not depend on its batch neighbours.
    # The loop is over N only; each step is a few thin matrix products and one convolution.
    query_vectors = query_padded.new_empty(n, h * w, proxy_dim)
    key_vectors = key_padded.new_empty(n, height * width, proxy_dim)
    energies = []
    for item in range(n):
        item_query, item_key = query_padded[item : item + 1], key_padded[item : item + 1]
        axes, energy = _principal_axes(item_query, item_key, patch_size, proxy_dim, pca_samples, eps)
        energies.append(energy)
        # Projecting every patch onto the axes is a p x p convolution: no unfolded copy of the maps.
        weight = axes.T.reshape(proxy_dim, c, patch_size, patch_size).to(query.dtype)
        # Normalised after projecting, i.e. the cosine of the projections: two identical patches score
        # exactly 1 however much of their energy the axes miss. (Without this, zero-padded border patches,
        # which the axes fit worst, lose to interior look-alikes and border rows end up badly matched.)
        # Position-major rows so that one candidate is one contiguous row to gather.
        query_vectors[item] = F.normalize(F.conv2d(item_query, weight).flatten(2), dim=1, eps=eps)[0].T
        key_vectors[item] = F.normalize(F.conv2d(item_key, weight).flatten(2), dim=1, eps=eps)[0].T
    query_vectors = query_vectors.view(n * h * w, proxy_dim)
    key_vectors = key_vectors.view(n * height * width, proxy_dim)
    return _Level(_PatchVectors(query_vectors, key_vectors), (h, w), (height, width), min(energies), False)


class _Field:
    """The match field of one level: key coordinates and (estimated) cosine per query position.

    Candidates are clamped into ``bounds`` = ``(y_min, y_max, x_min, x_max)`` (inclusive) of the key. Every
    random draw is made for one batch item and shared by all items, so that no item's matches depend on the
    others (nor on the batch size).
    """

    def __init__(
        self,
        level: _Level,
        y: torch.Tensor,
        x: torch.Tensor,
        generator: torch.Generator,
        bounds: tuple[int, int, int, int],
    ) -> None:
        self.level = level
        self.bounds = bounds
        self.y, self.x = y, x  # (N, h, w) int32
        n, h, w = y.shape
        height, width = level.key_size
        self.batch_base = (torch.arange(n, device=y.device, dtype=_COORD) * (height * width)).view(n, 1, 1)
        positions = torch.arange(n * h * w, device=y.device)
        self.score = level.evaluator.pairs(positions, self._rows(y, x).reshape(-1)).view(n, h, w)
        # One table of uniform numbers per level; each search step reads it at a random offset, which
        # gives fresh-looking jitter without drawing 16 numbers per position per step.
        self.generator = generator
        self.jitter_slack = min(h * w, 4096)
        table_size = (2, len(_DIRECTIONS), h * w + self.jitter_slack)
        self.jitter_table = torch.rand(table_size, generator=generator).to(y.device)

    def _rows(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        width = self.level.key_size[1]
        base = self.batch_base if y.dim() == 3 else self.batch_base.unsqueeze(-1)
        return base + y * width + x

    def jitter(self, half: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform integer offsets in ``[-half, half]``, ``(1, h, w, 8)`` each for y and x (one draw for all
        batch items)."""
        _, h, w = self.y.shape
        start = int(torch.randint(0, self.jitter_slack + 1, (1,), generator=self.generator))
        window = self.jitter_table[:, :, start : start + h * w]
        offsets = (window * (2 * half + 1)).floor_().to(_COORD) - half  # (2, 8, h*w), shared by the batch
        offsets = offsets.view(2, len(_DIRECTIONS), 1, h, w).permute(0, 2, 3, 4, 1)
        return offsets[0], offsets[1]

    def consider(self, cand_y: torch.Tensor, cand_x: torch.Tensor) -> None:
        """Keep, per position, the best of the current match and ``K`` candidates ``(N, h, w, K)``.

        Only candidates that differ from the current match are evaluated: in coherent regions most
        propagated candidates are the current match again, and skipping them makes propagation cheap there.
        """
        y_min, y_max, x_min, x_max = self.bounds
        cand_y = cand_y.clamp(y_min, y_max)
        cand_x = cand_x.clamp(x_min, x_max)
        count = cand_y.shape[-1]
        rows = self._rows(cand_y, cand_x).reshape(-1, count)
        fresh = rows != self._rows(self.y, self.x).reshape(-1, 1)
        evaluator = self.level.evaluator
        fresh_count = int(fresh.sum())
        if fresh_count == 0:
            return
        if isinstance(evaluator, _Reranked) or 2 * fresh_count > fresh.numel():
            scores = evaluator.grid(rows, fresh)
        else:
            # Mostly repeats: evaluate only the fresh (position, candidate) pairs.
            position, which = fresh.nonzero(as_tuple=True)
            scores = torch.full(rows.shape, float("-inf"), dtype=self.score.dtype, device=rows.device)
            scores[position, which] = evaluator.pairs(position, rows[position, which])
        best, pick = scores.max(dim=1)
        best, pick = best.view_as(self.score), pick.view_as(self.score).unsqueeze(-1)
        # Strictly better only: ties keep the current match.
        better = best > self.score
        self.y = torch.where(better, cand_y.gather(-1, pick).squeeze(-1), self.y)
        self.x = torch.where(better, cand_x.gather(-1, pick).squeeze(-1), self.x)
        self.score = torch.where(better, best, self.score)


def _propagate(field: _Field, dilation: int, shift_by_offset: bool) -> None:
    n, h, w = field.y.shape
    if dilation >= h and dilation >= w:
        return  # every neighbour lies outside the map
    d = dilation
    # Positions outside the query get -1 so that their (non-existent) matches are never proposed.
    padded_y = F.pad(field.y, (d, d, d, d), value=-1)
    padded_x = F.pad(field.x, (d, d, d, d), value=-1)
    cand_y, cand_x = [], []
    for dy, dx in _DIRECTIONS:
        src_y = padded_y[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
        src_x = padded_x[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
        valid = src_y >= 0
        if shift_by_offset:
            src_y, src_x = src_y - dy * d, src_x - dx * d
        cand_y.append(torch.where(valid, src_y, field.y))
        cand_x.append(torch.where(valid, src_x, field.x))
    field.consider(torch.stack(cand_y, dim=-1), torch.stack(cand_x, dim=-1))


def _search(field: _Field, radius: int) -> None:
    directions = torch.tensor(_DIRECTIONS, device=field.y.device, dtype=_COORD) * radius  # (8, 2)
    cand_y = field.y.unsqueeze(-1) + directions[:, 0]
    cand_x = field.x.unsqueeze(-1) + directions[:, 1]
    if radius >= 2:
        jitter_y, jitter_x = field.jitter(radius // 2)
        cand_y = cand_y + jitter_y
        cand_x = cand_x + jitter_x
    field.consider(cand_y, cand_x)


def _upsample_field(
    field_y: torch.Tensor, field_x: torch.Tensor, query_size: tuple[int, int], key_size: tuple[int, int],
    coarse_key_size: tuple[int, int], bounds: tuple[int, int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry a coarse match field to a finer query grid (nearest) and key grid (rescaled coordinates),
    clamped into ``bounds`` ``(y_min, y_max, x_min, x_max)`` of the finer key."""
    device = field_y.device

    def axis(
        coarse_q: int, fine_q: int, coarse_k: int, fine_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        fine = torch.arange(fine_q, device=device, dtype=torch.float64)
        q_scale, k_scale = fine_q / coarse_q, fine_k / coarse_k
        coarse = ((fine + 0.5) / q_scale).floor().clamp(0, coarse_q - 1)
        # Where inside its coarse cell the fine position sits, in fine pixels.
        sub_cell = (fine + 0.5) - (coarse + 0.5) * q_scale
        return coarse.long(), sub_cell, k_scale

    coarse_h, coarse_w = field_y.shape[-2:]
    rows, sub_y, scale_y = axis(coarse_h, query_size[0], coarse_key_size[0], key_size[0])
    cols, sub_x, scale_x = axis(coarse_w, query_size[1], coarse_key_size[1], key_size[1])
    y = field_y[:, rows][:, :, cols].double()
    x = field_x[:, rows][:, :, cols].double()
    y = ((y + 0.5) * scale_y - 0.5 + sub_y.view(-1, 1)).round().clamp(bounds[0], bounds[1]).to(_COORD)
    x = ((x + 0.5) * scale_x - 0.5 + sub_x.view(1, -1)).round().clamp(bounds[2], bounds[3]).to(_COORD)
    return y, x


def _pyramid_levels(
    base: torch.Tensor, pyramid: Sequence[torch.Tensor] | None, name: str
) -> list[torch.Tensor] | None:
    """The coarser levels of an explicit pyramid (finest first), after checking them; None if not given."""
    if pyramid is None:
        return None
    levels = list(pyramid)
    for level in levels:
        if not isinstance(level, torch.Tensor) or level.dim() != 4 or level.shape[:2] != base.shape[:2]:
            shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in pyramid]
            raise RefsrError(
                f"{name} must hold (N, C, h, w) maps with the N and C of the features, finest first; "
                f"got {shapes}"
            )
    if levels and tuple(levels[0].shape[-2:]) == tuple(base.shape[-2:]):
        levels = levels[1:]  # the official pyramids start with the full-resolution map itself
    return [level.detach().to(device=base.device, dtype=base.dtype) for level in levels]


def match_patchmatch(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    patch_size: int = 3,
    schedule: str | Sequence[int] = "paper",
    seed: int = 0,
    query_pyramid: Sequence[torch.Tensor] | None = None,
    key_pyramid: Sequence[torch.Tensor] | None = None,
    propagation: str = "offset",
    proxy_dim: int | None = DEFAULT_PROXY_DIM,
    polish: int = 1,
    search_radius: int | None = None,
    pca_samples: int = 2048,
    min_level_size: int = 4,
    key_patch_norm_eps: float = DEFAULT_NORM_EPS,
    key_margin: int = 0,
) -> Correspondence:
    """Top-1 cosine patch matching by AMSA's coarse-to-fine PatchMatch (see the module docstring).

    Args:
        query: ``(N, C, h, w)`` features, float; any value range.
        key: ``(N, C, H, W)`` features, same N, C, dtype and device. ``(H, W)`` may differ from ``(h, w)``.
        patch_size: odd side ``p`` of the patches, centred at every position, zero-padded at the borders.
        schedule: iterations per level, coarsest first: ``"paper"`` = (1, 1, 2, 6), ``"official"`` =
            (1, 1, 1, 4), or a tuple. Its length is the most levels used; with fewer levels (small inputs or
            a short explicit pyramid) its last (finest) entries apply.
        seed: seeds the random initialisation and search jitter (a ``torch.Generator``; the global RNG is
            neither used nor advanced): same inputs and seed, same result.
        query_pyramid, key_pyramid: optional explicit pyramids, finest first, each ``(N, C, h_l, w_l)``,
            e.g. features of the chained bicubic x1/2, x1/4, x1/8 images as the official model builds them.
            They may start with the full-resolution map (same size as ``query`` / ``key``; it is skipped
            and ``query`` / ``key`` used) or directly with the next coarser level. Give both or neither,
            with as many levels each.
        propagation: ``"offset"`` (a neighbour's match shifted by the neighbour offset; default) or
            ``"index"`` (the neighbour's key position copied unchanged, as the official code does).
        proxy_dim: dimension of the projected patch vectors that rank candidates; ``None`` ranks with the
            exact patch inner products instead (several times slower for long patch vectors). Patch vectors
            of at most 64 values (e.g. raw RGB, 27) are always ranked exactly.
        polish: exact passes at the end of the finest level (dilation-1 propagation and radius-1 search,
            re-ranked exactly; see the module docstring); 0 to skip. Ignored when ``proxy_dim`` is None.
        search_radius: largest search radius below the coarsest level; ``None`` for
            :func:`default_search_radius` of the key. The coarsest level always searches the whole key.
        pca_samples: patches sampled from each of query and key, per level, to fit the projection.
        min_level_size: a level is used only if both its maps are at least this many pixels on each side.
        key_patch_norm_eps: lower bound on every patch norm before dividing (``F.normalize``'s rule).
        key_margin: at the finest level, only key positions at least this many pixels from the key's border
            are candidates (initial field, propagation, search and polish are all clamped into that region),
            so every returned index lies in ``[m, H-1-m] x [m, W-1-m]``. ``1`` with ``patch_size=3`` gives
            the official finest level, whose keys are the interior 3x3 patches only (unpadded unfold).
            Coarser levels are not restricted (officially they match padded patches everywhere). Default 0.

    Returns:
        :class:`Correspondence` with ``index`` ``(N, h, w)`` int64 flat key positions ``y * W + x`` and
        ``score`` ``(N, h, w)``: the exact cosine in [-1, 1] of the matched patches, dtype of the inputs,
        differentiable with respect to ``query`` and ``key`` (not through the index). ``extras``:

        - ``"inner_product"`` ``(N, h, w)``: ``score * |query patch|``, the official ``S`` (see the module
          docstring);
        - ``"levels"``: ``[((h_l, w_l), (H_l, W_l)), ...]``, coarsest first;
        - ``"iterations"``: iterations run per level, coarsest first;
        - ``"proxy_energy"``: per level, the share of the sampled patch energy the projection keeps (1.0
          when exact), the lowest over the batch items.

        Each batch item's ``index`` and ``score`` are exactly those of matching that item alone with the
        same options: all random draws are shared by the items and the projections are fitted per item.

    Raises:
        RefsrError: bad shapes or dtypes, an even patch size, an unknown schedule or propagation, a bad
            ``proxy_dim``, or inconsistent pyramids, or a ``key_margin`` that leaves no key position.
    """
    check_pair(query, key)
    check_patch_size(patch_size)
    counts = resolve_schedule(schedule)
    if propagation not in ("offset", "index"):
        raise RefsrError(f"propagation must be 'offset' or 'index'; got {propagation!r}")
    for name, value in (("proxy_dim", proxy_dim), ("search_radius", search_radius)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RefsrError(f"{name} must be a positive int or None; got {value!r}")
    if (query_pyramid is None) != (key_pyramid is None):
        raise RefsrError("give both query_pyramid and key_pyramid, or neither")
    n, c, h, w = query.shape
    height, width = key.shape[-2:]
    if isinstance(key_margin, bool) or not isinstance(key_margin, int) or key_margin < 0:
        raise RefsrError(f"key_margin must be a non-negative int; got {key_margin!r}")
    if min(height, width) <= 2 * key_margin:
        raise RefsrError(
            f"key_margin={key_margin} leaves no key position in a {height}x{width} key; use a larger key "
            "or a smaller key_margin"
        )
    radius = patch_size // 2
    shift_by_offset = propagation == "offset"
    fine_radius = default_search_radius(height, width) if search_radius is None else search_radius

    with torch.no_grad():
        query_levels, key_levels = _build_pyramids(
            query.detach(), key.detach(), query_pyramid, key_pyramid, len(counts), min_level_size
        )
        iterations = counts[-len(query_levels) :]

        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        field: _Field | None = None
        energies = []
        for number, (level_query, level_key, count) in enumerate(zip(query_levels, key_levels, iterations)):
            level = _prepare_level(
                level_query, level_key, patch_size, proxy_dim, pca_samples, key_patch_norm_eps
            )
            energies.append(level.proxy_energy)
            (lh, lw), (lkh, lkw) = level.query_size, level.key_size
            margin = key_margin if number == len(query_levels) - 1 else 0
            bounds = (margin, lkh - 1 - margin, margin, lkw - 1 - margin)
            if field is None:
                # One draw for a single item, shared by the batch: no item's start depends on the others.
                y = torch.randint(bounds[0], bounds[1] + 1, (1, lh, lw), generator=generator, dtype=_COORD)
                x = torch.randint(bounds[2], bounds[3] + 1, (1, lh, lw), generator=generator, dtype=_COORD)
                y = y.to(query.device).expand(n, -1, -1).contiguous()
                x = x.to(query.device).expand(n, -1, -1).contiguous()
                radii = search_radii(lkh, lkw)
            else:
                y, x = _upsample_field(field.y, field.x, (lh, lw), (lkh, lkw), field.level.key_size, bounds)
                radii = search_radii(lkh, lkw, fine_radius)
            field = _Field(level, y, x, generator, bounds)
            dilations = propagation_dilations(lh, lw)
            for _ in range(count):
                for dilation in dilations:
                    _propagate(field, dilation, shift_by_offset)
                for r in radii:
                    _search(field, r)
        assert field is not None
        if min(energies) < _LOW_PROXY_ENERGY:
            warnings.warn(
                f"PatchMatch's {proxy_dim}-d projection keeps only {min(energies):.0%} of the patch energy "
                "(unstructured features?), so matches will be poor; pass proxy_dim=None to rank candidates "
                "exactly",
                RuntimeWarning,
                stacklevel=2,
            )
        if polish and not field.level.exact:
            assert isinstance(field.level.evaluator, _PatchVectors)
            exact = _ExactPatches(query_levels[-1], key_levels[-1], patch_size, key_patch_norm_eps)
            reranked = _Level(_Reranked(field.level.evaluator, exact), (h, w), (height, width), 1.0, True)
            field = _Field(reranked, field.y, field.x, generator, field.bounds)
            for _ in range(polish):
                _propagate(field, 1, shift_by_offset)
                _search(field, 1)
        index = field.y.long() * width + field.x.long()

    # Recomputed from the inputs, outside no_grad, so that it is exact and differentiable.
    query_padded = F.pad(query, (radius,) * 4)
    score = patch_cosine_at(
        query_padded, F.pad(key, (radius,) * 4), index, (height, width), patch_size, key_patch_norm_eps
    )
    query_norm = patch_norms(query_padded, patch_size).view(n, h, w)
    extras: dict[str, Any] = {
        "inner_product": score * query_norm,
        "levels": [(tuple(q.shape[-2:]), tuple(k.shape[-2:])) for q, k in zip(query_levels, key_levels)],
        "iterations": tuple(iterations),
        "proxy_energy": tuple(energies),
    }
    return Correspondence(index=index, score=score, key_size=(height, width), extras=extras)


def _build_pyramids(
    query: torch.Tensor,
    key: torch.Tensor,
    query_pyramid: Sequence[torch.Tensor] | None,
    key_pyramid: Sequence[torch.Tensor] | None,
    max_levels: int,
    min_level_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The query and key levels to match, coarsest first: at most ``max_levels``, none below the floor."""
    query_coarse = _pyramid_levels(query, query_pyramid, "query_pyramid")
    key_coarse = _pyramid_levels(key, key_pyramid, "key_pyramid")
    if query_coarse is not None and key_coarse is not None:
        if len(query_coarse) != len(key_coarse):
            raise RefsrError(
                f"query_pyramid and key_pyramid must have as many levels; got {len(query_coarse)} "
                f"and {len(key_coarse)} below full resolution"
            )
        query_levels = [query, *query_coarse]
        key_levels = [key, *key_coarse]
    else:
        height, width = query.shape[-2:]
        key_height, key_width = key.shape[-2:]
        levels = 1
        while levels < max_levels and min(
            *_level_sizes(height, width, levels + 1)[-1], *_level_sizes(key_height, key_width, levels + 1)[-1]
        ) >= min_level_size:
            levels += 1
        query_levels = default_pyramid(query, levels)
        key_levels = default_pyramid(key, levels)
    usable = min(len(query_levels), max_levels)
    while usable > 1 and min(*query_levels[usable - 1].shape[-2:], *key_levels[usable - 1].shape[-2:]) < (
        min_level_size
    ):
        usable -= 1
    return query_levels[:usable][::-1], key_levels[:usable][::-1]


class PatchMatcher(nn.Module):
    """``nn.Module`` wrapper of :func:`match_patchmatch` (no parameters).

    The options are fixed at construction; ``forward(query, key, query_pyramid=None, key_pyramid=None)``
    returns a :class:`Correspondence`.
    """

    def __init__(
        self,
        patch_size: int = 3,
        schedule: str | Sequence[int] = "paper",
        seed: int = 0,
        propagation: str = "offset",
        proxy_dim: int | None = DEFAULT_PROXY_DIM,
        polish: int = 1,
        search_radius: int | None = None,
        pca_samples: int = 2048,
        min_level_size: int = 4,
        key_patch_norm_eps: float = DEFAULT_NORM_EPS,
        key_margin: int = 0,
    ) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        self.schedule = resolve_schedule(schedule)
        self.seed = seed
        self.propagation = propagation
        self.proxy_dim = proxy_dim
        self.polish = polish
        self.search_radius = search_radius
        self.pca_samples = pca_samples
        self.min_level_size = min_level_size
        self.key_patch_norm_eps = key_patch_norm_eps
        self.key_margin = key_margin

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        query_pyramid: Sequence[torch.Tensor] | None = None,
        key_pyramid: Sequence[torch.Tensor] | None = None,
    ) -> Correspondence:
        return match_patchmatch(
            query,
            key,
            patch_size=self.patch_size,
            schedule=self.schedule,
            seed=self.seed,
            query_pyramid=query_pyramid,
            key_pyramid=key_pyramid,
            propagation=self.propagation,
            proxy_dim=self.proxy_dim,
            polish=self.polish,
            search_radius=self.search_radius,
            pca_samples=self.pca_samples,
            min_level_size=self.min_level_size,
            key_patch_norm_eps=self.key_patch_norm_eps,
            key_margin=self.key_margin,
        )

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, schedule={self.schedule}, seed={self.seed}, "
            f"propagation={self.propagation!r}, proxy_dim={self.proxy_dim}, key_margin={self.key_margin}"
        )
