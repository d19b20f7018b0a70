"""MASA's texture transfer against a literal per-block unfold/fold reimplementation, and by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.matching.correspondence import Correspondence
from refsr.matching.mem import match_mem
from refsr.matching.transfer import MASATransfer, fold_transfer, masa_transfer


def reference_transfer(corr: Correspondence, ref_feats, scales):
    """The official rules, block by block: crop the window at scale s, unfold 3s x 3s patches with stride
    s, pick the matched ones, fold them back with padding s, divide by the fold of ones, multiply by the
    block's score resized with bilinear interpolation (align_corners=False)."""
    k = corr.extras["block_size"]
    py, px = corr.extras["block_grid"]
    window_h, window_w = corr.extras["window_size"]
    local = corr.extras["local_index"]
    origin = corr.extras["window_origin"]
    n, h, w = corr.index.shape
    outputs = []
    for s, ref in zip(scales, ref_feats):
        out = ref.new_zeros(n, ref.shape[1], h * s, w * s)
        for b in range(n):
            for by in range(py):
                for bx in range(px):
                    block = by * px + bx
                    y0, x0 = (int(v) for v in origin[b, block])
                    # Negative positions wrap around, as tensor indexing does in the official code.
                    rows = torch.tensor([y0 * s + j for j in range(window_h * s)])
                    cols = torch.tensor([x0 * s + j for j in range(window_w * s)])
                    window = ref[b][:, rows][:, :, cols][None]
                    patches = F.unfold(window, 3 * s, stride=s)
                    picked = patches[:, :, local[b, block].reshape(-1)]
                    size = (k * s, k * s)
                    folded = F.fold(picked, size, 3 * s, padding=s, stride=s)
                    divisor = F.fold(torch.ones_like(picked), size, 3 * s, padding=s, stride=s)
                    score = corr.score[b, by * k : (by + 1) * k, bx * k : (bx + 1) * k][None, None]
                    attention = F.interpolate(score, size=size, mode="bilinear", align_corners=False)
                    out[b, :, by * k * s : (by + 1) * k * s, bx * k * s : (bx + 1) * k * s] = (
                        folded / divisor * attention
                    )[0]
        outputs.append(out)
    return outputs


def mem_case(seed, n, c, h, w, height, width, channels=(3, 4, 2)):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    key = torch.randn(n, c, height, width, generator=gen, dtype=torch.float64)
    corr = match_mem(query, key)
    refs = [
        torch.randn(n, ch, s * height, s * width, generator=gen, dtype=torch.float64)
        for s, ch in zip((1, 2, 4), channels)
    ]
    return corr, refs


@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 16, 24, 20, 18),
        (1, 2, 40, 40, 40, 40),  # MASA's training size: 5x5 blocks, 15x15 windows
        (2, 2, 8, 8, 6, 6),  # windows larger than Ref↓: they wrap
        (1, 2, 8, 16, 5, 9),
    ],
)
def test_equals_literal_reference(shape):
    corr, refs = mem_case(sum(shape), *shape)
    ours = masa_transfer(corr, refs)
    expected = reference_transfer(corr, refs, (1, 2, 4))
    n, _, h, w = shape[0], shape[1], shape[2], shape[3]
    for s, got, want, ref in zip((1, 2, 4), ours, expected, refs):
        assert got.shape == (n, ref.shape[1], s * h, s * w)
        assert got.permute(0, 2, 3, 1).is_contiguous()  # channels-last
        assert (got - want).abs().max() < 1e-10


def test_gradients_equal_literal_reference():
    corr, refs = mem_case(3, 1, 2, 16, 16, 14, 12)
    score = corr.score.detach().clone().requires_grad_(True)
    corr = dataclasses.replace(corr, score=score)
    refs = [r.requires_grad_(True) for r in refs]
    weights = [torch.randn_like(r.new_empty(1, r.shape[1], 16 * s, 16 * s)) for r, s in zip(refs, (1, 2, 4))]

    def loss(outputs):
        return sum((o * wt).sum() for o, wt in zip(outputs, weights))

    ours = torch.autograd.grad(loss(masa_transfer(corr, refs)), [score, *refs])
    theirs = torch.autograd.grad(loss(reference_transfer(corr, refs, (1, 2, 4))), [score, *refs])
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-10


def hand_made(local, origin, window_size, score, key_size, grid=(1, 1), k=8):
    """A Correspondence built by hand, with the extras masa_transfer reads."""
    dx = window_size[1] - 2
    n = local.shape[0]
    py, px = grid
    top_y = origin[:, :, 0, None, None] + local // dx + 1
    top_x = origin[:, :, 1, None, None] + local % dx + 1
    index = (top_y * key_size[1] + top_x).view(n, py, px, k, k).transpose(2, 3).reshape(n, py * k, px * k)
    return Correspondence(
        index=index,
        score=score,
        key_size=key_size,
        extras={
            "block_size": k,
            "block_grid": grid,
            "window_origin": origin,
            "window_size": window_size,
            "local_index": local,
        },
    )


def test_identity_correspondence_copies_the_ref_times_attention():
    # One 8x8 block; its 10x10 window is the whole Ref↓; LR pixel (a, b) matches the patch centred at
    # (a+1, b+1). Every patch covering an output pixel then carries the same Ref value, so the transfer
    # is a plain crop of the Ref map, scaled by the attention.
    a, b = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    local = (a * 8 + b)[None, None]
    origin = torch.zeros(1, 1, 2, dtype=torch.long)
    corr = hand_made(local, origin, (10, 10), torch.full((1, 8, 8), 0.5, dtype=torch.float64), (10, 10))
    gen = torch.Generator().manual_seed(0)
    refs = [torch.randn(1, 3, 10 * s, 10 * s, generator=gen, dtype=torch.float64) for s in (1, 2, 4)]
    for s, out, ref in zip((1, 2, 4), masa_transfer(corr, refs), refs):
        torch.testing.assert_close(out, 0.5 * ref[:, :, s : 9 * s, s : 9 * s], rtol=0, atol=1e-12)


def test_constant_match_averages_by_overlap_count():
    # Every pixel of the block matches the same patch, top-left (2, 3) in a 12x12 window at the origin.
    # Ref value = 100 * row + column. An output cell averages cell (t, u) of the patches of the block
    # pixels (a+1-t, b+1-u) that exist: 3 per axis inside, 2 at the block's first and last rows/columns.
    top_y, top_x = 2, 3
    local = torch.full((1, 1, 8, 8), top_y * 10 + top_x)
    origin = torch.zeros(1, 1, 2, dtype=torch.long)
    corr = hand_made(local, origin, (12, 12), torch.ones(1, 8, 8, dtype=torch.float64), (12, 12))
    refs = []
    for s in (1, 2):
        yy, xx = torch.meshgrid(torch.arange(12 * s), torch.arange(12 * s), indexing="ij")
        refs.append((100.0 * yy + xx).double()[None, None])
    mean_offset = torch.tensor([0.5, 1, 1, 1, 1, 1, 1, 1.5], dtype=torch.float64)  # mean of the valid t
    out1, out2 = masa_transfer(corr, refs, scales=(1, 2))
    expected1 = 100 * (top_y + mean_offset)[:, None] + (top_x + mean_offset)[None, :]
    torch.testing.assert_close(out1[0, 0], expected1, rtol=0, atol=1e-9)
    sub = torch.arange(2, dtype=torch.float64)
    rows2 = (2 * (top_y + mean_offset)[:, None] + sub).reshape(16)  # row 2a + sy
    cols2 = (2 * (top_x + mean_offset)[:, None] + sub).reshape(16)
    torch.testing.assert_close(out2[0, 0], 100 * rows2[:, None] + cols2[None, :], rtol=0, atol=1e-9)


def test_attention_is_resized_per_block():
    # Two blocks side by side, identity matches, Ref all ones: the output is the resized attention alone.
    a, b = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    local = (a * 8 + b).expand(1, 2, 8, 8)
    origin = torch.tensor([[[0, 0], [0, 8]]])
    score = torch.cat(
        (torch.full((1, 8, 8), 0.2, dtype=torch.float64), a.double()[None]), dim=2
    )  # left block constant 0.2, right block a ramp down the rows (0..7)
    corr = hand_made(local, origin, (10, 10), score, (10, 18), grid=(1, 2))
    refs = [torch.ones(1, 1, 10 * s, 18 * s, dtype=torch.float64) for s in (1, 2, 4)]
    for s, out in zip((1, 2, 4), masa_transfer(corr, refs)):
        left, right = out[0, 0, :, : 8 * s], out[0, 0, :, 8 * s :]
        # No blending across the block border: the left block stays exactly 0.2.
        torch.testing.assert_close(left, torch.full_like(left, 0.2), rtol=0, atol=1e-12)
        # Bilinear with align_corners=False on a linear ramp: source row (i + 0.5) / s - 0.5, clamped.
        i = torch.arange(8 * s, dtype=torch.float64)
        ramp = ((i + 0.5) / s - 0.5).clamp(0, 7)
        torch.testing.assert_close(right, ramp[:, None].expand(8 * s, 8 * s), rtol=0, atol=1e-12)


def test_module_wrapper_and_errors():
    corr, refs = mem_case(9, 1, 2, 16, 16, 12, 12)
    module = MASATransfer(scales=(1, 2, 4))
    for a, b in zip(module(corr, refs), masa_transfer(corr, refs)):
        assert torch.equal(a, b)
    with pytest.raises(RefsrError, match="match_mem"):
        masa_transfer(dataclasses.replace(corr, extras={}), refs)
    with pytest.raises(RefsrError):
        masa_transfer(corr, refs[:2])
    with pytest.raises(RefsrError):
        masa_transfer(corr, [refs[0], refs[2], refs[1]])  # sizes do not fit the scales
    with pytest.raises(RefsrError, match="floating point"):
        masa_transfer(corr, [(r * 10).long() for r in refs])
    # Scores and features of different precision (mixed-precision training): the output follows the features.
    mixed = masa_transfer(corr, [r.float() for r in refs])
    for low, exact in zip(mixed, masa_transfer(corr, refs)):
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.double(), exact, rtol=1e-5, atol=1e-6)


def test_maps_of_another_dtype_than_the_score():
    """A bfloat16 or float32 model matches in float32 or float64: each output takes its map's dtype and
    equals the transfer in the score's dtype, rounded."""
    corr, refs = mem_case(9, 1, 2, 16, 16, 12, 12)
    expected = masa_transfer(corr, refs)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        outputs = masa_transfer(corr, [r.to(dtype) for r in refs])
        for out, want in zip(outputs, expected):
            assert out.dtype == dtype
            torch.testing.assert_close(out.double(), want, rtol=tolerance, atol=tolerance * want.abs().max().item())


@pytest.mark.parametrize("n, h, w, height, width", [(2, 5, 6, 7, 4), (1, 3, 3, 3, 5)])
def test_fold_transfer_equals_ttsr_unfold_gather_fold(n, h, w, height, width):
    """TTSR's SearchTransfer: unfold (3s, padding s, stride s), gather the matched columns, fold, / 9."""
    gen = torch.Generator().manual_seed(h * w)
    index = torch.randint(0, height * width, (n, h, w), generator=gen)
    corr = Correspondence(index, torch.zeros(n, h, w, dtype=torch.float64), (height, width))
    feats = [torch.randn(n, 2 + s, s * height, s * width, generator=gen, dtype=torch.float64, requires_grad=True)
             for s in (1, 2, 4)]
    outputs = fold_transfer(corr, feats)
    for s, feat, out in zip((1, 2, 4), feats, outputs):
        columns = F.unfold(feat, 3 * s, padding=s, stride=s)
        taken = torch.gather(columns, 2, index.view(n, 1, -1).expand(-1, columns.shape[1], -1))
        expected = F.fold(taken, (s * h, s * w), 3 * s, padding=s, stride=s) / 9
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        got, want = torch.autograd.grad(out, feat, grad)[0], torch.autograd.grad(expected, feat, grad)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fold_transfer_of_the_identity_is_the_map_times_overlap_over_9():
    """Matching every position to itself pastes the Ref back; the border has fewer overlapping patches
    (4 in the corners, 6 on the edges) and the official divisor stays 9."""
    h, w = 4, 5
    index = torch.arange(h * w).view(1, h, w)
    corr = Correspondence(index, torch.zeros(1, h, w), (h, w))
    ref = torch.rand(1, 3, h, w, dtype=torch.float64)
    (out,) = fold_transfer(corr, [ref], scales=(1,))
    count = torch.full((h, w), 9.0, dtype=torch.float64)
    count[0, :] -= 3
    count[-1, :] -= 3
    count[:, 0] -= 3
    count[:, -1] -= 3
    count[0, 0] = count[0, -1] = count[-1, 0] = count[-1, -1] = 4
    torch.testing.assert_close(out, ref * count / 9)
    with pytest.raises(RefsrError, match="must be"):
        fold_transfer(corr, [ref[..., :-1]], scales=(1,))
