"""Texture transfer: paste the matched Ref patches back onto the LR grid (MASA-SR's and TTSR's).

:func:`fold_transfer` is TTSR's hard attention: every query position takes
the ``3s x 3s`` patch of a Ref map at ``s`` times the matching resolution around its match, the patches are
summed where they overlap (``F.fold``, kernel ``3s``, stride ``s``, padding ``s``) and the sum is divided by
9 everywhere, also on the border where fewer patches overlap. It is computed like :func:`masa_transfer`
below: each output pixel as a weighted sum of the (at most) 9 Ref pixels that fold onto it.

:func:`masa_transfer` is MASA-SR's, block by block:

Given a :func:`refsr.matching.mem.match_mem` correspondence and Ref feature maps at ``s`` times the Ref↓
size (MASA's Ref encoder L3, L2, L1 for ``s`` = 1, 2, 4), this produces, for every ``s``, a map at ``s``
times the LR size, with the same result as the official ``MASA.transfer`` applied to each block:

* every LR pixel ``(a, b)`` of a block contributes the ``3s x 3s`` Ref patch matched to it (taken from
  the block's window at scale ``s``: window origin times ``s`` plus the local match times ``s``),
  pasted with its centre cell on the pixel's ``s x s`` output cell (``F.fold`` with kernel ``3s``,
  stride ``s``, padding ``s``);
* contributions that fall outside the block are dropped, and each output pixel is divided by the number
  of patches that landed on it *within its block* (the official ``divisor``: 9 inside, 6 on block edges,
  4 in block corners for 8x8 blocks);
* the result is multiplied by the block's score map (the soft attention) resized to ``ks x ks`` with
  bilinear interpolation, ``align_corners=False``, *per block* (it never blends across block borders);
* blocks are put back in place.

The official code materialises ``F.unfold(kernel 3s, stride s)`` of every block's window at once (about
1.6 GB for LR 128^2 at ``s = 4``). Here a matched Ref↓ pixel ``(y, x)`` stands for the ``s x s`` cell of the
Ref map at ``(y*s, x*s)``, and each row of that cell is ``s*C`` consecutive values of the channels-last Ref
map. So every output row of an LR pixel's cell is one weighted sum (weights ``1/count``, 0 for absent
patches) of the 9 cell rows that fold onto it: ``s`` calls of ``F.embedding_bag`` over the Ref map viewed
as a table of such rows (no copy when it is channels-last already), indexed at LR resolution; then the
attention multiplies the result in place. Peak extra memory is the output and an index and a weight per LR
pixel and patch cell. The summation order differs from ``F.fold``'s, so results agree to rounding (about
1e-16 in float64).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching.correspondence import Correspondence

__all__ = ["masa_transfer", "MASATransfer", "fold_transfer"]

_NEEDED_EXTRAS = ("block_size", "block_grid", "window_origin", "window_size", "local_index")


def _blocks_to_map(blocks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, py*px, a, b, ...)`` per-block tiles -> ``(N, py*a, px*b, ...)`` map (blocks row-major)."""
    n, _, a, b = blocks.shape[:4]
    rest = blocks.shape[4:]
    py, px = grid
    tiles = blocks.reshape(n, py, px, a, b, *rest).transpose(2, 3)  # (N, py, a, px, b, ...)
    return tiles.reshape(n, py * a, px * b, *rest)


def masa_transfer(
    corr: Correspondence, ref_feats: Sequence[torch.Tensor], scales: Sequence[int] = (1, 2, 4)
) -> list[torch.Tensor]:
    """Transfer Ref features along a MEM correspondence, as MASA's ``transfer`` does.

    Windows larger than the Ref↓ map wrap around, as in matching (see
    :func:`~refsr.matching.mem.match_mem`).
    Differentiable with respect to ``ref_feats`` and ``corr.score`` (the soft attention).

    Args:
        corr: the result of :func:`~refsr.matching.mem.match_mem` for LR ``(N, C, h, w)`` and Ref↓
            ``(N, C, H, W)``; its ``extras`` must hold ``block_size``, ``block_grid``, ``window_origin``,
            ``window_size`` and ``local_index``.
        ref_feats: one map per scale, ``(N, C_s, s*H, s*W)``, any float dtype (MASA: the Ref encoder's
            L3, L2, L1 for scales 1, 2, 4); each output has its map's dtype. The attention is resized in the
            score's dtype (matching runs in float32 for a bfloat16 model) and then cast.
        scales: the integer scale ``s`` of each map, relative to Ref↓.

    Returns:
        One map per scale, ``(N, C_s, s*h, s*w)``, channels-last (memory ``(N, s*h, s*w, C_s)``), in the order
        of ``scales``.
    """
    missing = [name for name in _NEEDED_EXTRAS if name not in corr.extras]
    if missing:
        raise RefsrError(
            f"masa_transfer needs a correspondence from match_mem (missing extras: {', '.join(missing)})"
        )
    scales = tuple(scales)
    ref_feats = list(ref_feats)
    if len(ref_feats) != len(scales):
        raise RefsrError(
            f"masa_transfer needs one Ref map per scale; got {len(ref_feats)} maps for scales {scales}"
        )
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise RefsrError(f"scales must be positive integers; got {scales!r}")

    k = int(corr.extras["block_size"])
    py, px = corr.extras["block_grid"]
    _, window_w = corr.extras["window_size"]
    diameter_x = window_w - 2
    local_index = corr.extras["local_index"]  # (N, blocks, k, k)
    origin = corr.extras["window_origin"]  # (N, blocks, 2)
    n, h, w = corr.index.shape
    height, width = corr.key_size
    num_blocks = py * px
    device = corr.index.device

    # Top-left corner, in Ref↓ pixels, of the patch matched to every block pixel (negative or past the
    # end only for wrapping windows; the modulo below takes care of those).
    top_y = origin[:, :, 0, None, None] + local_index // diameter_x
    top_x = origin[:, :, 1, None, None] + local_index % diameter_x
    # Pad each block's maps by one pixel with "no patch here", so that shifting by a patch offset
    # lets neighbours from outside the block contribute nothing, as per-block folding does.
    padded_y = top_y.new_zeros(n, num_blocks, k + 2, k + 2)
    padded_x = top_x.new_zeros(n, num_blocks, k + 2, k + 2)
    present = torch.zeros(n, num_blocks, k + 2, k + 2, dtype=torch.bool, device=device)
    padded_y[:, :, 1:-1, 1:-1] = top_y
    padded_x[:, :, 1:-1, 1:-1] = top_x
    present[:, :, 1:-1, 1:-1] = True

    # For every LR pixel (a "cell" of s x s output pixels) and each patch cell (t, u): the Ref↓ pixel
    # that folds onto it, i.e. cell (t, u) of the patch matched at block pixel (a+1-t, b+1-u), and
    # whether that block pixel exists. Computed once at LR resolution, shared by all scales.
    cell_y, cell_x, cell_present = [], [], []
    for t in range(3):
        for u in range(3):
            window = (slice(None), slice(None), slice(2 - t, 2 - t + k), slice(2 - u, 2 - u + k))
            cell_y.append(_blocks_to_map(padded_y[window] + t, (py, px)))
            cell_x.append(_blocks_to_map(padded_x[window] + u, (py, px)))
            cell_present.append(_blocks_to_map(present[window], (py, px)))
    source_y = torch.stack(cell_y, dim=-1)  # (N, h, w, 9)
    source_x = torch.stack(cell_x, dim=-1)
    source_present = torch.stack(cell_present, dim=-1)
    # The official divisor: how many patches of the block land on the pixel. Folded into the weights of the
    # sum, with "absent" as weight 0.
    count = source_present.sum(dim=-1, keepdim=True)  # (N, h, w, 1)
    score_blocks = corr.score.reshape(n, py, k, px, k).transpose(2, 3).reshape(n * num_blocks, 1, k, k)

    outputs = []
    for s, ref in zip(scales, ref_feats):
        if ref.dim() != 4 or ref.shape[0] != n or tuple(ref.shape[-2:]) != (s * height, s * width):
            raise RefsrError(
                f"Ref features for scale {s} must be (N={n}, C, {s * height}, {s * width}); "
                f"got {tuple(ref.shape)}"
            )
        if not ref.is_floating_point():
            raise RefsrError(f"Ref features must be floating point; got {ref.dtype}")
        channels = ref.shape[1]
        ref_h, ref_w = s * height, s * width
        # A matched Ref↓ pixel (y, x) stands for the s x s cell of the Ref map at (y*s, x*s): row u of it is
        # s*C values that lie together in a channels-last map. So the map, channels-last, is a table of
        # rows of s*C values (a view when it is channels-last already), row ((y*s + u) * W + x) of sample n
        # at n*s*H*W + ...; every output row u of an LR pixel's cell is one weighted sum of 9 table rows.
        table = ref.permute(0, 2, 3, 1).contiguous().view(n * ref_h * width, s * channels)
        weights = (source_present.double() / count).to(ref.dtype).view(-1, 9)
        cell_rows = (source_y % height) * s  # first Ref row of each matched cell; modulo: wrapping windows
        cell_cols = source_x % width
        sample_base = (torch.arange(n, device=device) * (ref_h * width)).view(n, 1, 1, 1)
        out = ref.new_empty(n, h, s, w, s * channels)  # (N, h*s, w*s, C) in memory: channels-last
        for u in range(s):
            # Absent contributions point at row 0 with weight 0.
            source = (sample_base + (cell_rows + u) * width + cell_cols).masked_fill_(~source_present, 0)
            out[:, :, u] = F.embedding_bag(source.view(-1, 9), table, per_sample_weights=weights,
                                           mode="sum").view(n, h, w, s * channels)
        del table, weights
        # The soft attention: the block's scores resized to its k*s x k*s output pixels, per block.
        attention = F.interpolate(score_blocks, size=(k * s, k * s), mode="bilinear", align_corners=False)
        attention = _blocks_to_map(attention.view(n, num_blocks, k * s, k * s), (py, px))  # (N, h*s, w*s)
        out = out.view(n, h * s, w * s, channels).mul_(attention.to(ref.dtype)[..., None])
        outputs.append(out.permute(0, 3, 1, 2))
    return outputs


class MASATransfer(nn.Module):
    """``nn.Module`` wrapper of :func:`masa_transfer`; ``forward(corr, ref_feats)`` -> list of maps."""

    def __init__(self, scales: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.scales = tuple(scales)

    def forward(self, corr: Correspondence, ref_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return masa_transfer(corr, ref_feats, self.scales)

    def extra_repr(self) -> str:
        return f"scales={self.scales}"


def fold_transfer(corr: Correspondence, ref_feats: Sequence[torch.Tensor], scales: Sequence[int] = (1, 2, 4)
                  ) -> list[torch.Tensor]:
    """TTSR's hard-attention transfer of Ref maps along a whole-key correspondence (``SearchTransfer``).

    For scale ``s`` the result equals ``F.fold(T, (s*h, s*w), kernel_size=3s, padding=s, stride=s) / 9``
    where column ``(i, j)`` of ``T`` is column ``corr.index[i, j]`` of
    ``F.unfold(ref, kernel_size=3s, padding=s, stride=s)``: output pixel ``(s*a + r, s*b + t)`` sums, over
    the query positions ``(a + di, b + dj)`` (``di, dj`` in -1, 0, 1) that exist, the Ref pixel
    ``(s*(my - di) + r, s*(mx - dj) + t)`` of their match ``(my, mx)``, zero where that falls outside the Ref
    (the unfold's zero padding). Differentiable with respect to ``ref_feats``.

    Args:
        corr: any correspondence of a query ``(N, C, h, w)`` into a key ``(N, C, H, W)``
            (:func:`~refsr.matching.dense.match_dense` for TTSR).
        ref_feats: one map per scale, ``(N, C_s, s*H, s*W)``.
        scales: the integer scale ``s`` of each map, relative to the key.

    Returns:
        One map per scale, ``(N, C_s, s*h, s*w)``, contiguous, in the order of ``scales``.
    """
    scales = tuple(scales)
    ref_feats = list(ref_feats)
    if len(ref_feats) != len(scales) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                            for s in scales):
        raise RefsrError(f"fold_transfer needs one Ref map per positive integer scale; got {len(ref_feats)} "
                         f"maps for scales {scales!r}")
    n, h, w = corr.index.shape
    height, width = corr.key_size
    device = corr.index.device
    # Matches with a border of "no query here", so that shifted windows see the image edge.
    match_y = corr.index.new_zeros(n, h + 2, w + 2)
    match_x = corr.index.new_zeros(n, h + 2, w + 2)
    present = torch.zeros(n, h + 2, w + 2, dtype=torch.bool, device=device)
    match_y[:, 1:-1, 1:-1] = corr.index // width
    match_x[:, 1:-1, 1:-1] = corr.index % width
    present[:, 1:-1, 1:-1] = True
    # For output cell (a, b) and neighbour (di, dj): the Ref cell whose pixels fold onto it.
    cell_y, cell_x, cell_ok = [], [], []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            window = (slice(None), slice(1 + di, 1 + di + h), slice(1 + dj, 1 + dj + w))
            y, x = match_y[window] - di, match_x[window] - dj
            cell_y.append(y)
            cell_x.append(x)
            cell_ok.append(present[window] & (y >= 0) & (y < height) & (x >= 0) & (x < width))
    source_y = torch.stack(cell_y, dim=-1)[:, :, None, :, None, :]  # (N, h, 1, w, 1, 9)
    source_x = torch.stack(cell_x, dim=-1)[:, :, None, :, None, :]
    source_ok = torch.stack(cell_ok, dim=-1)[:, :, None, :, None, :]

    outputs = []
    for s, ref in zip(scales, ref_feats):
        if ref.dim() != 4 or ref.shape[0] != n or tuple(ref.shape[-2:]) != (s * height, s * width):
            raise RefsrError(
                f"Ref features for scale {s} must be (N={n}, C, {s * height}, {s * width}); got {tuple(ref.shape)}"
            )
        channels, ref_w = ref.shape[1], s * width
        sub = torch.arange(s, device=device)
        sample_base = (torch.arange(n, device=device) * (s * height * ref_w)).view(n, 1, 1, 1, 1, 1)
        rows = source_y * s + sub.view(1, 1, s, 1, 1, 1)
        cols = source_x * s + sub.view(1, 1, 1, 1, s, 1)
        source = (sample_base + rows * ref_w + cols).masked_fill(~source_ok, 0)  # 0: its weight is 0
        weights = (source_ok.to(ref.dtype) / 9).expand(source.shape)
        del rows, cols
        table = ref.permute(0, 2, 3, 1).contiguous().view(-1, channels)
        out = F.embedding_bag(source.reshape(-1, 9), table, per_sample_weights=weights.reshape(-1, 9), mode="sum")
        del table, source, weights
        outputs.append(out.view(n, h * s, w * s, channels).permute(0, 3, 1, 2).contiguous())
    return outputs
