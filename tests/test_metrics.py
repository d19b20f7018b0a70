"""Tests for refsr.metrics: hand-computed values, a brute-force SSIM, and scikit-image golden values."""

from __future__ import annotations

import dataclasses
import io
import math
import zlib

import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image

from refsr.errors import RefsrError
from refsr.metrics import PROTOCOLS, Protocol, get_protocol, psnr, quantize_uint8, rgb_to_y, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
BT601 = np.array([65.481, 128.553, 24.966])


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (1, 3, H, W) float32 in [0, 1], the way a data loader makes it."""
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0


def y_by_hand(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ BT601 / 255.0 + 16.0


def gaussian_window_by_hand() -> np.ndarray:
    offsets = np.arange(11) - 5.0
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two float64 2-D images, one explicit window at a time (valid positions only)."""
    window = gaussian_window_by_hand()
    values = []
    for top in range(a.shape[0] - 10):
        for left in range(a.shape[1] - 10):
            pa = a[top : top + 11, left : left + 11]
            pb = b[top : top + 11, left : left + 11]
            mu_a = np.sum(window * pa)
            mu_b = np.sum(window * pb)
            var_a = np.sum(window * pa * pa) - mu_a**2
            var_b = np.sum(window * pb * pb) - mu_b**2
            cov = np.sum(window * pa * pb) - mu_a * mu_b
            values.append(
                ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
            )
    return float(np.mean(values))


def ssim_sliding(a: np.ndarray, b: np.ndarray) -> float:
    """The same SSIM, vectorised with numpy's sliding windows (for full-size photos)."""
    window = gaussian_window_by_hand()

    def local_mean(img: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", np.lib.stride_tricks.sliding_window_view(img, (11, 11)), window)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
    return float(ssim_map.mean())


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def bicubic_down_up(rgb: np.ndarray) -> np.ndarray:
    img = Image.fromarray(rgb)
    w, h = img.size
    return np.asarray(img.resize((w // 4, h // 4), Image.BICUBIC).resize((w, h), Image.BICUBIC))


# ----------------------------------------------------------------------------------------------------
# Protocols


def test_protocol_table_matches_the_official_code():
    assert {"masa", "ttsr", "c2", "amsa"} <= set(PROTOCOLS)
    assert [PROTOCOLS[n].crop_border for n in ("masa", "ttsr", "c2", "amsa")] == [0, 0, 4, 4]
    assert all(PROTOCOLS[n].y_channel and PROTOCOLS[n].round_uint8 for n in ("masa", "ttsr", "c2", "amsa"))
    assert PROTOCOLS["masa"].y_weights == (65.481, 128.553, 24.966) and PROTOCOLS["masa"].y_divisor == 255
    assert PROTOCOLS["ttsr"].y_weights == (65.738, 129.057, 25.064) and PROTOCOLS["ttsr"].y_divisor == 256
    assert not PROTOCOLS["rgb"].y_channel
    assert "crop 4" in str(PROTOCOLS["c2"])


def test_get_protocol_lookup_and_errors():
    assert get_protocol("MASA") is PROTOCOLS["masa"]
    custom = Protocol("mine", crop_border=2)
    assert get_protocol(custom) is custom
    with pytest.raises(RefsrError, match="amsa.*c2.*masa.*ttsr"):
        get_protocol("basicsr")
    with pytest.raises(RefsrError):
        get_protocol(4)  # type: ignore[arg-type]
    with pytest.raises(RefsrError, match="crop_border"):
        Protocol("bad", crop_border=-1)
    with pytest.raises(RefsrError, match="unknown metric protocol"):
        psnr(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), protocol="nope")


# ----------------------------------------------------------------------------------------------------
# Y conversion


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),  # 65.481 + 128.553 + 24.966 = 219
        ((255, 0, 0), 16.0 + 65.481),
        ((0, 255, 0), 16.0 + 128.553),
        ((0, 0, 255), 16.0 + 24.966),
        ((51, 102, 204), 16.0 + (51 * 65.481 + 102 * 128.553 + 204 * 24.966) / 255.0),
    ],
)
def test_rgb_to_y_of_pure_colours(rgb, expected):
    pixel = np.array(rgb, dtype=np.uint8).reshape(1, 1, 3)
    y = rgb_to_y(pixel)
    assert y.dtype == np.float64 and y.shape == (1, 1)
    assert y[0, 0] == pytest.approx(expected, abs=1e-12)
    as_tensor = rgb_to_y(torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1))
    assert as_tensor.dtype == torch.float64 and as_tensor.shape == (1, 1, 1, 1)
    assert as_tensor.item() == pytest.approx(expected, abs=1e-12)
    as_float = rgb_to_y(torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1) / 255.0)
    assert as_float.shape == (1, 1, 1) and as_float.item() == pytest.approx(expected, abs=1e-12)


def test_rgb_to_y_ttsr_coefficients_and_grey_line():
    white = np.full((1, 1, 3), 255, np.uint8)
    assert rgb_to_y(white, protocol="ttsr")[0, 0] == pytest.approx(255 * 219.859 / 256 + 16, abs=1e-12)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    np.testing.assert_allclose(rgb_to_y(grey)[0], np.arange(256) * 219 / 255 + 16, rtol=0, atol=1e-12)
    photo = load_photo("coffee.png")
    np.testing.assert_allclose(rgb_to_y(photo), y_by_hand(photo), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# PSNR by hand


def test_psnr_of_a_uniform_grey_offset():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 250, size=(20, 30, 3), dtype=np.uint8)
    sr = hr + np.uint8(1)  # every channel +1 -> Y moves by exactly 219/255 everywhere
    expected = 20 * math.log10(255 / (219 / 255))
    assert psnr(sr, hr) == pytest.approx(expected, abs=1e-9)
    assert psnr(sr, hr, protocol="c2") == pytest.approx(expected, abs=1e-9)
    ttsr_step = 219.859 / 256
    assert psnr(sr, hr, protocol="ttsr") == pytest.approx(20 * math.log10(255 / ttsr_step), abs=1e-9)


def test_psnr_of_a_red_offset_and_rgb_protocol():
    hr = np.full((12, 12, 3), 100, np.uint8)
    sr = hr.copy()
    sr[..., 0] += 10  # Y moves by 10 * 65.481 / 255; RGB MSE is 100 / 3
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255 / (10 * 65.481 / 255)), abs=1e-9)
    assert psnr(sr, hr, protocol="rgb") == pytest.approx(20 * math.log10(255 / math.sqrt(100 / 3)), abs=1e-9)


def test_identical_images_score_inf_and_one(photo):
    assert psnr(photo, photo) == math.inf
    assert psnr(photo, photo, protocol="c2") == math.inf
    assert ssim(photo, photo) == 1.0
    assert ssim(photo, photo, protocol="rgb") == 1.0


def test_crop_border_removes_exactly_the_border_ring():
    h, w, v = 40, 50, 30
    hr = np.full((h, w, 3), 60, np.uint8)
    ring = hr.copy()
    ring[:4], ring[-4:], ring[:, :4], ring[:, -4:] = 60 + v, 60 + v, 60 + v, 60 + v
    ring_pixels = h * w - (h - 8) * (w - 8)
    mse = ring_pixels / (h * w) * (v * 219 / 255) ** 2
    assert psnr(ring, hr, protocol="masa") == pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-9)
    assert psnr(ring, hr, protocol="c2") == math.inf
    assert psnr(ring, hr, protocol="amsa") == math.inf
    # One more pixel of crop and a one-pixel-thick inner ring (at depth 4) disappears as well.
    inner = hr.copy()
    inner[4, 4:-4] = inner[-5, 4:-4] = 60 + v
    inner[4:-4, 4] = inner[4:-4, -5] = 60 + v
    crop5 = dataclasses.replace(PROTOCOLS["c2"], name="c2-crop5", crop_border=5)
    assert psnr(inner, hr, protocol=crop5) == math.inf
    inner_pixels = 2 * (w - 8) + 2 * (h - 8) - 4
    mse_c2 = inner_pixels / ((h - 8) * (w - 8)) * (v * 219 / 255) ** 2
    assert psnr(inner, hr, protocol="c2") == pytest.approx(20 * math.log10(255 / math.sqrt(mse_c2)), abs=1e-9)


# ----------------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize(("level_a", "level_b"), [(0, 255), (40, 41), (128, 90), (200, 200)])
def test_ssim_of_constant_images(level_a, level_b):
    a = np.full((17, 23), level_a, np.uint8)  # grey: Y = 16 + g * 219 / 255
    b = np.full((17, 23), level_b, np.uint8)
    mx, my = 16 + level_a * 219 / 255, 16 + level_b * 219 / 255
    expected = (2 * mx * my + C1) / (mx**2 + my**2 + C1)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("protocol", ["masa", "c2"])
def test_ssim_matches_a_brute_force_double_loop(protocol):
    photo = load_photo("astronaut.png")
    hr = photo[60:84, 90:120]  # 24x30
    sr = jpeg(photo, 20)[60:84, 90:120]
    crop = PROTOCOLS[protocol].crop_border
    a, b = y_by_hand(sr), y_by_hand(hr)
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    reference = ssim_brute_force(a, b)
    assert reference < 0.99  # the pair really differs
    assert abs(ssim(sr, hr, protocol=protocol) - reference) < 1e-10


def test_rgb_ssim_is_the_mean_of_per_channel_ssims():
    photo = load_photo("chelsea.png")
    hr = photo[30:56, 40:75]
    sr = jpeg(photo, 25)[30:56, 40:75]
    per_channel = [ssim_brute_force(sr[..., c].astype(float), hr[..., c].astype(float)) for c in range(3)]
    assert abs(ssim(sr, hr, protocol="rgb") - float(np.mean(per_channel))) < 1e-10


# ----------------------------------------------------------------------------------------------------
# Golden values from scikit-image.
#
# Computed outside the project venv in a throwaway venv (python3 -m venv /tmp/skvenv;
# pip install scikit-image pillow) with scikit-image 0.26.0, scipy 1.17.1, numpy 2.4.6, Pillow 13.0.0
# (libjpeg-turbo 6.2), for each photo `hr` in tests/data and `sr` made as in bicubic_down_up() or
# jpeg(hr, 30) above:
#     masa: a, b = skimage.color.rgb2ycbcr(hr)[..., 0], skimage.color.rgb2ycbcr(sr)[..., 0]
#     c2:   the same Y, then a, b = a[4:-4, 4:-4], b[4:-4, 4:-4]
#     ttsr: a = hr.astype(float64) @ [65.738, 129.057, 25.064] / 256 + 16, b likewise
#     rgb:  a, b = hr.astype(float64), sr.astype(float64)  (and channel_axis=2 for SSIM)
#     psnr = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)
#     ssim = skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
#                                                  use_sample_covariance=False, data_range=255)
# (skimage's default truncate=3.5 gives an 11x11 window and it averages the map cropped by 5 pixels: the
# same protocol.) The crc is zlib.crc32 of the degraded image's bytes, to be sure we score the same pixels.
GOLDEN = [
    ("astronaut", "bicubic", 0x92FEA9C6, {"masa": (27.38891114613452, 0.8285577046833223), "c2": (27.29326458997997, 0.8239760476067709), "ttsr": (27.388904392318608, 0.8285576372499595), "rgb": (25.888890767594063, 0.7973635968739877)}),  # noqa: E501
    ("astronaut", "jpeg30", 0x16945D15, {"masa": (33.78727139027689, 0.9307291283847761), "c2": (33.686628516599285, 0.9296238560983037), "ttsr": (33.78726456791216, 0.9307290779724229), "rgb": (31.17610938292778, 0.8904637958452511)}),  # noqa: E501
    ("coffee", "bicubic", 0x2509DCA3, {"masa": (28.287530924505653, 0.8677685541274418), "c2": (28.333894462029395, 0.8690227039465294), "ttsr": (28.287526123737464, 0.8677685072544629), "rgb": (26.88088865712629, 0.8436912966168594)}),  # noqa: E501
    ("coffee", "jpeg30", 0xD7FD3E29, {"masa": (34.76918023505449, 0.9308430930606969), "c2": (34.837875578884734, 0.931232098216088), "ttsr": (34.76917469077536, 0.9308430410676036), "rgb": (30.780389257805364, 0.8630694179309035)}),  # noqa: E501
    ("chelsea", "bicubic", 0x657FBADA, {"masa": (28.550511659075394, 0.6793249747667699), "c2": (28.622222952692375, 0.6827020566094949), "ttsr": (28.550504698577313, 0.6793248139533455), "rgb": (27.21007358423495, 0.6483081642090675)}),  # noqa: E501
    ("chelsea", "jpeg30", 0x3DE443FB, {"masa": (32.50467833716682, 0.8716907859333234), "c2": (32.514718847815274, 0.8720855739409235), "ttsr": (32.504671425616756, 0.871690723708987), "rgb": (30.128652000417446, 0.8393069079300944)}),  # noqa: E501
]


def _golden_pair(name: str, kind: str, crc: int) -> tuple[np.ndarray, np.ndarray]:
    hr = load_photo(f"{name}.png")
    sr = bicubic_down_up(hr) if kind == "bicubic" else jpeg(hr, 30)
    if zlib.crc32(np.ascontiguousarray(sr).tobytes()) != crc:
        if kind == "bicubic":
            pytest.fail(f"PIL bicubic output for {name} changed; the golden values no longer apply")
        pytest.skip(f"this Pillow's JPEG encoder makes other pixels for {name}; golden values do not apply")
    return sr, hr


@pytest.mark.parametrize(("name", "kind", "crc", "expected"), GOLDEN, ids=[f"{g[0]}-{g[1]}" for g in GOLDEN])
def test_golden_values_from_scikit_image(name, kind, crc, expected):
    sr, hr = _golden_pair(name, kind, crc)
    for protocol, (golden_psnr, golden_ssim) in expected.items():
        assert abs(psnr(sr, hr, protocol=protocol) - golden_psnr) < 1e-6, protocol
        assert abs(ssim(sr, hr, protocol=protocol) - golden_ssim) < 1e-6, protocol
    # The TTSR and MASA Y coefficients differ in the 6th digit: the protocols must not be interchangeable.
    assert abs(psnr(sr, hr, protocol="ttsr") - expected["masa"][0]) > 1e-6


def test_float64_y_matches_the_official_float32_y_pipeline():
    # MASA-SR stores Y / 255 as float32 before scoring (uint8 -> /255 float32 -> *255 -> BT.601 in float64
    # -> /255 -> float32 -> *255). That storage must not move the scores by more than 1e-6.
    for name in ("astronaut.png", "coffee.png"):
        hr = load_photo(name)
        sr = jpeg(hr, 30)

        def official_y(rgb: np.ndarray) -> np.ndarray:
            scaled = (rgb.astype(np.float32) / np.float32(255.0)) * np.float32(255.0)
            y_over_255 = ((scaled.astype(np.float64) @ BT601) / 255.0 + 16.0) / 255.0
            return (y_over_255.astype(np.float32) * np.float32(255.0)).astype(np.float64)

        a, b = official_y(sr), official_y(hr)
        official_psnr = 20 * math.log10(255 / math.sqrt(np.mean((a - b) ** 2)))
        assert abs(psnr(sr, hr, protocol="masa") - official_psnr) < 1e-6
        assert abs(ssim(sr, hr, protocol="masa") - ssim_sliding(a, b)) < 1e-6


# ----------------------------------------------------------------------------------------------------
# Input handling


def test_tensor_and_uint8_inputs_score_identically(photo):
    sr = jpeg(photo, 40)
    for protocol in ("masa", "c2", "ttsr", "rgb"):
        expected_psnr = psnr(sr, photo, protocol=protocol)
        expected_ssim = ssim(sr, photo, protocol=protocol)
        assert psnr(to_tensor(sr), to_tensor(photo), protocol=protocol) == expected_psnr
        assert ssim(to_tensor(sr), to_tensor(photo), protocol=protocol) == expected_ssim
        assert psnr(to_tensor(sr)[0], photo, protocol=protocol) == expected_psnr  # (3,H,W) vs array
        assert ssim(Image.fromarray(sr), to_tensor(photo), protocol=protocol) == expected_ssim


def test_float_tensors_are_rounded_like_tensor2img():
    photo = load_photo("coffee.png")
    exact = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].double() / 255.0
    # Anything within a rounding step of the uint8 grid rounds back to the same image.
    jitter = (torch.rand(exact.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * (0.9 / 255)
    assert psnr(exact + jitter, photo) == math.inf
    assert psnr((exact + jitter).float(), photo) == math.inf
    # Without rounding the jitter is scored (after the clamp to [0, 1] that saturated pixels get).
    no_rounding = dataclasses.replace(PROTOCOLS["masa"], name="masa-float", round_uint8=False)
    rgb_error = ((exact + jitter).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0) - photo
    y_error = rgb_error @ BT601 / 255.0
    expected = 20 * math.log10(255 / math.sqrt(np.mean(y_error**2)))
    assert psnr(exact + jitter, photo, protocol=no_rounding) == pytest.approx(expected, abs=1e-9)


def test_quantize_uint8_rounds_half_to_even_in_float32():
    # Find float32 values v with float32(v * 255) exactly k + 0.5: the official numpy round() sends them
    # to the even neighbour.
    halves, expected = [], []
    for k in range(0, 255):
        v = np.float32((k + 0.5) / 255.0)
        for _ in range(8):
            product = v * np.float32(255.0)
            if product == np.float32(k + 0.5):
                halves.append(v)
                expected.append(k if k % 2 == 0 else k + 1)
                break
            v = np.nextafter(v, np.float32(np.inf) if product < k + 0.5 else np.float32(-np.inf))
    assert len(halves) > 50
    quantised = quantize_uint8(torch.from_numpy(np.array(halves, np.float32)))
    assert quantised.tolist() == expected
    # Clamping and the float32 cast of float64 input, as `.float().clamp_(0, 1)` does.
    values = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.7, 127.5 / 255.0], dtype=torch.float64)
    as_float32 = np.clip(values.numpy().astype(np.float32), 0, 1)
    reference = np.round(as_float32 * np.float32(255.0)).astype(np.uint8)
    assert quantize_uint8(values).numpy().tolist() == reference.tolist()


def test_batch_reduction_and_lists():
    photos = [load_photo(n) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    crops_hr = [p[:150, :190] for p in photos]
    crops_sr = [jpeg(p, 30) for p in crops_hr]
    singles = [psnr(s, h) for s, h in zip(crops_sr, crops_hr)]
    singles_ssim = [ssim(s, h, protocol="c2") for s, h in zip(crops_sr, crops_hr)]
    sr_batch = torch.cat([to_tensor(s) for s in crops_sr])
    hr_batch = torch.cat([to_tensor(h) for h in crops_hr])
    assert psnr(sr_batch, hr_batch, reduction="none") == pytest.approx(singles, abs=1e-12)
    assert psnr(sr_batch, hr_batch) == pytest.approx(np.mean(singles), abs=1e-12)
    assert ssim(sr_batch, hr_batch, protocol="c2", reduction="none") == pytest.approx(singles_ssim, abs=1e-12)
    assert ssim(np.stack(crops_sr), np.stack(crops_hr), protocol="c2") == pytest.approx(
        np.mean(singles_ssim), abs=1e-12
    )
    # Lists allow images of different sizes.
    full_sr = [jpeg(p, 30) for p in photos]
    per_image = psnr(full_sr, photos, reduction="none")
    assert per_image == [psnr(s, h) for s, h in zip(full_sr, photos)]
    assert psnr(full_sr, photos) == pytest.approx(np.mean(per_image), abs=1e-12)


def test_grey_images_score_like_their_rgb_copies():
    photo = load_photo("chelsea.png")
    grey_hr = np.asarray(Image.fromarray(photo).convert("L"))
    grey_sr = jpeg(np.repeat(grey_hr[..., None], 3, axis=2), 30)[..., 0]
    rgb_hr = np.repeat(grey_hr[..., None], 3, axis=2)
    rgb_sr = np.repeat(grey_sr[..., None], 3, axis=2)
    for protocol in ("masa", "c2", "rgb"):
        expected_psnr = psnr(rgb_sr, rgb_hr, protocol=protocol)
        expected_ssim = ssim(rgb_sr, rgb_hr, protocol=protocol)
        assert psnr(grey_sr, grey_hr, protocol=protocol) == pytest.approx(expected_psnr, abs=1e-12)
        assert ssim(grey_sr, grey_hr, protocol=protocol) == pytest.approx(expected_ssim, abs=1e-12)
        assert psnr(grey_sr[..., None], rgb_hr, protocol=protocol) == pytest.approx(expected_psnr, abs=1e-12)
        grey_tensor = torch.from_numpy(grey_sr.copy())[None, None].float() / 255
        assert ssim(grey_tensor, Image.fromarray(grey_hr), protocol=protocol) == pytest.approx(
            expected_ssim, abs=1e-12
        )
    # On Y, a grey image is scored on 16 + g * 219 / 255, i.e. 20 log10(255 / 219) dB above raw grey.
    raw = 20 * math.log10(255 / math.sqrt(np.mean((grey_sr.astype(float) - grey_hr) ** 2)))
    assert psnr(grey_sr, grey_hr) == pytest.approx(raw + 20 * math.log10(255 / 219), abs=1e-9)


@pytest.mark.parametrize(
    ("sr", "hr", "kwargs", "message"),
    [
        (np.zeros((20, 30, 3), np.uint8), np.zeros((20, 31, 3), np.uint8), {}, r"\(20, 30, 3\).*\(20, 31, 3"),
        (torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16), {}, r"\(2, 3, 16, 16\).*\(1, 3, 16, 16\)"),
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.uint8), {}, "uint8"),
        (np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 4), np.uint8), {}, "alpha"),
        (np.zeros((1, 1, 16, 16, 3), np.uint8), np.zeros((1, 1, 16, 16, 3), np.uint8), {}, "HxWx3"),
        (torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16), {}, "channels"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.int64), torch.zeros(1, 3, 16, 16), {}, "int64"),
        (torch.full((1, 3, 16, 16), float("nan")), torch.zeros(1, 3, 16, 16), {}, "NaN"),
        (np.zeros((0, 16, 3), np.uint8), np.zeros((0, 16, 3), np.uint8), {}, "empty"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), {"protocol": "c2"}, "too small"),
        ([np.zeros((16, 16, 3), np.uint8)], [], {}, "same length"),
        ("sr.png", "hr.png", {}, "numpy uint8 array"),
        (np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8), {"reduction": "sum"}, "reduction"),
    ],
)
def test_bad_inputs_raise_refsr_error(sr, hr, kwargs, message):
    with pytest.raises(RefsrError, match=message):
        psnr(sr, hr, **kwargs)
    with pytest.raises(RefsrError, match=message):
        ssim(sr, hr, **kwargs)


def test_ssim_needs_an_11x11_window_after_the_crop():
    a = np.zeros((18, 18, 3), np.uint8)
    b = np.full((18, 18, 3), 9, np.uint8)
    assert ssim(a, b, protocol="masa") < 1.0  # 18x18 is enough without a crop ...
    assert np.isfinite(psnr(a, b, protocol="c2"))
    with pytest.raises(RefsrError, match="11x11.*10x10"):
        ssim(a, b, protocol="c2")  # ... but 10x10 after cropping 4 is not
    with pytest.raises(RefsrError, match="11x11"):
        ssim(a[:10], b[:10])


def test_refsr_error_is_a_value_error():
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), np.uint8))
