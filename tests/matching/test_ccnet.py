"""CC-Net matching (inner product within a search window) against an explicit loop over the window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refsr.matching
from refsr.errors import RefsrError
from refsr.matching.ccnet import CCNetMatcher, match_ccnet, scaled_centres

EPS = 1e-12


def brute_force_ccnet(query, key, patch_size, search_range, centres=None):
    """Loops over every query position and every key position of its window; zero padding; strict '>' in
    row-major order keeps the lowest flat index on ties. Returns index, cosine score and inner product."""
    q, k = query.double().numpy(), key.double().numpy()
    n, _, h, w = q.shape
    height, width = k.shape[2:]
    r = patch_size // 2
    q = np.pad(q, ((0, 0), (0, 0), (r, r), (r, r)))
    k = np.pad(k, ((0, 0), (0, 0), (r, r), (r, r)))
    index = np.zeros((n, h, w), dtype=np.int64)
    score = np.zeros((n, h, w))
    inner = np.zeros((n, h, w))
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if centres is None:
                    cy, cx = int((y + 0.5) * height / h), int((x + 0.5) * width / w)
                else:
                    cy, cx = (int(v) for v in centres[y, x])
                cy, cx = min(max(cy, 0), height - 1), min(max(cx, 0), width - 1)
                qv = q[b, :, y : y + patch_size, x : x + patch_size].ravel()
                best, best_index, best_cos = -np.inf, -1, 0.0
                for yy in range(max(0, cy - search_range), min(height, cy + search_range + 1)):
                    for xx in range(max(0, cx - search_range), min(width, cx + search_range + 1)):
                        kv = k[b, :, yy : yy + patch_size, xx : xx + patch_size].ravel()
                        dot = qv @ kv
                        if dot > best:
                            best, best_index = dot, yy * width + xx
                            best_cos = dot / (max(np.linalg.norm(qv), EPS) * max(np.linalg.norm(kv), EPS))
                index[b, y, x], score[b, y, x], inner[b, y, x] = best_index, best_cos, best
    return index, score, inner


def random_pair(seed, n, c, h, w, height, width):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=gen, dtype=torch.float64),
            torch.randn(n, c, height, width, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize(
    "shape, patch_size, search_range",
    [
        ((2, 4, 9, 11, 9, 11), 1, 2),  # same size: windows centred at the query position
        ((1, 3, 7, 6, 14, 18), 1, 3),  # key larger: centres scaled
        ((1, 3, 8, 8, 8, 8), 3, 1),  # 3x3 feature patches, zero-padded
        ((1, 2, 6, 5, 6, 5), 1, 100),  # the paper's range on a tiny map: the whole key
        ((1, 2, 6, 7, 9, 5), 3, 0),  # range 0: the centre itself
    ],
)
@pytest.mark.parametrize("max_bytes", [1, 10**9])  # one position per tile, and one tile for everything
def test_equals_brute_force(shape, patch_size, search_range, max_bytes) -> None:
    n, c, h, w, height, width = shape
    query, key = random_pair(sum(shape) + patch_size, n, c, h, w, height, width)
    corr = match_ccnet(query, key, patch_size=patch_size, search_range=search_range, max_bytes=max_bytes)
    index, score, inner = brute_force_ccnet(query, key, patch_size, search_range)
    assert corr.index.shape == (n, h, w) and corr.key_size == (height, width)
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)
    np.testing.assert_allclose(corr.extras["inner_product"].numpy(), inner, rtol=0, atol=1e-10)


def test_explicit_centres_and_the_dispatcher() -> None:
    query, key = random_pair(5, 1, 3, 4, 5, 30, 40)
    gen = torch.Generator().manual_seed(6)
    centres = torch.stack((torch.randint(-3, 33, (4, 5), generator=gen), torch.randint(0, 45, (4, 5), generator=gen)),
                          dim=-1)
    corr = match_ccnet(query, key, search_range=4, centres=centres, max_bytes=4096)
    index, _, _ = brute_force_ccnet(query, key, 1, 4, centres=centres.numpy())
    assert torch.equal(corr.index, torch.from_numpy(index))
    # Every match lies within its (clamped) window.
    ys, xs = corr.coords[0, ..., 0], corr.coords[0, ..., 1]
    assert ((ys - centres[..., 0].clamp(0, 29)).abs() <= 4).all()
    assert ((xs - centres[..., 1].clamp(0, 39)).abs() <= 4).all()
    # Through refsr.matching.match.
    via = refsr.matching.match(query, key, method="ccnet", patch_size=1, search_range=4, centres=centres)
    assert torch.equal(via.index, corr.index)
    assert "ccnet" in refsr.matching.METHODS


def test_inner_product_not_cosine_decides() -> None:
    # Two key descriptors in the same direction, one longer: the inner product prefers the longer one.
    key = torch.zeros(1, 2, 1, 3, dtype=torch.float64)
    key[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    key[0, :, 0, 1] = torch.tensor([3.0, 0.0])
    key[0, :, 0, 2] = torch.tensor([1.0, 1.0])
    query = torch.tensor([1.0, 0.2], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 1, 3).contiguous()
    corr = match_ccnet(query, key, search_range=5)
    assert corr.index.tolist() == [[[1, 1, 1]]]
    assert corr.extras["inner_product"][0, 0, 0].item() == pytest.approx(3.0)
    assert corr.score[0, 0, 0].item() == pytest.approx(1.0 / np.hypot(1.0, 0.2))


def test_translation_is_recovered_on_a_photo_feature() -> None:
    """A shifted key: every interior query finds its shifted self (distinct patches of a real photo)."""
    from conftest import load_photo

    img = torch.tensor(load_photo("astronaut.png")[:40, :48]).permute(2, 0, 1)[None].double() / 255
    # Unit-length 5x5 colour-patch descriptors, so the inner product is the cosine and the self-match wins.
    feats = torch.nn.functional.unfold(img, 5, padding=2).view(1, 75, 40, 48)
    feats = torch.nn.functional.normalize(feats - feats.mean(dim=1, keepdim=True), dim=1)
    query = feats[:, :, 4:28, 4:36]
    key = feats[:, :, 7:31, 1:33]  # content of query (y, x) sits at key (y - 3, x + 3)
    corr = match_ccnet(query, key, search_range=5)
    coords = corr.coords[0]
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(32), indexing="ij")
    inner = (slice(3, 24), slice(0, 29))
    assert torch.equal(coords[..., 0][inner], (yy - 3)[inner])
    assert torch.equal(coords[..., 1][inner], (xx + 3)[inner])


def test_score_is_differentiable_and_module_wrapper() -> None:
    query, key = random_pair(7, 1, 3, 5, 5, 5, 5)
    query.requires_grad_(True)
    key.requires_grad_(True)
    corr = CCNetMatcher(patch_size=1, search_range=2)(query, key)
    corr.score.sum().backward()
    assert query.grad.abs().max() > 0 and key.grad.abs().max() > 0


def test_scaled_centres() -> None:
    c = scaled_centres((4, 3), (8, 9))
    assert c[..., 0][:, 0].tolist() == [1, 3, 5, 7] and c[..., 1][0].tolist() == [1, 4, 7]
    assert torch.equal(scaled_centres((5, 6), (5, 6))[..., 1][0], torch.arange(6))


@pytest.mark.parametrize(
    "kwargs, what",
    [
        (dict(search_range=-1), "search_range"),
        (dict(patch_size=2), "patch_size"),
        (dict(centres=torch.zeros(3, 3, 2, dtype=torch.long)), "centres"),
        (dict(max_bytes=0), "max_bytes"),
    ],
)
def test_bad_arguments(kwargs, what) -> None:
    query, key = random_pair(0, 1, 2, 4, 4, 4, 4)
    with pytest.raises(RefsrError, match=what):
        match_ccnet(query, key, **kwargs)
