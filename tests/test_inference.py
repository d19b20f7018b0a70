"""refsr.upscale: input types, sizes, tiling under a memory budget, reference caching, several references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import refsr
from conftest import DATA, load_photo
from refsr.errors import RefsrError
from refsr.devices import precision_of, resolve_device
from refsr.inference import (
    choose_tile,
    minimum_budget,
    padded_reference_sizes,
    parse_memory,
    plan_upscale,
    predict_peak_memory,
    image_to_tensor,
    prepare_model,
    stitch_references,
    upscale,
)
from refsr.models import GENERIC_MEMORY_COST, MemoryCost, RefSRModel, SizeRule, pad_to_rule
from refsr.models.masa import MASA_MEMORY_COST

LITE_SMALL = dict(nf=8, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(1, 1, 1))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def pil_bicubic_x4(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    return np.asarray(Image.fromarray(arr).resize((4 * w, 4 * h), Image.BICUBIC))


@pytest.fixture(scope="module")
def bicubic() -> torch.nn.Module:
    return refsr.create_model("bicubic")


@pytest.fixture(scope="module")
def lite() -> torch.nn.Module:
    """masa-lite with seeded random weights (the official initialisation)."""
    torch.manual_seed(0)
    return refsr.create_model("masa-lite").eval()


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(1)
    return refsr.create_model("masa", **LITE_SMALL).eval()


# ---------------------------------------------------------------------- input and output types


def test_pil_in_pil_out(bicubic) -> None:
    img = Image.open(DATA / "chelsea.png").convert("RGB").crop((0, 0, 40, 30))
    sr = upscale(img, model=bicubic)
    assert isinstance(sr, Image.Image) and sr.mode == "RGB" and sr.size == (160, 120)
    np.testing.assert_array_equal(np.asarray(sr), pil_bicubic_x4(np.asarray(img)))


def test_numpy_and_path_give_uint8_arrays(bicubic, tmp_path) -> None:
    arr = load_photo("coffee.png")[:30, :44]
    Image.fromarray(arr).save(tmp_path / "lr.png")
    for source in (arr, tmp_path / "lr.png", str(tmp_path / "lr.png")):
        sr = upscale(source, model=bicubic)
        assert isinstance(sr, np.ndarray) and sr.dtype == np.uint8
        np.testing.assert_array_equal(sr, pil_bicubic_x4(arr))


@pytest.mark.parametrize("kind", ["grey_pil", "grey_array", "rgba_pil", "rgba_array", "uint16_array", "png16"])
def test_grey_alpha_and_16_bit_inputs_are_converted(bicubic, tmp_path, kind) -> None:
    rgb = load_photo("astronaut.png")[:24, :32]
    grey = rgb[..., 1]
    deep = grey.astype(np.uint16) * 257 + 100  # not an exact multiple of 257: the rounding is exercised
    expected_grey = np.repeat(np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rgba = np.dstack([rgb, np.full(grey.shape, 9, np.uint8)])
    if kind == "png16":
        Image.fromarray(deep).save(tmp_path / "deep.png")
        assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    source, expected = {
        "grey_pil": (Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=2)),
        "grey_array": (grey, np.repeat(grey[..., None], 3, axis=2)),
        "rgba_pil": (Image.fromarray(rgba, "RGBA"), rgb),
        "rgba_array": (rgba, rgb),
        "uint16_array": (deep, expected_grey),
        "png16": (tmp_path / "deep.png", expected_grey),
    }[kind]
    sr = np.asarray(upscale(source, model=bicubic))
    np.testing.assert_array_equal(sr, pil_bicubic_x4(np.ascontiguousarray(expected)))


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8), np.zeros((0, 5, 3), np.uint8), 42])
def test_bad_inputs_raise_one_line(bicubic, bad) -> None:
    with pytest.raises(RefsrError) as info:
        upscale(bad, model=bicubic)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- sizes


@pytest.mark.parametrize("lr_hw, ref_hw", [((3, 5), (64, 64)), ((16, 300), (40, 90)), ((40, 48), (20, 24)), ((300, 16), (90, 40))])
def test_any_size_and_aspect_ratio(small, lr_hw, ref_hw) -> None:
    """Tiny LR (below the minimum), extreme aspect ratios, a reference smaller than the LR."""
    # The photo mirrored into a 2x2 mosaic, for sides larger than the photo.
    coffee = load_photo("coffee.png")
    mosaic = np.concatenate([np.concatenate([coffee, coffee[:, ::-1]], 1)] * 2, 0)
    lr = np.ascontiguousarray(mosaic[: lr_hw[0], : lr_hw[1]])
    ref = np.ascontiguousarray(load_photo("chelsea.png")[: ref_hw[0], : ref_hw[1]])
    sr = upscale(lr, ref, model=small)
    assert sr.shape == (4 * lr_hw[0], 4 * lr_hw[1], 3) and sr.dtype == np.uint8
    # The model adds a residual to bicubic; the result must stay close to it, not garbage from bad padding.
    assert psnr(sr, pil_bicubic_x4(lr)) > 20


def test_self_reference_is_the_bicubic_lr(small) -> None:
    lr = load_photo("chelsea.png")[:32, :40]
    # float32: in bfloat16 the two reference tensors, equal but laid out differently, may round differently.
    np.testing.assert_array_equal(upscale(lr, None, model=small, precision="fp32"),
                                  upscale(lr, pil_bicubic_x4(lr), model=small, precision="fp32"))


# ---------------------------------------------------------------------- memory budget and tiles


def test_parse_memory() -> None:
    assert parse_memory("4G") == 4 * 2**30
    assert parse_memory("512M") == 512 * 2**20
    assert parse_memory("1.5GB") == 3 * 2**29
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("100k") == 102_400
    assert parse_memory(123456) == parse_memory("123456") == 123456
    for bad in ("four", "-1G", "0", "4X", True):
        with pytest.raises(RefsrError):
            parse_memory(bad)


def test_choose_tile_is_the_largest_that_fits(lite) -> None:
    cost = lite.memory_cost
    params = sum(p.numel() for p in lite.parameters())
    image, ref_pixels = (1024, 1024), 2048 * 2048
    budget = 4 * 2**30

    def peak(side: int) -> int:
        return predict_peak_memory(cost, parameters=params, image_size=image, tile_size=(side, side),
                                   ref_pixels=ref_pixels, ref_strip_pixels=2048 * 400)

    plan = choose_tile(lite, image, ref_pixels, budget, ref_strip_pixels=2048 * 400)
    assert plan.tile is not None and plan.tile % 8 == 0
    assert peak(plan.tile) <= budget < peak(plan.tile + 8)  # brute force: the next multiple of 8 does not fit
    assert plan.overlap == 2 * plan.context + plan.ramp and plan.overlap % 8 == 0
    # The whole image when it fits; a 2048^2 reference needs more than 1 GB on its own.
    assert choose_tile(lite, (64, 64), 128 * 128, budget).tile is None
    with pytest.raises(RefsrError, match=r"at least \d") as info:
        choose_tile(lite, image, ref_pixels, parse_memory("1G"))
    assert "\n" not in str(info.value)


def test_cost_model_is_data_and_scales_with_width() -> None:
    full, lite = refsr.create_model("masa"), refsr.create_model("masa-lite")
    assert full.memory_cost.per_tile_pixel == 2 * lite.memory_cost.per_tile_pixel
    assert lite.memory_cost.per_tile_pixel == MASA_MEMORY_COST.per_tile_pixel


def test_bicubic_tiled_equals_untiled_exactly(bicubic) -> None:
    """Bicubic's support (2 LR pixels) fits in the discarded context: tiles must give the same image."""
    lr = np.ascontiguousarray(load_photo("astronaut.png")[:120, :150])
    whole = upscale(lr, model=bicubic)
    np.testing.assert_array_equal(whole, pil_bicubic_x4(lr))
    for tile in (64,):  # 3 x 3 tiles
        np.testing.assert_array_equal(upscale(lr, model=bicubic, tile=tile), whole)
    # The budget path: a budget that cannot hold the whole image makes it tile, with the same result.
    cost = bicubic.memory_cost
    h, w = lr.shape[:2]
    tight = cost.fixed + cost.per_image_pixel * h * w + cost.per_tile_pixel * 80 * 80
    plan = choose_tile(bicubic, (h, w), 0, int(tight * 1.15))
    assert plan.tile is not None and plan.tile < max(h, w)
    np.testing.assert_array_equal(upscale(lr, model=bicubic, max_memory=int(tight * 1.15)), whole)


class SelfRefProbe(refsr.models.RefSRModel):
    """Bicubic x4 that needs a reference and remembers each (tile, reference) pair it is given; its memory
    cost is the generic one with a heavy reference term, so a whole self-reference outgrows small budgets."""

    uses_ref = True
    memory_cost = MemoryCost(**{**GENERIC_MEMORY_COST.__dict__, "per_ref_pixel": 20_000, "context": 4, "ramp": 4})

    def __init__(self) -> None:
        super().__init__()
        self.bicubic = refsr.create_model("bicubic")
        self.scale, self.size_rule = 4, self.bicubic.size_rule
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self.seen.append((lr.clone(), ref.clone()))
        return self.bicubic(lr, None)


def test_large_lr_without_reference_takes_a_self_reference_per_tile() -> None:
    probe = SelfRefProbe()
    lr = np.ascontiguousarray(load_photo("astronaut.png")[:120, :150])
    h, w = lr.shape[:2]
    whole_peak = predict_peak_memory(probe.memory_cost, parameters=0, image_size=(h, w), tile_size=(h, w),
                                     ref_pixels=16 * h * w)
    budget = whole_peak // 3
    with pytest.raises(RefsrError):  # the whole LR with its whole self-reference does not fit
        choose_tile(probe, (h, w), 16 * h * w, budget)
    sr = upscale(lr, None, model=probe, max_memory=budget)
    # bicubic is tile-invariant: the same image as untiled, and every tile saw its own LR upscaled as Ref
    np.testing.assert_array_equal(sr, pil_bicubic_x4(lr))
    assert len(probe.seen) > 1
    for tile, ref in probe.seen:
        assert tile.shape[-2] < h or tile.shape[-1] < w
        tile8 = (tile[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        got = (ref[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got[: 4 * tile8.shape[0], : 4 * tile8.shape[1]], pil_bicubic_x4(tile8))
    # a reference the user gave is never swapped for another: the budget error stands
    with pytest.raises(RefsrError, match="memory budget"):
        upscale(lr, pil_bicubic_x4(lr), model=probe, max_memory=budget)


@pytest.mark.parametrize("precision, bound", [("fp32", 90.0), ("bf16", 50.0)])
def test_masa_lite_tiles_equal_the_whole_image(precision, bound) -> None:
    """The shipped default model on a 176x96 LR (the issue's case, 44.2 dB at tile 96 before): tiled and
    untiled agree to >= 50 dB at every tile size (float32: to rounding), and the difference shows no seam."""
    photo = load_photo("astronaut.png")
    lr = photo[8:104, 16:192]
    ref = pil_bicubic_x4(photo)[:400, :480]
    whole = upscale(lr, ref, precision=precision)
    for tile in (16, 40, 96):
        tiled = upscale(lr, ref, tile=tile, precision=precision)
        assert psnr(tiled, whole) >= bound, tile
        # No seam: the difference is no larger along the tile borders than elsewhere.
        diff = np.abs(tiled.astype(np.float64) - whole).sum(axis=2)
        borders = np.zeros(diff.shape, dtype=bool)
        for edge in range(4 * tile, diff.shape[0], 4 * tile):
            borders[edge - 2 : edge + 2] = True
        for edge in range(4 * tile, diff.shape[1], 4 * tile):
            borders[:, edge - 2 : edge + 2] = True
        assert diff[borders].mean() <= 2 * diff.mean() + 1e-3, tile


def test_reference_cache_gives_the_same_output(small) -> None:
    torch.manual_seed(3)
    lr, ref = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 240, 96)
    with torch.no_grad():
        plain = small(lr, ref)
        cache = small.encode_reference(ref)
        assert torch.equal(small(lr, reference_cache=cache), plain)
        # In strips (halo included): the same to float rounding.
        strips = small.encode_reference(ref, strip_rows=32)
        for a, b in zip(cache.ref_feats, strips.ref_feats):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(small(lr, reference_cache=strips), plain, rtol=0, atol=1e-5)
    assert cache.nbytes == sum(t.numel() * 4 for t in [cache.ref_down_feat, *cache.ref_feats])


# ---------------------------------------------------------------------- several references


def test_stitch_equals_the_stitched_image(small) -> None:
    lr = load_photo("coffee.png")[:24, :32]
    refs = [load_photo("chelsea.png")[:40, :60], load_photo("astronaut.png")[:64, :48]]
    tensors = [torch.tensor(r).permute(2, 0, 1)[None].float() / 255 for r in refs]
    stitched = stitch_references(tensors, small.size_rule)
    assert stitched.shape[-2:] == (48 + 64, 64)
    as_image = (stitched[0] * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(upscale(lr, refs, model=small, multi_ref="stitch", precision="fp32"),
                                  upscale(lr, as_image, model=small, precision="fp32"))


def test_per_tile_picks_the_reference_that_matches(lite) -> None:
    lr = load_photo("chelsea.png")[:40, :48]
    good = pil_bicubic_x4(lr)
    rng = np.random.default_rng(0)
    unrelated = rng.integers(0, 256, good.shape, dtype=np.uint8)
    for refs in ([unrelated, good], [good, unrelated]):
        np.testing.assert_array_equal(upscale(lr, refs, model=lite, multi_ref="per-tile", precision="fp32"),
                                      upscale(lr, good, model=lite, precision="fp32"))
    with pytest.raises(RefsrError, match="multi_ref"):
        upscale(lr, [good, good], model=lite, multi_ref="best")


# ---------------------------------------------------------------------- device and progress


def test_devices() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("tpu", "gpu:x"):
        with pytest.raises(RefsrError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(RefsrError, match="no CUDA GPU"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(RefsrError, match="MPS"):
            resolve_device("mps")


def test_precision_choice(monkeypatch) -> None:
    import refsr.devices as devices

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    both = ("fp32", "bf16")
    for fast, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert devices.resolve_precision("auto", cpu, both) == expected
        assert devices.resolve_precision("auto", cpu, ("fp32",)) == torch.float32  # the model has no bf16
        assert devices.resolve_precision("auto", cuda, both) == torch.float32  # not measured on CUDA yet
        assert devices.resolve_precision("bf16", cpu, both) == torch.bfloat16  # asked for: always
        assert devices.resolve_precision("fp32", cpu, both) == torch.float32
    with pytest.raises(RefsrError, match="unknown precision"):
        devices.resolve_precision("fp16", cpu, both)
    with pytest.raises(RefsrError, match="runs in fp32 only"):
        devices.resolve_precision("bf16", cpu, ("fp32",))


def test_a_module_converted_for_bf16_is_a_copy(small) -> None:
    """precision="bf16" on a module the caller passed converts a copy: the caller's stays float32."""
    lr = load_photo("coffee.png")[:24, :32]
    out = upscale(lr, model=small, precision="bf16", matching="exact")
    assert out.shape == (96, 128, 3)
    assert all(p.dtype == torch.float32 for p in small.parameters())
    assert precision_of(small) == "fp32"
    converted, matching = prepare_model(small, precision="bf16")
    assert converted is not small and precision_of(converted) == "bf16" and matching == "fast"
    assert prepare_model(converted, precision="bf16")[0] is converted  # already in bf16: no second copy


def test_progress_bar_over_tiles_only_when_asked(bicubic, capsys) -> None:
    lr = load_photo("coffee.png")[:48, :64]
    upscale(lr, model=bicubic, tile=16)  # stderr is not a terminal under pytest: no bar
    assert "tiles" not in capsys.readouterr().err
    upscale(lr, model=bicubic, tile=16, progress=True)
    assert "tiles" in capsys.readouterr().err


def test_the_contract_defaults_and_plain_modules_are_refused() -> None:
    class Doubler(RefSRModel):
        scale = 2
        uses_ref = False

        def forward(self, lr, ref=None):
            return torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")

    lr = load_photo("coffee.png")[:10, :12]
    sr = upscale(lr, model=Doubler())  # no size rule, no cost table of its own: the contract's defaults
    np.testing.assert_array_equal(sr, lr.repeat(2, axis=0).repeat(2, axis=1))
    assert Doubler().size_rule == SizeRule() and Doubler().memory_cost == GENERIC_MEMORY_COST

    class Plain(torch.nn.Module):
        def forward(self, lr, ref=None):
            return lr

    with pytest.raises(RefsrError, match="not a refsr model: subclass refsr.models.RefSRModel"):
        upscale(lr, model=Plain())


def test_shipped_default_model_uses_the_reference_on_the_bundled_sample() -> None:
    """The shipped weights are the trained masa-lite: on the bundled Big Buck Bunny pair they beat PIL bicubic
    by over 1 dB and the same model given only the LR as its reference by over 0.4 dB (measured 30.85,
    28.78 and 29.76 dB with the two-stage weights; 30.30, 28.78 and 29.53 with stage 1's), so broken, untrained
    or mis-ordered weights fail here. The pair comes from a clip
    that also gave training pairs: this checks the shipped file, not how well the model generalises."""
    import importlib.resources

    import refsr
    from refsr.io import read_image

    assert refsr.DEFAULT_MODEL == "masa-lite"
    samples = importlib.resources.files("refsr") / "samples"
    lr, ref, hr = (read_image(samples / f"bbb_{n}.png") for n in ("lr", "ref", "hr"))
    bicubic = refsr.metrics.psnr(refsr.imresize(lr, 4), hr)
    with_ref = refsr.metrics.psnr(refsr.upscale(lr, ref), hr)
    self_ref = refsr.metrics.psnr(refsr.upscale(lr, None), hr)
    assert with_ref > bicubic + 1.0
    assert with_ref > self_ref + 0.4


# ---------------------------------------------------------------------- planning from sizes


@pytest.mark.parametrize("hw, tile", [((203, 241), 64), ((50, 300), 40), ((30, 30), None)])
def test_plan_tile_count_is_the_number_of_tiles_run(bicubic, hw, tile) -> None:
    calls = []
    handle = bicubic.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[-2:])))
    try:
        upscale(np.zeros((*hw, 3), np.uint8), model=bicubic, tile=tile)
    finally:
        handle.remove()
    plan = plan_upscale(bicubic, hw, None, parse_memory("4G"), tile=tile)
    assert plan.tile_count == len(calls)


@pytest.mark.parametrize("mode", ["stitch", "per-tile"])
def test_padded_reference_sizes_match_the_tensors_fed(small, mode) -> None:
    sizes = [(37, 90), (64, 20), (5, 5)]
    refs = [torch.zeros(1, 3, h, w) for h, w in sizes]
    rule = small.size_rule
    if mode == "stitch":
        refs = [stitch_references(refs, rule)]
    fed = [tuple(pad_to_rule(r, rule.ref_multiple, rule.min_ref, rule.pad_mode, centre=False)[0].shape[-2:])
           for r in refs]
    assert padded_reference_sizes(rule, sizes, mode) == fed


def test_an_lr_too_large_is_refused_from_its_header(lite, tmp_path) -> None:
    """A 12000x12000 PNG header without pixel data: decoding it would fail as truncated, so a budget error
    naming the LR proves that it was refused before decoding. The error names a budget that works."""
    from test_io import png_bytes_with_size

    (tmp_path / "huge.png").write_bytes(png_bytes_with_size(12000, 12000))
    with pytest.raises(RefsrError, match=r"huge\.png \(12000x12000\) is too large for the memory budget of 4\.00 GB"
                       ) as raised:
        upscale(tmp_path / "huge.png", DATA / "coffee.png", model=lite, precision="fp32")
    needed = str(raised.value).split("to at least ")[1].split(",")[0]
    plan = plan_upscale(lite, (12000, 12000), [(193, 256)], parse_memory(needed.replace(" ", "").rstrip("B")))
    assert plan.tile_count > 1
    with pytest.raises(RefsrError, match=r"the reference .*huge\.png \(12000x12000\) is too large"):
        upscale(DATA / "coffee.png", tmp_path / "huge.png", model=lite)


def test_minimum_budget_is_where_choose_tile_starts_to_fit(lite) -> None:
    size, ref_pixels = (400, 400), 512 * 512
    need = minimum_budget(lite, size, ref_pixels)
    assert choose_tile(lite, size, ref_pixels, need).tile is not None
    with pytest.raises(RefsrError, match="too small"):
        choose_tile(lite, size, ref_pixels, need - 1)


def test_a_forced_tile_covering_the_image_still_checks_the_budget(bicubic) -> None:
    with pytest.raises(RefsrError, match="tiles of 64 px need"):
        choose_tile(bicubic, (24, 32), 0, parse_memory("1M"), tile=64)
    assert choose_tile(bicubic, (24, 32), 0, parse_memory("1G"), tile=64).tile is None


def test_image_to_tensor_values_and_canonical_strides() -> None:
    """An image becomes (1,3,H,W) float in [0,1] with the canonical channels-last strides, the ones a tensor op
    gives: oneDNN chooses its bfloat16 kernels by strides, so a view's batch stride of 3 changed outputs."""
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert tensor.stride() == (5 * 7 * 3, 1, 7 * 3, 3)
    np.testing.assert_array_equal((tensor[0].permute(1, 2, 0) * 255).round().numpy().astype(np.uint8), image)
