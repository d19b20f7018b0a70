"""Enumerated (exhaustive) cosine patch matching, as TTSR and C2-Matching do it.

Every query patch is compared with every key patch; the best key position wins. The cost is
``2 * h*w * H*W * C * p**2`` FLOPs, which is why MASA and AMSA replace it; it is the exact reference that
their approximations are measured against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching._patches import (
    DEFAULT_NORM_EPS,
    check_pair,
    check_patch_size,
    element_size,
    patch_cosine_at,
    patch_norms,
)
from refsr.matching.correspondence import Correspondence

__all__ = ["match_dense", "DenseMatcher", "DEFAULT_MAX_BYTES"]

#: Default working-memory budget of one chunk of query positions.
DEFAULT_MAX_BYTES = 256 * 2**20


def match_dense(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    patch_size: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    key_patch_norm_eps: float = DEFAULT_NORM_EPS,
    key_margin: int = 0,
) -> Correspondence:
    """Top-1 cosine match of every query patch among all key patches.

    Patches are ``patch_size`` x ``patch_size``, centred at every position of both maps, with zeros outside
    the map (``F.unfold(x, p, padding=p // 2)``, as TTSR and C2-Matching build them). Similarity is the
    cosine ``<q, k> / (max(|q|, eps) * max(|k|, eps))`` (``F.normalize``'s rule), so all-zero patches
    score 0 against everything.

    Ties: the lowest flat key index wins (``torch.max`` returns the first maximum). With all-zero query
    patches every key position ties at 0, so such positions match key index 0.

    Memory: the L2-normalised key patch matrix, ``N * C * p**2 * H * W`` elements (about 151 MB for
    C=64, 256x256, float32), is built once. Query positions are then processed in chunks whose working
    set (the chunk's similarity rows ``N * H * W`` per position, plus its query patches) stays within
    ``max_bytes``; at least one query position is processed per chunk whatever the budget. Peak extra
    memory is therefore about ``key matrix + max_bytes`` (measured: 445 MB at 256^2 x 256^2, C=64, defaults).

    Gradients: the index is found under ``torch.no_grad``; ``score`` is then recomputed from the two maps
    at the chosen indices, so it is differentiable with respect to ``query`` and ``key`` exactly as a
    top-1 value of the similarity matrix would be.

    Args:
        query: ``(N, C, h, w)`` features, any float dtype.
        key: ``(N, C, H, W)`` features, same N, C, dtype and device.
        patch_size: odd patch side ``p``.
        max_bytes: working-memory budget of one chunk, in bytes.
        key_patch_norm_eps: lower bound on every patch norm (query and key) before dividing;
            default ``1e-12``, the default of ``F.normalize``.
        key_margin: only key patches centred at least this far from the key's border are candidates;
            ``patch_size // 2`` keeps the patches that lie wholly inside the key, as C2-Matching's
            matching (``F.unfold`` without padding) has them. The index still counts in the whole key.

    Returns:
        :class:`Correspondence` with ``index`` ``(N, h, w)`` int64 flat key positions ``y * W + x`` and
        ``score`` ``(N, h, w)`` cosines in [-1, 1], dtype of the inputs. ``extras`` is empty.
    """
    check_pair(query, key)
    check_patch_size(patch_size)
    if max_bytes <= 0:
        raise RefsrError(f"max_bytes must be positive; got {max_bytes}")
    n, c, h, w = query.shape
    height, width = key.shape[-2:]
    radius = patch_size // 2
    if isinstance(key_margin, bool) or not isinstance(key_margin, int) or key_margin < 0 \
            or min(height, width) <= 2 * key_margin:
        raise RefsrError(f"key_margin must be a non-negative int leaving some of the {height}x{width} key; "
                         f"got {key_margin!r}")
    # Flat key positions that are candidates (all of them without a margin).
    candidates = None
    if key_margin:
        rows = torch.arange(key_margin, height - key_margin, device=key.device)
        cols = torch.arange(key_margin, width - key_margin, device=key.device)
        candidates = (rows[:, None] * width + cols[None, :]).flatten()
    key_positions = height * width if candidates is None else candidates.numel()

    with torch.no_grad():
        key_padded = F.pad(key.detach(), (radius,) * 4)
        # (N, C*p*p, H*W), normalised in place so that only one copy of the big matrix ever exists.
        key_cols = F.unfold(key_padded, patch_size)
        key_norms = patch_norms(key_padded, patch_size)
        if candidates is not None:
            key_cols, key_norms = key_cols[:, :, candidates], key_norms[:, candidates]
        key_cols.div_(key_norms.clamp_min(key_patch_norm_eps).unsqueeze(1))
        del key_norms
        # Query normalisation is a positive factor per query row: it cannot change the argmax, so the
        # search skips it and the score below supplies the true cosine.
        query_padded = F.pad(query.detach(), (radius,) * 4)

        patch_len = c * patch_size * patch_size
        # Per query position: its row of similarities and its patch twice (unfolded strip + transpose).
        bytes_per_position = element_size(query.dtype) * n * (key_positions + 2 * patch_len) + 16 * n
        chunk = max(1, int(max_bytes // bytes_per_position))

        index = torch.empty(n, h * w, dtype=torch.long, device=query.device)
        # One similarity buffer reused by every chunk: a fresh allocation per chunk this large would be
        # returned to the OS and page-faulted in again each time, which costs more than the arithmetic.
        similarity_buffer = key_cols.new_empty(n, min(chunk, h * w), key_positions)
        for start in range(0, h * w, chunk):
            stop = min(start + chunk, h * w)
            first_row, last_row = start // w, (stop - 1) // w
            # Unfold only the strip of rows this chunk needs, not the whole query.
            strip = query_padded[:, :, first_row : last_row + 1 + 2 * radius, :]
            offset = start - first_row * w
            query_cols = F.unfold(strip, patch_size)[:, :, offset : offset + stop - start]
            similarity = similarity_buffer[:, : stop - start]  # (N, chunk, H*W), contiguous
            torch.bmm(query_cols.transpose(1, 2), key_cols, out=similarity)
            index[:, start:stop] = similarity.argmax(dim=2)
            del query_cols
        del key_cols, similarity_buffer
        if candidates is not None:
            index = candidates[index]
        index = index.view(n, h, w)

    score = patch_cosine_at(
        F.pad(query, (radius,) * 4),
        F.pad(key, (radius,) * 4),
        index,
        (height, width),
        patch_size,
        key_patch_norm_eps,
    )
    return Correspondence(index=index, score=score, key_size=(height, width))


class DenseMatcher(nn.Module):
    """``nn.Module`` wrapper of :func:`match_dense` (no parameters); ``forward(query, key)``."""

    def __init__(
        self,
        patch_size: int = 3,
        max_bytes: int = DEFAULT_MAX_BYTES,
        key_patch_norm_eps: float = DEFAULT_NORM_EPS,
        key_margin: int = 0,
    ) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        self.max_bytes = max_bytes
        self.key_patch_norm_eps = key_patch_norm_eps
        self.key_margin = key_margin

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> Correspondence:
        return match_dense(
            query,
            key,
            patch_size=self.patch_size,
            max_bytes=self.max_bytes,
            key_patch_norm_eps=self.key_patch_norm_eps,
            key_margin=self.key_margin,
        )

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, max_bytes={self.max_bytes}, key_margin={self.key_margin}"
