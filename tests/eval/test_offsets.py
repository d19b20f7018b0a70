"""SSEN's sampling-point figure (Fig. 7): composition of stacked offsets against hand-computed and brute-force
positions, the hooks, and a PNG whose drawn points are where they should be."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from refsr.errors import RefsrError
from refsr.eval.offsets import (
    SamplingFigureWriter,
    capture_offsets,
    compose_sampling_points,
    draw_sampling_points,
    kernel_taps,
    sampling_figure,
)
from refsr.models.ssen import SSENNet, SSENSelf

TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def constant_field(shifts, h: int, w: int) -> torch.Tensor:
    """``(18, h, w)`` offsets, tap ``k`` shifted by ``shifts[k] = (dy, dx)`` everywhere."""
    field = torch.zeros(18, h, w, dtype=torch.float64)
    for k, (dy, dx) in enumerate(shifts):
        field[2 * k], field[2 * k + 1] = dy, dx
    return field


def test_kernel_taps_are_in_torchvision_order() -> None:
    assert kernel_taps().tolist() == [list(t) for t in TAPS]


def test_composition_with_per_tap_constant_offsets_matches_a_hand_enumeration() -> None:
    h, w = 30, 30  # large enough that no intermediate point leaves the map
    shifts = [[(k % 3 - 1, 2 * (k // 3)) for k in range(9)],   # layer 1 (runs first)
              [(1, -1)] * 9,                                     # layer 2
              [(0, k - 4) for k in range(9)]]                    # layer 3 (runs last)
    offsets = [constant_field(s, h, w) for s in shifts]
    pixels = torch.tensor([[15, 14], [13, 16]])
    positions, weights = compose_sampling_points(offsets, pixels)
    assert positions.shape == (2, 729, 2) and weights.shape == (2, 729)
    assert torch.equal(weights, torch.ones_like(weights))
    for p, (y, x) in enumerate(pixels.tolist()):
        expected = []
        # Point m = k3 * 81 + k2 * 9 + k1: the last layer's tap varies slowest.
        for k3, k2, k1 in itertools.product(range(9), repeat=3):
            dy = sum(TAPS[k][0] + shifts[layer][k][0] for layer, k in ((0, k1), (1, k2), (2, k3)))
            dx = sum(TAPS[k][1] + shifts[layer][k][1] for layer, k in ((0, k1), (1, k2), (2, k3)))
            expected.append((y + dy, x + dx))
        # grid_sample's coordinate normalisation costs a few ulps.
        expected_t = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(positions[p], expected_t, rtol=0, atol=1e-9)


def test_composition_with_position_dependent_offsets_matches_a_brute_force_walk() -> None:
    """Integer offsets that vary with position: every intermediate point stays on the grid, so a plain
    lookup of the field at each point is exact."""
    h, w = 20, 20
    gen = torch.Generator().manual_seed(0)
    offsets = [torch.randint(-2, 3, (18, h, w), generator=gen).double() for _ in range(2)]
    masks = [torch.rand(9, h, w, generator=gen, dtype=torch.float64) for _ in range(2)]
    pixels = torch.tensor([[9, 10], [10, 8]])
    positions, weights = compose_sampling_points(offsets, pixels, masks)

    def inside(y, x):
        return 0 <= y < h and 0 <= x < w

    for p, (y, x) in enumerate(pixels.tolist()):
        m = 0
        for k2 in range(9):  # the last layer (index 1) first
            oy, ox = offsets[1][2 * k2, y, x].item(), offsets[1][2 * k2 + 1, y, x].item()
            y2, x2 = y + TAPS[k2][0] + oy, x + TAPS[k2][1] + ox
            w2 = masks[1][k2, y, x].item()
            iy, ix = int(y2), int(x2)
            for k1 in range(9):
                if inside(iy, ix):
                    oy1, ox1 = offsets[0][2 * k1, iy, ix].item(), offsets[0][2 * k1 + 1, iy, ix].item()
                    w1 = masks[0][k1, iy, ix].item()
                else:  # outside the map the offsets (and masks) read as zero
                    oy1 = ox1 = w1 = 0.0
                expected = torch.tensor([y2 + TAPS[k1][0] + oy1, x2 + TAPS[k1][1] + ox1], dtype=torch.float64)
                torch.testing.assert_close(positions[p, m], expected, rtol=0, atol=1e-9)
                assert weights[p, m].item() == pytest.approx(w2 * w1, rel=1e-9, abs=1e-12)
                m += 1


def test_fractional_positions_read_the_offsets_bilinearly() -> None:
    h, w = 8, 10
    first = torch.zeros(18, h, w, dtype=torch.float64)
    first[1::2] = torch.arange(w, dtype=torch.float64) * 0.5  # dx = x / 2: linear, so bilinear is exact
    second = constant_field([(0.0, 0.25)] * 9, h, w)
    positions, _ = compose_sampling_points([first, second], torch.tensor([[4, 4]]))
    # Layer 2's centre tap lands at x = 4.25, where layer 1's dx is 2.125; its centre tap then at 6.375.
    centre = 4 * 9 + 4
    torch.testing.assert_close(positions[0, centre], torch.tensor([4.0, 4.25 + 2.125], dtype=torch.float64))


def test_compose_rejects_bad_input() -> None:
    with pytest.raises(RefsrError):
        compose_sampling_points([], torch.zeros(1, 2))
    with pytest.raises(RefsrError, match="18"):
        compose_sampling_points([torch.zeros(9, 4, 4)], torch.zeros(1, 2))


# ------------------------------------------------------------------------------------------ drawing


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_drawn_points_are_at_the_given_positions(tmp_path) -> None:
    query = np.zeros((10, 12, 3), np.uint8)
    ref = np.zeros((9, 7, 3), np.uint8)
    query_points = torch.tensor([[2.0, 3.0], [7.0, 8.0]])
    samples = torch.tensor([[[0.0, 0.0], [4.4, 5.6], [8.0, 6.0], [-3.0, 1.0]],   # the last one is outside
                            [[1.0, 1.0], [2.5001, 2.0], [20.0, 1.0], [3.0, 6.0]]])
    colors = [(255, 0, 0), (0, 0, 255)]
    figure = draw_sampling_points(query, ref, query_points, samples, colors=colors, radius=0, query_radius=0,
                                  gap=5)
    path = tmp_path / "points.png"
    Image.fromarray(figure).save(path)
    image = read_png(path)
    assert image.shape == (10, 12 + 5 + 7, 3)
    assert (image[:, 12:17] == 255).all()  # the white gap
    right = image[:9, 17:]
    drawn = {(int(y), int(x)): tuple(right[y, x]) for y, x in zip(*np.nonzero(right.any(axis=2)))}
    assert drawn == {(0, 0): colors[0], (4, 6): colors[0], (8, 6): colors[0],
                     (1, 1): colors[1], (3, 2): colors[1], (3, 6): colors[1]}
    left = image[:, :12]
    assert {(int(y), int(x)) for y, x in zip(*np.nonzero(left.any(axis=2)))} == {(2, 3), (7, 8)}


def _set_constant_offsets(model: torch.nn.Module, shifts_per_layer) -> None:
    """Make every offset estimator predict the given constant offsets and a modulation of ~1 everywhere."""
    with torch.no_grad():
        for estimator, shifts in zip(model.ssen.estimators, shifts_per_layer):
            estimator.conv_out.weight.zero_()
            bias = torch.full((27,), 30.0)  # sigmoid(30) = 1 - 1e-13
            bias[:18] = torch.tensor([v for s in shifts for v in s], dtype=torch.float32)
            estimator.conv_out.bias.copy_(bias)


def test_ssen_figure_draws_the_hand_computed_sampling_points(tmp_path) -> None:
    torch.manual_seed(0)
    model = SSENNet(nf=4, extractor_blocks=1, recon_blocks=1, num_dcn_layers=2).eval()
    shifts = [[(1, 0)] * 9, [(0, -1)] * 9]
    _set_constant_offsets(model, shifts)
    lr = torch.zeros(1, 3, 8, 16)
    ref = torch.zeros(1, 3, 32, 64)  # the HR size: used as it is, feature y -> Ref pixel 4y
    captured = capture_offsets(model, lr, ref)
    assert len(captured) == 2
    assert torch.equal(captured[0][0][0, :, 2, 3], torch.tensor([1.0, 0.0] * 9))
    assert torch.equal(captured[1][0][0, :, 2, 3], torch.tensor([0.0, -1.0] * 9))

    path = tmp_path / "fig.png"
    figure, points = sampling_figure(model, lr, ref, [[3, 7]], path, radius=0)
    # Feature (3, 7): layer 2's taps at (3 + a, 7 - 1 + b), then layer 1's at + (1 + c, d), a..d in -1..1.
    steps = itertools.product((-1, 0, 1), repeat=4)
    expected = {(4 * (3 + a + 1 + c), 4 * (6 + b + d)) for a, b, c, d in steps}
    assert points.shape == (1, 81, 2)
    assert {(round(y), round(x)) for y, x in points[0].tolist()} == expected
    assert float((points - points.round()).abs().max()) < 1e-6
    image = read_png(path)
    assert image.shape == (32, 64 + 8 + 64, 3) and np.array_equal(image, figure)
    right = image[:, 72:]
    drawn = {(int(y), int(x)) for y, x in zip(*np.nonzero(right.any(axis=2)))}
    assert drawn == expected
    # The query pixel is marked on the LR↑ at 4 * (3, 7).
    assert right.any() and image[12, 28].any()


def test_self_similarity_figure_maps_lr_pixels_to_the_upscaled_lr(tmp_path) -> None:
    model = SSENSelf(nf=4, n_groups=2, n_blocks=1, reduction=2, num_dcn_layers=1).eval()
    _set_constant_offsets(model, [[(0, 2)] * 9])
    lr = torch.full((1, 3, 8, 8), 0.5)
    _, points = sampling_figure(model, lr, None, [[4, 2]], tmp_path / "self.png")
    expected = sorted((4 * (4 + dy) + 1.5, 4 * (2 + dx + 2) + 1.5) for dy, dx in TAPS)
    torch.testing.assert_close(points[0][torch.argsort(points[0, :, 0] * 1000 + points[0, :, 1])],
                               torch.tensor(expected, dtype=torch.float64))
    assert read_png(tmp_path / "self.png").shape == (32, 32 + 8 + 32, 3)


def test_figure_writer_hook_and_errors(tmp_path) -> None:
    model = SSENNet(nf=4, extractor_blocks=1, recon_blocks=1).eval()
    writer = SamplingFigureWriter(tmp_path / "figs", model, points_per_side=2)
    inputs = SimpleNamespace(lr=torch.rand(1, 3, 8, 8), ref=torch.rand(1, 3, 32, 32))
    writer(0, {"name": "a b"}, inputs, torch.zeros(1, 3, 32, 32), None)
    assert [p.name for p in writer.written] == ["a_b_offsets.png"] and writer.written[0].is_file()
    with pytest.raises(RefsrError, match="no SSEN"):
        capture_offsets(SSENNet(nf=4, extractor_blocks=0, recon_blocks=0, use_reference=False),
                        inputs.lr, inputs.ref)
    with pytest.raises(RefsrError, match="inside"):
        sampling_figure(model, inputs.lr, inputs.ref, [[8, 0]])
