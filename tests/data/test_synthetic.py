"""Synthetic references: determinism, parameter ranges, exactness without jitter, scale, overlap."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, load_photo
from PIL import Image

from refsr.data.degrade import make_lr, mod_crop
from refsr.data.synthetic import SyntheticRefConfig, SyntheticRefPairs
from refsr.errors import RefsrError

NAMES = ("astronaut.png", "coffee.png", "chelsea.png")
PATHS = [DATA / n for n in NAMES]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def sample_at(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """Brute-force sampling of ``img`` (HxWx3 uint8) at pixel-centre coordinates, with torch."""
    h, w = img.shape[:2]
    t = torch.from_numpy(np.array(img, np.float64)).permute(2, 0, 1)[None]
    grid = torch.stack(
        [(torch.from_numpy(xs) + 0.5) / w * 2 - 1, (torch.from_numpy(ys) + 0.5) / h * 2 - 1], -1
    )
    out = F.grid_sample(t, grid[None].double(), mode=mode, padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def test_same_seed_same_samples_in_any_order() -> None:
    config = SyntheticRefConfig(patch=48)
    a = SyntheticRefPairs.from_paths(PATHS, config=config, seed=7, samples_per_photo=3, with_ref_down=True)
    b = SyntheticRefPairs.from_paths(PATHS, config=config, seed=7, samples_per_photo=3, with_ref_down=True)
    other = SyntheticRefPairs.from_paths(PATHS, config=config, seed=8, samples_per_photo=3)
    later = [b[i] for i in (8, 4, 0)]  # b is read in another order first
    for i, sb in zip((8, 4, 0), later):
        sa = a[i]
        for key in ("lr", "hr", "ref", "ref_down"):
            assert torch.equal(sa[key], sb[key])
        assert not torch.equal(sa["ref"], other[i]["ref"])
    a.set_epoch(1)
    assert not torch.equal(a[0]["hr"], b[0]["hr"]) or not torch.equal(a[0]["ref"], b[0]["ref"])
    a.set_epoch(0)
    assert torch.equal(a[0]["ref"], b[0]["ref"])


def test_warp_parameters_stay_in_range() -> None:
    config = SyntheticRefConfig(patch=48)
    ds = SyntheticRefPairs.from_paths(PATHS, config=config, seed=3, samples_per_photo=100)
    params = [ds.params(i) for i in range(len(ds))]
    scales = np.array([p.scale for p in params])
    angles = np.array([p.angle for p in params])
    assert 0.8 <= scales.min() < 0.84 and 1.2 < scales.max() <= 1.25
    assert -15 <= angles.min() < -13 and 13 < angles.max() <= 15
    # log-uniform zoom: as many references zoomed in as out
    assert 0.4 < np.mean(scales > 1) < 0.6
    flips = np.mean([p.flip for p in params])
    homographies = np.mean([np.any(p.corners) for p in params])
    assert 0.05 < flips < 0.16 and 0.4 < homographies < 0.6
    for p in params:
        photo = ds.photos[p.photo]
        assert np.abs(p.corners).max() <= 0.05 * 48
        assert all(0.9 <= g <= 1.1 for g in p.gains)
        assert 1 / 1.2 <= p.gamma <= 1.2 and 1 / 1.1 <= p.brightness <= 1.1
        tx, ty = p.target_xy
        assert 0 <= tx <= photo.width - 48 and 0 <= ty <= photo.height - 48
        centre = np.array([tx + 23.5, ty + 23.5])
        assert np.all(np.abs(np.array(p.ref_centre) - centre) <= 0.25 * 48 + 1e-9)
        # The whole reference footprint lies inside the photo.
        h = p.ref_to_photo(48)
        corners = np.array([[-0.5, -0.5, 1], [47.5, -0.5, 1], [47.5, 47.5, 1], [-0.5, 47.5, 1]]) @ h.T
        corners = corners[:, :2] / corners[:, 2:]
        assert corners.min() >= 0 and np.all(corners.max(0) <= [photo.width - 1, photo.height - 1])


@pytest.mark.parametrize("prescale", [1, 2])
def test_identity_setting_returns_the_exact_crop(prescale) -> None:
    ds = SyntheticRefPairs.from_paths(
        PATHS,
        config=SyntheticRefConfig.identity(48),
        samples_per_photo=2,
        prescale=prescale,
        with_ref_down=True,
    )
    for i in range(len(ds)):
        p = ds.params(i)
        sample = ds[i]
        photo = load_photo(NAMES[p.photo])
        if prescale == 2:  # brute force: pre-scale the whole photo
            photo = make_lr(mod_crop(photo, 2), 2)
        tx, ty = p.target_xy
        hr = to_uint8(sample["hr"])
        np.testing.assert_array_equal(hr, photo[ty : ty + 48, tx : tx + 48])
        np.testing.assert_array_equal(to_uint8(sample["ref"]), hr)
        np.testing.assert_array_equal(to_uint8(sample["lr"]), make_lr(hr, 4))
        np.testing.assert_array_equal(to_uint8(sample["ref_down"]), make_lr(hr, 4))


@pytest.mark.parametrize("zoom", [0.5, 1.6])
def test_scale_mismatch_gives_the_requested_scale(zoom) -> None:
    config = SyntheticRefConfig.identity(32, scale_mismatch=zoom, max_shift=0.2)
    ds = SyntheticRefPairs.from_paths(PATHS, config=config, samples_per_photo=2)
    for i in range(len(ds)):
        p = ds.params(i)
        assert p.scale == zoom and p.angle == 0
        ref = to_uint8(ds[i]["ref"]).astype(np.float64)
        photo = load_photo(NAMES[p.photo])
        errors = {}
        for s in (zoom / 1.15, zoom, zoom * 1.15):
            # Brute force: resize the whole photo by s with PIL, and read the 32x32 window centred where the
            # reference's centre lands.
            w, h = round(photo.shape[1] * s), round(photo.shape[0] * s)
            big = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BICUBIC))
            sx, sy = w / photo.shape[1], h / photo.shape[0]
            qx, qy = (p.ref_centre[0] + 0.5) * sx - 0.5, (p.ref_centre[1] + 0.5) * sy - 0.5
            u = np.arange(32) - 15.5
            xs, ys = np.meshgrid(qx + u, qy + u)
            errors[s] = np.abs(sample_at(big, xs, ys, "bicubic") - ref).mean()
        # Not zero: the brute force resamples the whole photo on another grid, with torch's bicubic.
        assert errors[zoom] < 4
        assert errors[zoom] < 0.5 * min(errors[zoom / 1.15], errors[zoom * 1.15])


def test_reference_overlaps_the_target_where_the_warp_says() -> None:
    config = SyntheticRefConfig(
        patch=48, homography_prob=1.0, flip_prob=0.0, colour=0.0, gamma=1.0, luminance=0.0
    )
    ds = SyntheticRefPairs.from_paths(PATHS, config=config, seed=11, samples_per_photo=4)
    for i in range(len(ds)):
        p = ds.params(i)
        sample = ds[i]
        hr, ref = to_uint8(sample["hr"]), to_uint8(sample["ref"]).astype(np.float64)
        u, v = np.meshgrid(np.arange(48.0), np.arange(48.0))
        pts = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ p.ref_to_photo(48).T
        px, py = pts[:, 0] / pts[:, 2] - p.target_xy[0], pts[:, 1] / pts[:, 2] - p.target_xy[1]
        inside = (px >= 2) & (px <= 45) & (py >= 2) & (py <= 45)
        assert inside.mean() > 0.25  # a real overlap, not a sliver
        seen = sample_at(hr, px[inside].reshape(1, -1), py[inside].reshape(1, -1))[0]
        error = np.abs(seen - ref.reshape(-1, 3)[inside]).mean()
        # The same comparison with the mapping off by 3 px is much worse: the overlap is where it is claimed.
        off = sample_at(hr, px[inside].reshape(1, -1) + 3, py[inside].reshape(1, -1) - 3)[0]
        assert error < 8 and error < 0.6 * np.abs(off - ref.reshape(-1, 3)[inside]).mean()


def test_luminance_change_is_applied_exactly() -> None:
    config = SyntheticRefConfig.identity(48, luminance_change=0.6)
    ds = SyntheticRefPairs.from_paths(PATHS, config=config)
    sample = ds[0]
    hr, ref = to_uint8(sample["hr"]), to_uint8(sample["ref"])
    np.testing.assert_array_equal(ref, np.clip(np.rint(hr / 255.0 * 0.6 * 255.0), 0, 255).astype(np.uint8))


def test_small_photos_are_left_out_and_bad_settings_refused() -> None:
    ds = SyntheticRefPairs.from_paths(PATHS, config=SyntheticRefConfig(patch=128))
    assert len(ds.photos) + len(ds.skipped) == 3 and ds.skipped
    with pytest.raises(RefsrError, match="smaller"):
        SyntheticRefPairs.from_paths(PATHS, config=SyntheticRefConfig(patch=400))
    with pytest.raises(RefsrError, match="divide"):
        SyntheticRefPairs.from_paths(PATHS, config=SyntheticRefConfig(patch=50), scale=4)
    with pytest.raises(RefsrError, match="scale_range"):
        SyntheticRefPairs.from_paths(PATHS, config=replace(SyntheticRefConfig(), scale_range=(1.3, 1.2)))


def test_manifest_photos_from_the_ci_subset(ci_data) -> None:
    ds = SyntheticRefPairs(ci_data, sources=["scikit-image"], seed=1)
    assert len(ds) == 10 and not ds.skipped
    names = [photo.name for photo in ds.photos]
    grey_index = names.index("camera")
    sample = ds[grey_index]
    assert sample["hr"].shape == (3, 160, 160) and sample["lr"].shape == (3, 40, 40)
    assert sample["grey"] is True
    assert torch.equal(sample["ref"][0], sample["ref"][1]) and torch.equal(sample["ref"][0], sample["ref"][2])
    rocket = ds.photos[names.index("rocket")]
    assert (rocket.factor, rocket.width, rocket.height) == (2, 320, 213)  # a JPEG: halved


def test_missing_photos_tell_the_user_to_fetch(tmp_path) -> None:
    with pytest.raises(RefsrError, match="refsr data fetch --subset ci"):
        SyntheticRefPairs(tmp_path, sources=["scikit-image"])


@pytest.mark.parametrize("prescale", [1, 2])
def test_kept_decoded_photos_give_the_same_samples(prescale) -> None:
    """keep_decoded pre-scales each whole photo once; the regions cut of it equal those pre-scaled alone."""
    config = SyntheticRefConfig(patch=48)
    plain = SyntheticRefPairs.from_paths(PATHS, config=config, seed=5, samples_per_photo=4, prescale=prescale,
                                         with_ref_down=True)
    kept = SyntheticRefPairs.from_paths(PATHS, config=config, seed=5, samples_per_photo=4, prescale=prescale,
                                        with_ref_down=True, keep_decoded=True)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        kept.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], kept[i]
            for key in ("lr", "hr", "ref", "ref_down"):
                assert torch.equal(a[key], b[key]), (epoch, i, key)
    assert len(kept._decoded) == len(PATHS)
