"""Correspondence matching between query and key feature maps.

``match(query, key, method=...)`` dispatches to one of the methods below; each one is also importable on its
own, with a thin ``nn.Module`` wrapper beside it. See :class:`Correspondence` for what comes back.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from refsr.errors import RefsrError
from refsr.matching.ccnet import match_ccnet
from refsr.matching.correspondence import Correspondence
from refsr.matching.dense import match_dense
from refsr.matching.mem import match_mem
from refsr.matching.patchmatch import match_patchmatch
from refsr.matching.zncc import match_zncc

__all__ = ["Correspondence", "match", "METHODS"]


def _methods() -> dict[str, Callable[..., Correspondence]]:
    return {"dense": match_dense, "mem": match_mem, "patchmatch": match_patchmatch, "ccnet": match_ccnet,
            "zncc": match_zncc}


METHODS = ("dense", "mem", "patchmatch", "ccnet", "zncc")


def match(
    query: torch.Tensor, key: torch.Tensor, *, method: str = "dense", patch_size: int = 3, **options: Any
) -> Correspondence:
    """Top-1 cosine matching of ``patch_size`` patches of ``query`` against those of ``key``.

    Args:
        query: ``(N, C, h, w)`` features, any float dtype.
        key: ``(N, C, H, W)`` features, same N, C and dtype as ``query``.
        method: ``"dense"`` (enumerated, exact), ``"mem"`` (MASA-SR's coarse-to-fine block matching) or
            ``"patchmatch"`` (AMSA's coarse-to-fine embedded PatchMatch).
        patch_size: side of the square patches, centred at every position with zero padding.
        **options: method-specific options; see each method's function.

    Returns:
        A :class:`Correspondence` with ``index`` and ``score`` of shape ``(N, h, w)``.
    """
    if query.dim() != 4 or key.dim() != 4:
        raise RefsrError(f"query and key must be (N, C, H, W); got {tuple(query.shape)} and {tuple(key.shape)}")
    if query.shape[:2] != key.shape[:2]:
        raise RefsrError(
            f"query and key must share N and C; got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    methods = _methods()
    if method not in methods:
        raise RefsrError(f"unknown matching method {method!r}; choose one of {', '.join(METHODS)}")
    return methods[method](query, key, patch_size=patch_size, **options)
