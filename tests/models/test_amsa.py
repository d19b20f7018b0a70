"""AMSA: architecture and parameter count, conversion of official checkpoints, the official offset, similarity
and reference-scale constructions against literal transcriptions, the two modes, golden output."""

from __future__ import annotations

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
from refsr.models.amsa import (
    AMSA,
    RESTORATION_PARAMETERS,
    RestorationNet,
    convert_official_amsa,
    fusion_weights,
    make_ref_scales,
    match_offsets,
    official_key,
    official_similarity,
)
from refsr.ops import deform_conv2d

KEYS = Path(__file__).resolve().parents[1] / "assets" / "keys"
GOLDEN = Path(__file__).parent / "golden" / "amsa_tiny.safetensors"
TINY = dict(ngf=8, n_blocks=1, groups=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Every tensor here is tiny (8x8 feature maps): a second thread only adds synchronisation, which costs
    # seconds per forward when the cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_keys(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` from an official key listing in tests/assets/keys (see tests/assets/README.md)."""
    path = KEYS / f"{name}.txt"
    table = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            table[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return table


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Non-zero seeded values in every parameter (the official init zeroes the offset/mask convs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return model


def photo_pair(lr_size=(8, 8), ref_size=(32, 32), dtype=torch.float32, batch=1):
    """LR made as the official loader does (PIL bicubic ÷4 of an 8-bit HR crop), an overlapping Ref crop."""
    img = load_photo("astronaut.png")
    lrs, refs = [], []
    for b in range(batch):
        hr = img[3 * b : 3 * b + 4 * lr_size[0], 5 * b : 5 * b + 4 * lr_size[1]]
        lr = np.asarray(Image.fromarray(hr).resize((lr_size[1], lr_size[0]), Image.BICUBIC))
        ref = img[10 + 4 * b : 10 + 4 * b + ref_size[0], 12 : 12 + ref_size[1]]
        lrs.append(torch.tensor(lr).permute(2, 0, 1))
        refs.append(torch.tensor(np.ascontiguousarray(ref)).permute(2, 0, 1))
    return torch.stack(lrs).to(dtype) / 255, torch.stack(refs).to(dtype) / 255


def tiny(mode="fixed", dtype=torch.float32, **options) -> AMSA:
    model = randomise(refsr.create_model("amsa", mode=mode, **{**TINY, **options}))
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------------------------------------
# Architecture


def test_restoration_net_has_the_official_parameter_count_keys_and_shapes() -> None:
    net = RestorationNet(64, 16, 8)
    assert sum(p.numel() for p in net.parameters()) == RESTORATION_PARAMETERS == 9_676_454
    ours = {official_key("restoration." + k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(ours) == 308
    assert ours == official_keys("AMSA_RestorationNet")


def test_frozen_extractors_match_the_official_sizes() -> None:
    with torch.device("meta"):
        model = AMSA()
    extractor = sum(p.numel() for p in model.correspondence_extractor.parameters())
    texture = sum(p.numel() for p in model.texture_extractor.parameters())
    assert (extractor, texture) == (1_110_656, 555_328)
    assert not any(p.requires_grad for p in model.correspondence_extractor.parameters())
    assert not any(p.requires_grad for p in model.texture_extractor.parameters())
    assert all(p.requires_grad for p in model.restoration.parameters())


def test_official_initialisation() -> None:
    torch.manual_seed(0)
    net = RestorationNet().requires_grad_(False)
    conv = net.relu1.body[0].conv1.weight
    assert conv.std().item() == pytest.approx(0.02, rel=0.03)
    dcn = net.relu3.aggregate.weight
    bound = 1 / (256 * 9) ** 0.5
    assert float(dcn.abs().max()) <= bound and dcn.std().item() == pytest.approx(bound / 3**0.5, rel=0.03)
    for level in net.levels:
        for dcn in (level.prewarp, level.aggregate):
            assert float(dcn.conv_offset_mask.weight.abs().max()) == 0
            assert float(dcn.conv_offset_mask.bias.abs().max()) == 0
            assert float(dcn.bias.abs().max()) == 0


def test_lite_is_smaller_and_documents_itself() -> None:
    with torch.device("meta"):
        lite = refsr.create_model("amsa-lite")
    params = sum(p.numel() for p in lite.restoration.parameters())
    assert params < RESTORATION_PARAMETERS / 2
    assert lite.num_ref_scales == 3 and lite.config["ngf"] == 32
    assert "amsa-lite" in refsr.list_models() and "amsa" in refsr.list_models()


# ---------------------------------------------------------------------------------------------------------
# Literal transcriptions of the official constructions


def official_pre_offsets(max_idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """index_to_flow + tensor_shift + repeat_interleave, transcribed loop by loop from the official semantics.

    ``max_idx`` ``(h-2, w-2)``: flat index into the unpadded ``(h-2) x (w-2)`` ref patch grid. Returns
    ``[9, h*s, w*s, 2]`` flows (x, y) per level.
    """
    hh, ww = max_idx.shape
    flow = torch.zeros(hh + 2, ww + 2, 2)
    for y in range(hh):
        for x in range(ww):
            my, mx = divmod(int(max_idx[y, x]), ww)
            flow[y, x] = torch.tensor([mx - x, my - y], dtype=torch.float32)
    out = {}
    for name, s in (("relu3_1", 1), ("relu2_1", 2), ("relu1_1", 4)):
        big = flow.repeat_interleave(s, 0).repeat_interleave(s, 1) * s
        copies = []
        for i in range(3):
            for j in range(3):
                shifted = torch.zeros_like(big)
                shifted[s * i :, s * j :] = big[: big.shape[0] - s * i, : big.shape[1] - s * j]
                copies.append(shifted)
        out[name] = torch.stack(copies)
    return out


def to_dcn_layout(pre: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The official DCN wrappers' reordering: ``[9, H, W, 2] (x, y)`` -> ``(1, 18*groups, H, W)`` (y, x)."""
    pre = pre.unsqueeze(0).repeat(1, groups, 1, 1, 1)
    out = torch.zeros(1, pre.shape[1] * 2, *pre.shape[2:4])
    out[:, 0::2] = pre[..., 1]
    out[:, 1::2] = pre[..., 0]
    return out


def test_match_offsets_reproduce_index_to_flow_and_tensor_shift() -> None:
    h, w = 7, 9
    gen = torch.Generator().manual_seed(3)
    max_idx = torch.randint(0, (h - 2) * (w - 2), (h - 2, w - 2), generator=gen)
    expected = official_pre_offsets(max_idx)
    # Our displacement field is centred: the unpadded grid position q is the patch centred at q + 1.
    my, mx = max_idx // (w - 2) + 1, max_idx % (w - 2) + 1
    displacement = torch.zeros(1, 2, h, w)
    cy, cx = torch.meshgrid(torch.arange(1, h - 1), torch.arange(1, w - 1), indexing="ij")
    displacement[0, 0, 1:-1, 1:-1] = (my - cy).float()
    displacement[0, 1, 1:-1, 1:-1] = (mx - cx).float()
    displacement[0, :, 0] = 99.0  # border centres are never used
    displacement[0, :, :, -1] = -99.0
    for name, scale in (("relu3_1", 1), ("relu2_1", 2), ("relu1_1", 4)):
        ours = match_offsets(displacement, scale)
        assert torch.equal(ours, to_dcn_layout(expected[name])), name


def test_official_similarity_matches_unfold_without_padding() -> None:
    gen = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64), dim=1)
    key = F.normalize(torch.randn(2, 5, 8, 6, generator=gen, dtype=torch.float64), dim=1)
    match_y = torch.randint(1, 7, (2, 6, 7), generator=gen)
    match_x = torch.randint(1, 5, (2, 6, 7), generator=gen)
    ours = official_similarity(query, key, match_y, match_x)
    q = F.unfold(query, 3)  # (2, 45, 4*5): interior patches, not normalised
    k = F.normalize(F.unfold(key, 3), dim=1)  # (2, 45, 6*4)
    for b in range(2):
        for y in range(1, 5):
            for x in range(1, 6):
                j = (int(match_y[b, y, x]) - 1) * 4 + int(match_x[b, y, x]) - 1
                expected = q[b, :, (y - 1) * 5 + x - 1] @ k[b, :, j]
                assert float(ours[b, y, x]) == pytest.approx(float(expected), abs=1e-12)
    assert float(ours[:, 0].abs().max()) == 0 == float(ours[:, :, -1].abs().max())
    # Per-pixel normalised features: an identical interior patch scores 3.
    grid_y, grid_x = torch.meshgrid(torch.arange(6).clamp(1, 4), torch.arange(7).clamp(1, 5), indexing="ij")
    itself = official_similarity(query, query, grid_y.expand(2, 6, 7), grid_x.expand(2, 6, 7))
    assert float(itself[:, 1:-1, 1:-1].sub(3).abs().max()) < 1e-12


def test_ref_scales_are_successive_pil_resizes_cropped_and_zero_padded() -> None:
    img = load_photo("coffee.png")[:61, :77]
    ref = torch.tensor(img).permute(2, 0, 1)[None].double() / 255
    scales = make_ref_scales(ref, (64, 96), count=5, factor=0.8)
    assert len(scales) == 5 and all(s.shape == (1, 3, 64, 96) for s in scales)
    assert torch.equal(scales[0][..., :61, :77], ref) and float(scales[0][..., 61:, :].abs().max()) == 0
    pil = Image.fromarray(img)
    w, h = 77.0, 61.0
    for i in range(1, 5):
        w *= 0.8
        h *= 0.8
        pil = pil.resize((int(w), int(h)), Image.BICUBIC)
        expected = np.asarray(pil)[: int(h) // 4 * 4, : int(w) // 4 * 4]
        got = (scales[i][0] * 255).round().byte().permute(1, 2, 0).numpy()
        eh, ew = expected.shape[:2]
        assert np.array_equal(got[:eh, :ew], expected), i
        assert got[eh:].max(initial=0) == 0 and got[:, ew:].max(initial=0) == 0


def test_fusion_weights_softmax_and_the_official_batch_bug() -> None:
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(5, 3, 2, 2, generator=gen, dtype=torch.float64) * 6 - 3
    weights = fusion_weights(sim)
    assert weights.shape == (5, 3, 1, 8, 8)
    by_hand = torch.exp(10 * sim[:, 1, 0, 1]) / torch.exp(10 * sim[:, 1, 0, 1]).sum()
    assert torch.allclose(weights[:, 1, 0, 3, 7], by_hand)  # HR (3, 7) lies in LR cell (0, 1)
    buggy = fusion_weights(sim, last_sample_for_all=True)
    for n in range(3):
        assert torch.allclose(buggy[:, n], weights[:, 2], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The restoration net against a literal transcription of the official forward (official key names)


def official_restoration_forward(sd, lr, pre_offsets, textures, max_vals, groups):
    """RestorationNet.forward of ref_restoration_arch.py, in terms of the official keys; the DCNv2 kernel is
    refsr.ops.deform_conv2d (its own tests check it against the CUDA kernel's semantics)."""
    def conv(x, name):
        return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=1)

    def lrelu(x):
        return F.leaky_relu(x, 0.1)

    def blocks(x, prefix):
        i = 0
        while f"{prefix}.{i}.conv1.weight" in sd:
            x = x + conv(F.relu(conv(x, f"{prefix}.{i}.conv1")), f"{prefix}.{i}.conv2")
            i += 1
        return x

    def dcn_pre(x, pre, name):  # DCN_pre_offset, extra_offset_mask=False
        mask = torch.sigmoid(conv(x, name + ".conv_offset_mask"))
        return deform_conv2d(x, to_dcn_layout(pre).to(x.dtype), sd[name + ".weight"], sd[name + ".bias"],
                             padding=1, mask=mask)

    def dcn_multi(x, feat, pre, name):  # DCN_sep_pre_multi_offset
        out = conv(feat, name + ".conv_offset_mask")
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1) + to_dcn_layout(pre, groups).to(x.dtype)
        return deform_conv2d(x, offset, sd[name + ".weight"], sd[name + ".bias"], padding=1,
                             mask=torch.sigmoid(mask))

    base = F.interpolate(lr, None, 4, "bilinear", False)
    content = blocks(lrelu(conv(lr, "content_extractor.conv_first")), "content_extractor.body")
    weights = torch.softmax(torch.cat(max_vals, dim=1) * 10, dim=1)
    total = 0
    for i in range(len(textures)):
        x = content
        for level, layer in (("small", "relu3_1"), ("medium", "relu2_1"), ("large", "relu1_1")):
            p = "dyn_agg_restore."
            warped = dcn_pre(textures[i][layer], pre_offsets[i][layer], f"{p}{level}_deform_conv")
            off = lrelu(conv(torch.cat([x, warped], 1), f"{p}{level}_offset_conv1"))
            off = lrelu(conv(off, f"{p}{level}_offset_conv2"))
            swapped = lrelu(dcn_multi(textures[i][layer], off, pre_offsets[i][layer], f"{p}{level}_dyn_agg"))
            h = lrelu(conv(torch.cat([x, swapped], 1), f"{p}head_{level}.0"))
            h = blocks(h, f"{p}body_{level}") + x
            if level != "large":
                x = lrelu(F.pixel_shuffle(conv(h, f"{p}tail_{level}.0"), 2))
        total = total + h * weights[:, i : i + 1]
    out = conv(lrelu(conv(total, "dyn_agg_restore.tail_large.0")), "dyn_agg_restore.tail_large.2")
    return out + base


def test_converted_restoration_net_reproduces_the_official_forward() -> None:
    groups = 2
    net = randomise(RestorationNet(ngf=8, n_blocks=2, groups=groups)).double().requires_grad_(False)
    ours = net.state_dict()
    official = {official_key("restoration." + k): v for k, v in ours.items()}
    converted = convert_official_amsa(official)
    assert set(converted) == {"restoration." + k for k in ours}
    assert all(torch.equal(converted["restoration." + k], v) for k, v in ours.items())

    gen = torch.Generator().manual_seed(5)
    h = w = 6
    lr = torch.rand(1, 3, h, w, generator=gen, dtype=torch.float64)
    pre_offsets, textures, max_vals, displacements = [], [], [], []
    for i in range(2):
        max_idx = torch.randint(0, (h - 2) * (w - 2), (h - 2, w - 2), generator=gen)
        pre_offsets.append(official_pre_offsets(max_idx))
        my, mx = max_idx // (w - 2) + 1, max_idx % (w - 2) + 1
        cy, cx = torch.meshgrid(torch.arange(1, h - 1), torch.arange(1, w - 1), indexing="ij")
        d = torch.zeros(1, 2, h, w, dtype=torch.float64)
        d[0, 0, 1:-1, 1:-1], d[0, 1, 1:-1, 1:-1] = (my - cy).double(), (mx - cx).double()
        displacements.append(d)
        textures.append({name: torch.randn(1, c, h * s, w * s, generator=gen, dtype=torch.float64)
                         for name, c, s in (("relu3_1", 256, 1), ("relu2_1", 128, 2), ("relu1_1", 64, 4))})
        max_vals.append(torch.rand(1, 1, h * 4, w * 4, generator=gen, dtype=torch.float64))
    expected = official_restoration_forward(official, lr, pre_offsets, textures, max_vals, groups)

    displacement = torch.cat(displacements)
    offsets = [match_offsets(displacement, s) for s in (1, 2, 4)]
    stacked = [torch.cat([t[name] for t in textures]) for name in ("relu3_1", "relu2_1", "relu1_1")]
    h_all = net.aggregate(torch.cat([net.content(lr)] * 2), stacked, offsets)
    weights = torch.softmax(torch.cat(max_vals, dim=1) * 10, dim=1)
    fused = (h_all * weights.transpose(0, 1)).sum(0, keepdim=True)
    got = net.output(fused, lr)
    assert float((got - expected).abs().max()) < 1e-10


# ---------------------------------------------------------------------------------------------------------
# Checkpoint conversion


def full_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    state = {}
    names = ("AMSA_RestorationNet", "AMSA_ContrasExtractorSep", "AMSA_CorrespondenceGenerationArch")
    for i, name in enumerate(names):
        state.update(random_state(official_keys(name), seed + i))
    imagenet = {"mean": torch.tensor([0.485, 0.456, 0.406]), "std": torch.tensor([0.229, 0.224, 0.225])}
    for prefix in ("feature_extraction_image1.", "feature_extraction_image2.", "vgg."):
        for stat, value in imagenet.items():
            state[prefix + stat] = value.view(1, 3, 1, 1).clone()
    return state


def test_conversion_round_trip_merged_and_separately() -> None:
    state = full_official_state()
    with torch.device("meta"):
        model = AMSA()
    converted = refsr.convert_official("amsa", {"module." + k: v for k, v in state.items()})
    assert set(converted) == set(model.state_dict())
    model = AMSA(ngf=64, n_blocks=16)
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.restoration.relu3.prewarp.weight,
                       state["dyn_agg_restore.small_deform_conv.weight"])
    assert torch.equal(model.restoration.relu2.aggregate.conv_offset_mask.bias,
                       state["dyn_agg_restore.medium_dyn_agg.conv_offset_mask.bias"])
    assert torch.equal(model.restoration.out_conv2.weight, state["dyn_agg_restore.tail_large.2.weight"])
    assert torch.equal(model.correspondence_extractor.lr_branch.conv3_1.weight,
                       state["feature_extraction_image1.model.conv3_1.weight"])
    assert torch.equal(model.correspondence_extractor.ref_branch.conv1_1.bias,
                       state["feature_extraction_image2.model.conv1_1.bias"])
    assert torch.equal(model.texture_extractor.conv2_2.weight, state["vgg.vgg_net.conv2_2.weight"])
    # Each official file alone converts to its own part.
    parts = {"content_extractor": "restoration.", "feature_extraction": "correspondence_extractor.",
             "vgg": "texture_extractor."}
    for official_prefix, ours in parts.items():
        also = {"content_extractor": "dyn_agg", "vgg": "feature_match_index"}
        extra = also.get(official_prefix, official_prefix)
        part = {k: v for k, v in state.items() if k.startswith((official_prefix, extra))}
        out = convert_official_amsa(part)
        assert out and all(k.startswith(ours) for k in out)
        assert {k for k in converted if k.startswith(ours)} == set(out)


def test_official_checkpoint_files_load_through_create_model(tmp_path) -> None:
    path = tmp_path / "amsa_merged.pth"
    state = full_official_state(seed=7)
    torch.save(state, path)
    model = refsr.create_model("amsa", weights=str(path))
    assert torch.equal(model.restoration.content.conv_first.weight,
                       state["content_extractor.conv_first.weight"])


def test_refsr_convert_merges_the_three_official_files(tmp_path, capsys) -> None:
    """`refsr convert --from amsa restoration.pth feature_extraction.pth vgg.pth` equals converting the merged
    dict; a key given twice is refused."""
    from safetensors.torch import load_file

    from refsr.cli import main as cli_main

    state = full_official_state(seed=3)
    parts = {
        "restoration.pth": {k: v for k, v in state.items() if not k.startswith(("feature_extraction", "vgg."))},
        "feature_extraction.pth": {k: v for k, v in state.items() if k.startswith("feature_extraction")},
        "vgg.pth": {k: v for k, v in state.items() if k.startswith("vgg.")},
    }
    assert all(parts.values()) and sum(len(p) for p in parts.values()) == len(state)
    for name, part in parts.items():
        torch.save(part, tmp_path / name)
    out = tmp_path / "amsa.safetensors"
    files = [str(tmp_path / name) for name in parts]
    assert cli_main(["convert", "--from", "amsa", *files, "-o", str(out)]) == 0
    converted, expected = load_file(str(out)), convert_official_amsa(state)
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    assert cli_main(["convert", "--from", "amsa", files[0], files[0], "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "also in an earlier checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("dyn_agg_restore.body_large.3.conv2.bias"),
         "missing keys: dyn_agg_restore.body_large.3.conv2.bias"),
        (lambda s: s.update({"dyn_agg_restore.extra.weight": torch.zeros(1)}),
         "unexpected keys: dyn_agg_restore.extra.weight"),
        (lambda s: s.update({"decoder.conv_out.weight": torch.zeros(1)}),
         "unexpected keys: decoder.conv_out.weight"),
        (lambda s: s.pop("feature_extraction_image2.model.conv2_1.weight"),
         "missing keys: feature_extraction_image2.model.conv2_1.weight"),
        (lambda s: s.update({"vgg.vgg_net.conv1_1.weight": torch.zeros(64, 3, 5, 5)}),
         "wrong shapes: vgg.vgg_net.conv1_1.weight"),
        (lambda s: s["feature_extraction_image1.mean"].mul_(2), "ImageNet mean"),
    ],
)
def test_bad_checkpoints_are_rejected_clearly(edit, message) -> None:
    state = full_official_state()
    edit(state)
    with pytest.raises(RefsrError, match=message.replace(".", r"\.").replace("(", r"\(")):
        convert_official_amsa(state)


# ---------------------------------------------------------------------------------------------------------
# Forward: shapes, sizes, gradients, determinism, modes


def test_forward_shapes_and_size_handling() -> None:
    model = tiny()
    assert model.size_multiple == 8 and model.scale == 4
    lr, ref = photo_pair((8, 16), (32, 48))
    with torch.no_grad():
        sr = model(lr, ref)
    assert sr.shape == (1, 3, 32, 64) and torch.isfinite(sr).all()
    # A Ref larger than 4x the LR: the LR is zero-padded to it and the output cropped back.
    lr, ref = photo_pair((8, 8), (40, 36))
    assert model.working_size((8, 8), (40, 36)) == (64, 64)
    with torch.no_grad():
        sr = model(lr, ref)
    assert sr.shape == (1, 3, 32, 32) and torch.isfinite(sr).all()


def test_ref_scales_argument_is_what_the_model_builds_itself() -> None:
    model = tiny()
    lr, ref = photo_pair()
    scales = make_ref_scales(ref, (32, 32))
    with torch.no_grad():
        assert torch.allclose(model(lr, ref), model(lr, ref, ref_scales=scales), atol=1e-6)
        other = model(lr, ref, ref_scales=[scales[0]] * 5)
    assert not torch.equal(other, model(lr, ref))


def test_two_forwards_are_identical() -> None:
    model = tiny()
    lr, ref = photo_pair(batch=2)
    with torch.no_grad():
        assert torch.equal(model(lr, ref), model(lr, ref))


def test_gradients_reach_the_restoration_net_only() -> None:
    model = tiny().train()
    lr, ref = photo_pair()
    lr.requires_grad_(True)
    model(lr, ref).square().mean().backward()
    missing = [n for n, p in model.restoration.named_parameters()
               if p.grad is None or float(p.grad.abs().max()) == 0]
    assert not missing
    assert all(p.grad is None for p in model.correspondence_extractor.parameters())
    assert all(p.grad is None for p in model.texture_extractor.parameters())
    assert lr.grad is not None and float(lr.grad.abs().max()) > 0


def test_official_and_fixed_modes_agree_where_no_bug_shows() -> None:
    same_matching = dict(schedule="official", propagation="index")
    official, fixed = tiny("official", **same_matching), tiny("fixed", **same_matching)
    lr, ref = photo_pair()
    identical = [make_ref_scales(ref, (32, 32))[0]] * 5
    with torch.no_grad():
        # Equal up to float rounding (the fixed mode runs VGG on a batch of 5 copies, official on one).
        assert torch.allclose(official(lr, ref, ref_scales=identical), fixed(lr, ref, ref_scales=identical),
                              atol=1e-6)
        # Distinct scales: textures differ (scale-1 VGG features for every scale, officially).
        assert not torch.allclose(official(lr, ref), fixed(lr, ref))
    scales = make_ref_scales(ref, (32, 32))
    official_textures, fixed_textures = official.transfer(scales), fixed.transfer(scales)
    for o, f in zip(official_textures, fixed_textures):
        assert torch.allclose(o[:1], f[:1], atol=1e-6)
        assert all(torch.equal(o[i : i + 1], o[:1]) for i in range(5))
        assert not torch.allclose(o[1:2], f[1:2])


def test_official_batch_bug_uses_the_last_samples_fusion_weights() -> None:
    same = dict(schedule="official", propagation="index")
    official, fixed = tiny("official", **same), tiny("fixed", **same)
    fixed.per_scale_textures = False  # isolate the fusion bug
    lr, ref = photo_pair(batch=2)
    with torch.no_grad():
        a, b = official(lr, ref), fixed(lr, ref)
    assert torch.allclose(a[1], b[1], atol=1e-6)  # the last sample is right either way
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize(
    "lr_shape, ref_shape, what",
    [
        ((1, 3, 12, 16), (1, 3, 48, 64), "divide by 8"),
        ((1, 3, 8, 8), (1, 3, 16, 64), "at least 32"),
        ((1, 1, 8, 8), (1, 3, 32, 32), "RGB tensor"),
        ((2, 3, 8, 8), (1, 3, 32, 32), "same number"),
    ],
)
def test_bad_inputs_get_a_clear_error(lr_shape, ref_shape, what) -> None:
    model = tiny()
    with pytest.raises(RefsrError, match=what):
        model(torch.rand(lr_shape), torch.rand(ref_shape))


def test_bad_ref_scales_and_options_are_rejected() -> None:
    model = tiny()
    lr, ref = photo_pair()
    with pytest.raises(RefsrError, match="list of 5"):
        model(lr, ref, ref_scales=[ref] * 4)
    with pytest.raises(RefsrError, match="multiples of 32"):
        model(lr, ref, ref_scales=[F.pad(ref, (0, 4, 0, 4))] * 5)
    with pytest.raises(RefsrError, match="mode"):
        refsr.create_model("amsa", mode="paper")


def test_upscale_runs_amsa_lite_on_odd_sizes() -> None:
    img = load_photo("chelsea.png")
    lr = np.asarray(Image.fromarray(img[:44, :52]).resize((13, 11), Image.BICUBIC))
    torch.manual_seed(0)
    model = refsr.create_model("amsa-lite").eval()
    out = refsr.upscale(lr, img[:40, :50], model=model)
    assert out.shape == (44, 52, 3) and out.dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------
# Golden output


def test_golden_output_of_a_tiny_configuration() -> None:
    from safetensors.torch import load_file, save_file

    # Seeded weights (tiny() draws every parameter from its own generator) rather than stored ones: the
    # restoration net has 256-channel DCNs even when tiny, too large for a golden file.
    model = tiny(dtype=torch.float64)
    lr, ref = photo_pair((8, 8), (36, 32), dtype=torch.float64)
    with torch.no_grad():
        sr = model(lr, ref)
    if os.environ.get("REFSR_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        save_file({"sr": sr.float().contiguous()}, str(GOLDEN))
    stored = load_file(str(GOLDEN))["sr"]
    assert sr.shape == stored.shape == (1, 3, 32, 32)
    # Float64 forward stored in float32: agreement to float32 rounding.
    assert float((sr - stored.double()).abs().max()) < 1e-5


@pytest.mark.parametrize("name", ["amsa-rec", "amsa", "amsa-lite"])
def test_configs_validate(name) -> None:
    from refsr.train.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    assert cfg.model.name in refsr.list_models() and cfg.model.name.startswith("amsa")
    assert cfg.losses[0].name == "l1"
    if name == "amsa":
        (perceptual,) = [loss for loss in cfg.losses if loss.name == "perceptual"]
        (adversarial,) = [loss for loss in cfg.losses if loss.name == "adversarial"]
        assert (perceptual.layer, perceptual.weight) == ("relu5_1", 1e-4)
        assert (adversarial.kind, adversarial.weight, adversarial.gradient_penalty) == ("wgan_gp", 1e-6, 10.0)
