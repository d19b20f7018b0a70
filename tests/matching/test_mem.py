"""MASA's Match & Extraction Module against a loop-based reimplementation of the official rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import load_photo
from refsr.errors import RefsrError
from refsr.matching.mem import MEMMatcher, match_mem, mem_geometry

EPS = 1e-12


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (max(np.linalg.norm(a), EPS) * max(np.linalg.norm(b), EPS)))


def reference_mem(query, key, block=8, factor=1.5, dilations=(1, 2, 3)):
    """The official MEM rules written out with loops (numpy, float64).

    Returns global index (N, h, w), score (N, h, w), local index (N, blocks, block, block), window
    origins (N, blocks, 2) and coarse index (N, blocks).
    """
    q, k = query.double().numpy(), key.double().numpy()
    n, c, h, w = q.shape
    height, width = k.shape[2:]
    py, px = h // block, w // block
    dy = 2 * int(height // (2 * py) * factor) + 1
    dx = 2 * int(width // (2 * px) * factor) + 1
    q_padded = np.pad(q, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")  # replicate padding
    centre = (block + 2) // 2
    index = np.zeros((n, h, w), dtype=np.int64)
    score = np.zeros((n, h, w))
    local = np.zeros((n, py * px, block, block), dtype=np.int64)
    origins = np.zeros((n, py * px, 2), dtype=np.int64)
    coarse = np.zeros((n, py * px), dtype=np.int64)
    for b in range(n):
        for by in range(py):
            for bx in range(px):
                blk = q_padded[b, :, by * block : by * block + block + 2, bx * block : bx * block + block + 2]
                # Coarse: the block centre patch at each dilation against every (zero-padded) Ref↓ patch.
                best, best_pos = -np.inf, -1
                for yy in range(height):
                    for xx in range(width):
                        total = 0.0
                        for d in dilations:
                            taps = slice(centre - d, centre + d + 1, d)
                            qv = blk[:, taps, taps].ravel()
                            kv = np.zeros((c, 3, 3))
                            for i, oy in enumerate((-d, 0, d)):
                                for j, ox in enumerate((-d, 0, d)):
                                    if 0 <= yy + oy < height and 0 <= xx + ox < width:
                                        kv[:, i, j] = k[b, :, yy + oy, xx + ox]
                            total += cosine(qv, kv.ravel())
                        if total > best:
                            best, best_pos = total, yy * width + xx
                blk_id = by * px + bx
                coarse[b, blk_id] = best_pos
                cy, cx = divmod(best_pos, width)
                # Window, with the official shift rules written as they are.
                x1, x2 = cx - dx // 2 - 1, cx + dx // 2 + 1
                if x1 < 0:
                    x1, x2 = 0, dx + 1
                if x2 > width - 1:
                    x2 = width - 1
                    x1 = x2 - (dx + 1)
                y1, y2 = cy - dy // 2 - 1, cy + dy // 2 + 1
                if y1 < 0:
                    y1, y2 = 0, dy + 1
                if y2 > height - 1:
                    y2 = height - 1
                    y1 = y2 - (dy + 1)
                origins[b, blk_id] = (y1, x1)
                rows = [y1 + i for i in range(dy + 2)]  # negative rows wrap, as Python indexing does
                cols = [x1 + j for j in range(dx + 2)]
                window = k[b][:, rows][:, :, cols]
                # Fine: every 3x3 patch of the padded block against every 3x3 patch of the window.
                for a in range(block):
                    for bb in range(block):
                        qv = blk[:, a : a + 3, bb : bb + 3].ravel()
                        best, best_local = -np.inf, -1
                        for i in range(dy):
                            for j in range(dx):
                                value = cosine(qv, window[:, i : i + 3, j : j + 3].ravel())
                                if value > best:
                                    best, best_local = value, i * dx + j
                        local[b, blk_id, a, bb] = best_local
                        gy = (y1 + best_local // dx + 1) % height
                        gx = (x1 + best_local % dx + 1) % width
                        index[b, by * block + a, bx * block + bb] = gy * width + gx
                        score[b, by * block + a, bx * block + bb] = best
    return index, score, local, origins, coarse


def random_pair(seed, n, c, h, w, height, width):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, h, w, generator=gen, dtype=torch.float64),
        torch.randn(n, c, height, width, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 16, 16, 12, 12),
        (1, 4, 16, 24, 20, 13),  # key smaller than query in one direction, not square
        (1, 2, 24, 16, 30, 11),
    ],
)
def test_equals_loop_reference(shape):
    n, c, h, w, height, width = shape
    query, key = random_pair(sum(shape), n, c, h, w, height, width)
    corr = match_mem(query, key)
    index, score, local, origins, coarse = reference_mem(query, key)
    assert torch.equal(corr.extras["coarse_index"], torch.from_numpy(coarse))
    assert torch.equal(corr.extras["window_origin"], torch.from_numpy(origins))
    assert torch.equal(corr.extras["local_index"], torch.from_numpy(local))
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)
    assert corr.key_size == (height, width)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 6, 6), (1, 3, 8, 16, 5, 9)])
def test_equals_loop_reference_when_window_wraps(shape):
    # Windows larger than Ref↓: the official negative indices wrap around. A wrapped window holds some
    # patches twice (exact ties), so compare global positions and scores, not local indices.
    n, c, h, w, height, width = shape
    query, key = random_pair(sum(shape), n, c, h, w, height, width)
    corr = match_mem(query, key)
    assert corr.extras["geometry"].wraps
    index, score, _, origins, coarse = reference_mem(query, key)
    assert torch.equal(corr.extras["coarse_index"], torch.from_numpy(coarse))
    assert torch.equal(corr.extras["window_origin"], torch.from_numpy(origins))
    assert (corr.extras["window_origin"] < 0).any()
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(
    py=st.integers(1, 3),
    px=st.integers(1, 3),
    height=st.integers(3, 14),
    width=st.integers(3, 14),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_equals_loop_reference(py, px, height, width, seed):
    try:
        geometry = mem_geometry((8 * py, 8 * px), (height, width))
    except RefsrError:  # window more than twice the Ref↓ map: tested in test_module_wrapper_and_errors
        assume(False)
    query, key = random_pair(seed, 1, 2, 8 * py, 8 * px, height, width)
    corr = match_mem(query, key)
    index, score, local, _, _ = reference_mem(query, key)
    assert torch.equal(corr.index, torch.from_numpy(index))
    np.testing.assert_allclose(corr.score.numpy(), score, rtol=0, atol=1e-12)
    if not geometry.wraps:
        assert torch.equal(corr.extras["local_index"], torch.from_numpy(local))


@pytest.mark.parametrize("shape", [(2, 3, 16, 24, 20, 18), (1, 3, 8, 16, 5, 9)])
def test_score_is_true_cosine_with_mem_padding(shape):
    # MEM's convention: replicate-padded query patches, circularly padded key patches (the latter only
    # matter when windows wrap; otherwise the matched key patch is interior).
    n, c, h, w, height, width = shape
    query, key = random_pair(100 + sum(shape), n, c, h, w, height, width)
    corr = match_mem(query, key)
    q = np.pad(query.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    k = np.pad(key.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="wrap")
    for b in range(n):
        for y in range(h):
            for x in range(w):
                yy, xx = divmod(int(corr.index[b, y, x]), width)
                q_patch = q[b, :, y : y + 3, x : x + 3].ravel()
                k_patch = k[b, :, yy : yy + 3, xx : xx + 3].ravel()
                expected = cosine(q_patch, k_patch)
                assert abs(float(corr.score[b, y, x]) - expected) < 1e-12


def test_equals_dense_restricted_to_interior_when_window_is_whole_key():
    # LR 16x16 and Ref↓ 9x9: d = 7, so every window is the whole 9x9 map and the fine search runs over
    # all interior key positions. At interior LR positions the query patches have no padding either.
    query, key = random_pair(11, 2, 4, 16, 16, 9, 9)
    geometry = mem_geometry((16, 16), (9, 9))
    assert geometry.window_size == (9, 9) and not geometry.wraps
    corr = match_mem(query, key)
    assert torch.equal(corr.extras["window_origin"], torch.zeros(2, 4, 2, dtype=torch.long))

    q = F.normalize(F.unfold(query, 3, padding=1), dim=1)  # zero-padded patches, as dense matching
    k = F.normalize(F.unfold(key, 3, padding=1), dim=1)
    similarity = torch.bmm(q.transpose(1, 2), k).view(2, 16, 16, 9, 9)
    border = torch.ones(9, 9, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    similarity = similarity.masked_fill(border, -torch.inf).view(2, 16, 16, 81)
    dense_score, dense_index = similarity.max(dim=-1)
    assert torch.equal(corr.index[:, 1:-1, 1:-1], dense_index[:, 1:-1, 1:-1])
    torch.testing.assert_close(corr.score[:, 1:-1, 1:-1], dense_score[:, 1:-1, 1:-1], rtol=0, atol=1e-12)
    # At the LR border the patches differ (replicate vs zero padding), which is why they are excluded.
    assert not torch.allclose(corr.score[:, 0], dense_score[:, 0])


def test_real_photo_finds_itself():
    photo = torch.from_numpy(load_photo("chelsea.png").copy()).permute(2, 0, 1)[None].double() / 255
    lr = photo[:, :, 30:62, 50:82]  # 32x32 LR, its own Ref↓
    corr = match_mem(lr, lr)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    interior = (slice(1, -1), slice(1, -1))
    assert torch.all(corr.score[0][interior] > 1 - 1e-12)
    assert (corr.index[0] == yy * 32 + xx)[interior].double().mean() > 0.99


@pytest.mark.parametrize(
    "lr, ref_down, grid, diameter",
    [
        ((40, 40), (40, 40), (5, 5), (13, 13)),  # MASA training crops
        ((128, 128), (128, 128), (16, 16), (13, 13)),
        ((88, 128), (640, 128), (11, 16), (87, 13)),  # CUFED5 multi-ref: five Ref↓ stacked vertically
    ],
)
def test_block_arithmetic(lr, ref_down, grid, diameter):
    geometry = mem_geometry(lr, ref_down)
    assert geometry.block_size == 8
    assert geometry.block_grid == grid
    assert geometry.diameter == diameter
    assert geometry.window_size == (diameter[0] + 2, diameter[1] + 2)
    assert not geometry.wraps


@pytest.mark.parametrize("lr, ref_down", [((40, 40), (40, 40)), ((88, 128), (640, 128))])
def test_block_arithmetic_at_run_time(lr, ref_down):
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, 2, *lr, generator=gen)
    key = torch.randn(1, 2, *ref_down, generator=gen)
    corr = match_mem(query, key)
    geometry = mem_geometry(lr, ref_down)
    py, px = geometry.block_grid
    assert corr.extras["window_size"] == geometry.window_size
    assert corr.extras["block_grid"] == (py, px)
    assert corr.extras["window_origin"].shape == (1, py * px, 2)
    assert corr.extras["local_index"].shape == (1, py * px, 8, 8)
    origin = corr.extras["window_origin"]
    wh, ww = geometry.window_size
    assert (origin >= 0).all()
    assert (origin[..., 0] + wh <= ref_down[0]).all() and (origin[..., 1] + ww <= ref_down[1]).all()
    # Every match lies inside its block's window, one pixel in from the window's edge.
    index_y, index_x = corr.index // ref_down[1], corr.index % ref_down[1]
    oy = origin[..., 0].view(1, py, 1, px, 1).expand(1, py, 8, px, 8).reshape(1, *lr)
    ox = origin[..., 1].view(1, py, 1, px, 1).expand(1, py, 8, px, 8).reshape(1, *lr)
    assert ((index_y >= oy + 1) & (index_y <= oy + wh - 2)).all()
    assert ((index_x >= ox + 1) & (index_x <= ox + ww - 2)).all()


def test_window_shift_rules_by_hand():
    # One block (LR 8x8) over a 30x30 Ref↓: d = 2*int(15*1.5)+1 = 45 > 30: wraps, origin = 30-45-2 = -17.
    assert mem_geometry((8, 8), (30, 30)).diameter == (45, 45)
    # 4x4 blocks (LR 32x32) over a 40x40 Ref↓: d = 2*int(5*1.5)+1 = 15, window 17.
    query = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    key = torch.zeros(1, 1, 40, 40, dtype=torch.float64)
    # A distinctive blob in block (0, 0)'s centre (LR pixel (4, 4)) and its twin near the Ref↓ corner.
    blob = torch.tensor([[0.0, 1, 0], [1, 5, 2], [0, 3, 0]], dtype=torch.float64)
    query[0, 0, 3:6, 3:6] = blob
    key[0, 0, 36:39, 36:39] = blob  # centred at (37, 37): window would end at 37+8=45 > 39
    corr = match_mem(query, key, dilations=(1,))
    assert int(corr.extras["coarse_index"][0, 0]) == 37 * 40 + 37
    assert corr.extras["window_origin"][0, 0].tolist() == [40 - 15 - 2, 40 - 15 - 2]
    assert int(corr.index[0, 4, 4]) == 37 * 40 + 37
    assert abs(float(corr.score[0, 4, 4]) - 1) < 1e-12
    key2 = torch.zeros_like(key)
    key2[0, 0, 1:4, 0:3] = blob  # centred at (2, 1): window would start before 0
    corr2 = match_mem(query, key2, dilations=(1,))
    assert corr2.extras["window_origin"][0, 0].tolist() == [0, 0]
    assert int(corr2.index[0, 4, 4]) == 2 * 40 + 1


def test_score_is_the_same_with_and_without_autograd():
    query, key = random_pair(17, 2, 3, 16, 24, 14, 20)
    with torch.no_grad():
        plain = match_mem(query, key)
    tracked = match_mem(query.requires_grad_(True), key)
    assert tracked.score.requires_grad and not plain.score.requires_grad
    assert torch.equal(plain.index, tracked.index)
    torch.testing.assert_close(plain.score, tracked.score.detach(), rtol=0, atol=1e-12)


def test_gradient_of_score_is_correct():
    query, key = random_pair(21, 1, 2, 16, 16, 12, 12)
    query.requires_grad_(True)
    key.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: match_mem(q, k).score, (query, key), fast_mode=True)


def test_chunking_does_not_change_the_result():
    query, key = random_pair(31, 2, 3, 24, 32, 20, 26)
    whole = match_mem(query, key)
    tiny = match_mem(query, key, max_bytes=1)
    assert torch.equal(whole.index, tiny.index)
    assert torch.equal(whole.extras["local_index"], tiny.extras["local_index"])
    torch.testing.assert_close(whole.score, tiny.score, rtol=0, atol=1e-13)


def test_module_wrapper_and_errors():
    query, key = random_pair(41, 1, 3, 16, 16, 12, 12)
    module_corr = MEMMatcher(dilations=(1, 2))(query, key)
    assert torch.equal(module_corr.index, match_mem(query, key, dilations=(1, 2)).index)
    with pytest.raises(RefsrError, match="divide by lr_block_size"):
        match_mem(query[:, :, :12], key)
    with pytest.raises(RefsrError):
        match_mem(query, key, patch_size=5)
    with pytest.raises(RefsrError):
        match_mem(query, key, dilations=(1, 5))  # taps would leave the 10x10 padded block
    with pytest.raises(RefsrError):
        match_mem(query, key, dilations=())
    with pytest.raises(RefsrError, match="too small"):
        match_mem(query[:, :, :8, :8], key[:, :, :2, :2])
    with pytest.raises(RefsrError):
        match_mem(query, key[:, :2])
