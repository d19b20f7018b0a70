"""MASA-SR: architecture, checkpoint conversion against a literal official forward, sizes, golden output."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import refsr
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.models.masa import (
    DRAM,
    MASA,
    OFFICIAL_PARAMETERS,
    ResBlock,
    adapt_statistics,
    convert_official_masa,
    official_key,
)

GOLDEN = Path(__file__).parent / "golden" / "masa_tiny.safetensors"
BGR = [2, 1, 0]
TINY = dict(nf=8, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(2, 1, 1))


def photo_pair(lr_size=(16, 24), ref_size=(64, 80)):
    """An LR made as the official loader makes it (PIL bicubic ÷4 of an 8-bit HR) and an overlapping
    crop of the same photo as Ref; both (1,3,H,W) float in [0,1], RGB."""
    img = load_photo("astronaut.png")
    hr = img[: 4 * lr_size[0], : 4 * lr_size[1]]
    lr = np.asarray(Image.fromarray(hr).resize((lr_size[1], lr_size[0]), Image.BICUBIC))
    ref = img[20 : 20 + ref_size[0], 30 : 30 + ref_size[1]]

    def tensor(a):
        return torch.tensor(a).permute(2, 0, 1)[None].double() / 255

    return tensor(lr), tensor(ref)


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Non-zero random values everywhere (the official init zeroes SAM's γ/β convs, hiding their inputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


# ---------------------------------------------------------------------------------------------------------
# A literal reimplementation of the official forward (MASA_arch.py), in terms of the official keys.
# Written from the official semantics, block by block with unfold/fold as the official code does, and
# independent of refsr.matching.


def official_forward(sd: dict, lr: torch.Tensor, ref: torch.Tensor, ref_down: torch.Tensor) -> torch.Tensor:
    def conv(x, name, stride=1):
        return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], stride=stride, padding=1)

    def deconv(x, name):
        return F.conv_transpose2d(x, sd[name + ".weight"], sd[name + ".bias"], stride=2, padding=1,
                                  output_padding=1)

    def blocks(x, prefix):
        i = 0
        while f"{prefix}.{i}.conv1.weight" in sd:
            x = conv(F.relu(conv(x, f"{prefix}.{i}.conv1")), f"{prefix}.{i}.conv2") + x
            i += 1
        return x

    def encoder(x):
        l1 = blocks(F.relu(conv(x, "enc.conv_L1")), "enc.blk_L1")
        l2 = blocks(F.relu(conv(l1, "enc.conv_L2", 2)), "enc.blk_L2")
        l3 = blocks(F.relu(conv(l2, "enc.conv_L3", 2)), "enc.blk_L3")
        return [l1, l2, l3]

    def up(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def sam(lr_f, ref_f):
        ref_n = F.instance_norm(ref_f, eps=1e-5)
        style = F.relu(conv(torch.cat([lr_f, ref_f], 1), "decoder.pAda.conv_shared.0"))
        gamma, beta = conv(style, "decoder.pAda.conv_gamma"), conv(style, "decoder.pAda.conv_beta")
        flat = lr_f.flatten(2)
        return ref_n * (gamma + flat.std(-1)[..., None, None]) + (beta + flat.mean(-1)[..., None, None])

    def dram(lr_f, ref_f, name):
        res_a = F.relu(conv(ref_f, f"{name}.conv_down_a", 2)) - lr_f
        out_a = F.relu(deconv(res_a, f"{name}.conv_up_a")) + ref_f
        res_b = lr_f - F.relu(conv(ref_f, f"{name}.conv_down_b", 2))
        out_b = F.relu(deconv(res_b + lr_f, f"{name}.conv_up_b"))
        return F.relu(conv(torch.cat([out_a, out_b], 1), f"{name}.conv_cat"))

    fea_lr, fea_rd, fea_ref = encoder(lr), encoder(ref_down), encoder(ref)
    f_lr, f_rd = fea_lr[0], fea_rd[0]
    n, c, h, w = f_lr.shape
    hr_, wr_ = f_rd.shape[-2:]
    k = 8
    py, px = h // k, w // k
    dx = 2 * int(wr_ // (2 * px) * 1.5) + 1
    dy = 2 * int(hr_ // (2 * py) * 1.5) + 1
    padded = F.pad(f_lr, (1, 1, 1, 1), mode="replicate")
    outs = {s: torch.zeros(n, c, h * s, w * s, dtype=lr.dtype) for s in (1, 2, 4)}
    ref_level = {1: fea_ref[2], 2: fea_ref[1], 4: fea_ref[0]}
    for b in range(n):
        for by in range(py):
            for bx in range(px):
                blk = padded[b : b + 1, :, by * k : by * k + k + 2, bx * k : bx * k + k + 2]
                centre = (k + 2) // 2
                total = 0
                for d in (1, 2, 3):
                    taps = slice(centre - d, centre + d + 1, d)
                    q = blk[:, :, taps, taps].reshape(1, -1)
                    keys = F.unfold(f_rd[b : b + 1], 3, padding=d, dilation=d)[0]
                    total = total + F.normalize(q, dim=1) @ F.normalize(keys, dim=0)
                pos = int(total.argmax())
                cy, cx = divmod(pos, wr_)
                x1, x2 = cx - dx // 2 - 1, cx + dx // 2 + 1
                if x1 < 0:
                    x1, x2 = 0, dx + 1
                if x2 > wr_ - 1:
                    x2 = wr_ - 1
                    x1 = x2 - (dx + 1)
                y1, y2 = cy - dy // 2 - 1, cy + dy // 2 + 1
                if y1 < 0:
                    y1, y2 = 0, dy + 1
                if y2 > hr_ - 1:
                    y2 = hr_ - 1
                    y1 = y2 - (dy + 1)
                window = f_rd[b : b + 1, :, y1 : y1 + dy + 2, x1 : x1 + dx + 2]
                qs = F.normalize(F.unfold(blk, 3)[0], dim=0)  # (C*9, k*k)
                ks = F.normalize(F.unfold(window, 3)[0], dim=0)  # (C*9, dy*dx)
                score, index = (qs.t() @ ks).max(dim=1)
                for s in (1, 2, 4):
                    src = ref_level[s][b : b + 1, :, y1 * s : (y1 + dy + 2) * s, x1 * s : (x1 + dx + 2) * s]
                    patches = F.unfold(src, 3 * s, stride=s)[:, :, index]
                    folded = F.fold(patches, (k * s, k * s), 3 * s, padding=s, stride=s)
                    count = F.fold(torch.ones_like(patches), (k * s, k * s), 3 * s, padding=s, stride=s)
                    att = F.interpolate(score.view(1, 1, k, k), size=(k * s, k * s), mode="bilinear",
                                        align_corners=False)
                    outs[s][b, :, by * k * s : (by + 1) * k * s, bx * k * s : (bx + 1) * k * s] = (
                        folded / count * att)[0]

    x = blocks(F.relu(conv(fea_lr[2], "decoder.conv_L3")), "decoder.blk_L3")
    x = blocks(F.relu(conv(torch.cat([up(x), fea_lr[1]], 1), "decoder.conv_L2")), "decoder.blk_L2")
    fea_l1 = blocks(F.relu(conv(torch.cat([up(x), fea_lr[0]], 1), "decoder.conv_L1")), "decoder.blk_L1")
    x1 = blocks(F.relu(conv(torch.cat([sam(fea_l1, outs[1]), fea_l1], 1), "decoder.merge_warp_x1")),
                "decoder.blk_x1")
    x2 = blocks(dram(x1, sam(up(x1), outs[2]), "decoder.dram_x2"), "decoder.blk_x2")
    x4 = blocks(dram(x2, sam(up(x2), outs[4]), "decoder.dram_x4"), "decoder.blk_x4")
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    return conv(x4, "decoder.conv_out") + bicubic


def official_key_names(nf_blocks=((4, 4, 4), (2, 2, 2), (12, 8, 4))) -> set[str]:
    """The official state_dict names, written out from the official module structure."""
    enc, dec, fuse = nf_blocks
    names = []
    rb = lambda p, n: [f"{p}.{i}.conv{j}" for i in range(n) for j in (1, 2)]  # noqa: E731
    for level, n in zip((1, 2, 3), enc):
        names += [f"enc.conv_L{level}"] + rb(f"enc.blk_L{level}", n)
    for level, n in zip((3, 2, 1), dec):
        names += [f"decoder.conv_L{level}"] + rb(f"decoder.blk_L{level}", n)
    names += ["decoder.merge_warp_x1"] + rb("decoder.blk_x1", fuse[0])
    for s, n in ((2, fuse[1]), (4, fuse[2])):
        names += [f"decoder.dram_x{s}.conv_{part}" for part in ("down_a", "up_a", "down_b", "up_b", "cat")]
        names += rb(f"decoder.blk_x{s}", n)
    names += ["decoder.conv_out", "decoder.pAda.conv_shared.0", "decoder.pAda.conv_gamma"]
    names += ["decoder.pAda.conv_beta"]
    return {f"{name}.{kind}" for name in names for kind in ("weight", "bias")}


def to_official(model: MASA) -> dict[str, torch.Tensor]:
    """The official-layout state_dict that converts to ``model``'s weights (BGR first and last convs)."""
    sd = {official_key(k): v.clone() for k, v in model.state_dict().items()}
    sd["enc.conv_L1.weight"] = sd["enc.conv_L1.weight"][:, BGR]
    sd["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"][BGR]
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"][BGR]
    return sd


# ---------------------------------------------------------------------------------------------------------
# Architecture


def test_default_model_has_the_official_parameter_count_and_keys() -> None:
    model = refsr.create_model("masa")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS == 4_028_291
    assert len(model.state_dict()) == 210
    official = {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(official) == official_key_names()
    # A few shapes as listed in keys/MASA.txt.
    assert official["decoder.conv_L2.weight"] == (64, 128, 3, 3)
    assert official["decoder.dram_x4.conv_up_a.weight"] == (64, 64, 3, 3)
    assert official["decoder.conv_out.weight"] == (3, 64, 3, 3)
    assert official["decoder.pAda.conv_shared.0.weight"] == (64, 128, 3, 3)


def test_default_width_forward_on_a_small_input() -> None:
    model = refsr.create_model("masa").eval()
    lr, ref = photo_pair()
    with torch.no_grad():
        sr = model(lr.float(), ref.float())
    assert sr.shape == (1, 3, 64, 96) and sr.dtype == torch.float32
    assert torch.isfinite(sr).all()
    # At the official init the residual is small: the output stays near the bicubic upsampling.
    bicubic = F.interpolate(lr.float(), scale_factor=4, mode="bicubic", align_corners=False)
    assert 0 < (sr - bicubic).abs().max() < 0.5


def test_official_initialisation() -> None:
    torch.manual_seed(0)
    model = MASA()
    w = model.encoder.level2.conv.weight  # 64*64*9 samples
    assert w.std().item() == pytest.approx(0.5 * math.sqrt(2 / (9 * 64)), rel=0.02)
    rb = model.fuse_x1.blocks[0].conv1.weight
    assert rb.std().item() == pytest.approx(0.05 * math.sqrt(2 / (9 * 64)), rel=0.02)
    up = model.fuse_x2.dram.ref_branch_up.weight  # ConvTranspose2d: out_channels = 64 as well
    assert up.std().item() == pytest.approx(0.5 * math.sqrt(2 / (9 * 64)), rel=0.02)
    out = model.conv_out.weight  # (3, 64, 3, 3): fan from 3 output channels
    assert out.std().item() == pytest.approx(0.5 * math.sqrt(2 / (9 * 3)), rel=0.1)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs)
    for conv in (model.sam.gamma, model.sam.beta):
        assert float(conv.weight.detach().abs().max()) == 0
    assert float(model.sam.shared.weight.detach().abs().max()) > 0


@pytest.mark.parametrize(
    "options, millions",
    [
        ({}, 4.03),
        ({"use_sam": False}, 3.88),  # Table 3, baseline
        ({"sam_learnable": False}, 3.88),  # Table 3, AdaIN
        ({"dram_ref_branch": False}, 3.88),  # Table 4, model 2
        ({"dram_lr_branch": False}, 3.88),  # Table 4, model 3
        ({"dram_ref_branch": False, "dram_lr_branch": False}, 3.73),  # Table 4, model 1
    ],
)
def test_ablation_parameter_counts_match_the_paper(options, millions) -> None:
    with torch.device("meta"):
        model = MASA(**options)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


@pytest.mark.parametrize(
    "options",
    [
        {"use_sam": False},
        {"sam_learnable": False},
        {"dram_ref_branch": False},
        {"dram_lr_branch": False},
        {"dram_ref_branch": False, "dram_lr_branch": False, "use_sam": False},
        {"lr_block_size": 4, "ref_block_factor": 2.0, "dilations": (1, 2)},
        {"dilations": (1,)},
    ],
)
def test_ablation_options_build_and_run(options) -> None:
    torch.manual_seed(0)
    model = randomise(MASA(**{**TINY, **options}))
    lr, ref = (x.float() for x in photo_pair())
    with torch.no_grad():
        sr = model(lr, ref)
    assert sr.shape == (1, 3, 64, 96) and torch.isfinite(sr).all()
    # Every switch changes the computation: the tiny default with the same weights gives another result.
    default = MASA(**TINY)
    shared = {k: v for k, v in model.state_dict().items() if k in default.state_dict()}
    if len(shared) == len(default.state_dict()):
        default.load_state_dict(shared)
        with torch.no_grad():
            assert not torch.allclose(default(lr, ref), sr)


def test_dram_with_both_branches_off_concatenates_and_convolves() -> None:
    torch.manual_seed(0)
    dram = randomise(DRAM(4, ref_branch=False, lr_branch=False)).double()
    lr = torch.rand(1, 4, 5, 6, dtype=torch.float64)
    ref = torch.rand(1, 4, 10, 12, dtype=torch.float64)
    lr_up = F.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.relu(F.conv2d(torch.cat([ref, lr_up], 1), dram.merge.weight, dram.merge.bias, padding=1))
    torch.testing.assert_close(dram(lr, ref), expected)


def test_adapt_statistics_by_hand() -> None:
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    lr = torch.rand(2, 3, 6, 2, generator=gen, dtype=torch.float64)
    gamma = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    beta = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    out = adapt_statistics(ref, lr, gamma, beta)
    for b in range(2):
        for c in range(3):
            r = ref[b, c].numpy()
            normed = (r - r.mean()) / np.sqrt(r.var() + 1e-5)  # biased variance inside the norm
            lr_values = lr[b, c].numpy().ravel()
            std = np.sqrt(((lr_values - lr_values.mean()) ** 2).sum() / (lr_values.size - 1))  # unbiased
            expected = normed * (gamma[b, c].numpy() + std) + beta[b, c].numpy() + lr_values.mean()
            np.testing.assert_allclose(out[b, c].numpy(), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints


def test_converted_weights_reproduce_the_official_forward_on_bgr() -> None:
    """The real check: random official-layout weights, run through a literal official forward on BGR input,
    against our converted model on RGB input (float64, so no near-ties in matching)."""
    torch.manual_seed(0)
    source = randomise(MASA(nf=16).double(), seed=3, std=0.08)
    official = to_official(source)
    assert set(official) == official_key_names()  # the official names, written out by hand above

    model = MASA(nf=16).double()
    model.load_state_dict(refsr.convert_official("masa", official))
    lr, ref = photo_pair()
    ref_down = MASA.make_ref_down(ref)
    ours = model(lr, ref)
    expected = official_forward(official, lr[:, BGR], ref[:, BGR], ref_down[:, BGR])[:, BGR]
    assert ours.shape == expected.shape == (1, 3, 64, 96)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # The flip matters: without it the official weights would see the channels the wrong way round.
    assert (official_forward(official, lr, ref, ref_down) - expected).abs().max() > 1e-3


def test_conversion_round_trip_at_full_width() -> None:
    torch.manual_seed(1)
    model = MASA()
    official = to_official(model)
    assert len(official) == 210
    assert sum(v.numel() for v in official.values()) == OFFICIAL_PARAMETERS
    converted = convert_official_masa(official)
    assert set(converted) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_official_checkpoint_file_with_module_prefix_loads(tmp_path) -> None:
    torch.manual_seed(2)
    source = randomise(MASA(**TINY))
    path = tmp_path / "net_best.pth"
    torch.save({f"module.{k}": v for k, v in to_official(source).items()}, path)
    loaded = refsr.create_model("masa", weights=str(path), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys() -> None:
    official = to_official(MASA(**TINY))
    del official["decoder.dram_x2.conv_up_b.weight"]
    del official["enc.blk_L2.0.conv1.bias"]
    official["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(RefsrError) as info:
        refsr.convert_official("masa", official)
    message = str(info.value)
    assert "decoder.dram_x2.conv_up_b.weight" in message and "enc.blk_L2.0.conv1.bias" in message
    assert "unexpected keys: decoder.extra.weight" in message
    assert "\n" not in message


def test_checkpoint_of_another_model_is_rejected() -> None:
    with pytest.raises(RefsrError, match=r"none of its 210 keys .* unexpected keys: features.0.weight"):
        refsr.convert_official("masa", {"features.0.weight": torch.zeros(64, 3, 3, 3)})


# ---------------------------------------------------------------------------------------------------------
# Inputs and sizes


def test_ref_down_is_made_with_pil_on_the_8_bit_ref() -> None:
    _, ref = photo_pair(ref_size=(64, 80))
    made = MASA.make_ref_down(ref.float())
    ref8 = (ref[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = np.asarray(Image.fromarray(ref8).resize((20, 16), Image.BICUBIC))
    assert made.shape == (1, 3, 16, 20)
    np.testing.assert_array_equal((made[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), pil)

    torch.manual_seed(0)
    model = randomise(MASA(**TINY).double())
    lr, ref = photo_pair()
    given = model(lr, ref, ref_down=MASA.make_ref_down(ref))
    torch.testing.assert_close(model(lr, ref), given, rtol=0, atol=0)
    # A different Ref↓ changes the matches, hence the output.
    other = F.interpolate(ref, scale_factor=0.25, mode="area")
    assert not torch.allclose(model(lr, ref), model(lr, ref, ref_down=other))


@pytest.mark.parametrize(
    "lr_shape, ref_shape, ref_down_shape, what",
    [
        ((1, 3, 12, 16), (1, 3, 64, 64), None, "divide by 8"),
        ((1, 3, 16, 16), (1, 3, 62, 64), None, "divide by 4"),
        ((1, 3, 16, 16), (1, 3, 64, 64), (1, 3, 15, 16), "1/4 size"),
        ((1, 1, 16, 16), (1, 3, 64, 64), None, "RGB"),
        ((2, 3, 16, 16), (1, 3, 64, 64), None, "same number"),
    ],
)
def test_bad_inputs_get_a_clear_error(lr_shape, ref_shape, ref_down_shape, what) -> None:
    model = MASA(**TINY)
    ref_down = torch.rand(ref_down_shape) if ref_down_shape else None
    with pytest.raises(RefsrError, match=what):
        model(torch.rand(lr_shape), torch.rand(ref_shape), ref_down=ref_down)


def test_size_rule() -> None:
    model = MASA(**TINY)
    rule = model.size_rule
    assert (model.size_multiple, rule.ref_multiple) == (8, 16)
    assert (rule.pad_mode, rule.centre_lr, rule.min_ref) == ("replicate", True, 32)
    assert MASA(**TINY, lr_block_size=6, dilations=(1, 2)).size_multiple == 12  # also a multiple of 4


@pytest.mark.parametrize(
    "lr_hw, ref_hw",
    [((13, 21), (50, 37)), ((16, 16), (64, 64)), ((9, 40), (33, 100)), ((30, 17), (17, 20))],
)
def test_upscale_pads_and_crops_any_size(lr_hw, ref_hw) -> None:
    torch.manual_seed(0)
    model = randomise(MASA(**TINY), std=0.05).eval()
    img = load_photo("coffee.png")
    lr = np.ascontiguousarray(img[: lr_hw[0], : lr_hw[1]])
    ref = np.ascontiguousarray(load_photo("chelsea.png")[: ref_hw[0], : ref_hw[1]])
    sr = refsr.upscale(lr, ref, model=model, precision="fp32")
    assert sr.shape == (4 * lr_hw[0], 4 * lr_hw[1], 3) and sr.dtype == np.uint8

    # The same by hand: LR padded centred (replicate) to a multiple of 8, Ref bottom/right to 16 (>= 32).
    x = torch.tensor(lr).permute(2, 0, 1)[None].float() / 255
    r = torch.tensor(ref).permute(2, 0, 1)[None].float() / 255
    ph, pw = -lr_hw[0] % 8 or 0, -lr_hw[1] % 8
    top, left = ph // 2, pw // 2
    xp = F.pad(x, (left, pw - left, top, ph - top), mode="replicate")
    rh, rw = max(-(-ref_hw[0] // 16) * 16, 32), max(-(-ref_hw[1] // 16) * 16, 32)
    rp = F.pad(r, (0, rw - ref_hw[1], 0, rh - ref_hw[0]), mode="replicate")
    with torch.no_grad():
        out = model(xp, rp)[..., 4 * top : 4 * (top + lr_hw[0]), 4 * left : 4 * (left + lr_hw[1])]
    expected = out[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(sr, expected)


def test_upscale_with_several_references_and_masa_lite() -> None:
    torch.manual_seed(0)
    model = refsr.create_model("masa-lite").eval()
    lr = load_photo("coffee.png")[:20, :28]
    refs = [load_photo("chelsea.png")[:40, :60], load_photo("astronaut.png")[:64, :48]]
    sr = refsr.upscale(lr, refs, model=model)
    assert sr.shape == (80, 112, 3)


def test_stacked_cufed5_shape_block_arithmetic() -> None:
    """CUFED5 with 5 references stacked (TestSet_multi): LR 88x128, Ref 2560x512, Ref↓ 640x128."""
    model = MASA(nf=4, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(1, 1, 1)).eval()
    geometry = model.geometry((88, 128), (2560, 512))
    assert geometry.block_grid == (11, 16) and geometry.diameter == (87, 13) and not geometry.wraps
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 88, 128, generator=gen)
    ref = torch.rand(1, 3, 2560, 512, generator=gen)
    with torch.no_grad():
        sr, corr = model(lr, ref, return_correspondence=True)
    assert sr.shape == (1, 3, 352, 512)
    assert corr.extras["geometry"].diameter == (87, 13)
    assert corr.index.shape == (1, 88, 128) and int(corr.index.max()) < 640 * 128


# ---------------------------------------------------------------------------------------------------------
# Whole images in tiles, fast matching, bfloat16


@pytest.mark.parametrize("config, lr_size", [
    (dict(nf=6, encoder_blocks=(1, 2, 1), unet_blocks=(1, 1, 2), fusion_blocks=(2, 1, 2)), (48, 72)),
    # The official block counts (the largest receptive fields), few channels.
    (dict(nf=4, encoder_blocks=(4, 4, 4), unet_blocks=(2, 2, 2), fusion_blocks=(12, 8, 4)), (48, 72)),
    (dict(nf=4, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(1, 1, 1), use_sam=False), (48, 72)),
])
def test_forward_tiled_equals_forward(config, lr_size) -> None:
    """Stage by stage in tiles, with whole-image MEM and SAM statistics: the untiled output to float64
    rounding, whatever the tile (tiles smaller than every halo included)."""
    model = randomise(MASA(**config).double(), seed=5, std=0.1)
    lr, ref = photo_pair(lr_size=lr_size, ref_size=(96, 128))
    with torch.no_grad():
        whole = model(lr, ref)
        cache = model.encode_reference(ref)
        for tile in (8, 24, 40):
            tiled = torch.full_like(whole, float("nan"))

            def write(top, left, sr):
                assert torch.isnan(tiled[..., top : top + sr.shape[-2], left : left + sr.shape[-1]]).all()
                tiled[..., top : top + sr.shape[-2], left : left + sr.shape[-1]] = sr

            model.forward_tiled(lr, cache, tile=tile, write=write)
            torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)


def test_bfloat16_model_takes_float32_images() -> None:
    """A bfloat16 MASA (refsr.upscale's precision="bf16") runs on float32 inputs, matches in float32 and
    returns float32 close to the float32 model's output."""
    torch.manual_seed(0)
    model = randomise(MASA(**TINY), seed=7, std=0.05).eval()
    lr, ref = (x.float() for x in photo_pair())
    with torch.no_grad():
        expected = model(lr, ref)
        model = model.to(torch.bfloat16)
        sr, corr = model(lr, ref, return_correspondence=True)
    assert sr.dtype == torch.float32 and corr.score.dtype == torch.float32
    assert model.compute_dtype == torch.bfloat16
    assert float((sr - expected).abs().max()) < 0.05


def test_fast_matching_option() -> None:
    """matching="fast" on a reference too small for an index is the exact search; the choice is checked."""
    model = MASA(**TINY, matching="fast").eval()
    lr, ref = (x.float() for x in photo_pair())
    with torch.no_grad():
        fast = model(lr, ref)
        exact = model(lr, ref, matching="exact")
        assert model.encode_reference(ref).block_index is None  # no index: it would not save work
    torch.testing.assert_close(fast, exact, rtol=0, atol=0)
    with pytest.raises(RefsrError, match="matching"):
        MASA(**TINY, matching="approximate")
    with pytest.raises(RefsrError, match="matching"):
        model(lr, ref, matching="approximate")


# ---------------------------------------------------------------------------------------------------------
# Training and golden output


def test_gradients_reach_every_parameter_and_both_images() -> None:
    torch.manual_seed(0)
    model = randomise(MASA(**TINY), std=0.1)
    lr, ref = (x.float() for x in photo_pair())
    lr.requires_grad_(True)
    ref.requires_grad_(True)
    sr = model(lr, ref)
    sr.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    assert ref.grad.abs().max() > 0 and lr.grad.abs().max() > 0


def test_official_init_trains_sam_gamma_beta_first() -> None:
    """With the official init the γ/β convs are zero, so the SAM's shared conv gets no gradient until they
    move; the γ/β convs themselves do get one (sanity of the zero init, not a bug)."""
    torch.manual_seed(0)
    model = MASA(**TINY)
    lr, ref = (x.float() for x in photo_pair())
    model(lr, ref).square().mean().backward()
    assert float(model.sam.shared.weight.grad.abs().max()) == 0
    assert float(model.sam.gamma.weight.grad.abs().max()) > 0


def _golden_case() -> tuple[MASA, torch.Tensor, torch.Tensor]:
    torch.manual_seed(2021)
    model = randomise(MASA(**{**TINY, "nf": 6}), seed=2021, std=0.1).double()
    lr, ref = photo_pair(lr_size=(16, 16), ref_size=(64, 64))
    return model, lr, ref


def test_golden_output() -> None:
    from safetensors.torch import load_file, save_file

    model, lr, ref = _golden_case()
    if os.environ.get("REFSR_REGEN_GOLDEN") == "1":
        with torch.no_grad():
            sr = model(lr, ref)
        GOLDEN.parent.mkdir(exist_ok=True)
        tensors = {f"weight.{k}": v.float() for k, v in model.state_dict().items()}
        save_file({**tensors, "sr": sr.float()}, str(GOLDEN))
    stored = load_file(str(GOLDEN))
    # The weights are stored too (float32, exact in float64), so the golden checks the forward computation
    # even if PyTorch's random number generator changes.
    weights = {k[len("weight.") :]: v.double() for k, v in stored.items() if k.startswith("weight.")}
    model.load_state_dict(weights)
    with torch.no_grad():
        sr = model(lr, ref)
    # Computed in float64 (no near-ties in matching), stored in float32: agreement to float32 rounding.
    assert sr.shape == stored["sr"].shape == (1, 3, 64, 64)
    assert float((sr - stored["sr"].double()).abs().max()) < 1e-6


def test_resblock_is_conv_relu_conv_plus_identity() -> None:
    block = randomise(ResBlock(3)).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    inner = F.relu(F.conv2d(x, block.conv1.weight, block.conv1.bias, padding=1))
    torch.testing.assert_close(block(x), F.conv2d(inner, block.conv2.weight, block.conv2.bias, padding=1) + x)


def test_model_geometry_rejects_a_reference_too_small() -> None:
    with pytest.raises(RefsrError, match="too small"):
        MASA(**TINY).geometry((8, 8), (16, 16))


def test_bf16_output_does_not_depend_on_the_strides_of_size_1_axes() -> None:
    """A permuted image (batch stride 3) and the same values laid out densely give the same bfloat16 output,
    through forward and through encode_reference: oneDNN picks kernels by strides, and before MASA gave its
    inputs dense strides 45 % of these output values differed."""
    torch.manual_seed(0)
    net = MASA(**TINY).eval().to(torch.bfloat16)
    lr8, ref8 = load_photo("coffee.png")[:24, :32], load_photo("coffee.png")[40:136, 24:152]

    def permuted(image: np.ndarray) -> torch.Tensor:
        return torch.tensor(image).permute(2, 0, 1)[None].float() / 255  # strides (3, 1, 3W, 3)

    lr, ref = permuted(lr8), permuted(ref8)
    assert lr.stride()[0] == 3 and ref.stride()[0] == 3
    dense_lr, dense_ref = lr.contiguous(), ref.contiguous()
    with torch.no_grad():
        expected = net(dense_lr, dense_ref)
        torch.testing.assert_close(net(lr, ref), expected, rtol=0, atol=0)
        cache = net.encode_reference(ref)
        torch.testing.assert_close(net(lr, reference_cache=cache), expected, rtol=0, atol=0)
