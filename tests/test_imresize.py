"""Tests for refsr.imresize: bit-exact against Pillow, MATLAB kernel against hand computation."""

from __future__ import annotations

import importlib
import math

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, load_photo
from refsr.errors import RefsrError
from refsr.imresize import Imresize, imresize

# The module itself (the package may re-export the function under the same name).
imresize_module = importlib.import_module("refsr.imresize")

PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def target_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """x1/4, x1/2, x4, odd sizes, non-uniform sizes and single-axis changes, as (h, w)."""
    return [
        (h // 4, w // 4),
        (h // 2, w // 2),
        (h * 4, w * 4),
        (37, 53),
        (h - 1, w + 1),
        (h // 3, w * 2),  # height shrinks, width grows
        (h * 3, w // 2),  # height grows, width shrinks
        (h, w // 3),  # only the horizontal pass runs
        (h * 2 + 1, w),  # only the vertical pass runs
        (1, 1),
    ]


def pillow_single_call(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(array).resize((w, h), Image.BICUBIC))


def pillow_horizontal_then_vertical(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's classic order (all versions up to 12.x), built from two single-axis Pillow resizes.

    A resize that keeps one side runs exactly one pass in every Pillow version, so this is Pillow's
    own arithmetic in the order the official repos saw.
    """
    h, w = size
    image = Image.fromarray(array)
    image = image.resize((w, image.height), Image.BICUBIC)
    return np.asarray(image.resize((w, h), Image.BICUBIC))


def pillow_runs_vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Pillow >= 13 runs the vertical pass first when the height shrinks a lot more than the width."""
    shrink_h = in_size[0] - out_size[0]
    shrink_w = in_size[1] - out_size[1]
    return PILLOW_MAJOR >= 13 and shrink_h > 0 and shrink_h > 2 * shrink_w


# --------------------------------------------------------------------------------------------------------
# kernel="pil" against Pillow
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pil_uint8_bit_exact(photo: np.ndarray, mode: str) -> None:
    array = photo if mode == "RGB" else np.asarray(Image.fromarray(photo).convert("L"))
    h, w = array.shape[:2]
    for size in target_sizes(h, w):
        ours = imresize(array, size=size)
        assert ours.dtype == np.uint8 and ours.shape == array.shape[:0] + size + array.shape[2:]
        np.testing.assert_array_equal(ours, pillow_horizontal_then_vertical(array, size), err_msg=str(size))

        # The one-call Pillow resize, whose pass order depends on the Pillow version.
        expected = pillow_single_call(array, size)
        if pillow_runs_vertical_first((h, w), size):
            ours = imresize(imresize(array, size=(size[0], w)), size=size)
        np.testing.assert_array_equal(ours, expected, err_msg=f"one-call Pillow, {size}")


def test_pil_uint8_bit_exact_on_stacked_references() -> None:
    # MASA's TestSet_multi stacks its references vertically and down-samples the stack by 4: a tall
    # image, where Pillow 13 changes its pass order.
    stack = np.concatenate([load_photo(name)[:, :190] for name in PHOTOS], axis=0)
    h, w = stack.shape[:2]
    size = (h // 4, w // 4)
    ours = imresize(stack, 1 / 4)
    assert ours.shape == (h // 4, w // 4, 3)
    np.testing.assert_array_equal(ours, pillow_horizontal_then_vertical(stack, size))
    if pillow_runs_vertical_first((h, w), size):
        vertical_first = imresize(imresize(stack, size=(size[0], w)), size=size)
        np.testing.assert_array_equal(vertical_first, pillow_single_call(stack, size))
        # The two orders really do differ here, so the assertions above can tell them apart.
        assert (vertical_first != ours).any()
    else:
        np.testing.assert_array_equal(ours, pillow_single_call(stack, size))


def test_pil_float_matches_pillow_mode_f(photo: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(photo).convert("L")).astype(np.float32)
    # Not in [0, 1], negative values included: nothing may be clipped.
    array = grey / 255.0 * 3.0 - 1.0
    h, w = array.shape
    for size in target_sizes(h, w):
        ours = imresize(array, size=size)
        assert ours.dtype == np.float32
        image = Image.fromarray(array, mode="F")
        expected = np.asarray(image.resize((size[1], size[0]), Image.BICUBIC))
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4, err_msg=str(size))
    assert imresize(array, size=(h * 4, w * 4)).max() > array.max()  # overshoot is kept


def test_pil_float64_close_to_float32(photo: np.ndarray) -> None:
    array = photo.astype(np.float64) / 255.0
    ours64 = imresize(array, 1 / 4)
    ours32 = imresize(array.astype(np.float32), 1 / 4)
    assert ours64.dtype == np.float64
    np.testing.assert_allclose(ours64, ours32, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Layouts, batches, dtypes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["pil", "matlab"])
def test_tensor_and_array_inputs_agree(photo: np.ndarray, kernel: str) -> None:
    from_array = imresize(photo, size=(37, 53), kernel=kernel)
    chw = torch.from_numpy(photo.copy()).permute(2, 0, 1)
    from_chw = imresize(chw, size=(37, 53), kernel=kernel)
    from_nchw = imresize(chw[None], size=(37, 53), kernel=kernel)
    assert isinstance(from_chw, torch.Tensor) and from_chw.dtype == torch.uint8
    assert from_chw.shape == (3, 37, 53) and from_nchw.shape == (1, 3, 37, 53)
    np.testing.assert_array_equal(from_chw.permute(1, 2, 0).numpy(), from_array)
    assert torch.equal(from_nchw[0], from_chw)

    # (H, W) tensor and HxW array: one channel.
    grey_tensor = imresize(chw[1], size=(37, 53), kernel=kernel)
    grey_array = imresize(np.ascontiguousarray(photo[:, :, 1]), size=(37, 53), kernel=kernel)
    assert grey_tensor.shape == (37, 53) and grey_array.shape == (37, 53)
    np.testing.assert_array_equal(grey_tensor.numpy(), grey_array)
    np.testing.assert_array_equal(grey_array, from_array[:, :, 1])


@pytest.mark.parametrize("kernel", ["pil", "matlab"])
def test_batch_equals_per_image(kernel: str) -> None:
    crops = [load_photo(name)[:150, :190] for name in PHOTOS]
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    batch = batch.contiguous()
    out = imresize(batch, 1 / 4, kernel=kernel)
    expected_h = 37 if kernel == "pil" else 38  # floor vs ceil of 150 / 4
    expected_w = 47 if kernel == "pil" else 48  # floor vs ceil of 190 / 4
    assert out.shape == (3, 3, expected_h, expected_w)
    for i in range(len(crops)):
        assert torch.equal(out[i], imresize(batch[i], 1 / 4, kernel=kernel))
        assert torch.equal(out[i : i + 1], imresize(batch[i : i + 1], 1 / 4, kernel=kernel))


def test_float_tensor_matches_pillow_mode_f_per_channel() -> None:
    photo = load_photo("chelsea.png")
    tensor = torch.from_numpy(photo.copy()).permute(2, 0, 1).float()[None] / 255.0
    out = imresize(tensor, size=(41, 66))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 41, 66)
    for c in range(3):
        channel = Image.fromarray(tensor[0, c].numpy(), mode="F")
        expected = np.asarray(channel.resize((66, 41), Image.BICUBIC))
        np.testing.assert_allclose(out[0, c].numpy(), expected, rtol=0, atol=1e-4)


def test_non_contiguous_and_read_only_inputs() -> None:
    photo = load_photo("coffee.png")
    read_only = np.asarray(Image.fromarray(photo))  # Pillow hands out read-only arrays
    flipped = photo[::-1, ::2]  # negative and non-unit strides
    np.testing.assert_array_equal(imresize(read_only, 1 / 2), imresize(photo.copy(), 1 / 2))
    np.testing.assert_array_equal(imresize(flipped, 1 / 2), imresize(np.ascontiguousarray(flipped), 1 / 2))
    channels_last = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None]  # a strided view
    assert torch.equal(imresize(channels_last, 1 / 2), imresize(channels_last.contiguous(), 1 / 2))


def test_same_size_returns_a_copy() -> None:
    photo = load_photo("chelsea.png")
    h, w = photo.shape[:2]
    out = imresize(photo, size=(h, w))
    np.testing.assert_array_equal(out, photo)
    assert not np.shares_memory(out, photo)
    tensor = torch.from_numpy(photo.copy()).permute(2, 0, 1)
    out_t = imresize(tensor, 1.0, kernel="matlab")
    assert torch.equal(out_t, tensor) and out_t.data_ptr() != tensor.data_ptr()


def test_half_precision_tensors_keep_their_dtype() -> None:
    x = torch.rand(2, 3, 20, 24)
    for dtype in (torch.float16, torch.bfloat16):
        out = imresize(x.to(dtype), 1 / 2)
        assert out.dtype == dtype and out.shape == (2, 3, 10, 12)
        torch.testing.assert_close(out.float(), imresize(x, 1 / 2), rtol=0, atol=2e-2)


def test_chunked_passes_match_a_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks exercise both ways of splitting (over planes and within a plane).
    photo = load_photo("astronaut.png")[:64, :80]
    batch = torch.from_numpy(np.stack([photo, photo[::-1]])).permute(0, 3, 1, 2).contiguous()
    floats = batch.double() / 255.0
    whole = {
        kernel: (imresize(batch, size=(23, 150), kernel=kernel), imresize(floats, 1 / 3, kernel=kernel))
        for kernel in ("pil", "matlab")
    }
    for budget in (50_000, 700):
        monkeypatch.setattr(imresize_module, "_CHUNK_ELEMENTS", budget)
        for kernel, (as_uint8, as_float) in whole.items():
            assert torch.equal(imresize(batch, size=(23, 150), kernel=kernel), as_uint8)
            assert torch.equal(imresize(floats, 1 / 3, kernel=kernel), as_float)


def test_float_path_is_differentiable(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    for kernel in ("pil", "matlab"):
        assert torch.autograd.gradcheck(lambda t: imresize(t, size=(4, 11), kernel=kernel), (x,))
    monkeypatch.setattr(imresize_module, "_CHUNK_ELEMENTS", 10)  # gradients through chunked writes
    assert torch.autograd.gradcheck(lambda t: imresize(t, size=(4, 11)), (x,))


def test_module_wrapper() -> None:
    x = torch.rand(2, 3, 33, 41)
    module = Imresize(1 / 4, kernel="matlab")
    assert torch.equal(module(x), imresize(x, 1 / 4, kernel="matlab"))
    assert list(module.parameters()) == [] and "matlab" in repr(module)
    assert torch.equal(Imresize(size=(9, 10))(x), imresize(x, size=(9, 10)))
    with pytest.raises(RefsrError):
        Imresize(1 / 4, kernel="bilinear")


# --------------------------------------------------------------------------------------------------------
# Output size from a scale factor
# --------------------------------------------------------------------------------------------------------


def test_scale_rounding_rules() -> None:
    image = np.zeros((203, 241, 3), np.uint8)  # not divisible by 4
    # pil: floor, as the official repos' (w // 4, h // 4).
    assert imresize(image, 1 / 4).shape == (50, 60, 3)
    assert imresize(image, 4).shape == (812, 964, 3)
    assert imresize(image, (0.5, 2)).shape == (101, 482, 3)
    # matlab: ceil, as MATLAB and BasicSR.
    assert imresize(image, 1 / 4, kernel="matlab").shape == (51, 61, 3)
    assert imresize(image, [1, 1 / 3], kernel="matlab").shape == (203, 81, 3)
    # Float noise does not move a size across an integer: 100 * 0.29 = 28.999999999999996.
    assert imresize(np.zeros((100, 10)), 0.29).shape == (29, 2)
    assert imresize(np.zeros((30, 10)), 0.1, kernel="matlab").shape == (3, 1)  # 30 * 0.1 = 3.0000000000000004


def test_pil_scale_quarter_on_odd_size_is_the_official_lr() -> None:
    # 203 x 241 at scale 1/4: the same pixels as MASA's Image.resize((w // 4, h // 4), BICUBIC).
    photo = load_photo("astronaut.png")
    h, w = photo.shape[:2]
    assert h % 4 and w % 4
    np.testing.assert_array_equal(imresize(photo, 1 / 4), pillow_single_call(photo, (h // 4, w // 4)))


# --------------------------------------------------------------------------------------------------------
# kernel="matlab" against hand computation
# --------------------------------------------------------------------------------------------------------


def matlab_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def mirror(i: int, n: int) -> int:
    """Symmetric padding with the edge repeated: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    while not 0 <= i < n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


def matlab_weights(in_len: int, out_len: int, scale: float) -> list[list[tuple[int, float]]]:
    """For each output pixel, (input index, weight) for every input pixel the kernel reaches."""
    width = 4 / scale if scale < 1 else 4

    def kernel(d: float) -> float:
        return scale * matlab_cubic(scale * d) if scale < 1 else matlab_cubic(d)

    rows = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of output pixel x
        reach = range(math.floor(u - width / 2), math.ceil(u + width / 2) + 1)  # 1-based input pixels
        taps = [(mirror(j - 1, in_len), kernel(u - j)) for j in reach]
        total = sum(weight for _, weight in taps)
        rows.append([(i, weight / total) for i, weight in taps])
    return rows


def matlab_reference(image: np.ndarray, out_h: int, out_w: int, scale_y: float, scale_x: float) -> np.ndarray:
    """A per-output-pixel loop: each output is a 2-D weighted sum over the (mirrored) input."""
    rows = matlab_weights(image.shape[0], out_h, scale_y)
    cols = matlab_weights(image.shape[1], out_w, scale_x)
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for r in range(out_h):
        for c in range(out_w):
            for iy, wy in rows[r]:
                for ix, wx in cols[c]:
                    out[r, c] += wy * wx * image[iy, ix]
    return out


def test_matlab_hand_computed_upscale_with_mirrored_borders() -> None:
    # x2 of the ramp 10, 20, 30, 40. Output 1 sits at u = 0.75: taps at -0.25 .. 2.75 with weights
    # cubic(1.75), cubic(0.75), cubic(0.25), cubic(1.25) = -3/128, 29/128, 111/128, -9/128 on
    # mirror(-1) = 20, mirror(0) = 10, 10, 20 -> 10 * 140/128 - 20 * 12/128 = 9.0625.
    # Away from the borders the kernel reproduces the ramp (22.5, 27.5); the ends are symmetric.
    signal = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    out = imresize(signal, (1, 2), kernel="matlab")
    expected = [9.0625, 11.796875, 17.265625, 22.5, 27.5, 32.734375, 38.203125, 40.9375]
    assert out.shape == (1, 8)
    assert out[0].tolist() == expected  # all weights are dyadic: exact in float64


def test_matlab_hand_computed_antialiased_downscale() -> None:
    # x1/2: kernel 0.5 * cubic(d / 2), 8 taps, output x at u = 2x - 0.5. An impulse of 80 at index 4:
    # outputs see it at distances 3.5, 1.5, 0.5, 2.5 -> 80 * (-3/256, 29/256, 111/256, -9/256).
    impulse = torch.tensor([[0.0, 0, 0, 0, 80, 0, 0, 0]], dtype=torch.float64)
    assert imresize(impulse, (1, 0.5), kernel="matlab")[0].tolist() == [-0.9375, 9.0625, 34.6875, -2.8125]
    # An impulse at the left edge: output 1 also gets the mirrored copy at index -1.
    edge = torch.tensor([[80.0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    assert imresize(edge, (1, 0.5), kernel="matlab")[0].tolist() == [43.75, -3.75, 0.0, 0.0]
    # uint8: negative values clip to 0, 34.6875 rounds to 35; no rounding before the end.
    as_uint8 = imresize(impulse.to(torch.uint8), (1, 0.5), kernel="matlab")
    assert as_uint8.dtype == torch.uint8 and as_uint8[0].tolist() == [0, 9, 35, 0]


@pytest.mark.parametrize(
    "shape, scale, size",
    [
        ((5, 5), 0.5, None),
        ((4, 4), 2.0, None),
        ((5, 5), 2.0, None),
        ((7, 6), 1 / 3, None),
        ((5, 5), None, (3, 7)),  # non-integer factors 3/5 and 7/5
        ((6, 4, 3), (0.5, 1.5), None),  # channels, and a different factor per axis
    ],
)
def test_matlab_matches_per_pixel_loop(shape: tuple[int, ...], scale: object, size: object) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.uniform(-20, 300, size=shape)  # any value range, including negatives
    out = imresize(image, scale, size=size, kernel="matlab")
    in_h, in_w = shape[:2]
    if size is None:
        sy, sx = (scale, scale) if isinstance(scale, float) else scale
        out_h, out_w = math.ceil(in_h * sy), math.ceil(in_w * sx)
    else:
        out_h, out_w = size
        sy, sx = out_h / in_h, out_w / in_w
    expected = matlab_reference(image, out_h, out_w, sy, sx)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


def test_matlab_on_a_photo_crop_and_uint8_rounding() -> None:
    crop = load_photo("coffee.png")[40:51, 60:73]  # 11 x 13 x 3
    expected = matlab_reference(crop.astype(np.float64), 6, 7, 0.5, 0.5)
    as_float = imresize(crop.astype(np.float64), 0.5, kernel="matlab")
    np.testing.assert_allclose(as_float, expected, rtol=0, atol=1e-9)
    # uint8: round half away from zero and clip, once, at the end (as MATLAB).
    as_uint8 = imresize(crop, 0.5, kernel="matlab")
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8, np.floor(np.clip(expected, 0, 255) + 0.5).astype(np.uint8))


def test_matlab_differs_from_pil_mainly_at_borders() -> None:
    # A sanity check that the two kernels are really different algorithms (mirroring vs renormalising).
    photo = load_photo("astronaut.png").astype(np.float64)
    size = (50, 60)
    diff = np.abs(imresize(photo, size=size, kernel="matlab") - imresize(photo, size=size))
    assert diff[2:-2, 2:-2].mean() < diff.mean() and diff.max() > 0.5


# --------------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither scale nor size
        {"scale": 0.5, "size": (4, 4)},  # both
        {"scale": 0},
        {"scale": -2},
        {"scale": float("nan")},
        {"scale": float("inf")},
        {"scale": True},
        {"scale": "2"},
        {"scale": (0.5,)},
        {"scale": (0.5, 0.5, 0.5)},
        {"scale": (0.5, 0)},
        {"size": (4,)},
        {"size": (4, 0)},
        {"size": (4.0, 5)},
        {"size": (True, 5)},
        {"size": 4},
        {"scale": 1e-4},  # empty output
        {"scale": 0.5, "kernel": "bicubic"},
        {"scale": 0.5, "kernel": None},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    image = np.zeros((20, 24, 3), np.uint8)
    with pytest.raises(RefsrError):
        imresize(image, **kwargs)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((2, 20, 24, 3), np.uint8),  # 4-D array
        np.zeros(24, np.uint8),  # 1-D array
        np.zeros((20, 24, 3), np.int32),
        np.zeros((20, 24), bool),
        np.zeros((0, 24, 3), np.uint8),  # empty
        torch.zeros(1, 1, 3, 20, 24),  # 5-D tensor
        torch.zeros(24),
        torch.zeros(3, 20, 24, dtype=torch.int64),
        torch.zeros(3, 0, 24),
        [[0, 1], [2, 3]],  # not an array
    ],
)
def test_bad_images_raise(image: object) -> None:
    with pytest.raises(RefsrError):
        imresize(image, 0.5)  # type: ignore[type-var]


def test_refsr_error_is_a_value_error_with_one_line() -> None:
    with pytest.raises(ValueError) as info:
        imresize(np.zeros((4, 4)), 0.5, kernel="lanczos")
    assert "\n" not in str(info.value) and "kernel" in str(info.value)
