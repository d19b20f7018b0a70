"""MASA-SR's Match & Extraction Module (MEM): coarse block matching, then dense matching inside a window.

This reproduces the matching rules of the official code (``dvlab-research/MASA-SR``,
``models/archs/MASA_arch.py``: ``MASA.forward``, ``search``, ``search_org``), including its border and
window conventions; see :func:`match_mem` for every rule. The texture transfer that consumes the result is
:func:`refsr.matching.transfer.masa_transfer`.

Cost at LR 128^2, Ref↓ 128^2, C=64 (FLOPs, multiply-add = 2): coarse ``2 * 256 blocks * 16384 * 576 * 3``
= 14.5 G, fine ``2 * 16384 * 169 * 576`` = 3.2 G, about 17.7 G in all against 309 G for
:func:`refsr.matching.dense.match_dense`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching._patches import (
    DEFAULT_NORM_EPS,
    box_sum,
    check_pair,
    element_size,
    patch_cosine_at,
)
from refsr.matching.block_search import (
    DEFAULT_PROBES,
    BlockIndex,
    build_block_index,
    index_saves_work,
    search_blocks,
)
from refsr.matching.correspondence import Correspondence

__all__ = [
    "MEMGeometry",
    "mem_geometry",
    "match_mem",
    "crop_mem_correspondence",
    "MEMMatcher",
    "DEFAULT_MAX_BYTES",
    "COARSE_SEARCHES",
]

#: The coarse searches of :func:`match_mem`.
COARSE_SEARCHES = ("exact", "fast")

#: Default working-memory budget of one chunk of blocks.
DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class MEMGeometry:
    """Block layout of MEM for one pair of sizes.

    Attributes:
        block_size: LR block side ``k`` (8 in MASA).
        block_grid: ``(py, px)``, LR blocks down and across.
        diameter: ``(dy, dx)``, the Ref↓ block side; the fine search looks at ``dy * dx`` patch centres.
        window_size: ``(dy + 2, dx + 2)``, the Ref↓ window cropped per block (the block plus a 1-pixel rim,
            so that every centre has a full 3x3 patch without padding).
        wraps: the window is taller or wider than the Ref↓ map, so, as in the official code, its rows or
            columns wrap around the map (see :func:`match_mem`).
    """

    block_size: int
    block_grid: tuple[int, int]
    diameter: tuple[int, int]
    window_size: tuple[int, int]
    wraps: bool


def mem_geometry(
    lr_size: tuple[int, int],
    ref_down_size: tuple[int, int],
    *,
    lr_block_size: int = 8,
    ref_block_factor: float = 1.5,
) -> MEMGeometry:
    """MEM's block arithmetic, exactly as ``MASA.forward`` does it.

    ``py, px = h // k, w // k``; ``dy = 2 * int(H // (2 * py) * factor) + 1`` and likewise ``dx`` with
    ``W`` and ``px`` (the floor division comes before the multiplication by ``factor``).

    >>> mem_geometry((88, 128), (640, 128)).diameter
    (87, 13)

    Args:
        lr_size: ``(h, w)`` of the LR feature map; both must divide by ``lr_block_size``.
        ref_down_size: ``(H, W)`` of the Ref↓ feature map.
        lr_block_size: ``k``.
        ref_block_factor: MASA's ``ref_down_block_size`` (1.5).

    Raises:
        RefsrError: if the LR size does not divide into blocks, or if the window is more than twice the
            Ref↓ map in a direction (the official code fails with an IndexError there).
    """
    h, w = (int(s) for s in lr_size)
    height, width = (int(s) for s in ref_down_size)
    k = lr_block_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RefsrError(f"lr_block_size must be a positive integer; got {lr_block_size!r}")
    if not ref_block_factor > 0:
        raise RefsrError(f"ref_block_factor must be positive; got {ref_block_factor!r}")
    if h < k or w < k or h % k or w % k:
        raise RefsrError(
            f"MEM needs LR features whose height and width divide by lr_block_size={k}; got {h}x{w}: "
            f"pad the LR input to a multiple of {k}"
        )
    if height < 1 or width < 1:
        raise RefsrError(f"Ref↓ features must not be empty; got {height}x{width}")
    py, px = h // k, w // k
    dy = 2 * int(height // (2 * py) * ref_block_factor) + 1
    dx = 2 * int(width // (2 * px) * ref_block_factor) + 1
    if dy + 2 > 2 * height or dx + 2 > 2 * width:
        raise RefsrError(
            f"Ref↓ features {height}x{width} are too small for LR {h}x{w} in MEM "
            f"(window {dy + 2}x{dx + 2}); use a larger reference"
        )
    return MEMGeometry(
        block_size=k,
        block_grid=(py, px),
        diameter=(dy, dx),
        window_size=(dy + 2, dx + 2),
        wraps=dy + 2 > height or dx + 2 > width,
    )


def _window_origin(centre: torch.Tensor, diameter: int, size: int) -> torch.Tensor:
    """First row (or column) of each block's window along one axis.

    The official code centres a ``diameter + 2`` window on the coarse match, moves it right (down) if it
    starts before 0, then left (up) if it ends after ``size - 1``; the second move wins, which is
    ``min(max(centre - diameter // 2 - 1, 0), size - diameter - 2)``. The result is negative when the window
    is larger than the map: the official negative indices then wrap around.
    """
    return (centre - diameter // 2 - 1).clamp_min(0).clamp_max(size - diameter - 2)


def match_mem(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    patch_size: int = 3,
    lr_block_size: int = 8,
    ref_block_factor: float = 1.5,
    dilations: Sequence[int] = (1, 2, 3),
    max_bytes: int = DEFAULT_MAX_BYTES,
    key_patch_norm_eps: float = DEFAULT_NORM_EPS,
    coarse: str = "exact",
    key_index: Sequence[BlockIndex] | None = None,
    probes: int = DEFAULT_PROBES,
) -> Correspondence:
    """MASA's coarse-to-fine matching of LR features (query) against Ref↓ features (key).

    Rules, as in the official ``MASA.forward`` (``k = lr_block_size``):

    1. **Blocks.** The LR map is replicate-padded by 1 and cut into ``(k+2) x (k+2)`` blocks with stride
       ``k``: block ``(by, bx)`` covers LR pixels ``by*k .. by*k+k-1`` plus a 1-pixel rim.
    2. **Coarse match.** Each block's "centre" patch is the 3x3 patch centred at padded-block pixel
       ``(k+2)//2`` (LR pixel ``(by*k + k//2, bx*k + k//2)``, i.e. (4, 4) of an 8x8 block), sampled with
       each dilation ``d`` (taps at ``-d, 0, +d``, taken from the replicate-padded block). It is compared
       by cosine with the dilated 3x3 patch at every Ref↓ position (zero padding), the cosines of all
       dilations are summed and the best position wins.
    3. **Window.** ``dy, dx`` from :func:`mem_geometry`; a ``(dy+2) x (dx+2)`` window is centred on the
       coarse match and shifted, not shrunk, to stay inside the Ref↓ map. When it is larger than the map
       (tiny Ref↓, e.g. a single block column), the official code's negative indices wrap around
       (Python indexing), so the window repeats rows/columns from the other side; we do the same.
    4. **Fine match.** The ``k*k`` 3x3 patches of the padded block (no further padding) are compared by
       cosine with the ``dy*dx`` 3x3 patches of the window (no padding); the best one wins and its cosine
       is the score (MASA's soft attention, used as is: no sigmoid or threshold).

    Padding convention (differs from :func:`~refsr.matching.match`'s zero padding): query patches at the
    LR border are filled by *replicating* the border pixels, not with zeros, because they come from the
    replicate-padded map. Key patches of the fine match never touch the Ref↓ border (window centres are
    at least one pixel inside the window), except when the window wraps, where they wrap as well. So
    ``score`` equals the cosine of the replicate-padded query patch and the circularly padded key patch
    at ``index``.

    Ties: the lowest index wins in both searches (the official ``topk`` does not promise an order).

    Coarse search (``coarse``): ``"exact"`` scores every Ref↓ position (the official rule; its cost grows
    with LR pixels x Ref↓ pixels). ``"fast"`` searches an index of the Ref↓ positions
    (:mod:`refsr.matching.block_search`: probe the nearest clusters, score their positions exactly, refine
    around the winner), whose cost per block does not grow with the reference; it finds the exact best
    position for >= 99 % of the blocks on real features and a near-tie for the rest. When the index would
    not save work (at most :data:`~refsr.matching.block_search.INDEX_MIN_CLUSTERS` clusters, i.e. a Ref↓ of
    up to about 32k positions) and no ``key_index`` is given, ``"fast"`` runs the exact search. The fine
    search is the same either way.

    Memory: coarse scores are computed for chunks of blocks (``2 * H * W`` values per block) and the fine
    search for chunks of blocks (window patches and similarities), each chunk within ``max_bytes``; the LR
    map is read chunk by chunk (no padded or converted copy of it), the key is copied once, channels-last.

    Precision: float16 and bfloat16 features are matched in float32 (``score`` then comes back in float32):
    an argmax over near-equal cosines needs the mantissa.

    Gradients: indices are found under ``torch.no_grad``. When autograd is on and either map requires
    grad, ``score`` is recomputed from the two maps at the chosen indices and is differentiable with
    respect to both, like the official top-1 values; otherwise it comes from the search itself (the same
    cosine up to rounding).

    Args:
        query: LR features ``(N, C, h, w)``, ``h`` and ``w`` divisible by ``lr_block_size``.
        key: Ref↓ features ``(N, C, H, W)``, same N, C, dtype, device.
        patch_size: must be 3 (MASA's ``psize``; the 1-pixel block rim is tied to it).
        lr_block_size: ``k``, 8 in MASA.
        ref_block_factor: 1.5 in MASA.
        dilations: dilations of the coarse centre patch, 1 <= d <= k + 1 - (k+2)//2 (so the taps stay in
            the padded block); MASA passes (1, 2, 3).
        max_bytes: working-memory budget of one chunk, in bytes.
        key_patch_norm_eps: lower bound on every patch norm, as ``F.normalize``'s ``eps`` (1e-12).
        coarse: ``"exact"`` or ``"fast"`` (see above).
        key_index: one :class:`~refsr.matching.block_search.BlockIndex` of ``key`` per batch item (built
            once per reference, e.g. by :meth:`refsr.models.MASA.encode_reference`); with ``"fast"`` only.
        probes: clusters searched per block by the fast search.

    Returns:
        :class:`Correspondence` with ``index`` ``(N, h, w)``, the flat Ref↓ position ``y * W + x`` of the
        matched patch centre (window origin + local centre, modulo the map size when wrapping), and
        ``score`` ``(N, h, w)``, its cosine. ``extras``:

        - ``block_size`` (int ``k``) and ``block_grid`` ``(py, px)``; blocks are numbered row-major;
        - ``window_origin``: ``LongTensor (N, py*px, 2)``, ``(y, x)`` of each window's first pixel in
          Ref↓ (negative when the window wraps);
        - ``window_size``: ``(dy + 2, dx + 2)``;
        - ``local_index``: ``LongTensor (N, py*px, k, k)``, per block pixel the matched patch among the
          window's ``dy*dx`` patch positions, row-major; its top-left in the window is
          ``(l // dx, l % dx)`` and its centre one pixel further down and right;
        - ``coarse_index`` ``LongTensor (N, py*px)`` and ``coarse_score`` ``(N, py*px)`` (detached sum of
          cosines over dilations) from the coarse match;
        - ``coarse``: the coarse search that ran, ``"exact"`` or ``"fast"``;
        - ``geometry``: the :class:`MEMGeometry`.

    Raises:
        RefsrError: bad shapes, ``patch_size != 3``, bad dilations, or a Ref↓ map too small.
    """
    check_pair(query, key)
    if patch_size != 3:
        raise RefsrError(f"MEM (MASA) matches 3x3 patches only; got patch_size={patch_size!r}")
    if max_bytes <= 0:
        raise RefsrError(f"max_bytes must be positive; got {max_bytes}")
    if coarse not in COARSE_SEARCHES:
        raise RefsrError(f"unknown coarse search {coarse!r}; use one of {', '.join(COARSE_SEARCHES)}")
    n, c, h, w = query.shape
    height, width = key.shape[-2:]
    geometry = mem_geometry(
        (h, w), (height, width), lr_block_size=lr_block_size, ref_block_factor=ref_block_factor
    )
    k = geometry.block_size
    py, px = geometry.block_grid
    num_blocks = py * px
    dy, dx = geometry.diameter
    centre = (k + 2) // 2  # centre of the padded block, in padded-block coordinates
    dilations = tuple(dilations)
    max_dilation = min(centre, k + 1 - centre)
    if not dilations or any(
        isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= max_dilation for d in dilations
    ):
        raise RefsrError(
            f"dilations must be integers in 1..{max_dilation} for lr_block_size={k}; got {dilations!r}"
        )
    eps = key_patch_norm_eps
    if key_index is not None:
        key_index = list(key_index)
        if coarse != "fast":
            raise RefsrError("key_index is for coarse='fast'")
        if len(key_index) != n or any(i.size != (height, width) or i.dilations != dilations for i in key_index):
            raise RefsrError(
                f"key_index must hold one index per batch item ({n}) of a {height}x{width} key with dilations "
                f"{dilations}; build it with refsr.matching.block_search.build_block_index"
            )
    fast = coarse == "fast" and (key_index is not None or index_saves_work(height * width, probes))
    # Half-precision features are matched in float32: an argmax over near-equal cosines needs the mantissa.
    work = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    itemsize = element_size(work)
    device = query.device

    def padded_index(padded: torch.Tensor, size: int) -> torch.Tensor:
        """Rows (or columns) of the replicate-padded LR map -> those of the LR map: no padded copy of it."""
        return (padded - 1).clamp(0, size - 1)

    with torch.no_grad():
        lr_map = query.detach()
        key_map = key.detach().to(work)

        # ---- coarse match: block centre patches as convolution filters over the whole Ref↓ map ----
        taps = torch.tensor([-1, 0, 1], device=device)
        centre_rows = torch.arange(py, device=device) * k + centre
        centre_cols = torch.arange(px, device=device) * k + centre
        filters = []  # per dilation: (N, blocks, C, 3, 3), unit norm
        key_inv_norms = []  # per dilation: (N, H*W)
        key_energy = key_map.pow(2).sum(dim=1, keepdim=True)  # (N, 1, H, W), shared by all dilations
        for d in dilations:
            rows = centre_rows[:, None] + d * taps  # (py, 3)
            cols = centre_cols[:, None] + d * taps  # (px, 3)
            patch = lr_map[:, :, padded_index(rows, h)[:, None, :, None], padded_index(cols, w)[None, :, None, :]]
            patch = patch.to(work).permute(0, 2, 3, 1, 4, 5).reshape(n, num_blocks, c, 3, 3)  # (N, blocks, C, 3, 3)
            patch_norm = patch.flatten(2).norm(dim=2).clamp_min(eps)
            filters.append(patch / patch_norm[:, :, None, None, None])
            key_norm = box_sum(key_energy, 3, dilation=d, padding=d).clamp_min(0).sqrt().flatten(1)
            key_inv_norms.append(key_norm.clamp_min(eps).reciprocal())

        # A channels-last copy of the key: oneDNN convolves it faster, and the gathers below copy runs of C
        # values. (The LR map is read chunk by chunk below: no whole-map copy of it.)
        key_rows = key_map.permute(0, 2, 3, 1).contiguous()  # (N, H, W, C)

        coarse_index = torch.empty(n, num_blocks, dtype=torch.long, device=device)
        coarse_score = key_map.new_empty(n, num_blocks)
        # Per block: the running sum and one convolution output, H*W values each, plus room for the
        # convolution's internal copy of its output.
        coarse_chunk = max(1, int(max_bytes // (3 * height * width * itemsize)))
        for sample in range(n):
            if fast:
                # [q_d / |q_d|]_d in the index's tap order: per dilation, rows of the 3x3 taps, C each.
                descriptors = torch.stack([f[sample] for f in filters], dim=1)  # (blocks, dilations, C, 3, 3)
                descriptors = descriptors.permute(0, 1, 3, 4, 2).reshape(num_blocks, -1)
                sample_index = key_index[sample] if key_index is not None else build_block_index(
                    key_map[sample : sample + 1], dilations, eps=eps)
                best_index, best_score = search_blocks(sample_index, descriptors, probes=probes, grid=(py, px), step=k)
                coarse_index[sample] = best_index
                coarse_score[sample] = best_score.to(coarse_score.dtype)
                continue
            key_sample = key_rows[sample : sample + 1].permute(0, 3, 1, 2)  # NCHW view, channels-last
            for start in range(0, num_blocks, coarse_chunk):
                stop = min(start + coarse_chunk, num_blocks)
                total = None
                for d, weight, inv_norm in zip(dilations, filters, key_inv_norms):
                    weight = weight[sample, start:stop].contiguous(memory_format=torch.channels_last)
                    cosine = F.conv2d(key_sample, weight, padding=d, dilation=d)  # (1, B, H, W)
                    # (H*W, B): a view of oneDNN's channels-last output (a copy on the generic float64
                    # path); the reductions below then run along contiguous B.
                    cosine = cosine[0].permute(1, 2, 0).reshape(height * width, stop - start)
                    cosine.mul_(inv_norm[sample, :, None])
                    total = cosine if total is None else total.add_(cosine)
                best_score, best_index = total.max(dim=0)
                coarse_index[sample, start:stop] = best_index
                coarse_score[sample, start:stop] = best_score
                del total, cosine
        del filters, key_inv_norms

        # ---- windows ----
        origin_y = _window_origin(coarse_index // width, dy, height)  # (N, blocks)
        origin_x = _window_origin(coarse_index % width, dx, width)
        window_h, window_w = geometry.window_size

        # ---- fine match: dense 3x3 patches of each padded block against those of its window ----
        all_columns = padded_index(torch.arange(w + 2, device=device), w)
        window_rows = torch.arange(window_h, device=device)
        window_cols = torch.arange(window_w, device=device)
        # Per block: the window, the block's k*k patches as filters, the similarities (twice).
        per_block = itemsize * (c * window_h * window_w + 9 * c * k * k + 2 * k * k * dy * dx)
        # Chunks are runs of whole block rows of one sample (at least one row), so that the filters are
        # a plain strided copy of the padded LR map.
        rows_per_chunk = max(1, int(max_bytes // (per_block * px)))
        local_index = torch.empty(n, num_blocks, k * k, dtype=torch.long, device=device)
        # q . k / |k| of the winners: divided by |q| this is the score when no gradient is wanted.
        best_scaled_dot = key_map.new_empty(n, num_blocks, k * k)
        for sample in range(n):
            for first_row in range(0, py, rows_per_chunk):
                last_row = min(first_row + rows_per_chunk, py)
                chunk = slice(first_row * px, last_row * px)
                count = chunk.stop - chunk.start
                # The chunk's padded block rows, channels-last: (rows, w + 2, C).
                padded_rows = padded_index(torch.arange(first_row * k, last_row * k + 2, device=device), h)
                lr_rows = lr_map[sample][:, padded_rows][:, :, all_columns].to(work).permute(1, 2, 0).contiguous()
                s_y, s_x, s_c = lr_rows.stride()
                # A view, no copy: [by, bx, a, b, ty, tx, c] = padded LR at (by*k + a + ty, bx*k + b + tx), c;
                # i.e. for block (by, bx) the 3x3 patch of its padded block at (a, b), in (ty, tx, c) order.
                block_patches = lr_rows.as_strided(
                    (last_row - first_row, px, k, k, 3, 3, c), (k * s_y, k * s_x, s_y, s_x, s_y, s_x, s_c), 0
                )
                # Modulo reproduces the official negative-index wrap; a no-op for windows inside the map.
                rows = (window_rows[:, None] + origin_y[sample, chunk]) % height  # (window_h, B)
                cols = (window_cols[:, None] + origin_x[sample, chunk]) % width  # (window_w, B)
                # Gathered straight into (window_h, window_w, B, C): the channels-last layout of the
                # (1, B*C, window_h, window_w) input of the grouped convolution below.
                windows = key_rows[sample][rows[:, None, :], cols[None, :, :]]
                # Patch norms of the windows: the key's channel-summed squares, windowed and box-summed.
                energy = key_energy[sample, 0][rows[:, None, :], cols[None, :, :]]  # (wh, ww, B)
                energy = energy.permute(2, 0, 1).unsqueeze(1)  # (B, 1, wh, ww)
                window_norm = box_sum(energy, 3).clamp_min(0).sqrt().view(count, dy * dx)
                # Each block's k*k patches become k*k filters of a grouped convolution over its own
                # window: the dot products of unfolding the window, without materialising its
                # 9C x dy*dx patch matrix.
                filters = block_patches.reshape(count * k * k, 3, 3, c)
                stacked = windows.reshape(1, window_h, window_w, count * c).permute(0, 3, 1, 2)
                products = F.conv2d(stacked, filters.permute(0, 3, 1, 2), groups=count)
                # (1, B*k*k, dy, dx) -> (dy*dx, B, k*k): a view of oneDNN's channels-last output (a copy
                # on the generic float64 path).
                products = products[0].permute(1, 2, 0).reshape(dy * dx, count, k * k)
                # Query norms are a positive factor per row and cannot change the argmax: skip them here.
                products.mul_(window_norm.clamp_min(eps).reciprocal().t()[:, :, None])
                best, best_at = products.view(dy * dx, count * k * k).max(dim=0)
                best_scaled_dot[sample, chunk] = best.view(count, k * k)
                local_index[sample, chunk] = best_at.view(count, k * k)
                del windows, filters, stacked, products, lr_rows, block_patches

        local_index = local_index.view(n, num_blocks, k, k)
        centre_y = (origin_y[:, :, None, None] + local_index // dx + 1) % height
        centre_x = (origin_x[:, :, None, None] + local_index % dx + 1) % width
        global_index = (centre_y * width + centre_x).view(n, py, px, k, k)
        global_index = global_index.permute(0, 1, 3, 2, 4).reshape(n, h, w)

    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
        # The score, recomputed with autograd: replicate-padded query patches (as the blocks are cut) and
        # a circularly padded key (only read when a window wraps; otherwise matched patches are interior).
        score = patch_cosine_at(
            F.pad(query, (1, 1, 1, 1), mode="replicate"), F.pad(key, (1, 1, 1, 1), mode="circular"), global_index,
            (height, width), 3, eps
        )
    else:
        # Same number without a second pass over the features: the search's q . k / |k| over |q|. The
        # per-pixel energies row by row, so that no squared copy of the whole map exists.
        energy = key_map.new_empty(n, 1, h, w)
        for top in range(0, h, 64):
            energy[:, :, top : top + 64] = lr_map[:, :, top : top + 64].to(work).pow(2).sum(dim=1, keepdim=True)
        energy = F.pad(energy, (1, 1, 1, 1), mode="replicate")
        query_norm = box_sum(energy, 3).clamp_min(0).sqrt()[:, 0]
        scaled_dot = best_scaled_dot.view(n, py, px, k, k).permute(0, 1, 3, 2, 4).reshape(n, h, w)
        score = scaled_dot / query_norm.clamp_min(eps)
    extras = {
        "block_size": k,
        "block_grid": (py, px),
        "window_origin": torch.stack((origin_y, origin_x), dim=-1),
        "window_size": geometry.window_size,
        "local_index": local_index,
        "coarse_index": coarse_index,
        "coarse_score": coarse_score,
        "coarse": "fast" if fast else "exact",
        "geometry": geometry,
    }
    return Correspondence(index=global_index, score=score, key_size=(height, width), extras=extras)


def crop_mem_correspondence(corr: Correspondence, top: int, left: int, height: int, width: int) -> Correspondence:
    """The part of a :func:`match_mem` correspondence that covers LR rows ``top:top+height`` and columns
    ``left:left+width``, a region of whole blocks: what ``match_mem`` of the whole image says about it.

    Everything downstream of MEM works block by block (:func:`refsr.matching.transfer.masa_transfer`
    transfers each block from its own window), so transferring the crop gives the same values as cropping
    the whole image's transfer, and a whole-image correspondence can be computed once and used by tiles.
    """
    k = int(corr.extras["block_size"])
    if top % k or left % k or height % k or width % k or height < k or width < k:
        raise RefsrError(f"crop_mem_correspondence needs whole {k}x{k} blocks; got rows {top}+{height}, "
                         f"columns {left}+{width}")
    py, px = corr.extras["block_grid"]
    rows, cols = slice(top // k, (top + height) // k), slice(left // k, (left + width) // k)
    if rows.stop > py or cols.stop > px:
        raise RefsrError(f"the region {top}+{height} x {left}+{width} is outside the {py * k}x{px * k} LR map")
    n = corr.index.shape[0]
    grid = (rows.stop - rows.start, cols.stop - cols.start)

    def blocks(t: torch.Tensor) -> torch.Tensor:
        """``(N, py*px, ...)`` -> the region's blocks, row-major."""
        return t.reshape(n, py, px, *t.shape[2:])[:, rows, cols].reshape(n, grid[0] * grid[1], *t.shape[2:])

    extras = dict(corr.extras)
    extras.update(
        block_grid=grid,
        window_origin=blocks(corr.extras["window_origin"]),
        local_index=blocks(corr.extras["local_index"]),
        coarse_index=blocks(corr.extras["coarse_index"]),
        coarse_score=blocks(corr.extras["coarse_score"]),
    )
    region = (slice(None), slice(top, top + height), slice(left, left + width))
    return Correspondence(index=corr.index[region], score=corr.score[region], key_size=corr.key_size, extras=extras)


class MEMMatcher(nn.Module):
    """``nn.Module`` wrapper of :func:`match_mem` (no parameters).

    ``forward(lr_features, ref_down_features)`` -> :class:`Correspondence`.
    """

    def __init__(
        self,
        lr_block_size: int = 8,
        ref_block_factor: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        max_bytes: int = DEFAULT_MAX_BYTES,
        key_patch_norm_eps: float = DEFAULT_NORM_EPS,
    ) -> None:
        super().__init__()
        self.lr_block_size = lr_block_size
        self.ref_block_factor = ref_block_factor
        self.dilations = tuple(dilations)
        self.max_bytes = max_bytes
        self.key_patch_norm_eps = key_patch_norm_eps

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> Correspondence:
        return match_mem(
            query,
            key,
            lr_block_size=self.lr_block_size,
            ref_block_factor=self.ref_block_factor,
            dilations=self.dilations,
            max_bytes=self.max_bytes,
            key_patch_norm_eps=self.key_patch_norm_eps,
        )

    def extra_repr(self) -> str:
        return (
            f"lr_block_size={self.lr_block_size}, ref_block_factor={self.ref_block_factor}, "
            f"dilations={self.dilations}"
        )
