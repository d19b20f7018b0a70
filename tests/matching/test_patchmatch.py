"""AMSA's coarse-to-fine PatchMatch against exhaustive matching, an independent cosine and its contract."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import refsr.matching.patchmatch as pm
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.matching import match
from refsr.matching.dense import match_dense
from refsr.matching.patchmatch import (
    SCHEDULES,
    PatchMatcher,
    default_search_radius,
    match_patchmatch,
    propagation_dilations,
    resolve_schedule,
    search_radii,
)

EPS = 1e-12

# White-noise inputs (used here for shape and contract checks) make the projection warn; that is tested once.
pytestmark = pytest.mark.filterwarnings("ignore:PatchMatch's:RuntimeWarning")


def cnn_features(image: np.ndarray, channels: int = 32, seed: int = 0) -> torch.Tensor:
    """Learned-style features: a fixed, seeded 2-layer conv + ReLU net on an HxWx3 uint8 image, float64."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(channels, 3, 3, 3, generator=gen, dtype=torch.float64) / np.sqrt(27)
    b1 = torch.randn(channels, generator=gen, dtype=torch.float64) * 0.1
    w2 = torch.randn(channels, channels, 3, 3, generator=gen, dtype=torch.float64) / np.sqrt(9 * channels)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].double() / 255
    return F.conv2d(F.relu(F.conv2d(x, w1, b1, padding=1)), w2, padding=1)


def true_cosine(query: torch.Tensor, key: torch.Tensor, index: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cosine of each query patch with the key patch at ``index``, from explicit unfolded vectors, float64."""
    r = patch_size // 2
    q = F.unfold(F.pad(query.double(), (r,) * 4), patch_size)  # (N, C*p*p, h*w)
    k = F.unfold(F.pad(key.double(), (r,) * 4), patch_size)  # (N, C*p*p, H*W)
    picked = torch.gather(k, 2, index.flatten(1).unsqueeze(1).expand(-1, k.shape[1], -1))
    cos = (q * picked).sum(1) / (q.norm(dim=1).clamp_min(EPS) * picked.norm(dim=1).clamp_min(EPS))
    return cos.view(index.shape)


def shifted_pair(name: str, channels: int = 32, size=(72, 80), shift=(3, -4)):
    """Two overlapping crops of one photo's features; the key window is the query's moved by ``shift``."""
    feats = cnn_features(load_photo(name), channels)
    top, left = 10, 12
    query = feats[..., top : top + size[0], left : left + size[1]]
    key = feats[..., top + shift[0] : top + shift[0] + size[0], left + shift[1] : left + shift[1] + size[1]]
    return query.contiguous(), key.contiguous()


def quality(query: torch.Tensor, key: torch.Tensor, corr) -> tuple[float, float]:
    """(mean similarity / optimal mean similarity, share of positions on the dense argmax), in float64."""
    dense = match_dense(query.double(), key.double())
    achieved = true_cosine(query, key, corr.index, 3)
    return float(achieved.mean() / dense.score.mean()), float((corr.index == dense.index).double().mean())


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "chelsea.png"])
def test_paper_schedule_nearly_optimal_on_shifted_crops(name):
    query, key = shifted_pair(name)
    corr = match_patchmatch(query.float(), key.float(), schedule="paper")
    ratio, agreement = quality(query, key, corr)
    assert ratio >= 0.99
    assert agreement >= 0.90


def test_nearly_optimal_on_rescaled_copy_with_64_channels():
    image = load_photo("coffee.png")
    height, width = image.shape[:2]
    smaller = np.array(Image.fromarray(image).resize((int(width * 0.9), int(height * 0.9)), Image.BICUBIC))
    query = cnn_features(image, 64)[..., 10:74, 12:92].contiguous()
    key = cnn_features(smaller, 64)[..., 9:73, 11:91].contiguous()
    ratio, agreement = quality(query, key, match_patchmatch(query.float(), key.float()))
    assert ratio >= 0.99
    assert agreement >= 0.90


def test_warns_when_projection_keeps_little_energy():
    noise = torch.randn(1, 64, 24, 24, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="proxy_dim=None"):
        corr = match_patchmatch(noise, noise.flip(-1))
    assert min(corr.extras["proxy_energy"]) < 0.5
    query, key = shifted_pair("chelsea.png", size=(24, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corr = match_patchmatch(query.float(), key.float())
    assert min(corr.extras["proxy_energy"]) > 0.99


def test_exact_ranking_and_official_propagation_also_work():
    query, key = shifted_pair("astronaut.png", size=(40, 48))
    exact = match_patchmatch(query, key, proxy_dim=None)
    assert exact.extras["proxy_energy"] == (1.0,) * len(exact.extras["levels"])
    ratio, agreement = quality(query, key, exact)
    assert ratio >= 0.995 and agreement >= 0.90
    copied = match_patchmatch(query, key, propagation="index", schedule="official")
    ratio, _ = quality(query, key, copied)
    assert ratio >= 0.98


def test_score_is_true_cosine_at_index_including_zero_patches():
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(2, 5, 19, 23, generator=gen, dtype=torch.float64)
    key = torch.randn(2, 5, 17, 29, generator=gen, dtype=torch.float64)
    query[0, :, 5:12, 5:12] = 0  # all-zero patches: cosine 0 by F.normalize's rule
    key[1, :, :6, :] = 0
    corr = match_patchmatch(query, key, seed=7)
    assert corr.score.dtype == torch.float64
    torch.testing.assert_close(corr.score, true_cosine(query, key, corr.index, 3), rtol=0, atol=1e-12)
    assert torch.all(corr.score[0, 7:10, 7:10] == 0)
    # Official-style inner product: score times the query patch norm.
    q_norm = F.unfold(F.pad(query, (1,) * 4), 3).norm(dim=1).view(2, 19, 23)
    torch.testing.assert_close(corr.extras["inner_product"], corr.score * q_norm)


def test_score_is_differentiable():
    gen = torch.Generator().manual_seed(4)
    query = torch.randn(1, 4, 12, 12, generator=gen, requires_grad=True)
    key = torch.randn(1, 4, 10, 14, generator=gen, requires_grad=True)
    corr = match_patchmatch(query, key)
    corr.score.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is not None and key.grad.abs().sum() > 0


def test_deterministic_for_a_seed_and_independent_of_global_rng():
    gen = torch.Generator().manual_seed(5)
    query = torch.randn(1, 8, 40, 36, generator=gen)
    key = torch.randn(1, 8, 44, 38, generator=gen)
    torch.manual_seed(123)
    first = match_patchmatch(query, key, seed=11)
    torch.manual_seed(999)
    torch.rand(17)
    second = match_patchmatch(query, key, seed=11)
    assert torch.equal(first.index, second.index)
    assert torch.equal(first.score, second.score)
    # On noise, where many matches are near-equal, another seed lands elsewhere at some positions.
    other = match_patchmatch(query, key, seed=12)
    assert not torch.equal(first.index, other.index)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 4),
    h=st.integers(1, 21),
    w=st.integers(1, 21),
    height=st.integers(1, 21),
    width=st.integers(1, 21),
    patch_size=st.sampled_from([1, 3, 5]),
    proxy_dim=st.sampled_from([None, 2, 32]),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_shapes(n, c, h, w, height, width, patch_size, proxy_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    key = torch.randn(n, c, height, width, generator=gen, dtype=torch.float64)
    corr = match_patchmatch(query, key, patch_size=patch_size, proxy_dim=proxy_dim, seed=seed)
    assert corr.index.shape == (n, h, w) and corr.index.dtype == torch.long
    assert corr.score.shape == (n, h, w)
    assert corr.key_size == (height, width)
    assert int(corr.index.min()) >= 0 and int(corr.index.max()) < height * width
    expected = true_cosine(query, key, corr.index, patch_size)
    torch.testing.assert_close(corr.score, expected, rtol=0, atol=1e-12)
    # Every level respects the size floor, except a single level for inputs already below it.
    levels = corr.extras["levels"]
    assert len(levels) == len(corr.extras["iterations"]) <= 4
    assert levels[-1] == ((h, w), (height, width))
    if len(levels) > 1:
        assert min(min(q + k) for q, k in levels) >= 4


def test_tiny_key_has_a_single_answer():
    query = torch.randn(1, 3, 9, 7)
    key = torch.randn(1, 3, 1, 1)
    corr = match_patchmatch(query, key)
    assert torch.equal(corr.index, torch.zeros(1, 9, 7, dtype=torch.long))


def official_pyramid(image: np.ndarray, channels: int, levels: int = 4) -> list[torch.Tensor]:
    """Features of chained bicubic /2 downsamplings of the image (the official pyramid), finest first."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].double()
    images = [x]
    for _ in range(levels - 1):
        images.append(F.interpolate(images[-1], scale_factor=0.5, mode="bicubic", align_corners=False))
    return [cnn_features(i[0].permute(1, 2, 0).clamp(0, 255).numpy(), channels) for i in images]


def test_explicit_pyramids_with_or_without_full_level():
    photo = load_photo("chelsea.png")
    q_pyr = [t.float() for t in official_pyramid(photo[:64, :72], 16)]
    k_pyr = [t.float() for t in official_pyramid(photo[4:68, 2:74], 16)]
    query, key = q_pyr[0], k_pyr[0]
    with_full = match_patchmatch(query, key, query_pyramid=q_pyr, key_pyramid=k_pyr)
    without = match_patchmatch(query, key, query_pyramid=q_pyr[1:], key_pyramid=k_pyr[1:])
    assert torch.equal(with_full.index, without.index)
    sizes = [(8, 9), (16, 18), (32, 36), (64, 72)]
    assert with_full.extras["levels"] == [(size, size) for size in sizes]
    ratio, agreement = quality(query, key, with_full)
    assert ratio >= 0.99 and agreement >= 0.9
    # The coarse levels really come from the given pyramid: with no iterations at the finest level, the
    # result is the upsampled coarse field, which differs from the one the default pyramid gives.
    coarse_only = dict(schedule=(1, 1, 1, 0), polish=0)
    explicit = match_patchmatch(query, key, query_pyramid=q_pyr, key_pyramid=k_pyr, **coarse_only)
    default = match_patchmatch(query, key, **coarse_only)
    assert default.extras["levels"] == explicit.extras["levels"]
    assert not torch.equal(default.index, explicit.index)


def test_explicit_pyramid_errors():
    query, key = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16)
    half = [torch.randn(1, 2, 8, 8)]
    with pytest.raises(RefsrError, match="both"):
        match_patchmatch(query, key, query_pyramid=half)
    with pytest.raises(RefsrError, match="as many levels"):
        match_patchmatch(query, key, query_pyramid=half, key_pyramid=half + [torch.randn(1, 2, 4, 4)])
    with pytest.raises(RefsrError, match="N and C"):
        match_patchmatch(query, key, query_pyramid=[torch.randn(1, 3, 8, 8)], key_pyramid=half)


def test_schedule_presets_and_iteration_counts(monkeypatch):
    assert resolve_schedule("paper") == SCHEDULES["paper"] == (1, 1, 2, 6)
    assert resolve_schedule("official") == SCHEDULES["official"] == (1, 1, 1, 4)
    assert resolve_schedule([3, 2]) == (3, 2)
    for bad in ("fast", (), (1, -1), (1.5,)):
        with pytest.raises(RefsrError):
            resolve_schedule(bad)

    calls: dict[tuple[int, int], list[int]] = {}
    searches: dict[tuple[int, int], list[int]] = {}
    real_propagate, real_search = pm._propagate, pm._search

    def count_propagate(field, dilation, shift_by_offset):
        calls.setdefault(tuple(field.y.shape[-2:]), []).append(dilation)
        return real_propagate(field, dilation, shift_by_offset)

    def count_search(field, radius):
        searches.setdefault(tuple(field.y.shape[-2:]), []).append(radius)
        return real_search(field, radius)

    monkeypatch.setattr(pm, "_propagate", count_propagate)
    monkeypatch.setattr(pm, "_search", count_search)
    query, key = torch.randn(1, 4, 128, 96), torch.randn(1, 4, 64, 80)
    for schedule, counts in (("paper", (1, 1, 2, 6)), ("official", (1, 1, 1, 4)), ((2, 3), (2, 3))):
        calls.clear()
        searches.clear()
        corr = match_patchmatch(query, key, schedule=schedule, polish=0)
        assert corr.extras["iterations"] == counts
        sizes = [q for q, _ in corr.extras["levels"]]
        assert sizes == [(128 // 2**i, 96 // 2**i) for i in range(len(counts))][::-1]
        for level, ((q_size, k_size), count) in enumerate(zip(corr.extras["levels"], counts)):
            assert calls[q_size] == propagation_dilations(*q_size) * count
            # The coarsest level searches the whole key; the finer ones up to default_search_radius.
            limit = None if level == 0 else default_search_radius(64, 80)
            assert searches[q_size] == search_radii(*k_size, limit) * count
    # The paper's jump-flooding range: log2(side / 8) steps, side = the level's smaller query side.
    assert propagation_dilations(96, 128) == [1, 2, 4]
    assert propagation_dilations(256, 256) == [1, 2, 4, 8, 16]
    assert propagation_dilations(12, 40) == [1]
    assert search_radii(64, 80) == [1, 2, 4, 8, 16, 32]
    assert search_radii(64, 80, 8) == [1, 2, 4, 8] and search_radii(3, 2) == [1]
    # The official bound: 2 ** floor(log2((min side - 3) // 8)).
    assert default_search_radius(64, 80) == 4 and default_search_radius(40, 40) == 4
    assert default_search_radius(256, 256) == 16 and default_search_radius(96, 100) == 8
    assert default_search_radius(10, 9) == 1


def test_small_inputs_use_fewer_levels_finest_entries():
    query, key = torch.randn(1, 3, 16, 20), torch.randn(1, 3, 40, 40)
    corr = match_patchmatch(query, key, schedule="paper")
    # 16 -> 8 -> 4 (a 2-pixel level would be below min_level_size=4).
    assert corr.extras["levels"] == [((4, 5), (10, 10)), ((8, 10), (20, 20)), ((16, 20), (40, 40))]
    assert corr.extras["iterations"] == (1, 2, 6)
    single = match_patchmatch(query, key, schedule=(5,))
    assert single.extras["levels"] == [((16, 20), (40, 40))] and single.extras["iterations"] == (5,)


def test_batch_samples_match_within_their_own_key():
    q0, k0 = shifted_pair("astronaut.png", size=(40, 48))
    q1, k1 = shifted_pair("coffee.png", size=(40, 48), shift=(-2, 5))
    query, key = torch.cat([q0, q1]).float(), torch.cat([k0, k1]).float()
    corr = match_patchmatch(query, key)
    for b, (q, k) in enumerate(((q0, k0), (q1, k1))):
        dense = match_dense(q, k)
        assert float(true_cosine(q, k, corr.index[b : b + 1], 3).mean() / dense.score.mean()) >= 0.99


def test_module_dispatcher_and_bad_options():
    gen = torch.Generator().manual_seed(8)
    query, key = torch.randn(1, 6, 20, 18, generator=gen), torch.randn(1, 6, 22, 16, generator=gen)
    direct = match_patchmatch(query, key, schedule="official", seed=3)
    module = PatchMatcher(schedule="official", seed=3)
    assert torch.equal(module(query, key).index, direct.index)
    assert "(1, 1, 1, 4)" in repr(module)
    dispatched = match(query, key, method="patchmatch", schedule="official", seed=3)
    assert torch.equal(dispatched.index, direct.index)
    with pytest.raises(RefsrError):
        match_patchmatch(query, key, patch_size=2)
    with pytest.raises(RefsrError, match="propagation"):
        match_patchmatch(query, key, propagation="neighbour")
    with pytest.raises(RefsrError, match="proxy_dim"):
        match_patchmatch(query, key, proxy_dim=0)
    with pytest.raises(RefsrError, match="search_radius"):
        match_patchmatch(query, key, search_radius=1.5)
    with pytest.raises(RefsrError, match="N and C"):
        match_patchmatch(query, key, query_pyramid=["not a map"], key_pyramid=[key])
    with pytest.raises(RefsrError):
        match_patchmatch(query, key[:, :5])


def interior_dense_score(query: torch.Tensor, key: torch.Tensor, margin: int) -> torch.Tensor:
    """Brute-force best cosine ``(N, h, w)`` of each query patch over keys >= ``margin`` from the border."""
    q = F.unfold(F.pad(query.double(), (1,) * 4), 3)
    k = F.unfold(F.pad(key.double(), (1,) * 4), 3)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(EPS)
    k = k / k.norm(dim=1, keepdim=True).clamp_min(EPS)
    height, width = key.shape[-2:]
    allowed = torch.zeros(height, width, dtype=torch.bool)
    allowed[margin : height - margin, margin : width - margin] = True
    cos = (q.transpose(1, 2) @ k).masked_fill(~allowed.flatten(), float("-inf"))  # (N, h*w, H*W)
    return cos.max(dim=2).values.view(query.shape[0], *query.shape[-2:])


def test_each_batch_item_matches_exactly_as_it_would_alone():
    names, shifts = ("astronaut.png", "coffee.png", "chelsea.png"), ((3, -4), (-2, 5), (1, 1))
    pairs = [shifted_pair(name, size=(20, 24), shift=shift) for name, shift in zip(names, shifts)]
    query = torch.cat([q for q, _ in pairs]).float()
    key = torch.cat([k for _, k in pairs]).float()
    for options in ({"schedule": "paper"}, {"schedule": "official", "key_margin": 1}):
        batch = match_patchmatch(query, key, seed=5, pca_samples=256, **options)
        for item in range(3):
            alone = match_patchmatch(
                query[item : item + 1], key[item : item + 1], seed=5, pca_samples=256, **options
            )
            assert torch.equal(batch.index[item], alone.index[0])
            assert torch.equal(batch.score[item], alone.score[0])


def test_key_margin_keeps_keys_inside_and_is_nearly_optimal_there():
    query, key = shifted_pair("chelsea.png", size=(40, 48), shift=(-3, 4))
    corr = PatchMatcher(key_margin=1)(query.float(), key.float())
    height, width = key.shape[-2:]
    y, x = corr.index // width, corr.index % width
    assert int(y.min()) >= 1 and int(y.max()) <= height - 2
    assert int(x.min()) >= 1 and int(x.max()) <= width - 2
    optimal = interior_dense_score(query, key, 1)
    achieved = true_cosine(query, key, corr.index, 3)
    assert float(achieved.mean() / optimal.mean()) >= 0.99
    # On noise the unrestricted optimum often lies on the border; the margin must still hold there.
    gen = torch.Generator().manual_seed(9)
    noisy = match_patchmatch(
        torch.randn(2, 8, 12, 10, generator=gen), torch.randn(2, 8, 9, 11, generator=gen), key_margin=2
    )
    y, x = noisy.index // 11, noisy.index % 11
    assert int(y.min()) >= 2 and int(y.max()) <= 6 and int(x.min()) >= 2 and int(x.max()) <= 8
    with pytest.raises(RefsrError):
        match_patchmatch(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 2), key_margin=1)
    with pytest.raises(RefsrError):
        match_patchmatch(torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), key_margin=-1)
