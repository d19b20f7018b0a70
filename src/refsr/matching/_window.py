"""Windowed block matching shared by the CC-Net and ZNCC matchers: each query position searches the key
positions within ``±search_range`` of its own centre, scored by an inner product of (possibly normalised)
patch columns, tile by tile so that ``h·w·(2R+1)²`` scores never exist at once."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from refsr.errors import RefsrError

Columns = Callable[[torch.Tensor], torch.Tensor]


def tile_side(n: int, h: int, w: int, height: int, width: int, radius: int, patch_len: int,
               itemsize: int, max_bytes: int) -> int:
    """The largest square tile of query positions whose working set fits ``max_bytes`` (at least 1)."""
    step_y, step_x = max(1.0, height / h), max(1.0, width / w)

    def cost(t: int) -> float:
        rows = min(height, t * step_y + 2 * radius + 1)
        cols = min(width, t * step_x + 2 * radius + 1)
        candidates = rows * cols
        # scores + window mask (1 byte) per (position, candidate), and the region's key patches.
        return n * (t * t * candidates * (itemsize + 1) + patch_len * candidates * itemsize)

    side = 1
    while side < max(h, w) and cost(side + 1) <= max_bytes:
        side += 1
    return side


def window_centres(
    centres: torch.Tensor, n: int, query_hw: tuple[int, int], key_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``centres`` (``(h, w, 2)`` or ``(N, h, w, 2)`` integer ``(cy, cx)`` in key pixels) and return
    ``(cy, cx)``, each ``(N, h, w)`` int64, clamped into the key."""
    h, w = query_hw
    height, width = key_hw
    if centres.dtype not in (torch.int32, torch.int64) or centres.dim() not in (3, 4) \
            or tuple(centres.shape[-3:]) != (h, w, 2) or (centres.dim() == 4 and centres.shape[0] != n):
        raise RefsrError(f"centres must be an integer tensor (h, w, 2) or (N, h, w, 2) with h, w = {h}, {w}; "
                         f"got {tuple(centres.shape)}")
    centres = centres.long().expand(n, h, w, 2)
    return centres[..., 0].clamp(0, height - 1), centres[..., 1].clamp(0, width - 1)


@torch.no_grad()
def windowed_argmax(
    query: torch.Tensor, key: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, *, search_range: int,
    patch_size: int, tile_side: int, columns: Columns | None = None, masked: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best key position per query position within its window.

    Args:
        query: ``(N, C, h, w)``; key: ``(N, C, H, W)`` (zero-padded by ``patch_size // 2`` here).
        cy, cx: ``(N, h, w)`` window centres in key pixels (:func:`window_centres`).
        search_range: the window half-side ``R``.
        patch_size: odd patch side.
        tile_side: query positions are scored in ``tile_side²`` tiles.
        columns: applied to the unfolded ``(N, C·p², L)`` patch columns before the inner product (e.g.
            zero-mean unit-norm for ZNCC); identity when None.
        masked: False skips the window mask (when the window is known to cover the whole key).

    Returns:
        ``index`` ``(N, h, w)`` int64 flat key positions ``Y * W + X`` (the lowest on ties) and the winning
        scores ``(N, h, w)``. No gradient.
    """
    n, _, h, w = query.shape
    height, width = key.shape[-2:]
    radius, big = patch_size // 2, search_range
    key_padded = F.pad(key.detach(), (radius,) * 4)
    query_padded = F.pad(query.detach(), (radius,) * 4)
    index = torch.empty(n, h, w, dtype=torch.long, device=query.device)
    best = torch.empty(n, h, w, dtype=query.dtype, device=query.device)
    for y0 in range(0, h, tile_side):
        y1 = min(h, y0 + tile_side)
        for x0 in range(0, w, tile_side):
            x1 = min(w, x0 + tile_side)
            tile_cy, tile_cx = cy[:, y0:y1, x0:x1], cx[:, y0:y1, x0:x1]
            # The key rectangle holding every window of the tile (over the whole batch).
            ry0 = max(0, int(tile_cy.min()) - big)
            ry1 = min(height, int(tile_cy.max()) + big + 1)
            rx0 = max(0, int(tile_cx.min()) - big)
            rx1 = min(width, int(tile_cx.max()) + big + 1)
            rows, cols = ry1 - ry0, rx1 - rx0
            key_cols = F.unfold(key_padded[:, :, ry0 : ry1 + 2 * radius, rx0 : rx1 + 2 * radius], patch_size)
            query_cols = F.unfold(query_padded[:, :, y0 : y1 + 2 * radius, x0 : x1 + 2 * radius], patch_size)
            if columns is not None:
                key_cols, query_cols = columns(key_cols), columns(query_cols)
            scores = torch.bmm(query_cols.transpose(1, 2), key_cols)  # (N, T, rows * cols)
            del key_cols, query_cols
            t = (y1 - y0) * (x1 - x0)
            if masked:
                key_ys = torch.arange(ry0, ry1, device=query.device)
                key_xs = torch.arange(rx0, rx1, device=query.device)
                row_ok = (key_ys.view(1, 1, -1) - tile_cy.reshape(n, t, 1)).abs() <= big  # (N, T, rows)
                col_ok = (key_xs.view(1, 1, -1) - tile_cx.reshape(n, t, 1)).abs() <= big  # (N, T, cols)
                inside = (row_ok.unsqueeze(-1) & col_ok.unsqueeze(-2)).view(n, t, rows * cols)
                scores.masked_fill_(~inside, float("-inf"))
                del inside
            # torch.max returns the first maximal index: the lowest flat key index on ties.
            value, flat = scores.max(dim=2)
            del scores
            global_index = (ry0 + flat // cols) * width + rx0 + flat % cols
            index[:, y0:y1, x0:x1] = global_index.view(n, y1 - y0, x1 - x0)
            best[:, y0:y1, x0:x1] = value.view(n, y1 - y0, x1 - x0)
    return index, best
