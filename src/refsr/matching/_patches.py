"""Small patch helpers shared by the matchers (not public API).

Everything here works on whole feature maps with a handful of tensor ops; the only Python loops run over
the ``patch_size**2`` offsets inside a patch or over chunks, never over pixels.

Conventions used throughout ``refsr.matching``:

* A "patch at position (y, x)" of a map is the ``p x p`` window centred there (``p`` odd), flattened in
  ``F.unfold`` order (channel-major, then row, then column). How positions near the border are filled is
  decided by whoever pads the map; these helpers take maps that are already padded by ``p // 2``.
* Cosine similarity follows ``torch.nn.functional.normalize``: ``<q, k> / (max(|q|, eps) * max(|k|, eps))``,
  so an all-zero patch has cosine 0 with everything instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refsr.errors import RefsrError

__all__ = [
    "DEFAULT_NORM_EPS",
    "check_pair",
    "check_patch_size",
    "box_sum",
    "patch_norms",
    "patch_cosine_at",
    "element_size",
    "leading_axes",
]

#: Lower bound on patch norms before dividing; the default of ``F.normalize``, which TTSR, C2-Matching's
#: cosine mode and MASA all use for their patch vectors.
DEFAULT_NORM_EPS = 1e-12


def check_pair(query: torch.Tensor, key: torch.Tensor) -> None:
    """Raise :class:`RefsrError` unless both are 4-D float maps sharing N, C, dtype and device."""
    if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        raise RefsrError("query and key must be torch tensors of shape (N, C, H, W)")
    if query.dim() != 4 or key.dim() != 4:
        raise RefsrError(
            f"query and key must be (N, C, H, W); got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    if query.shape[:2] != key.shape[:2]:
        raise RefsrError(f"query and key must share N and C; got {tuple(query.shape)} and {tuple(key.shape)}")
    if not query.is_floating_point() or query.dtype != key.dtype:
        raise RefsrError(f"query and key must share one float dtype; got {query.dtype} and {key.dtype}")
    if query.device != key.device:
        raise RefsrError(f"query and key must be on one device; got {query.device} and {key.device}")
    if query.numel() == 0 or key.numel() == 0:
        raise RefsrError(f"query and key must not be empty; got {tuple(query.shape)} and {tuple(key.shape)}")


def check_patch_size(patch_size: int) -> None:
    """Raise :class:`RefsrError` unless ``patch_size`` is a positive odd integer."""
    is_int = isinstance(patch_size, int) and not isinstance(patch_size, bool)
    if not is_int or patch_size < 1 or patch_size % 2 == 0:
        raise RefsrError(f"patch_size must be a positive odd integer; got {patch_size!r}")


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def box_sum(plane: torch.Tensor, patch_size: int, *, dilation: int = 1, padding: int = 0) -> torch.Tensor:
    """Sum of ``plane`` over every ``patch_size`` x ``patch_size`` (dilated) window.

    Args:
        plane: ``(N, 1, H, W)``.
        patch_size: window side.
        dilation: spacing of the window taps, as in ``F.unfold``.
        padding: zeros added on every side first, as in ``F.unfold``.

    Returns:
        ``(N, 1, H', W')`` with the output size of ``F.unfold`` for the same arguments.
    """
    if padding:
        plane = F.pad(plane, (padding,) * 4)
    # Separable: sum the taps down, then across. Shifted slices beat a one-channel (dilated) convolution,
    # which PyTorch runs through a slow generic kernel.
    span = dilation * (patch_size - 1)
    height, width = plane.shape[-2] - span, plane.shape[-1] - span
    columns = plane[..., 0:height, :]
    for tap in range(1, patch_size):
        columns = columns + plane[..., tap * dilation : tap * dilation + height, :]
    total = columns[..., 0:width]
    for tap in range(1, patch_size):
        total = total + columns[..., tap * dilation : tap * dilation + width]
    return total


def patch_norms(
    padded: torch.Tensor, patch_size: int, *, dilation: int = 1, padding: int = 0
) -> torch.Tensor:
    """L2 norm of every patch, the same numbers as ``F.unfold(...).norm(dim=1)`` without the unfold.

    Args:
        padded: ``(N, C, H, W)`` map.
        patch_size, dilation, padding: as for ``F.unfold``.

    Returns:
        ``(N, L)`` norms, ``L`` the number of patch positions, in ``F.unfold`` column order.
    """
    energy = padded.pow(2).sum(dim=1, keepdim=True)
    # Rounding can leave a tiny negative sum of squares after the convolution; clamp before the root.
    return box_sum(energy, patch_size, dilation=dilation, padding=padding).clamp_min(0).sqrt().flatten(1)


def patch_cosine_at(
    query_padded: torch.Tensor,
    key_padded: torch.Tensor,
    index: torch.Tensor,
    key_size: tuple[int, int],
    patch_size: int,
    eps: float = DEFAULT_NORM_EPS,
) -> torch.Tensor:
    """Cosine between the query patch at every position and the key patch it was matched to.

    Differentiable with respect to both maps (not the index), so a matcher can pick its indices under
    ``torch.no_grad`` and still hand back a score that trains like MASA's / TTSR's soft attention (the
    gradient of a top-1 value only reaches the selected pair).

    Args:
        query_padded: ``(N, C, h + 2r, w + 2r)``, the query padded by ``r = patch_size // 2`` with whatever
            border rule the method uses.
        key_padded: ``(N, C, H + 2r, W + 2r)``, the key padded likewise.
        index: ``LongTensor (N, h, w)``, flat positions ``y * W + x`` in the *unpadded* key.
        key_size: ``(H, W)`` of the unpadded key.
        patch_size: odd patch side ``p``.
        eps: lower bound on each patch norm.

    Returns:
        ``(N, h, w)`` cosines in [-1, 1], dtype of the maps.
    """
    radius = patch_size // 2
    n, c, hp, wp = query_padded.shape
    h, w = hp - 2 * radius, wp - 2 * radius
    height, width = key_size
    padded_width = width + 2 * radius
    # In the padded key the patch centred at (y, x) starts at (y, x): its top-left corner.
    top_left = (index // width) * padded_width + index % width  # (N, h, w)
    key_flat = key_padded.flatten(2)  # (N, C, (H+2r)*(W+2r))
    dot = query_padded.new_zeros(n, h, w)
    for dy in range(patch_size):
        for dx in range(patch_size):
            tap = (top_left + dy * padded_width + dx).flatten(1).unsqueeze(1).expand(n, c, h * w)
            key_tap = torch.gather(key_flat, 2, tap).view(n, c, h, w)
            query_tap = query_padded[:, :, dy : dy + h, dx : dx + w]
            dot = dot + (query_tap * key_tap).sum(dim=1)
    query_norm = patch_norms(query_padded, patch_size).view(n, h, w)
    # Norms of all key patches (a cheap box filter), then picked at the index.
    key_norm = torch.gather(patch_norms(key_padded, patch_size), 1, index.flatten(1)).view(n, h, w)
    return dot / (query_norm.clamp_min(eps) * key_norm.clamp_min(eps))


def leading_axes(rows: torch.Tensor, dim: int, *, seed: int = 0x5EED) -> tuple[torch.Tensor, float]:
    """The ``dim`` leading principal axes ``(D, dim)`` of the rows ``(S, D)`` (uncentred second moment, leading
    axis first) and the share of the rows' energy they hold.

    Randomised subspace iteration (Halko, Martinsson & Tropp 2011): a few thin matrix products and a
    ``(dim + 8)``-square eigendecomposition instead of one of the ``D``-square second-moment matrix, which
    costs more than a whole search at large ``D`` (and LAPACK's on a busy machine, far more). Deterministic:
    the start has a fixed seed.
    """
    rows = rows.float()
    total_energy = float(rows.pow(2).sum())
    if total_energy == 0:
        return torch.eye(rows.shape[1], dim, device=rows.device), 1.0
    generator = torch.Generator(device="cpu").manual_seed(seed)
    oversampled = min(rows.shape[1], dim + 8)
    basis = torch.randn(rows.shape[1], oversampled, generator=generator).to(rows.device)
    for _ in range(2):
        basis = torch.linalg.qr(rows.T @ (rows @ basis)).Q
    projected = rows @ basis  # (S, oversampled)
    values, vectors = torch.linalg.eigh(projected.T @ projected)
    axes = basis @ vectors[:, -dim:].flip(1)
    return axes, min(1.0, float(values[-dim:].sum()) / total_energy)
