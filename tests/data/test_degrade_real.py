"""The real-world degradation pipeline (refsr.data.degrade_real, exported by refsr.data.degrade): every stage
against a formula written out here or against Pillow, the draws against their option ranges, and
determinism across seeds, thread counts, processes and DataLoader workers."""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image

from refsr.data import augment as aug
from refsr.data.degrade import RealDegradation, degrade_real, jpeg_compress, make_lr, to_tensor
from refsr.data.degrade_real import (
    KERNEL_TYPES,
    BlurKernel,
    DegradationDraw,
    NoiseDraw,
    RoundDraw,
    add_gaussian_noise,
    add_poisson_noise,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    resize,
    sinc_kernel,
)
from refsr.errors import RefsrError
from refsr.metrics import psnr


def hr_crop(side: int = 160) -> np.ndarray:
    return np.ascontiguousarray(load_photo("astronaut.png")[:side, :side])


# ---- kernels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KERNEL_TYPES + ("sinc",))
@pytest.mark.parametrize("size", [7, 13, 21])
def test_every_kernel_sums_to_one(kind: str, size: int) -> None:
    k = BlurKernel(kind, size, sigma_x=1.7, sigma_y=0.6, theta=0.4, beta=0.7, omega=math.pi / 4).kernel()
    assert k.shape == (size, size) and k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-12)


def test_isotropic_gaussian_is_symmetric_and_the_outer_product_of_1d_gaussians() -> None:
    k = gaussian_kernel(11, 1.8)
    assert np.array_equal(k, k.T) and np.array_equal(k, k[::-1]) and np.array_equal(k, k[:, ::-1])
    x = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * 1.8**2))
    g /= g.sum()
    np.testing.assert_allclose(k, np.outer(g, g), rtol=1e-12)


def test_anisotropic_gaussian_by_hand() -> None:
    # theta = 0: sigma_x along columns, sigma_y along rows.
    k = gaussian_kernel(9, 2.0, 1.0, 0.0)
    y, x = np.mgrid[-4:5, -4:5]
    expected = np.exp(-(x**2 / 8.0 + y**2 / 2.0))
    np.testing.assert_allclose(k, expected / expected.sum(), rtol=1e-12)
    # A quarter turn swaps the axes.
    np.testing.assert_allclose(gaussian_kernel(9, 2.0, 1.0, math.pi / 2), k.T, atol=1e-15)
    # 45 degrees: the long axis runs along the diagonal y = x (rows grow downwards).
    turned = gaussian_kernel(9, 3.0, 0.5, math.pi / 4)
    assert turned[6, 6] > 100 * turned[6, 2]


def test_generalized_gaussian_with_beta_one_is_the_gaussian() -> None:
    # Real-ESRGAN's beta is the exponent on the squared distance: beta = 1 is the Gaussian (shape 2 beta = 2).
    for sx, sy, theta in [(1.3, 1.3, 0.0), (2.5, 0.8, 0.7)]:
        np.testing.assert_allclose(
            generalized_gaussian_kernel(15, sx, sy, theta, beta=1.0), gaussian_kernel(15, sx, sy, theta),
            rtol=1e-13,
        )
    flat_top = generalized_gaussian_kernel(15, 2.0, beta=2.0)
    assert not np.allclose(flat_top, gaussian_kernel(15, 2.0))
    # exp(-d2^beta / 2) with d2 = (x / sigma)^2 along the centre row, by hand.
    row = np.arange(-7, 8) ** 2 / 4.0
    assert flat_top[7, 9] / flat_top[7, 7] == pytest.approx(math.exp(-0.5 * row[9] ** 2.0))


def test_plateau_kernel_shape() -> None:
    beta = 1.5
    k = plateau_kernel(9, 2.0, beta=beta)
    centre = k[4, 4]
    # Half the peak where the Mahalanobis distance is 1 (x = sigma), whatever beta; 1 / (1 + 4^beta) at
    # x = 2 sigma.
    assert k[4, 6] / centre == pytest.approx(0.5, rel=1e-12)
    assert k[4, 8] / centre == pytest.approx(1 / (1 + 4.0**beta), rel=1e-12)
    # Flatter top than a Gaussian of the same half-peak width, and heavier tails.
    gauss = gaussian_kernel(9, 2.0 / math.sqrt(2 * math.log(2)))
    assert k[4, 5] / centre > gauss[4, 5] / gauss[4, 4] and k[4, 8] / centre > gauss[4, 8] / gauss[4, 4]
    # Radially non-increasing along the row.
    assert np.all(np.diff(k[4, 4:]) < 0)


def bessel_j1_by_integral(x: np.ndarray) -> np.ndarray:
    """J1(x) = (1/pi) * integral_0^pi cos(t - x sin t) dt, by the trapezoid rule (exact to ~1e-15 here: the
    integrand is smooth and periodic)."""
    t = np.linspace(0.0, math.pi, 4001)
    values = np.cos(t[None, :] - np.asarray(x, np.float64).reshape(-1, 1) * np.sin(t)[None, :])
    return (np.trapezoid(values, t, axis=1) / math.pi).reshape(np.shape(x))


@pytest.mark.parametrize("size, omega", [(7, math.pi / 3), (13, 0.8 * math.pi), (21, math.pi / 5)])
def test_sinc_kernel_against_its_closed_form(size: int, omega: float) -> None:
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(x, y)
    safe = np.where(r > 0, r, 1.0)
    ring = omega * bessel_j1_by_integral(omega * safe) / (2 * math.pi * safe)
    expected = np.where(r > 0, ring, omega**2 / (4 * math.pi))
    # torch.special.bessel_j1 is good to about 3e-8 absolute (worst near J1's zeros): far below what an
    # 8-bit image can show, and far below what a wrong formula would give (1e-3 and more).
    np.testing.assert_allclose(sinc_kernel(size, omega), expected / expected.sum(), rtol=0, atol=5e-7)


def test_sinc_kernel_rings() -> None:
    k = sinc_kernel(21, math.pi / 3)
    assert k.min() < 0 and k.argmax() == k.size // 2
    with pytest.raises(RefsrError, match="omega"):
        sinc_kernel(7, 4.0)
    with pytest.raises(RefsrError, match="odd"):
        sinc_kernel(8, 1.0)


# ---- filtering, resizing -----------------------------------------------------------------------------------


def test_filter2d_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((2, 9, 11)).astype(np.float32)
    kernel = gaussian_kernel(5, 1.5, 0.7, 0.3)
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    expected = np.zeros_like(image, dtype=np.float64)
    for c in range(2):
        for i in range(9):
            for j in range(11):
                expected[c, i, j] = (padded[c, i : i + 5, j : j + 5] * kernel).sum()
    np.testing.assert_allclose(filter2d(image, kernel), expected, atol=1e-6)


@pytest.mark.parametrize("kernel", [gaussian_kernel(15, 2.5, 0.8, 0.6), sinc_kernel(21, math.pi / 4),
                                    plateau_kernel(11, 1.5, beta=1.3)])
def test_large_kernels_through_the_fft_against_brute_force(kernel: np.ndarray) -> None:
    image = np.random.default_rng(7).random((3, 70, 83)).astype(np.float32)  # big enough for the FFT path
    pad = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape, axis=(1, 2))
    expected = np.einsum("chwij,ij->chw", windows, kernel)
    np.testing.assert_allclose(filter2d(image, kernel), expected, atol=1e-6)


def test_separable_filter_equals_the_2d_filter() -> None:
    image = np.random.default_rng(2).random((3, 40, 50)).astype(np.float32)
    k = gaussian_kernel(13, 2.3)
    np.testing.assert_allclose(filter2d(image, k, separable=True), filter2d(image, k), atol=2e-6)


def test_filter2d_on_an_image_smaller_than_the_kernel() -> None:
    flat = np.full((1, 3, 4), 0.25, np.float32)
    out = filter2d(flat, gaussian_kernel(21, 3.0))  # too small to reflect by 10: replicate instead
    assert out.shape == flat.shape
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_resize_sizes_and_area_is_a_block_mean() -> None:
    image = np.random.default_rng(3).random((3, 8, 12)).astype(np.float32)
    area = resize(image, (4, 6), "area")
    np.testing.assert_allclose(area, image.reshape(3, 4, 2, 6, 2).mean(axis=(2, 4)), atol=1e-6)
    for mode in ("bilinear", "bicubic"):
        assert resize(image, (13, 5), mode).shape == (3, 13, 5)
    with pytest.raises(RefsrError, match="resize mode"):
        resize(image, (4, 4), "nearest")


# ---- noise -------------------------------------------------------------------------------------------------


def test_gaussian_noise_statistics_on_a_flat_image() -> None:
    flat = np.full((3, 256, 256), 0.5, np.float32)
    rng = np.random.default_rng(4)
    noisy = add_gaussian_noise(flat, 10.0, grey=False, rng=rng) - 0.5
    assert abs(noisy.mean()) < 0.002
    assert noisy.std() * 255 == pytest.approx(10.0, rel=0.02)
    # Colour noise: independent channels.
    assert abs(np.corrcoef(noisy[0].ravel(), noisy[1].ravel())[0, 1]) < 0.02
    grey = add_gaussian_noise(flat, 10.0, grey=True, rng=rng) - 0.5
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    assert grey.std() * 255 == pytest.approx(10.0, rel=0.03)
    # Clipped to [0, 1].
    assert add_gaussian_noise(np.zeros((1, 64, 64), np.float32), 30.0, False, rng).min() == 0.0


def test_poisson_noise_statistics_on_a_flat_image() -> None:
    # 128 everywhere but one row holding all 256 levels: 256 distinct levels, so v = 256 photons at full
    # scale.
    levels = np.full((3, 257, 256), 128, np.uint8)
    levels[:, 0, :] = np.arange(256, dtype=np.uint8)
    image = levels.astype(np.float32) / 255
    scale = 2.0
    noise = add_poisson_noise(image, scale, grey=False, rng=np.random.default_rng(5))[:, 1:] - image[:, 1:]
    q = 128 / 255
    assert abs(noise.mean()) < 0.003
    assert noise.var() == pytest.approx(scale**2 * q / 256, rel=0.03)
    grey = add_poisson_noise(image, scale, grey=True, rng=np.random.default_rng(6))[:, 1:] - image[:, 1:]
    assert np.array_equal(grey[0], grey[2]) and grey.var() == pytest.approx(scale**2 * q / 256, rel=0.04)


# ---- JPEG --------------------------------------------------------------------------------------------------


def pillow_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_jpeg_is_pillow_at_the_given_quality() -> None:
    hr = hr_crop(96)
    scores = []
    for quality in (30, 60, 95):
        out = jpeg_compress(hr, quality)
        assert np.array_equal(out, pillow_round_trip(hr, quality))
        scores.append(psnr(out, hr, protocol="masa"))
    assert scores[0] < scores[1] < scores[2]
    with pytest.raises(RefsrError, match="quality"):
        jpeg_compress(hr, 0)


def plain_draw(q1: int, q2: int, *, sinc_first: bool) -> DegradationDraw:
    """A draw whose only effects are its two JPEG passes: no blur, no resize at scale 1, zero noise."""
    quiet = NoiseDraw("gaussian", 0.0, 0.0, False)
    first, second = RoundDraw(None, 1.0, "bicubic", quiet, q1), RoundDraw(None, 1.0, "area", quiet, q2)
    return DegradationDraw(first, second, sinc_first, "bilinear", None, noise_seed=0)


@pytest.mark.parametrize("sinc_first", [True, False])
def test_the_pipeline_applies_both_jpeg_qualities(sinc_first: bool) -> None:
    hr = hr_crop(64)
    out = plain_draw(35, 80, sinc_first=sinc_first).apply(hr, 1)
    assert np.array_equal(out, jpeg_compress(jpeg_compress(hr, 35), 80))
    assert not np.array_equal(out, jpeg_compress(jpeg_compress(hr, 35), 60))


# ---- draws -------------------------------------------------------------------------------------------------


def test_defaults_are_real_esrgan_options() -> None:
    o = RealDegradation()
    first, second = o.first, o.second
    # options/train_realesrnet_x4plus.yml of xinntao/Real-ESRGAN (second round: the options ending in 2)
    assert (first.resize_prob, first.resize_range, first.noise_range, first.poisson_scale_range) == (
        (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), (0.05, 3.0))
    assert (second.resize_prob, second.resize_range, second.noise_range, second.poisson_scale_range) == (
        (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), (0.05, 2.5))
    for r in (first, second):
        assert (r.gaussian_noise_prob, r.gray_noise_prob, r.sinc_prob) == (0.5, 0.4, 0.1)
        assert r.jpeg_range == (30.0, 95.0)
        assert r.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and r.kernel_list == KERNEL_TYPES
        assert r.betag_range == (0.5, 4.0) and r.betap_range == (1.0, 2.0)
    assert (first.blur_sigma, second.blur_sigma) == ((0.2, 3.0), (0.2, 1.5))
    assert (first.blur_prob, second.blur_prob) == (1.0, 0.8)
    assert (o.final_sinc_prob, o.kernel_range) == (0.8, (7, 21))


def test_draws_stay_within_the_options_and_follow_their_weights() -> None:
    options = RealDegradation()
    draws = [options.draw(seed) for seed in range(3000)]
    kinds = Counter(d.first.blur.kind for d in draws)
    # sinc with p = 0.1, else the six families by weight.
    assert kinds["sinc"] / 3000 == pytest.approx(0.1, abs=0.02)
    assert kinds["iso"] / 3000 == pytest.approx(0.9 * 0.45, abs=0.03)
    assert kinds["plateau_aniso"] / 3000 == pytest.approx(0.9 * 0.03, abs=0.012)
    assert sum(d.second.blur is None for d in draws) / 3000 == pytest.approx(0.2, abs=0.025)
    assert sum(d.final_sinc is None for d in draws) / 3000 == pytest.approx(0.2, abs=0.025)
    assert sum(d.sinc_first for d in draws) / 3000 == pytest.approx(0.5, abs=0.03)
    for d in draws:
        for r, (lo, hi) in ((d.first, (0.15, 1.5)), (d.second, (0.3, 1.2))):
            assert lo <= r.resize <= hi and 30 <= r.jpeg_quality <= 95
            assert r.resize_mode in ("area", "bilinear", "bicubic")
        for k in (d.first.blur, d.second.blur, d.final_sinc):
            if k is not None:
                assert k.size % 2 == 1 and 7 <= k.size <= 21
        k = d.first.blur
        if k.kind == "sinc":
            assert (math.pi / 3 if k.size < 13 else math.pi / 5) <= k.omega <= math.pi
        else:
            assert 0.2 <= k.sigma_x <= 3.0 and 0.2 <= k.sigma_y <= 3.0
            if not k.kind.endswith("aniso"):
                assert k.sigma_x == k.sigma_y and k.theta == 0.0
            if k.kind.startswith("generalized"):
                assert 0.5 <= k.beta <= 4.0
            elif k.kind.startswith("plateau"):
                assert 1.0 <= k.beta <= 2.0
        assert 1.0 <= d.first.noise.sigma <= 30.0 and 0.05 <= d.second.noise.scale <= 2.5
    first_noise = Counter((d.first.noise.kind, d.first.noise.grey) for d in draws)
    assert first_noise["gaussian", True] / 3000 == pytest.approx(0.5 * 0.4, abs=0.03)


def test_options_are_checked() -> None:
    with pytest.raises(RefsrError, match="^second.jpeg_rang: unknown degradation option; did you mean jpeg_"):
        RealDegradation.from_options({"second": {"jpeg_rang": [50, 95]}})
    with pytest.raises(RefsrError, match="^final_sinc: unknown degradation option; did you mean final_s"):
        RealDegradation.from_options({"final_sinc": 0.5})
    with pytest.raises(RefsrError, match=r"^second.jpeg_range: the range must lie within \[1, 100\]"):
        RealDegradation.from_options({"second": {"jpeg_range": [0, 95]}})
    with pytest.raises(RefsrError, match="^first.noise_range: give a range"):
        RealDegradation.from_options({"first": {"noise_range": [30, 1]}})
    with pytest.raises(RefsrError, match="^first.resize_range: the range must lie from 1e-06 up, holding 1"):
        RealDegradation.from_options({"first": {"resize_range": [0.2, 0.5]}})
    with pytest.raises(RefsrError, match="^first.kernel_prob: give 2 non-negative weights"):
        RealDegradation.from_options({"first": {"kernel_list": ["iso", "aniso"]}})
    with pytest.raises(RefsrError, match="^kernel_range: give two odd sizes"):
        RealDegradation.from_options({"kernel_range": [6, 21]})
    mild = RealDegradation.from_options(
        {"first": {"jpeg_range": [70, 95], "kernel_list": ["iso"], "kernel_prob": [1]}}
    )
    assert mild.first.jpeg_range == (70, 95) and mild.second == RealDegradation().second
    assert all(mild.draw(s).first.blur.kind in ("iso", "sinc") for s in range(50))
    assert all(70 <= mild.draw(s).first.jpeg_quality <= 95 for s in range(50))


# ---- the whole pipeline ------------------------------------------------------------------------------------


def test_output_size_dtype_and_range_of_values() -> None:
    photo = load_photo("astronaut.png")  # 241 x 203, sides that do not divide by 4
    for scale in (2, 4):
        for seed in range(6):
            lr = degrade_real(photo, scale, seed=seed)
            assert lr.shape == make_lr(photo, scale).shape and lr.dtype == np.uint8
    with pytest.raises(RefsrError, match="too small"):
        degrade_real(photo[:3], 4, seed=0)
    with pytest.raises(RefsrError, match="uint8"):
        degrade_real(photo.astype(np.float32), 4, seed=0)


def test_grey_images_stay_grey() -> None:
    grey = np.ascontiguousarray(load_photo("coffee.png")[..., 1])
    lr3 = degrade_real(np.repeat(grey[..., None], 3, axis=2), 4, seed=7)
    assert np.array_equal(lr3[..., 0], lr3[..., 1]) and np.array_equal(lr3[..., 1], lr3[..., 2])
    lr2 = degrade_real(grey, 4, seed=7)
    assert lr2.ndim == 2 and np.array_equal(lr2, lr3[..., 0])


def test_same_seed_same_lr_different_seed_different_lr() -> None:
    hr = hr_crop()
    a = degrade_real(hr, 4, seed=(3, 1, 7))
    assert np.array_equal(a, degrade_real(hr, 4, seed=(3, 1, 7)))
    others = [degrade_real(hr, 4, seed=(3, 1, s)) for s in (8, 9)]
    assert all(not np.array_equal(a, o) for o in others)
    # Degraded, yet still the same picture: much closer to its own bicubic LR than to a flipped one.
    bicubic = make_lr(hr, 4)
    assert psnr(a, bicubic, protocol="masa") > psnr(a, bicubic[::-1], protocol="masa") + 3
    with pytest.raises(RefsrError, match="seed"):
        degrade_real(hr, 4, seed=-1)


def digest(seeds: range) -> str:
    hr = hr_crop(96)
    return hashlib.sha256(b"".join(degrade_real(hr, 4, seed=s).tobytes() for s in seeds)).hexdigest()


class Degraded(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(degrade_real(hr_crop(96), 4, seed=index))


@pytest.mark.slow
def test_the_same_lr_in_other_processes_threads_and_dataloader_workers() -> None:
    here = digest(range(6))
    torch.set_num_threads(1)
    try:
        assert digest(range(6)) == here
    finally:
        torch.set_num_threads(2)
    code = ("import sys, torch; sys.path[:0] = sys.argv[1:]; torch.set_num_threads(3); "
            "from test_degrade_real import digest; print(digest(range(6)))")
    here_dir = Path(__file__).parent
    child = subprocess.run([sys.executable, "-c", code, str(here_dir), str(here_dir.parent)],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == here
    loader = torch.utils.data.DataLoader(Degraded(), batch_size=None, num_workers=2)
    assert hashlib.sha256(b"".join(lr.numpy().tobytes() for lr in loader)).hexdigest() == here


# ---- the training transform ------------------------------------------------------------------------------


def training_sample() -> dict:
    hr, ref = hr_crop(64), np.ascontiguousarray(load_photo("chelsea.png")[:64, :64])
    return {"hr": to_tensor(hr), "lr": to_tensor(make_lr(hr, 4)), "ref": to_tensor(ref),
            "ref_down": to_tensor(make_lr(ref, 4))}


def test_the_transform_remakes_the_lr_from_the_hr() -> None:
    sample = training_sample()
    out = aug.RandomRealDegradation()(sample, generator=torch.Generator().manual_seed(5))
    seed = int(torch.randint(2**63 - 1, (), generator=torch.Generator().manual_seed(5)))
    hr8 = hr_crop(64)
    assert torch.equal(out["lr"], to_tensor(RealDegradation().draw(seed).apply(hr8, 4)))
    assert not torch.equal(out["lr"], sample["lr"])
    for key in ("hr", "ref", "ref_down"):
        assert out[key] is sample[key]
    # DataLoader workers started with spawn get a pickled copy: it must give the same LR.
    copy = pickle.loads(pickle.dumps(aug.RandomRealDegradation()))
    again = copy(sample, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again["lr"], out["lr"])


def test_the_transform_compresses_the_reference_when_asked() -> None:
    sample = training_sample()
    out = aug.RandomRealDegradation(ref_jpeg=(40, 40))(sample, generator=torch.Generator().manual_seed(5))
    ref8 = np.ascontiguousarray(load_photo("chelsea.png")[:64, :64])
    assert torch.equal(out["ref"], to_tensor(jpeg_compress(ref8, 40)))
    assert torch.equal(out["ref_down"], to_tensor(make_lr(jpeg_compress(ref8, 40), 4)))
    # The LR does not depend on whether the reference is compressed.
    plain = aug.RandomRealDegradation()(sample, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out["lr"], plain["lr"])
    with pytest.raises(RefsrError, match="ref_jpeg"):
        aug.RandomRealDegradation(ref_jpeg=(90, 40))
