"""ZNCC block matching against an explicit loop over patches and windows; the blur helper against PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import refsr.matching
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.matching.zncc import ZNCCMatcher, blur_like_lr, match_zncc

EPS = 1e-6


def photo_tensor(name: str) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [0, 1] of a test photo."""
    return torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1)[None].float() / 255


def brute_force_zncc(query, key, patch_size, search_range, groups, centres=None):
    """Every query position against every key position of its window, in float64: zero padding, per-group
    mean subtraction and unit norm (``max(|v|, eps)``), mean over groups; strict '>' in row-major order keeps
    the lowest flat index. Returns the index and the full score list per position (for tie checks)."""
    q, k = query.double().numpy(), key.double().numpy()
    n, c, h, w = q.shape
    height, width = k.shape[2:]
    r = patch_size // 2
    q = np.pad(q, ((0, 0), (0, 0), (r, r), (r, r)))
    k = np.pad(k, ((0, 0), (0, 0), (r, r), (r, r)))

    def normalised(patch):
        parts = []
        for g in np.split(patch, groups, axis=0):
            v = g.ravel() - g.mean()
            parts.append(v / max(np.linalg.norm(v), EPS))
        return parts

    index = np.zeros((n, h, w), dtype=np.int64)
    best_value = np.zeros((n, h, w))
    for b in range(n):
        for y in range(h):
            for x in range(w):
                if search_range is None:
                    ys, xs = range(height), range(width)
                else:
                    if centres is None:
                        cy, cx = int((y + 0.5) * height / h), int((x + 0.5) * width / w)
                    else:
                        cy, cx = (int(v) for v in centres[y, x])
                    cy, cx = min(max(cy, 0), height - 1), min(max(cx, 0), width - 1)
                    ys = range(max(0, cy - search_range), min(height, cy + search_range + 1))
                    xs = range(max(0, cx - search_range), min(width, cx + search_range + 1))
                qv = normalised(q[b, :, y : y + patch_size, x : x + patch_size])
                best, best_index = -np.inf, -1
                for yy in ys:
                    for xx in xs:
                        kv = normalised(k[b, :, yy : yy + patch_size, xx : xx + patch_size])
                        value = float(np.mean([a @ bb for a, bb in zip(qv, kv)]))
                        if value > best:
                            best, best_index = value, yy * width + xx
                index[b, y, x] = best_index
                best_value[b, y, x] = best
    return index, best_value


def check_against_brute(corr, query, key, patch_size, search_range, groups, centres=None):
    index, value = brute_force_zncc(query, key, patch_size, search_range, groups, centres)
    # The winning score must equal the brute-force maximum; the index may differ only on float near-ties.
    np.testing.assert_allclose(corr.score.double().numpy(), value, atol=5e-5)  # float32 box-sum statistics
    agree = (corr.index.numpy() == index).mean()
    assert agree > 0.97, agree


@pytest.mark.parametrize("patch_size,search_range,groups", [(3, None, 1), (3, 2, 3), (1, 1, 1), (5, 3, 1)])
def test_matches_brute_force_on_random_maps(patch_size, search_range, groups):
    generator = torch.Generator().manual_seed(patch_size * 10 + groups)
    query = torch.rand(2, 3, 7, 6, generator=generator)
    key = torch.rand(2, 3, 8, 9, generator=generator)
    corr = match_zncc(query, key, patch_size=patch_size, search_range=search_range, groups=groups)
    check_against_brute(corr, query, key, patch_size, search_range, groups)


def test_tiling_does_not_change_the_result():
    # A budget of 40 kB forces 3x3 or 4x4 tiles; the result must equal the single-tile one.
    generator = torch.Generator().manual_seed(5)
    query, key = torch.rand(1, 4, 12, 11, generator=generator), torch.rand(1, 4, 12, 11, generator=generator)
    one = match_zncc(query, key, search_range=3, groups=2)
    many = match_zncc(query, key, search_range=3, groups=2, max_bytes=40_000)
    assert torch.equal(one.index, many.index)
    torch.testing.assert_close(one.score, many.score)
    check_against_brute(many, query, key, 3, 3, 2)


def test_explicit_centres_and_photo_crop():
    photo = photo_tensor("coffee.png")[:, :, :10, :10]
    query = photo[:, :, 1:9, 1:9] * 0.5 + 0.2  # a gain and offset that ZNCC must ignore
    centres = torch.stack(torch.meshgrid(torch.arange(8) + 1, torch.arange(8) + 1, indexing="ij"), dim=-1)
    corr = match_zncc(query, photo, search_range=1, centres=centres)
    check_against_brute(corr, query, photo, 3, 1, 1, centres)
    # Away from the zero-padded border every patch finds itself, with ZNCC 1.
    inner = corr.coords[0, 1:-1, 1:-1]
    ys, xs = torch.meshgrid(torch.arange(2, 8), torch.arange(2, 8), indexing="ij")
    assert torch.equal(inner, torch.stack((ys, xs), dim=-1))
    torch.testing.assert_close(corr.score[0, 1:-1, 1:-1], torch.ones(6, 6), atol=1e-4, rtol=0)


def test_flat_patches_score_zero_and_ties_pick_lowest_index():
    query = torch.full((1, 1, 3, 3), 0.5)
    key = torch.full((1, 1, 4, 4), 0.25)
    corr = match_zncc(query, key, patch_size=1)
    assert torch.equal(corr.index, torch.zeros(1, 3, 3, dtype=torch.long))
    assert torch.equal(corr.score, torch.zeros(1, 3, 3))


def test_score_is_differentiable():
    generator = torch.Generator().manual_seed(1)
    query = torch.rand(1, 2, 5, 5, generator=generator, requires_grad=True)
    key = torch.rand(1, 2, 6, 6, generator=generator, requires_grad=True)
    match_zncc(query, key, search_range=2).score.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is not None and key.grad.abs().sum() > 0


def test_dispatch_module_and_errors():
    generator = torch.Generator().manual_seed(2)
    query, key = torch.rand(1, 3, 5, 5, generator=generator), torch.rand(1, 3, 5, 5, generator=generator)
    direct = match_zncc(query, key, search_range=2)
    assert torch.equal(refsr.matching.match(query, key, method="zncc", search_range=2).index, direct.index)
    assert torch.equal(ZNCCMatcher(search_range=2)(query, key).index, direct.index)
    with pytest.raises(RefsrError):
        match_zncc(query, key, groups=2)
    with pytest.raises(RefsrError):
        match_zncc(query, key, search_range=-1)
    with pytest.raises(RefsrError):
        match_zncc(query, key, patch_size=2)


def test_blur_like_lr_is_pil_bicubic_down_then_bilinear_up():
    photo = photo_tensor("chelsea.png")
    image = photo[:, :, :32, :48]
    blurred = blur_like_lr(image, 8)
    pixels = (image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    low = np.asarray(Image.fromarray(pixels).resize((6, 4), Image.BICUBIC), dtype=np.float32) / 255
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(low).permute(2, 0, 1)[None], scale_factor=8, mode="bilinear", align_corners=False)
    assert blurred.shape == image.shape
    torch.testing.assert_close(blurred, expected, atol=1 / 255, rtol=0)
    with pytest.raises(RefsrError):
        blur_like_lr(photo[:, :, :30, :48], 8)
