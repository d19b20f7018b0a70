"""Dense (enumerated) cosine matching against an explicit brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_photo
from refsr.errors import RefsrError
from refsr.matching.dense import DenseMatcher, match_dense

EPS = 1e-12


def brute_force_dense(query: torch.Tensor, key: torch.Tensor, patch_size: int):
    """Loops over every query and key position; zero padding; strict '>' keeps the lowest index on ties."""
    q, k = query.double().numpy(), key.double().numpy()
    n, _, h, w = q.shape
    height, width = k.shape[2:]
    r = patch_size // 2
    q = np.pad(q, ((0, 0), (0, 0), (r, r), (r, r)))
    k = np.pad(k, ((0, 0), (0, 0), (r, r), (r, r)))
    index = np.zeros((n, h, w), dtype=np.int64)
    score = np.zeros((n, h, w))
    for b in range(n):
        for y in range(h):
            for x in range(w):
                qv = q[b, :, y : y + patch_size, x : x + patch_size].ravel()
                best, best_index = -np.inf, -1
                for yy in range(height):
                    for xx in range(width):
                        kv = k[b, :, yy : yy + patch_size, xx : xx + patch_size].ravel()
                        cos = qv @ kv / (max(np.linalg.norm(qv), EPS) * max(np.linalg.norm(kv), EPS))
                        if cos > best:
                            best, best_index = cos, yy * width + xx
                index[b, y, x] = best_index
                score[b, y, x] = best
    return index, score


def random_pair(seed, n, c, h, w, height, width, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, h, w, generator=gen, dtype=dtype),
        torch.randn(n, c, height, width, generator=gen, dtype=dtype),
    )


def test_equals_brute_force_small():
    query, key = random_pair(0, 2, 3, 5, 7, 6, 4)
    corr = match_dense(query, key)
    index, score = brute_force_dense(query, key, 3)
    assert corr.index.dtype == torch.long and corr.index.shape == (2, 5, 7)
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)
    assert corr.key_size == (6, 4)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    patch_size=st.sampled_from([1, 3, 5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_equals_brute_force(n, c, h, w, height, width, patch_size, seed):
    query, key = random_pair(seed, n, c, h, w, height, width)
    corr = match_dense(query, key, patch_size=patch_size)
    index, score = brute_force_dense(query, key, patch_size)
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    height=st.integers(2, 9),
    width=st.integers(2, 9),
    max_bytes=st.integers(1, 20_000),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_equals_unchunked(h, w, height, width, max_bytes, seed):
    query, key = random_pair(seed, 2, 4, h, w, height, width)
    whole = match_dense(query, key, max_bytes=2**30)
    chunked = match_dense(query, key, max_bytes=max_bytes)
    assert torch.equal(whole.index, chunked.index)
    torch.testing.assert_close(whole.score, chunked.score, rtol=0, atol=1e-13)


def test_similarity_chunks_respect_budget(monkeypatch):
    query, key = random_pair(1, 1, 4, 12, 10, 11, 13, dtype=torch.float32)
    budget = 4 * 11 * 13 * 7 + 1000  # room for ~7 query positions
    sizes = []
    real_bmm = torch.bmm

    def recording_bmm(a, b, *, out=None):
        result = real_bmm(a, b, out=out)
        sizes.append(result.numel() * result.element_size())
        return result

    monkeypatch.setattr(torch, "bmm", recording_bmm)
    chunked = match_dense(query, key, max_bytes=budget)
    monkeypatch.undo()
    assert len(sizes) >= 12 * 10 // 7  # it really chunked
    assert max(sizes) <= budget
    assert torch.equal(chunked.index, match_dense(query, key).index)


def test_score_is_true_cosine_at_index():
    query, key = random_pair(3, 2, 5, 9, 8, 7, 10)
    corr = match_dense(query, key)
    qp = torch.nn.functional.pad(query, (1, 1, 1, 1))
    kp = torch.nn.functional.pad(key, (1, 1, 1, 1))
    for b in range(2):
        for y in range(9):
            for x in range(8):
                yy, xx = divmod(int(corr.index[b, y, x]), 10)
                qv = qp[b, :, y : y + 3, x : x + 3].reshape(-1)
                kv = kp[b, :, yy : yy + 3, xx : xx + 3].reshape(-1)
                expected = torch.dot(qv, kv) / (qv.norm() * kv.norm())
                assert abs(float(corr.score[b, y, x] - expected)) < 1e-12


def test_ties_pick_lowest_index():
    # Integer-valued features make every dot product and norm exact, so equal patches tie exactly.
    key = torch.zeros(1, 2, 6, 9, dtype=torch.float64)
    motif = torch.tensor([[[1.0, 2, 0], [0, 3, 1], [2, 0, 1]], [[1, 1, 0], [0, 2, 2], [1, 0, 3]]])
    key[0, :, 1:4, 1:4] = motif
    key[0, :, 1:4, 5:8] = motif  # the same patch again, centred at (2, 6)
    query = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    query[0] = motif
    corr = match_dense(query, key)
    assert int(corr.index[0, 1, 1]) == 2 * 9 + 2  # (2, 2) beats (2, 6)
    assert abs(float(corr.score[0, 1, 1]) - 1.0) < 1e-12


def test_zero_query_patches_match_index_zero_with_score_zero():
    query = torch.zeros(1, 3, 4, 5)
    key = torch.randn(1, 3, 6, 6)
    corr = match_dense(query, key)
    assert torch.equal(corr.index, torch.zeros(1, 4, 5, dtype=torch.long))
    assert torch.equal(corr.score, torch.zeros(1, 4, 5))


def test_real_photo_finds_the_true_shift():
    photo = torch.from_numpy(load_photo("astronaut.png").copy()).permute(2, 0, 1)[None].double() / 255
    key = photo[:, :, 40:80, 60:100]  # 40x40
    query = photo[:, :, 47:71, 63:91]  # 24x28, at offset (7, 3) inside the key
    corr = match_dense(query, key)
    interior_score = corr.score[0, 1:-1, 1:-1]
    # The exact patch is in the key for every interior query position: the best cosine is 1.
    assert torch.all(interior_score > 1 - 1e-12)
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(28), indexing="ij")
    expected = (yy + 7) * 40 + (xx + 3)
    hits = (corr.index[0] == expected)[1:-1, 1:-1].double().mean()
    assert hits > 0.99


def test_gradient_of_score_is_correct():
    query, key = random_pair(5, 2, 3, 6, 7, 5, 8)
    query.requires_grad_(True)
    key.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: match_dense(q, k).score, (query, key), fast_mode=True)


def test_float32_matches_float64_at_most_positions():
    photo = torch.from_numpy(load_photo("coffee.png").copy()).permute(2, 0, 1)[None].double() / 255
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.conv2d(photo, torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64))
    query, key = features[:, :, 10:30, 10:34], features[:, :, 40:72, 60:90]
    exact = match_dense(query, key)
    single = match_dense(query.float(), key.float())
    # Near-ties (equal cosines to float32 precision) may flip a few positions in float32.
    assert (exact.index == single.index).double().mean() > 0.97
    torch.testing.assert_close(single.score.double(), exact.score, rtol=0, atol=1e-4)


def test_module_wrapper_and_errors():
    query, key = random_pair(7, 1, 3, 4, 4, 5, 5)
    matcher = DenseMatcher(patch_size=5)
    corr = matcher(query, key)
    assert torch.equal(corr.index, match_dense(query, key, patch_size=5).index)
    with pytest.raises(RefsrError):
        match_dense(query, key, patch_size=2)
    with pytest.raises(RefsrError):
        match_dense(query, key[:, :2])
    with pytest.raises(RefsrError):
        match_dense(query[0], key)
    with pytest.raises(RefsrError):
        match_dense(query, key.float())
    with pytest.raises(RefsrError):
        match_dense(query, key, max_bytes=0)


def test_dispatcher_routes_to_dense_and_mem():
    from refsr.matching import match
    from refsr.matching.mem import match_mem

    query, key = random_pair(8, 1, 3, 16, 16, 12, 12)
    dense = match(query, key, method="dense")
    assert torch.equal(dense.index, match_dense(query, key).index)
    mem = match(query, key, method="mem")
    assert torch.equal(mem.index, match_mem(query, key).index)


def brute_force_inside_patches(query: torch.Tensor, key: torch.Tensor, chunk: int):
    """C2-Matching's matching, literally: unfold without padding, key patches over (norm + 1e-5), conv in
    chunks of key patches, strict '>' across chunks; index in the (H-2) x (W-2) grid of inside patches."""
    n = query.shape[0]
    index = []
    for b in range(n):
        patches = key[b].unfold(1, 3, 1).unfold(2, 3, 1).reshape(key.shape[1], -1, 3, 3).permute(0, 2, 3, 1)
        best_val = best_idx = None
        for start in range(0, patches.shape[-1], chunk):
            part = patches[..., start : start + chunk]
            part = part / (part.norm(p=2, dim=(0, 1, 2)) + 1e-5)
            corr = torch.nn.functional.conv2d(query[b : b + 1], part.permute(3, 0, 1, 2))[0]
            val, idx = corr.max(dim=0)
            if best_val is None:
                best_val, best_idx = val, idx
            else:
                better = val > best_val
                best_val[better], best_idx[better] = val[better], idx[better] + start
        index.append(best_idx)
    return torch.stack(index)


def test_key_margin_keeps_the_inside_patches_as_c2_matching_does():
    gen = torch.Generator().manual_seed(11)
    query = torch.nn.functional.normalize(torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64), dim=1)
    key = torch.nn.functional.normalize(torch.randn(2, 5, 8, 9, generator=gen, dtype=torch.float64), dim=1)
    corr = match_dense(query, key, key_margin=1, max_bytes=2000)
    # Per-pixel normalised maps: every inside patch has norm 3, so the official +1e-5 changes no argmax.
    expected = brute_force_inside_patches(query, key, chunk=7)  # (2, 4, 5) in the 6 x 7 inside grid
    my, mx = corr.index // 9, corr.index % 9
    assert int(my.min()) >= 1 and int(my.max()) <= 6 and int(mx.min()) >= 1 and int(mx.max()) <= 7
    inside = (my - 1) * 7 + (mx - 1)
    assert torch.equal(inside[:, 1:-1, 1:-1], expected)
    # Without the margin, border keys win somewhere on random data.
    assert not torch.equal(match_dense(query, key).index, corr.index)
    with pytest.raises(RefsrError, match="key_margin"):
        match_dense(query, key, key_margin=4)
    assert DenseMatcher(key_margin=1)(query, key).index.equal(corr.index)
