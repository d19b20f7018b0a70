"""Sliding-window fusion: exact reassembly, Gaussian smoothing against a brute-force convolution, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_photo
from refsr.errors import RefsrError
from refsr.ops.sliding_window import (
    SlidingWindowFusion,
    gaussian_kernel1d,
    gaussian_smooth,
    sliding_window_fuse,
    sliding_window_positions,
)


def photo_tensor(name: str = "coffee.png", size=(72, 104)) -> torch.Tensor:
    img = load_photo(name)[: size[0], : size[1]]
    return torch.tensor(img).permute(2, 0, 1)[None].double() / 255


def cut(image: torch.Tensor, positions: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, P, C, patch, patch), a Python loop over patches (the test's own slicer)."""
    return torch.stack([image[:, :, y : y + patch, x : x + patch] for y, x in positions.tolist()], dim=1)


def test_positions_cover_every_pixel_and_end_flush() -> None:
    pos = sliding_window_positions((20, 27), 8, 5)
    assert pos[:, 0].unique().tolist() == [0, 5, 10, 12]
    assert pos[:, 1].unique().tolist() == [0, 5, 10, 15, 19]
    cover = torch.zeros(20, 27)
    for y, x in pos.tolist():
        cover[y : y + 8, x : x + 8] += 1
    assert cover.min() >= 1
    assert sliding_window_positions((16, 16), 8, 4).shape == (9, 2)
    with pytest.raises(RefsrError, match="smaller than"):
        sliding_window_positions((7, 16), 8, 4)


@pytest.mark.parametrize("mode", ["average", "mask-gaussian", None])
@pytest.mark.parametrize("stride", [3, 8, 16, 32])
def test_exact_patches_reassemble_the_image_exactly(mode, stride) -> None:
    image = photo_tensor()
    patch = 32
    pos = sliding_window_positions(image.shape[-2:], patch, stride)
    patches = cut(image, pos, patch)
    gen = torch.Generator().manual_seed(stride)
    masks = torch.rand(1, pos.shape[0], 1, patch, patch, generator=gen, dtype=torch.float64) + 0.05
    fused = sliding_window_fuse(patches, pos, image.shape[-2:], mode, masks=masks)
    # Every pixel, the borders and corners included, is a weighted average of identical values.
    torch.testing.assert_close(fused, image, rtol=0, atol=1e-12)


def test_average_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.tensor([[0, 0], [2, 3], [5, 1], [0, 6]])
    patches = torch.rand(2, 4, 3, 5, 5, generator=gen, dtype=torch.float64)
    out = sliding_window_fuse(patches, pos, (10, 11), "average")
    total = torch.zeros(2, 3, 10, 11, dtype=torch.float64)
    count = torch.zeros(10, 11, dtype=torch.float64)
    for i, (y, x) in enumerate(pos.tolist()):
        total[:, :, y : y + 5, x : x + 5] += patches[:, i]
        count[y : y + 5, x : x + 5] += 1
    expected = torch.where(count > 0, total / count.clamp_min(1), torch.zeros(()))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    assert float(out[:, :, 9, 0].abs().max()) == 0  # an uncovered pixel is 0, not NaN


def brute_force_smooth(mask: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """A direct (non-separable) 2-D convolution with the (2r+1)^2 Gaussian, zeros outside the map: one shifted
    copy of the zero-padded map per kernel tap."""
    t = np.arange(-radius, radius + 1)
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += g[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


def test_gaussian_sigma_3_matches_brute_force_convolution() -> None:
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(2, 1, 24, 21, generator=gen, dtype=torch.float64)
    smoothed = gaussian_smooth(masks, 3.0)
    assert gaussian_kernel1d(3.0).numel() == 19  # radius ceil(3 sigma) = 9
    for b in range(2):
        expected = brute_force_smooth(masks[b, 0].numpy(), 3.0, 9)
        np.testing.assert_allclose(smoothed[b, 0].numpy(), expected, rtol=0, atol=1e-13)
    # Interior of a constant mask stays constant (normalised kernel); edges fade (zeros outside).
    ones = gaussian_smooth(torch.ones(1, 40, 40, dtype=torch.float64), 3.0)
    assert float(ones[0, 20, 20]) == pytest.approx(1.0, abs=1e-12)
    assert 0.2 < float(ones[0, 0, 0]) < 0.35


def test_mask_gaussian_weights_against_explicit_weights() -> None:
    gen = torch.Generator().manual_seed(2)
    pos = sliding_window_positions((24, 24), 16, 4)
    p = pos.shape[0]
    patches = torch.rand(1, p, 3, 16, 16, generator=gen, dtype=torch.float64)
    masks = torch.rand(1, p, 1, 16, 16, generator=gen, dtype=torch.float64)
    via_mode = sliding_window_fuse(patches, pos, (24, 24), "mask-gaussian", masks=masks, sigma=3.0)
    o = torch.from_numpy(np.stack([brute_force_smooth(m, 3.0, 9) for m in masks[0, :, 0].numpy()]))
    total = torch.zeros(3, 24, 24, dtype=torch.float64)
    weight = torch.zeros(24, 24, dtype=torch.float64)
    for i, (y, x) in enumerate(pos.tolist()):
        total[:, y : y + 16, x : x + 16] += o[i] * patches[0, i]
        weight[y : y + 16, x : x + 16] += o[i]
    torch.testing.assert_close(via_mode[0], total / weight, rtol=0, atol=1e-12)
    # Weighting matters: plain averaging gives another image.
    assert (sliding_window_fuse(patches, pos, (24, 24), "average") - via_mode).abs().max() > 1e-3
    module = SlidingWindowFusion("mask-gaussian", 3.0)
    torch.testing.assert_close(module(patches, pos, (24, 24), masks=masks), via_mode, rtol=0, atol=0)


def test_gradients_reach_patches_and_masks() -> None:
    gen = torch.Generator().manual_seed(3)
    pos = sliding_window_positions((6, 6), 4, 2)
    patches = torch.rand(1, pos.shape[0], 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(1, pos.shape[0], 1, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda a, m: sliding_window_fuse(a, pos, (6, 6), "mask-gaussian", masks=m + 0.1, sigma=1.0),
        (patches, masks),
    )


@pytest.mark.parametrize(
    "kwargs, what",
    [
        (dict(positions=torch.tensor([[0, 9]])), "inside"),
        (dict(positions=torch.tensor([[0.0, 0.0]])), "integer"),
        (dict(weights="mask-gaussian"), "needs masks"),
        (dict(weights="median"), "unknown weights"),
    ],
)
def test_bad_arguments(kwargs, what) -> None:
    args = dict(patches=torch.rand(1, 1, 3, 8, 8), positions=torch.tensor([[0, 0]]), out_size=(8, 16))
    args.update(kwargs)
    with pytest.raises(RefsrError, match=what):
        sliding_window_fuse(**args)
