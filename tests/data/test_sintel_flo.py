"""Middlebury .flo reading/writing and the MPI Sintel layout (RefSR-Net's data)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refsr.data.degrade import make_lr
from refsr.data.sintel import FLO_MAGIC, SintelPairs, decode_flo, encode_flo, read_flo, write_flo
from refsr.errors import RefsrError

# tests/data has its own conftest.py, which shadows the top-level one for `from conftest import`.
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def load_photo(name: str) -> np.ndarray:
    """A real photo from tests/assets as HxWx3 uint8 RGB."""
    return np.asarray(Image.open(ASSETS / name).convert("RGB"))


def test_magic_spells_pieh() -> None:
    assert struct.pack("<f", FLO_MAGIC) == b"PIEH"


def test_decode_hand_built_bytes() -> None:
    # width 3, height 2; pixel (row, col) holds u = 10 * row + col, v = -(row + 0.5 * col)
    values = []
    for row in range(2):
        for col in range(3):
            values += [10.0 * row + col, -(row + 0.5 * col)]
    data = b"PIEH" + struct.pack("<ii", 3, 2) + struct.pack("<12f", *values)
    flow = decode_flo(data)
    assert flow.shape == (2, 3, 2) and flow.dtype == np.float32
    assert flow[1, 2, 0] == 12.0 and flow[1, 2, 1] == -2.0 and flow[0, 1, 0] == 1.0 and flow[0, 1, 1] == -0.5
    assert encode_flo(flow) == data


def test_round_trip_array_and_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=20, size=(7, 5, 2)).astype(np.float32)
    path = write_flo(tmp_path / "a.flo", flow)
    assert path.stat().st_size == 12 + 8 * 35
    np.testing.assert_array_equal(read_flo(path), flow)
    write_flo(tmp_path / "b.flo", torch.from_numpy(flow).permute(2, 0, 1))  # (2, H, W) tensors too
    np.testing.assert_array_equal(read_flo(tmp_path / "b.flo"), flow)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flo", "b.flo"]  # no temporary files left


def test_bad_files() -> None:
    good = b"PIEH" + struct.pack("<ii", 1, 1) + struct.pack("<2f", 1.0, 2.0)
    with pytest.raises(RefsrError, match="not a .flo file"):
        decode_flo(b"PIEX" + good[4:])
    with pytest.raises(RefsrError, match="truncated"):
        decode_flo(good[:-1])
    with pytest.raises(RefsrError, match="truncated"):
        decode_flo(good + b"\0")
    with pytest.raises(RefsrError, match="too short"):
        decode_flo(b"PIE")
    with pytest.raises(RefsrError, match="impossible flow size"):
        decode_flo(b"PIEH" + struct.pack("<ii", 0, 4))
    with pytest.raises(RefsrError, match=r"\(H, W, 2\)"):
        encode_flo(np.zeros((4, 4, 3), np.float32))


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RefsrError, match="no such .flo file"):
        read_flo(tmp_path / "x.flo")
    with pytest.raises(RefsrError, match="does not exist"):
        write_flo(tmp_path / "no" / "x.flo", np.zeros((2, 2, 2), np.float32))


# ---------------------------------------------------------------------------------------------------------
# Sintel
# ---------------------------------------------------------------------------------------------------------

H, W = 37, 50  # not multiples of 8, like Sintel's 436 rows


def frame(t: int) -> np.ndarray:
    """Frame t: the camera pans 3 pixels right per frame over a real photo."""
    img = load_photo("coffee.png")
    return np.ascontiguousarray(img[20 : 20 + H, 10 + 3 * t : 10 + 3 * t + W])


def true_flow(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    return rng.normal(size=(H, W, 2)).astype(np.float32) + np.array([-3.0, 0.0], np.float32)


def make_sintel(root: Path, scenes=("alley_1", "market_2"), frames=3, flows=True) -> None:
    for scene in scenes:
        for t in range(1, frames + 1):
            for render in ("clean", "final"):
                path = root / "training" / render / scene / f"frame_{t:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame(t)).save(path)
            if flows and t < frames:
                (root / "training" / "flow" / scene).mkdir(parents=True, exist_ok=True)
                write_flo(root / "training" / "flow" / scene / f"frame_{t:04d}.flo", true_flow(t))


def test_sintel_pairs_frame_t_is_reference_of_t_plus_1(tmp_path: Path) -> None:
    make_sintel(tmp_path)
    ds = SintelPairs(tmp_path, render_pass="final")
    assert len(ds) == 4  # 2 scenes x (3 frames -> 2 consecutive pairs)
    s = ds[1]
    assert s["name"] == "final/alley_1/frame_0003" and s["ref_name"] == "final/alley_1/frame_0002"
    hr = frame(3)[:32, :48]
    got_hr = np.rint(s["hr"].numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(got_hr, hr)
    np.testing.assert_array_equal(np.rint(s["lr"].numpy() * 255).astype(np.uint8).transpose(1, 2, 0),
                                  make_lr(hr, 8))
    np.testing.assert_array_equal(np.rint(s["ref"].numpy() * 255).astype(np.uint8).transpose(1, 2, 0),
                                  frame(2)[:32, :48])
    assert s["lr"].shape == (3, 4, 6) and s["ref_down"].shape == (3, 4, 6)
    assert s["flow"].shape == (2, 32, 48) and s["flow"].dtype == torch.float32
    np.testing.assert_array_equal(s["flow"].numpy(), true_flow(2)[:32, :48].transpose(2, 0, 1))


def test_sintel_options_and_errors(tmp_path: Path) -> None:
    make_sintel(tmp_path)
    assert len(SintelPairs(tmp_path / "training", scenes=["market_2"], scale=4)) == 2
    assert "flow" not in SintelPairs(tmp_path, with_flow=False)[0]
    with pytest.raises(RefsrError, match="no scene 'cave_9'"):
        SintelPairs(tmp_path, scenes=["cave_9"])
    with pytest.raises(RefsrError, match="no ground-truth flow"):
        SintelPairs(tmp_path, split="test")
    with pytest.raises(RefsrError, match="unknown Sintel pass"):
        SintelPairs(tmp_path, render_pass="albedo")
    (tmp_path / "training" / "flow" / "market_2" / "frame_0002.flo").unlink()
    with pytest.raises(RefsrError, match="missing flow .*frame_0002.flo"):
        SintelPairs(tmp_path)
    assert len(SintelPairs(tmp_path, with_flow=False)) == 4
    with pytest.raises(RefsrError, match=r"does not exist; expected training/\{clean,final\}"):
        SintelPairs(tmp_path / "nope")
    single = tmp_path / "single"
    (single / "training" / "clean" / "s").mkdir(parents=True)
    Image.fromarray(frame(1)).save(single / "training" / "clean" / "s" / "frame_0001.png")
    with pytest.raises(RefsrError, match="no consecutive"):
        SintelPairs(single, with_flow=False)
