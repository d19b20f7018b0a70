"""The indexed coarse search of MEM against brute force and against MEM's exact coarse step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import refsr
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.matching.block_search import (
    build_block_index,
    exact_search_blocks,
    index_saves_work,
    search_blocks,
    tap_offsets,
)
from refsr.matching.mem import match_mem

EPS = 1e-12


def block_descriptors(query: torch.Tensor, k: int = 8, dilations=(1, 2, 3)) -> torch.Tensor:
    """``(blocks, D)``: each block's centre patch per dilation (replicate-padded LR, as MEM cuts blocks),
    unit-normalised per dilation, taps row-major, each tap a run of C values. Written with loops."""
    q = F.pad(query, (1, 1, 1, 1), mode="replicate")[0]
    _, h, w = query.shape[1:]
    centre = (k + 2) // 2
    rows = []
    for by in range(h // k):
        for bx in range(w // k):
            parts = []
            for d in dilations:
                taps = [q[:, by * k + centre + dy, bx * k + centre + dx] for dy, dx in tap_offsets((d,))]
                vector = torch.cat(taps)
                parts.append(vector / vector.norm().clamp_min(EPS))
            rows.append(torch.cat(parts))
    return torch.stack(rows)


def coarse_score_by_hand(query_vector: np.ndarray, key: np.ndarray, y: int, x: int, dilations=(1, 2, 3)) -> float:
    """MEM's coarse score of one descriptor at key position (y, x): the sum over dilations of the cosines,
    with a zero-padded key."""
    c, height, width = key.shape
    total, start = 0.0, 0
    for d in dilations:
        taps = []
        for dy, dx in tap_offsets((d,)):
            inside = 0 <= y + dy < height and 0 <= x + dx < width
            taps.append(key[:, y + dy, x + dx] if inside else np.zeros(c))
        k = np.concatenate(taps)
        q = query_vector[start : start + 9 * c]
        start += 9 * c
        total += float(q @ k) / max(np.linalg.norm(k), EPS)
    return total


def test_descriptors_give_mem_coarse_scores_by_hand():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 16, 24, generator=gen, dtype=torch.float64)
    key = torch.randn(1, 4, 9, 11, generator=gen, dtype=torch.float64)
    key[:, :, 3:5, 4:7] = 0  # zero patches: their norms are clamped, as F.normalize does
    index = build_block_index(key, cluster_size=4, proxy_dim=8)
    queries = block_descriptors(query.float())
    positions = torch.arange(9 * 11)
    scores = queries @ index.descriptors(positions).T  # (blocks, positions)
    for b in (0, 3, 5):
        for p in (0, 10, 40, 98):
            by_hand = coarse_score_by_hand(queries[b].double().numpy(), key[0].numpy(), p // 11, p % 11)
            assert abs(float(scores[b, p]) - by_hand) < 1e-5


def test_search_probing_every_cluster_is_brute_force():
    gen = torch.Generator().manual_seed(1)
    key = torch.randn(1, 6, 20, 17, generator=gen)
    queries = block_descriptors(torch.randn(1, 6, 32, 40, generator=gen))
    index = build_block_index(key, cluster_size=8, proxy_dim=6)
    position, score = search_blocks(index, queries, probes=index.clusters, refine_radius=0)
    brute_position, brute_score = exact_search_blocks(index, queries)
    assert torch.equal(position, brute_position)
    torch.testing.assert_close(score, brute_score, rtol=0, atol=1e-5)
    # Brute force written out: the argmax over all scores (lowest position on ties).
    every = queries @ index.descriptors(torch.arange(index.positions)).T
    assert torch.equal(brute_position, every.argmax(dim=1))


def test_index_layout_is_an_inverted_file():
    key = torch.randn(1, 3, 12, 13, generator=torch.Generator().manual_seed(2))
    index = build_block_index(key, cluster_size=10)
    assert index.clusters == 16 and int(index.offsets[-1]) == 12 * 13
    assert torch.equal(index.members.sort().values, torch.arange(12 * 13))  # every position exactly once
    for c in range(index.clusters):
        members = index.members[index.offsets[c] : index.offsets[c + 1]]
        assert torch.all(members[1:] > members[:-1])  # ascending within a cluster (ties -> lowest position)
    # Deterministic: every random choice has a fixed seed.
    again = build_block_index(key, cluster_size=10)
    assert torch.equal(again.members, index.members) and torch.equal(again.centroids, index.centroids)


@pytest.fixture(scope="module")
def real_features() -> tuple[torch.Tensor, torch.Tensor]:
    """masa-lite's (shipped weights) first-level features of a real photo as the LR (192x256: 768 blocks)
    and of the same photo at 0.8 times the size as Ref↓ (154x204)."""
    photo = torch.from_numpy(load_photo("coffee.png").copy()).permute(2, 0, 1)[None]
    lr = photo[:, :, :192, :256].float() / 255
    ref_down = imresize(photo, size=(154, 204), kernel="pil").float() / 255
    model = refsr.create_model("masa-lite", weights="default").eval()
    with torch.no_grad():
        return model.encoder.level1(lr), model.encoder.level1(ref_down)


def test_fast_coarse_search_finds_the_exact_best_block_on_real_features(real_features):
    """>= 99 % of the blocks get MEM's exact coarse match (or a float-rounding tie with it), probing 16 of
    1,048 clusters (1.5 % of Ref↓, about the share probed for a 2048² reference), and the fine matches that
    follow agree as well."""
    lr_feat, ref_down_feat = real_features
    index = build_block_index(ref_down_feat, cluster_size=30)
    assert index.clusters == 1048
    exact = match_mem(lr_feat, ref_down_feat)
    fast = match_mem(lr_feat, ref_down_feat, coarse="fast", key_index=[index], probes=16)
    assert exact.extras["coarse"] == "exact" and fast.extras["coarse"] == "fast"
    exact_index, exact_score = exact.extras["coarse_index"][0], exact.extras["coarse_score"][0]
    fast_index, fast_score = fast.extras["coarse_index"][0], fast.extras["coarse_score"][0]
    found = (fast_index == exact_index) | (fast_score >= exact_score - 1e-5)
    assert found.float().mean() >= 0.99
    # The search never reports a score better than the exact best (up to rounding): the scores are exact.
    assert torch.all(fast_score <= exact_score + 1e-5)
    assert (fast.index == exact.index).float().mean() >= 0.99


def test_fast_is_exhaustive_when_an_index_would_not_save_work():
    gen = torch.Generator().manual_seed(3)
    query, key = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 4, 40, 40, generator=gen)
    assert not index_saves_work(40 * 40)
    assert index_saves_work(200 * 200)
    fast = match_mem(query, key, coarse="fast")
    exact = match_mem(query, key)
    assert fast.extras["coarse"] == "exact"
    assert torch.equal(fast.index, exact.index)


def test_bad_arguments():
    query, key = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 20, 20)
    with pytest.raises(RefsrError, match="coarse search"):
        match_mem(query, key, coarse="quick")
    index = build_block_index(key)
    with pytest.raises(RefsrError, match="coarse='fast'"):
        match_mem(query, key, key_index=[index])
    with pytest.raises(RefsrError, match="one index per batch item"):
        match_mem(query, key, coarse="fast", key_index=[index, index])
    with pytest.raises(RefsrError, match="one key map"):
        build_block_index(torch.randn(2, 4, 8, 8))


def test_search_under_inference_mode_on_two_threads():
    """The cluster loop runs in worker threads; grad and inference mode are per thread, so the workers must
    take the caller's (torch.inference_mode() around an evaluation made them fail on inference tensors)."""
    gen = torch.Generator().manual_seed(2)
    key = torch.randn(1, 6, 20, 17, generator=gen)
    queries = block_descriptors(torch.randn(1, 6, 32, 40, generator=gen))
    index = build_block_index(key, cluster_size=8, proxy_dim=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = search_blocks(index, queries, probes=4)
        with torch.inference_mode():
            position, score = search_blocks(index, queries, probes=4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(position, expected[0]) and torch.equal(score, expected[1])
