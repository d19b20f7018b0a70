"""RefSR-Net's CC-Net matching: the largest feature inner product within a search window.

RefSR-Net (Zheng et al., BMVC 2017, Sec. 3) computes dense CC-Net features on the bilinearly upsampled LR
image and on the HR reference (:class:`refsr.models.refsrnet.CCNet`) and, at test time, matches each LR
position to "the maximum inner product response" among the reference positions within a search range of
100 pixels. :func:`match_ccnet` is that search on *features*, like the other matchers of
:mod:`refsr.matching`; :func:`ccnet_features` and :func:`match_ccnet_images` go from images to features to
matches.

Semantics (what the paper leaves open is decided here):

* **Similarity**: the raw inner product ``<q, k>`` of the ``patch_size`` x ``patch_size`` feature patches
  (zero-padded at the borders, ``F.unfold`` order), not a cosine: CC-Net is trained with softmax scores
  ``s = <f, g>`` (paper Eq. 1), so the inner product is the score it learned. With ``patch_size=1`` (the
  default, and the paper's: one 256-d descriptor per pixel, whose 65x65 receptive field is the patch) it is
  the inner product of the two descriptors.
* **Window**: query position ``(y, x)`` searches the key positions ``(Y, X)`` with ``|Y - cy| <= R`` and
  ``|X - cx| <= R``, ``R = search_range``, clipped to the key; ``(cy, cx)`` is the query position scaled to
  key coordinates, ``floor((y + 0.5) * H / h)`` (the identity when the maps have the same size, as the
  upsampled LR and the reference have in RefSR-Net), or is given explicitly with ``centres=``.
* **Ties**: the lowest flat key index wins.
* **Score**: :class:`~refsr.matching.Correspondence` ``score`` is the *cosine* of the matched patches, as
  for every matcher (differentiable with respect to both maps); the inner product that decided the match is
  in ``extras["inner_product"]``.

Memory: the ``h * w * (2R + 1)^2`` scores never exist at once. Query positions are processed in square
tiles; a tile's candidates are the key rectangle covering all its windows, scored with one batched matrix
product and masked to each position's own window. The tile side is the largest whose scores fit
``max_bytes`` (at least one position per tile).
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
)
from refsr.matching._window import tile_side, window_centres, windowed_argmax
from refsr.matching.correspondence import Correspondence

__all__ = [
    "match_ccnet",
    "CCNetMatcher",
    "ccnet_features",
    "match_ccnet_images",
    "upsample_lr",
    "scaled_centres",
    "DEFAULT_SEARCH_RANGE",
    "DEFAULT_MAX_BYTES",
]

#: The paper's test-time search range ("we use the search range of 100 instead of 64 in testing stage").
DEFAULT_SEARCH_RANGE = 100
#: Default working-memory budget of one tile of scores.
DEFAULT_MAX_BYTES = 128 * 2**20


def upsample_lr(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The CC-Net input of the LR image: bilinear x``scale``, ``align_corners=False`` (PyTorch's half-pixel
    convention, the same pixel-centre mapping as the PIL downscaling that made the LR).

    ``lr (N,3,h,w)`` -> ``(N,3,scale*h,scale*w)``, same dtype.
    """
    return F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False)


def scaled_centres(query_size: tuple[int, int], key_size: tuple[int, int],
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``LongTensor (h, w, 2)``: each query position ``(y, x)`` scaled to key coordinates,
    ``(floor((y + 0.5) * H / h), floor((x + 0.5) * W / w))``, clamped into the key."""
    (h, w), (height, width) = query_size, key_size
    ys = ((torch.arange(h, device=device, dtype=torch.float64) + 0.5) * height / h).floor().long()
    xs = ((torch.arange(w, device=device, dtype=torch.float64) + 0.5) * width / w).floor().long()
    ys, xs = ys.clamp(0, height - 1), xs.clamp(0, width - 1)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


def match_ccnet(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    patch_size: int = 1,
    search_range: int = DEFAULT_SEARCH_RANGE,
    centres: torch.Tensor | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    key_patch_norm_eps: float = DEFAULT_NORM_EPS,
) -> Correspondence:
    """Top-1 inner-product match of each query position within a ``±search_range`` window of the key.

    See the module docstring for the rules (similarity, window, ties, score, memory).

    Args:
        query: ``(N, C, h, w)`` CC-Net features of the (upsampled) LR image, any float dtype.
        key: ``(N, C, H, W)`` CC-Net features of the reference; same N, C, dtype and device.
        patch_size: odd side of the compared feature patches (1: single descriptors, the paper's).
            Note that :func:`refsr.matching.match` passes its own default of 3 unless told otherwise.
        search_range: ``R``, the window half-side in key pixels (100 at test time in the paper).
        centres: optional ``LongTensor (h, w, 2)`` or ``(N, h, w, 2)`` of window centres ``(cy, cx)`` in key
            pixels (e.g. the HR centres of RefSR-Net's LR patches); default :func:`scaled_centres`.
            Centres are clamped into the key.
        max_bytes: working-memory budget of one tile.
        key_patch_norm_eps: lower bound on patch norms in the cosine ``score``.

    Returns:
        :class:`Correspondence`: ``index`` ``(N, h, w)`` int64 flat key positions ``Y * W + X``; ``score``
        ``(N, h, w)`` cosine of the matched patches; ``extras["inner_product"]`` ``(N, h, w)`` the winning
        inner product (no gradient), ``extras["search_range"]``.
    """
    check_pair(query, key)
    check_patch_size(patch_size)
    if isinstance(search_range, bool) or not isinstance(search_range, int) or search_range < 0:
        raise RefsrError(f"search_range must be a non-negative integer; got {search_range!r}")
    if max_bytes <= 0:
        raise RefsrError(f"max_bytes must be positive; got {max_bytes}")
    n, c, h, w = query.shape
    height, width = key.shape[-2:]
    if centres is None:
        centres = scaled_centres((h, w), (height, width), device=query.device)
    cy, cx = window_centres(centres.to(query.device), n, (h, w), (height, width))
    radius = patch_size // 2
    patch_len = c * patch_size * patch_size
    side = tile_side(n, h, w, height, width, search_range, patch_len, element_size(query.dtype), max_bytes)
    index, best = windowed_argmax(query, key, cy, cx, search_range=search_range, patch_size=patch_size,
                                  tile_side=side)

    score = patch_cosine_at(
        F.pad(query, (radius,) * 4), F.pad(key, (radius,) * 4), index, (height, width), patch_size,
        key_patch_norm_eps,
    )
    return Correspondence(index=index, score=score, key_size=(height, width),
                          extras={"inner_product": best, "search_range": search_range})


class CCNetMatcher(nn.Module):
    """``nn.Module`` wrapper of :func:`match_ccnet` (no parameters); ``forward(query, key, centres=None)``."""

    def __init__(self, patch_size: int = 1, search_range: int = DEFAULT_SEARCH_RANGE,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__()
        check_patch_size(patch_size)
        self.patch_size = patch_size
        self.search_range = search_range
        self.max_bytes = max_bytes

    def forward(self, query: torch.Tensor, key: torch.Tensor, centres: torch.Tensor | None = None) -> Correspondence:
        return match_ccnet(query, key, patch_size=self.patch_size, search_range=self.search_range,
                           centres=centres, max_bytes=self.max_bytes)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, search_range={self.search_range}, max_bytes={self.max_bytes}"


def ccnet_features(network: nn.Module, lr: torch.Tensor, ref: torch.Tensor, *, scale: int = 8
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CC-Net features of an LR image (bilinearly upsampled x``scale``, :func:`upsample_lr`) and of its
    reference, through the same (Siamese) ``network``.

    Args:
        network: a CC-Net (:class:`refsr.models.refsrnet.CCNet`), ``(N,3,H,W) -> (N,C,H,W)``.
        lr: ``(N,3,h,w)`` RGB float in [0, 1].
        ref: ``(N,3,H,W)`` RGB float in [0, 1].
        scale: the SR factor (8 in RefSR-Net).

    Returns:
        ``(query, key)``: ``(N,C,scale*h,scale*w)`` and ``(N,C,H,W)``.
    """
    return network(upsample_lr(lr, scale)), network(ref)


def match_ccnet_images(
    network: nn.Module, lr: torch.Tensor, ref: torch.Tensor, *, scale: int = 8,
    search_range: int = DEFAULT_SEARCH_RANGE, max_bytes: int = DEFAULT_MAX_BYTES,
) -> Correspondence:
    """:func:`ccnet_features` then :func:`match_ccnet` (descriptors, ``patch_size=1``): for every pixel of the
    upsampled LR, its reference pixel. Runs under ``torch.no_grad``."""
    with torch.no_grad():
        query, key = ccnet_features(network, lr, ref, scale=scale)
        return match_ccnet(query, key, patch_size=1, search_range=search_range, max_bytes=max_bytes)
