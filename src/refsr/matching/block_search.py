"""Approximate search for MEM's coarse step: an inverted-file index over the key's dilated patch descriptors.

MEM (:func:`refsr.matching.mem.match_mem`) scores every LR block against every Ref↓ position ``p`` by
``s(p) = sum_d cos(q_d, k_d(p))``: ``q_d`` is the block's centre patch sampled with dilation ``d`` and
``k_d(p)`` the dilated 3x3 patch of Ref↓ at ``p`` (zero padding). Written as one inner product,

    ``s(p) = q̂ · k̂(p)``,  ``q̂ = [q_d / |q_d|]_d``,  ``k̂(p) = [k_d(p) / max(|k_d(p)|, eps)]_d``,

a search over ``D = len(dilations) * 9 * C`` dimensional *descriptors*. The exact search costs
``blocks x positions x D``: it grows with the product of the LR and the reference sizes (7.4 TFLOP for a
1024² LR with a 2048² reference at C = 32). This module makes the search's cost grow with their sum.

Index (:func:`build_block_index`, once per reference):

1. **Projection.** The leading ``proxy_dim`` principal axes of the descriptors (uncentred second moment of
   a fixed-seed sample of key positions). For CNN features they hold nearly all of the energy (99.0-99.9 %
   at 32 axes on masa-lite's features of real photos), so distances between projections ("proxies") rank
   *clusters* well. Projecting every key position is one dilated convolution per dilation.
2. **Clusters.** k-means (Lloyd, fixed seed) of the key proxies into about ``positions / cluster_size``
   clusters, in two levels beyond 1,024 clusters (``sqrt`` of them coarse, each split in proportion to its
   size), so that assigning the positions costs ``positions x sqrt(clusters)``; the positions are stored
   sorted by cluster (an inverted file).

Search (:func:`search_blocks`, per LR image):

3. **Probe.** Each block's proxy picks its ``probes`` nearest cluster centres.
4. **Exact scores.** Every key position of the probed clusters is scored with its *exact* descriptor,
   gathered from the Ref↓ map (one small matrix product per cluster with the blocks that probe it). The
   projection only decides where to look: among the positions looked at, the winner is the exact one.
5. **Propagation** (PatchMatch's, over the block grid): each block also scores its four neighbours'
   winners, as they are and moved back by one block width.
6. **Refinement.** A few hill-climbing steps over the ``(2r + 1)²`` positions around each winner: the best
   position's neighbour can sit in a cluster that was not probed.

Measured on masa-lite features of real photo pairs (``benchmarks/upscale.py --recall``; every block, or a
sample against brute force): at 32 probes the exact best position is found for 99.0-100 % of the blocks,
and where it is not the found score is within 1e-5 of the best for all but 0.05-0.2 % (a float-rounding
tie: the exact search convolves, this one multiplies matrices, so near-equal scores can swap). The test
(``tests/matching/test_block_search.py``) asks for >= 99 % on a real photo and checks the whole search
against brute force. Ties go to the lowest flat position, as in the exact search.

Cost per block: ``clusters x proxy_dim`` to probe plus ``probes x cluster_size x D`` for the exact scores,
independent of the reference size once the cluster size is fixed; building the index costs
``positions x (D x proxy_dim + clusters x proxy_dim)``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.matching._patches import DEFAULT_NORM_EPS, box_sum, leading_axes

__all__ = [
    "BlockIndex",
    "build_block_index",
    "search_blocks",
    "exact_search_blocks",
    "tap_offsets",
    "index_saves_work",
    "INDEX_MIN_CLUSTERS",
    "DEFAULT_PROBES",
    "DEFAULT_CLUSTER_SIZE",
    "DEFAULT_PROXY_DIM",
]

#: Clusters probed per block. 32 found the exact best block for >= 99.6 % of the blocks on real features.
DEFAULT_PROBES = 32
#: Mean key positions per cluster: the exact scoring work per probe.
DEFAULT_CLUSTER_SIZE = 256
#: Dimensions of the proxies that rank the clusters.
DEFAULT_PROXY_DIM = 32
#: Below this many clusters per probe an index would search a large share of the key anyway (and pay for
#: building it): :func:`index_saves_work` is False and MEM's ``coarse="fast"`` searches exhaustively.
INDEX_MIN_CLUSTERS_PER_PROBE = 4
#: The smallest index worth building at the default probes and cluster size.
INDEX_MIN_CLUSTERS = INDEX_MIN_CLUSTERS_PER_PROBE * DEFAULT_PROBES
#: Fixed-seed sample sizes: positions for the principal axes, and per cluster for k-means.
_PCA_SAMPLES = 8192
_KMEANS_SAMPLES_PER_CLUSTER = 16
_KMEANS_ITERATIONS = 8
#: Up to this many clusters, one level of k-means (see ``_clusters``).
_FLAT_CLUSTERS = 1024
#: Working memory of one chunk of the index's distance and gather computations.
_CHUNK_BYTES = 64 * 2**20

T = TypeVar("T")


def tap_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """``(dy, dx)`` of every descriptor tap, in descriptor order: dilation, then row, then column."""
    return [(d * ty, d * tx) for d in dilations for ty in (-1, 0, 1) for tx in (-1, 0, 1)]


def index_saves_work(positions: int, probes: int = DEFAULT_PROBES,
                     cluster_size: int = DEFAULT_CLUSTER_SIZE) -> bool:
    """Whether an index of ``positions`` key positions is worth building for ``probes`` probes: it must
    have more than ``INDEX_MIN_CLUSTERS_PER_PROBE`` clusters per probe (a Ref↓ of more than 32,768
    positions at the defaults, i.e. a reference larger than about 724²)."""
    return math.ceil(positions / cluster_size) > INDEX_MIN_CLUSTERS_PER_PROBE * probes


@dataclass
class BlockIndex:
    """The searchable form of one key map (one batch item).

    Attributes:
        rows: ``(H*W + 1, C)``, the key channels-last with an all-zero last row that stands for every tap
            outside the map (MEM zero-pads the key); float32, or bfloat16/float16 for such a key (half the
            memory; gathered rows are converted to float32).
        inv_norms: ``(len(dilations), H*W)``, ``1 / max(|k_d(p)|, eps)`` per dilation and position.
        size: ``(H, W)``.
        dilations: the coarse step's dilations.
        axes: ``(D, proxy_dim)`` projection onto the leading principal axes.
        centroids: ``(K, proxy_dim)`` cluster centres.
        members: ``(H*W,)`` int64 positions sorted by cluster (by position within a cluster).
        offsets: ``(K + 1,)`` int64: cluster ``c`` holds ``members[offsets[c]:offsets[c + 1]]``.
        member_scale: ``(H*W, len(dilations))``, :attr:`inv_norms` at ``members``.
    """

    rows: torch.Tensor
    inv_norms: torch.Tensor
    size: tuple[int, int]
    dilations: tuple[int, ...]
    axes: torch.Tensor
    centroids: torch.Tensor
    members: torch.Tensor
    offsets: torch.Tensor
    member_scale: torch.Tensor

    @property
    def positions(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def nbytes(self) -> int:
        tensors = (self.rows, self.inv_norms, self.axes, self.centroids, self.members, self.offsets,
                   self.member_scale)
        return sum(t.numel() * t.element_size() for t in tensors)

    def tap_index(self, positions: torch.Tensor) -> torch.Tensor:
        """``(..., taps)`` row of :attr:`rows` for every tap of the patches at ``positions`` (``(...)``)."""
        height, width = self.size
        offsets = torch.tensor(tap_offsets(self.dilations), device=positions.device)  # (taps, 2)
        y = (positions // width)[..., None] + offsets[:, 0]
        x = (positions % width)[..., None] + offsets[:, 1]
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        return torch.where(inside, y * width + x, self.positions)

    def descriptors(self, positions: torch.Tensor) -> torch.Tensor:
        """Exact descriptors ``(..., D)`` of the key at ``positions`` (``(...)`` flat int64)."""
        taps = self.rows[self.tap_index(positions)].float()  # (..., taps, C)
        shape = taps.shape
        per_dilation = taps.view(*shape[:-2], len(self.dilations), 9, shape[-1])
        scale = self.inv_norms[:, positions].movedim(0, -1)  # (..., dilations)
        return (per_dilation * scale[..., None, None]).reshape(*shape[:-2], -1)


def _key_tables(key: torch.Tensor, dilations: Sequence[int], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows (H*W+1, C)`` and ``inv_norms (dilations, H*W)`` of one key map ``(1, C, H, W)``."""
    _, c, height, width = key.shape
    rows = torch.cat((key[0].permute(1, 2, 0).reshape(height * width, c), key.new_zeros(1, c)))
    energy = key.pow(2).sum(dim=1, keepdim=True)
    inv_norms = torch.stack([
        box_sum(energy, 3, dilation=d, padding=d).clamp_min(0).sqrt().flatten().clamp_min(eps).reciprocal()
        for d in dilations
    ])
    return rows.contiguous(), inv_norms


def _fixed_sample(total: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """Up to ``count`` distinct indices below ``total``, sorted, from a fixed seed (all when fewer)."""
    if count >= total:
        return torch.arange(total, device=device)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:count].sort().values.to(device)


def _nearest(points: torch.Tensor, centres: torch.Tensor, count: int = 1) -> torch.Tensor:
    """Indices ``(P, count)`` of the ``count`` nearest centres (L2) of every point, in chunks."""
    # |p - c|^2 up to the per-point constant |p|^2, which cannot change the ranking: |c|^2 - 2 p.c, as one
    # matrix product of [p, 1] with [-2c, |c|^2] (no separate pass to add the centres' energies).
    augmented = torch.cat((-2 * centres, centres.pow(2).sum(dim=1, keepdim=True)), dim=1).T.contiguous()
    chunk = max(1, _CHUNK_BYTES // (4 * max(1, centres.shape[0])))
    out = torch.empty(points.shape[0], count, dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], chunk):
        part = points[start : start + chunk]
        distance = torch.cat((part, part.new_ones(part.shape[0], 1)), dim=1) @ augmented
        if count == 1:
            out[start : start + chunk, 0] = distance.argmin(dim=1)
        else:
            out[start : start + chunk] = distance.topk(count, dim=1, largest=False, sorted=True).indices
    return out


def _kmeans(points: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """Lloyd's k-means of ``points (P, d)`` from a fixed-seed start; returns the centres ``(K, d)``."""
    sample = points[_fixed_sample(points.shape[0], clusters * _KMEANS_SAMPLES_PER_CLUSTER, seed, points.device)]
    centres = sample[_fixed_sample(sample.shape[0], clusters, seed + 1, points.device)].clone()
    for _ in range(_KMEANS_ITERATIONS):
        label = _nearest(sample, centres)[:, 0]
        counts = torch.bincount(label, minlength=clusters)
        sums = torch.zeros_like(centres).index_add_(0, label, sample)
        filled = counts > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None].to(sums.dtype)
    return centres


def _clusters(points: torch.Tensor, clusters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``clusters`` k-means centres ``(K, d)`` of ``points (P, d)`` and each point's cluster ``(P,)``.

    Up to :data:`_FLAT_CLUSTERS` clusters, one k-means and every point assigned to its nearest centre. Beyond,
    assigning ``P`` points to ``K`` centres (a ``P x K`` distance matrix) would cost more than the whole search:
    two levels instead, ``sqrt(K)`` coarse clusters, then each one split into a share of the ``K`` fine ones
    proportional to its size (largest remainders), a point going to the nearest fine centre of its coarse
    cluster: ``P x 2 sqrt(K)`` distances.
    """
    if clusters <= _FLAT_CLUSTERS:
        centres = _kmeans(points, clusters, seed)
        return centres, _nearest(points, centres)[:, 0]
    coarse_count = math.isqrt(clusters)
    coarse = _kmeans(points, coarse_count, seed)
    coarse_label = _nearest(points, coarse)[:, 0]
    sizes = torch.bincount(coarse_label, minlength=coarse_count).tolist()
    quotas = [size * clusters / points.shape[0] for size in sizes]
    shares = [max(1, int(q)) if size else 0 for q, size in zip(quotas, sizes)]
    by_remainder = sorted(range(coarse_count), key=lambda j: -(quotas[j] - int(quotas[j])))
    for j in by_remainder:  # largest remainders first, until the shares add up to ``clusters``
        if sum(shares) >= clusters:
            break
        if sizes[j] > shares[j]:
            shares[j] += 1
    centres, label, first = [], torch.empty_like(coarse_label), 0
    for j in range(coarse_count):
        if shares[j] == 0:
            continue
        inside = torch.nonzero(coarse_label == j)[:, 0]
        fine = _kmeans(points[inside], min(shares[j], inside.numel()), seed + 1 + j)
        label[inside] = _nearest(points[inside], fine)[:, 0] + first
        centres.append(fine)
        first += fine.shape[0]
    return torch.cat(centres), label


def build_block_index(
    key: torch.Tensor,
    dilations: Sequence[int] = (1, 2, 3),
    *,
    cluster_size: int = DEFAULT_CLUSTER_SIZE,
    proxy_dim: int = DEFAULT_PROXY_DIM,
    eps: float = DEFAULT_NORM_EPS,
) -> BlockIndex:
    """Index the dilated patch descriptors of one key map for :func:`search_blocks`.

    Args:
        key: ``(1, C, H, W)`` Ref↓ features (searched in float32 whatever their dtype).
        dilations: the coarse step's dilations.
        cluster_size: mean positions per cluster.
        proxy_dim: dimensions of the proxies that rank clusters.
        eps: lower bound on every patch norm (``F.normalize``'s).

    Returns:
        A :class:`BlockIndex`. Deterministic: every random choice has a fixed seed.
    """
    if key.dim() != 4 or key.shape[0] != 1:
        raise RefsrError(f"build_block_index takes one key map (1, C, H, W); got {tuple(key.shape)}")
    if cluster_size < 1 or proxy_dim < 1:
        raise RefsrError(f"cluster_size and proxy_dim must be positive; got {cluster_size} and {proxy_dim}")
    half = key.dtype in (torch.float16, torch.bfloat16)
    storage = key.dtype if half else torch.float32
    key = key.detach().float()
    _, c, height, width = key.shape
    dilations = tuple(int(d) for d in dilations)
    rows, inv_norms = _key_tables(key, dilations, eps)
    rows = rows.to(storage)
    positions = height * width
    full_dim = len(dilations) * 9 * c
    none = torch.empty(0, dtype=torch.long)
    partial = BlockIndex(rows, inv_norms, (height, width), dilations, rows.new_empty(0), rows.new_empty(0),
                         none, none, rows.new_empty(0))

    # 1. Principal axes of a fixed sample of descriptors (uncentred: it is inner products we rank).
    sample = partial.descriptors(_fixed_sample(positions, _PCA_SAMPLES, 0x1D3A, key.device))
    dim = min(proxy_dim, full_dim)
    axes = leading_axes(sample, dim, seed=0x1D3B)[0].contiguous()  # (D, dim), leading axis first

    # Every position's proxy: per dilation, the axes as (dim, C, 3, 3) filters of a dilated convolution
    # over the channels-last key, whose output is then already position-major.
    key_cl = key.contiguous(memory_format=torch.channels_last)
    proxies = None
    for i, d in enumerate(dilations):
        block = axes[i * 9 * c : (i + 1) * 9 * c].T.reshape(dim, 3, 3, c).permute(0, 3, 1, 2)
        part = F.conv2d(key_cl, block.contiguous(), padding=d, dilation=d)  # (1, dim, H, W)
        part = part.permute(0, 2, 3, 1).reshape(positions, dim) * inv_norms[i][:, None]
        proxies = part if proxies is None else proxies.add_(part)
    assert proxies is not None

    # 2. Clusters, and the positions sorted by cluster.
    centroids, label = _clusters(proxies, max(1, math.ceil(positions / cluster_size)), seed=0x2B7C)
    clusters = centroids.shape[0]
    members = torch.sort(label, stable=True).indices
    offsets = torch.zeros(clusters + 1, dtype=torch.long, device=key.device)
    offsets[1:] = torch.bincount(label, minlength=clusters).cumsum(0)
    member_scale = inv_norms[:, members].T.contiguous()
    return BlockIndex(rows, inv_norms, (height, width), dilations, axes, centroids, members, offsets,
                      member_scale)


def run_in_parallel(function: Callable[[list[T]], None], items: list[T], device: torch.device) -> None:
    """``function`` on ``items`` dealt round-robin to one single-threaded worker per intra-op thread.

    For loops of many small tensor operations on the CPU: run with several intra-op threads, every
    operation synchronises them, and on a machine busy with other work a descheduled thread holds all the
    others up for a time slice per operation (measured: 38 s instead of 2.4 s for the cluster loop of a
    512² LR with a 2048² reference). Independent workers that each run single-threaded operations (which
    release the GIL) keep the cores busy instead. Elsewhere than the CPU, one plain loop.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or len(items) <= 1:
        function(items)
        return
    shares = [items[i::threads] for i in range(threads)]
    # Grad and inference mode are per thread: the workers take the caller's, or tensors made under
    # torch.inference_mode() could not be written by them.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def work(share: list[T]) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            function(share)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(work, share) for share in shares]:
                future.result()
    finally:
        torch.set_num_threads(threads)


def _take_better(best_score: torch.Tensor, best_position: torch.Tensor, rows: torch.Tensor,
                 score: torch.Tensor, position: torch.Tensor) -> None:
    """Where ``(score, position)`` beats the current best of ``rows``, replace it (ties: lower position)."""
    current_score, current_position = best_score[rows], best_position[rows]
    better = (score > current_score) | ((score == current_score) & (position < current_position))
    best_score[rows] = torch.where(better, score, current_score)
    best_position[rows] = torch.where(better, position, current_position)


def _score_candidates(index: BlockIndex, queries: torch.Tensor, best_score: torch.Tensor,
                      best_position: torch.Tensor, rows: torch.Tensor, candidates: torch.Tensor,
                      valid: torch.Tensor) -> None:
    """Exact scores of ``candidates (B, n)`` (flat positions, ``valid`` where usable) for query ``rows``;
    keep each row's best (ties: the lowest position)."""
    per_row = candidates.shape[1] * queries.shape[1] * 4
    chunk = max(1, _CHUNK_BYTES // per_row)
    for start in range(0, rows.numel(), chunk):
        part = slice(start, start + chunk)
        scores = torch.einsum("bkd,bd->bk", index.descriptors(candidates[part]), queries[rows[part]])
        scores = scores.masked_fill(~valid[part], float("-inf"))
        # Among equal scores the lowest position: order the candidates by position first.
        position, order = candidates[part].masked_fill(~valid[part], index.positions).sort(dim=1)
        value, at = scores.gather(1, order).max(dim=1)
        _take_better(best_score, best_position, rows[part], value, position.gather(1, at[:, None])[:, 0])


def _propagate(index: BlockIndex, queries: torch.Tensor, best_score: torch.Tensor, best_position: torch.Tensor,
               grid: tuple[int, int], step: int) -> None:
    """PatchMatch-style propagation over the block grid: each block tries its four neighbours' winners, as
    they are and moved by one block step (``step`` key pixels) back towards it."""
    height, width = index.size
    rows_y, rows_x = grid
    for _ in range(2):
        y = (best_position // width).view(rows_y, rows_x)
        x = (best_position % width).view(rows_y, rows_x)
        cand_y, cand_x, valid = [], [], []
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            # The neighbour at (by + dy, bx + dx) (replicated at the grid border, where it is invalid).
            ny = F.pad(y[None, None].float(), (max(0, -dx), max(0, dx), max(0, -dy), max(0, dy)), mode="replicate")
            nx = F.pad(x[None, None].float(), (max(0, -dx), max(0, dx), max(0, -dy), max(0, dy)), mode="replicate")
            ny = ny[0, 0, max(0, dy) : max(0, dy) + rows_y, max(0, dx) : max(0, dx) + rows_x].long()
            nx = nx[0, 0, max(0, dy) : max(0, dy) + rows_y, max(0, dx) : max(0, dx) + rows_x].long()
            for shift in (0, step):
                cy, cx = ny - dy * shift, nx - dx * shift
                cand_y.append(cy.clamp(0, height - 1))
                cand_x.append(cx.clamp(0, width - 1))
                valid.append((cy >= 0) & (cy < height) & (cx >= 0) & (cx < width))
        candidates = (torch.stack(cand_y, -1) * width + torch.stack(cand_x, -1)).view(rows_y * rows_x, -1)
        valid_all = torch.stack(valid, -1).view(rows_y * rows_x, -1)
        rows = torch.arange(rows_y * rows_x, device=queries.device)
        _score_candidates(index, queries, best_score, best_position, rows, candidates, valid_all)


def _refine(index: BlockIndex, queries: torch.Tensor, best_score: torch.Tensor, best_position: torch.Tensor,
            radius: int, steps: int) -> None:
    """Hill-climb each block's winner over its ``(2r+1)²`` neighbourhood (exact scores), at most ``steps``
    times: enough for a neighbour that sits in an unprobed cluster, without walking across flat regions."""
    height, width = index.size
    offsets = torch.arange(-radius, radius + 1, device=queries.device)
    dy, dx = (v.flatten() for v in torch.meshgrid(offsets, offsets, indexing="ij"))
    active = torch.arange(queries.shape[0], device=queries.device)
    for _ in range(steps):
        if active.numel() == 0:
            break
        y = (best_position[active] // width)[:, None] + dy
        x = (best_position[active] % width)[:, None] + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        candidates = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)  # ascending positions
        before = best_position[active].clone()
        _score_candidates(index, queries, best_score, best_position, active, candidates, inside)
        active = active[best_position[active] != before]


@torch.no_grad()
def search_blocks(
    index: BlockIndex,
    queries: torch.Tensor,
    *,
    probes: int = DEFAULT_PROBES,
    refine_radius: int = 1,
    refine_steps: int = 3,
    grid: tuple[int, int] | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate best key position of every query descriptor.

    Args:
        index: from :func:`build_block_index`.
        queries: ``(B, D)`` descriptors ``[q_d / |q_d|]_d`` in :func:`tap_offsets` order (per dilation, the
            3x3 taps row-major, each a run of ``C`` channels).
        probes: clusters searched per query.
        refine_radius: the neighbourhood of the final hill-climb (0: none).
        refine_steps: at most this many hill-climbing steps.
        grid: ``(rows, columns)`` of the blocks (the queries in row-major order), for the propagation: each
            block also tries its four neighbours' winners, as they are and moved back by ``step`` key
            pixels (a block's width at the same scale). ``None``: no propagation.
        step: see ``grid``.

    Returns:
        ``position (B,)`` int64 flat key positions ``y * W + x`` and their exact ``score (B,)``.
    """
    queries = queries.float()
    count = queries.shape[0]
    probes = max(1, min(int(probes), index.clusters))
    probed = _nearest(queries @ index.axes, index.centroids, probes)  # (B, probes)
    # (query, cluster) pairs grouped by cluster: one matrix product per probed cluster.
    cluster_of_pair = probed.flatten()
    order = torch.sort(cluster_of_pair, stable=True).indices
    query_of_pair = (order // probes)
    clusters, pair_counts = torch.unique_consecutive(cluster_of_pair[order], return_counts=True)
    starts = torch.zeros_like(pair_counts)
    starts[1:] = pair_counts.cumsum(0)[:-1]
    offsets = index.offsets.tolist()
    dilations, channels = len(index.dilations), index.rows.shape[1]
    # Per (query, cluster) pair, in cluster order: the cluster's best score and position for the query.
    pair_score = queries.new_full((count * probes,), float("-inf"))
    pair_position = torch.full((count * probes,), index.positions, dtype=torch.long, device=queries.device)

    def score_clusters(work: list[tuple[int, int, int]]) -> None:
        for cluster, start, pairs in work:
            first, last = offsets[cluster], offsets[cluster + 1]
            if last == first:
                continue
            # The cluster's exact descriptors: one gather of the key rows, scaled per dilation.
            taps = index.rows[index.tap_index(index.members[first:last])].float()
            taps = taps.view(last - first, dilations, 9 * channels)
            descriptors = (taps * index.member_scale[first:last, :, None]).view(last - first, -1)
            scores = queries[query_of_pair[start : start + pairs]] @ descriptors.T  # (pairs, members)
            value, at = scores.max(dim=1)  # first maximum: members are in ascending position order
            pair_score[start : start + pairs] = value  # each cluster writes its own slice
            pair_position[start : start + pairs] = index.members[first:last][at]

    work = list(zip(clusters.tolist(), starts.tolist(), pair_counts.tolist()))
    # Largest first, dealt round-robin: the workers' shares of the (pairs x members) work come out even.
    work.sort(key=lambda item: -item[2] * (offsets[item[0] + 1] - offsets[item[0]]))
    run_in_parallel(score_clusters, work, queries.device)
    # Back to (query, probe) order; per query the best score, and among equal ones the lowest position.
    by_query = torch.empty_like(order)
    by_query[order] = torch.arange(order.numel(), device=order.device)
    pair_score, pair_position = pair_score[by_query].view(count, probes), pair_position[by_query].view(count, probes)
    best_score = pair_score.max(dim=1).values
    best_position = pair_position.masked_fill(pair_score < best_score[:, None], index.positions).min(dim=1).values
    if grid is not None:
        _propagate(index, queries, best_score, best_position, grid, step)
    if refine_radius > 0:
        _refine(index, queries, best_score, best_position, refine_radius, refine_steps)
    return best_position, best_score


@torch.no_grad()
def exact_search_blocks(index: BlockIndex, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force over every key position with the same descriptors: what :func:`search_blocks`
    approximates (for tests and measurements; MEM's exact path convolves instead)."""
    queries = queries.float()
    best_score = queries.new_full((queries.shape[0],), float("-inf"))
    best_position = torch.full((queries.shape[0],), index.positions, dtype=torch.long, device=queries.device)
    every = torch.arange(index.positions, device=queries.device)
    chunk = max(1, _CHUNK_BYTES // (4 * queries.shape[1]))
    rows = torch.arange(queries.shape[0], device=queries.device)
    for start in range(0, index.positions, chunk):
        positions = every[start : start + chunk]
        value, at = (queries @ index.descriptors(positions).T).max(dim=1)
        _take_better(best_score, best_position, rows, value, positions[at])
    return best_position, best_score
