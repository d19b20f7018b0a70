"""DATSR: parameter count and keys (the key list built from the official code), conversion of the official
checkpoints, the converted model against a literal re-implementation of the official pipeline (float64),
the Swin pieces, sizes, training, golden output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_photo
from official_pipelines import (  # noqa: F401 (one_thread: an autouse fixture)
    KEYS,
    check_golden,
    conv,
    correspondence,
    dcn_pre_multi_offset,
    loader_pair,
    official_test_pair,
    one_thread,
    random_state,
    read_keys,
    residual_blocks,
    seeded,
    with_imagenet_buffers,
)

import refsr
from refsr.errors import RefsrError
from refsr.models.datsr import (
    DATSR,
    OFFICIAL_PARAMETERS,
    RESTORATION_PARAMETERS,
    DATSRRestorationNet,
    DropPath,
    convert_official_datsr,
    official_key,
    shifted_window_mask,
)

GOLDEN = Path(__file__).parent / "golden" / "datsr_tiny.safetensors"
KEY_LIST = "DATSR_SwinUnetv3RestorationNet"
#: The official test configuration (options/test/test_restoration_mse.yml).
OFFICIAL = dict(ngf=128, n_blocks=8, groups=8, depths=(4, 4), num_heads=(4, 4), window_size=8)
TINY = dict(ngf=8, groups=2, depths=(2, 1), num_heads=(2, 1), window_size=4)
#: The official img_size of each Swin group (it only sizes the stored attention masks).
_IMG_SIZE = {"large": 160, "medium": 80, "small": 40}
_LEVELS = (("down", "large", "relu1_1", 64), ("down", "medium", "relu2_1", 128), ("up", "small", "relu3_1", 256),
           ("up", "medium", "relu2_1", 128), ("up", "large", "relu1_1", 64))


def official_shapes(ngf, n_blocks, groups, depths, num_heads, window_size, buffers=True):
    """Keys and shapes of the official ``SwinUnetv3RestorationNet`` state_dict, read off its ``__init__``s
    (``mlp_ratio`` 2, ``patch_norm``, ``resi_connection='1conv'``); with the persistent buffers
    (``relative_position_index``, ``attn_mask`` of the shifted blocks) when ``buffers``."""
    shapes: dict[str, tuple[int, ...]] = {}
    tokens = window_size**2

    def conv_shape(name, cin, cout):
        shapes[name + ".weight"] = (cout, cin, 3, 3)
        shapes[name + ".bias"] = (cout,)

    def linear(name, cin, cout):
        shapes[name + ".weight"] = (cout, cin)
        shapes[name + ".bias"] = (cout,)

    def norm(name):
        shapes[name + ".weight"] = shapes[name + ".bias"] = (ngf,)

    conv_shape("content_extractor.conv_first", 3, ngf)
    for i in range(n_blocks):
        conv_shape(f"content_extractor.body.{i}.conv1", ngf, ngf)
        conv_shape(f"content_extractor.body.{i}.conv2", ngf, ngf)
    p = "dyn_agg_restore."
    conv_shape(p + "unet_head", 3, ngf)
    for direction, size, _, c in _LEVELS:
        conv_shape(f"{p}{direction}_{size}_offset_conv1", ngf + 2 * c, c)
        conv_shape(f"{p}{direction}_{size}_offset_conv2", c, c)
        conv_shape(f"{p}{direction}_{size}_dyn_agg", c, c)
        conv_shape(f"{p}{direction}_{size}_dyn_agg.conv_offset_mask", c, 27 * groups)
        conv_shape(f"{p}{direction}_head_{size}.0", ngf + c, ngf)
        body = f"{p}{direction}_body_{size}."
        norm(body + "patch_embed.norm")
        windows = (_IMG_SIZE[size] // window_size) ** 2
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            for j in range(depth):
                block = f"{body}layers.{i}.residual_group.blocks.{j}."
                norm(block + "norm1")
                shapes[block + "attn.relative_position_bias_table"] = ((2 * window_size - 1) ** 2, heads)
                if buffers:
                    shapes[block + "attn.relative_position_index"] = (tokens, tokens)
                linear(block + "attn.qkv", ngf, 3 * ngf)
                linear(block + "attn.proj", ngf, ngf)
                norm(block + "norm2")
                linear(block + "mlp.fc1", ngf, 2 * ngf)
                linear(block + "mlp.fc2", 2 * ngf, ngf)
                if buffers and j % 2 == 1:
                    shapes[block + "attn_mask"] = (windows, tokens, tokens)
            conv_shape(f"{body}layers.{i}.conv", ngf, ngf)
        norm(body + "norm")
        if direction == "down":
            conv_shape(f"{p}down_tail_{size}", ngf, ngf)
        elif size != "large":
            conv_shape(f"{p}up_tail_{size}.0", ngf, 4 * ngf)
        else:
            conv_shape(f"{p}up_tail_large.0", ngf, ngf // 2)
            conv_shape(f"{p}up_tail_large.2", ngf // 2, 3)
    return shapes


def official_state(seed=0, **config) -> dict[str, torch.Tensor]:
    config = {**dict(TINY, n_blocks=1), **config}
    shapes = {**official_shapes(**config), **read_keys("C2Matching_ContrasExtractorSep"),
              **read_keys("C2Matching_CorrespondenceGenerationArch")}
    shapes = {k: s for k, s in shapes.items() if not k.endswith((".mean", ".std"))}
    state = random_state(shapes, seed)
    for key in state:
        if key.endswith("relative_position_index"):
            state[key] = state[key].abs().mul(100).long()  # a long buffer; its values are never read
    return with_imagenet_buffers(state, ("feature_extraction_image1.", "feature_extraction_image2.", "vgg."))


# ---------------------------------------------------------------------------------------------------------
# The official restoration network, literally


def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def calculate_mask(h, w, ws, shift):
    img_mask = torch.zeros((1, h, w, 1))
    slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    cnt = 0
    for hs in slices:
        for wsl in slices:
            img_mask[:, hs, wsl, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, ws).view(-1, ws * ws)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def relative_position_index(ws):
    coords = torch.flatten(torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")), 1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += ws - 1
    relative[:, :, 1] += ws - 1
    relative[:, :, 0] *= 2 * ws - 1
    return relative.sum(-1)


def window_attention(sd, p, x, mask, heads, ws):
    b_, n, c = x.shape
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"])
    qkv = qkv.reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = sd[p + "relative_position_bias_table"][relative_position_index(ws).view(-1)].view(ws * ws, ws * ws, -1)
    attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    x = (torch.softmax(attn, dim=-1) @ v).transpose(1, 2).reshape(b_, n, c)
    return F.linear(x, sd[p + "proj.weight"], sd[p + "proj.bias"])


def swin_transformer_block(sd, p, x, x_size, heads, ws, shift):
    h, w = x_size
    b, _, c = x.shape
    shortcut = x
    x = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"]).view(b, h, w, c)
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(x, ws).view(-1, ws * ws, c)
    mask = calculate_mask(h, w, ws, shift).to(x.dtype) if shift > 0 else None
    x = window_reverse(window_attention(sd, p + "attn.", windows, mask, heads, ws).view(-1, ws, ws, c), ws, h, w)
    if shift > 0:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + x.view(b, h * w, c)
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                 sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + y


def swin_block(sd, p, x, depths, heads, ws):
    """The official ``SwinBlock`` (RSTBs with ``resi_connection='1conv'``), eval mode."""
    b, c, h, w = x.shape
    t = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sd[p + "patch_embed.norm.weight"],
                     sd[p + "patch_embed.norm.bias"])
    for i, depth in enumerate(depths):
        r = t
        for j in range(depth):
            r = swin_transformer_block(sd, f"{p}layers.{i}.residual_group.blocks.{j}.", r, (h, w), heads[i], ws,
                                       0 if j % 2 == 0 else ws // 2)
        t = conv(sd, r.transpose(1, 2).view(b, c, h, w), f"{p}layers.{i}.conv").flatten(2).transpose(1, 2) + t
    t = F.layer_norm(t, (c,), sd[p + "norm.weight"], sd[p + "norm.bias"])
    return t.transpose(1, 2).view(b, c, h, w)


def flow_warp(x, flow):
    _, _, h, w = x.shape
    grid_y, grid_x = torch.meshgrid(torch.arange(0, h).type_as(x), torch.arange(0, w).type_as(x), indexing="ij")
    vgrid = torch.stack((grid_x, grid_y), 2) + flow
    vx = 2.0 * vgrid[:, :, :, 0] / max(w - 1, 1) - 1.0
    vy = 2.0 * vgrid[:, :, :, 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(x, torch.stack((vx, vy), dim=3), mode="bilinear", padding_mode="zeros", align_corners=True)


def official_restoration(sd, lr, pre, textures, groups, depths, num_heads, window_size):
    """``SwinUnetv3RestorationNet.forward`` in eval mode."""
    def lrelu(x):
        return F.leaky_relu(x, 0.1)

    pre_offset, pre_flow, pre_sim = pre
    base = F.interpolate(lr, None, 4, "bilinear", False)
    x = residual_blocks(sd, lrelu(conv(sd, lr, "content_extractor.conv_first")), "content_extractor.body")
    del x  # the official forward computes it and never reads it
    warped = {name: flow_warp(textures[name], pre_flow[name]) for name in textures}
    p = "dyn_agg_restore."
    x0 = conv(sd, base, p + "unet_head")

    def level(direction, size, layer, x, skip):
        off = lrelu(conv(sd, torch.cat([x, warped[layer], textures[layer]], 1), f"{p}{direction}_{size}_offset_conv1"))
        off = lrelu(conv(sd, off, f"{p}{direction}_{size}_offset_conv2"))
        swapped = lrelu(dcn_pre_multi_offset(sd, textures[layer], off, pre_offset[layer],
                                             f"{p}{direction}_{size}_dyn_agg", groups, similarity=pre_sim[layer],
                                             max_residue=10))
        h = lrelu(conv(sd, torch.cat([x if skip is None else x + skip, swapped], 1), f"{p}{direction}_head_{size}.0"))
        return swin_block(sd, f"{p}{direction}_body_{size}.", h, depths, num_heads, window_size) + x

    x1 = conv(sd, level("down", "large", "relu1_1", x0, None), p + "down_tail_large", stride=2)
    x2 = conv(sd, level("down", "medium", "relu2_1", x1, None), p + "down_tail_medium", stride=2)
    x = lrelu(F.pixel_shuffle(conv(sd, level("up", "small", "relu3_1", x2, None), p + "up_tail_small.0"), 2))
    x = lrelu(F.pixel_shuffle(conv(sd, level("up", "medium", "relu2_1", x, x1), p + "up_tail_medium.0"), 2))
    h = level("up", "large", "relu1_1", x, x0)
    return conv(sd, lrelu(conv(sd, h, p + "up_tail_large.0")), p + "up_tail_large.2") + base


def photo_pair(hr_size=(32, 48)):
    img = load_photo("chelsea.png")
    h, w = hr_size
    return img[40 : 40 + h, 60 : 60 + w], img[47 : 47 + h, 69 : 69 + w]


# ---------------------------------------------------------------------------------------------------------
# Architecture and conversion


def test_key_list_and_parameter_counts_of_the_official_configuration() -> None:
    shapes = official_shapes(**OFFICIAL)
    assert shapes == read_keys(KEY_LIST)  # tests/assets/keys, written from this function (see its README)
    params = {k: s for k, s in shapes.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    assert sum(int(np.prod(s)) for s in params.values()) == OFFICIAL_PARAMETERS == 18_026_971
    content = sum(int(np.prod(s)) for k, s in params.items() if k.startswith("content_extractor."))
    assert content == 2_364_928
    with torch.device("meta"):
        net = DATSRRestorationNet()
    assert sum(p.numel() for p in net.parameters()) == RESTORATION_PARAMETERS == OFFICIAL_PARAMETERS - content
    ours = {official_key("restoration." + k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == {k: s for k, s in params.items() if not k.startswith("content_extractor.")}


def test_full_official_file_set_converts_and_loads_strictly() -> None:
    state = official_state(**{k: v for k, v in OFFICIAL.items()})
    converted = refsr.convert_official("datsr", state)
    with torch.device("meta"):
        expected = DATSR().state_dict()
    assert converted.keys() == expected.keys()
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in expected.items())
    key = "dyn_agg_restore.up_body_small.layers.1.residual_group.blocks.3.attn.relative_position_bias_table"
    ours = "restoration.up3.body.layers.1.blocks.3.attn.relative_position_bias_table"
    assert torch.equal(converted[ours], state[key])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("dyn_agg_restore.up_body_medium.norm.bias"),
         "missing keys: dyn_agg_restore.up_body_medium.norm.bias"),
        (lambda s: s.pop("content_extractor.body.0.conv1.weight"),
         "missing keys: content_extractor.body.0.conv1.weight"),
        (lambda s: s.update({"dyn_agg_restore.small_offset_conv1.weight": torch.zeros(1)}),
         "unexpected keys: dyn_agg_restore.small_offset_conv1.weight"),  # a C2-Matching file is not a DATSR file
        (lambda s: s.update({"dyn_agg_restore.unet_head.bias": torch.zeros(9)}),
         "wrong shapes: dyn_agg_restore.unet_head.bias"),
    ],
)
def test_bad_checkpoints_are_rejected_clearly(edit, message) -> None:
    state = official_state()
    edit(state)
    with pytest.raises(RefsrError, match=message.replace(".", r"\.")):
        convert_official_datsr(state)


def test_create_model_takes_an_official_checkpoint(tmp_path) -> None:
    state = official_state(seed=4)
    torch.save(state, tmp_path / "datsr.pth")
    model = refsr.create_model("datsr", weights=str(tmp_path / "datsr.pth"), **TINY)
    assert torch.equal(model.restoration.down2.body.layers[0].blocks[1].mlp.fc2.bias,
                       state["dyn_agg_restore.down_body_medium.layers.0.residual_group.blocks.1.mlp.fc2.bias"].float())


# ---------------------------------------------------------------------------------------------------------
# The converted model against the official pipeline


@pytest.mark.parametrize("hr_size", [(32, 48), (48, 32)])
def test_converted_model_reproduces_the_official_forward(hr_size) -> None:
    config = dict(TINY)
    state = official_state(seed=5)
    model = DATSR(**config).double().eval()
    model.load_state_dict(convert_official_datsr(state), strict=True)
    lq, up, ref_t = loader_pair(*photo_pair(hr_size))
    offsets, flows, sims, textures = correspondence(state, up, ref_t)
    expected = official_restoration(state, lq, (offsets, flows, sims), textures, config["groups"], config["depths"],
                                    config["num_heads"], config["window_size"])
    with torch.no_grad():
        got = model(lq, ref_t)
    assert got.shape == expected.shape == (1, 3, *hr_size)
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative < 1e-9, relative


def test_similarity_and_flows_are_the_official_ones() -> None:
    state = official_state(seed=6)
    model = DATSR(**TINY).double().eval()
    model.load_state_dict(convert_official_datsr(state))
    lq, up, ref_t = loader_pair(*photo_pair())
    _, flows, sims, _ = correspondence(state, up, ref_t)
    guidance = model.match(*model.encode(lq, ref_t))
    for name, flow, sim in zip(("relu3_1", "relu2_1", "relu1_1"), guidance.flows, guidance.similarities):
        assert torch.equal(flow, flows[name].permute(0, 3, 1, 2).flip(1)), name  # (x, y) -> (dy, dx)
        torch.testing.assert_close(sim, sims[name], rtol=0, atol=1e-12)
    # Per-pixel normalised features: an inside similarity is a cosine times 9 / (3 + 1e-5)^2.
    assert float(guidance.similarities[0].abs().max()) <= 9 / (3 + 1e-5) ** 2 + 1e-12


# ---------------------------------------------------------------------------------------------------------
# Evaluation protocol


def test_the_datsr_protocol_prepares_pairs_as_the_official_test_loader() -> None:
    """DATSR's mod_crop cuts to scale * 8 = 32 (C2-Matching's to 4); the metric is C2-Matching's."""
    from refsr.data.standard import prepare_test_sample
    from refsr.eval import get_eval_protocol

    protocol = get_eval_protocol("datsr")
    img = load_photo("astronaut.png")
    hr, ref = img[:203, :241], np.ascontiguousarray(img[30:190, 40:233])
    sample = prepare_test_sample(hr, ref, protocol=protocol.data)
    for name, expected in zip(("hr", "lr", "ref", "ref_down"), official_test_pair(hr, ref, 32)):
        assert np.array_equal(sample[name], expected), name
    assert sample["hr"].shape == (192, 224, 3) and sample["lr"].shape == (48, 56, 3)
    def scoring(metric):
        return metric.y_channel, metric.y_weights, metric.y_divisor, metric.crop_border, metric.round_uint8

    assert scoring(protocol.metric) == scoring(get_eval_protocol("c2").metric) and protocol.metric.crop_border == 4


# ---------------------------------------------------------------------------------------------------------
# Swin pieces


def test_shifted_window_mask_is_the_official_calculate_mask() -> None:
    for h, w, ws in ((16, 24, 8), (8, 12, 4), (6, 4, 2)):
        torch.testing.assert_close(shifted_window_mask(h, w, ws, ws // 2), calculate_mask(h, w, ws, ws // 2))


def test_drop_path_is_stochastic_depth_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 3)
    drop = DropPath(0.25)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    kept = out[:, 0] != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / 0.75)) and 0.7 < float(kept.float().mean()) < 0.8


# ---------------------------------------------------------------------------------------------------------
# Sizes, training, golden output


def tiny_model(dtype=torch.float32, seed=0, **config) -> DATSR:
    model = DATSR(**{**TINY, **config})
    return seeded(model, seed).to(dtype).eval()


def test_sizes_follow_the_window() -> None:
    model = tiny_model()
    assert model.size_rule.lr_multiple == 4 and model.working_size((8, 12), (40, 30)) == (48, 48)
    with torch.no_grad():
        sr = model(torch.rand(1, 3, 8, 12), torch.rand(1, 3, 40, 30))
    assert sr.shape == (1, 3, 32, 48)
    with pytest.raises(RefsrError, match="divide by 4"):
        model(torch.rand(1, 3, 6, 8), torch.rand(1, 3, 32, 32))
    assert refsr.create_model("datsr-lite").size_rule.lr_multiple == 8


def test_gradients_reach_the_restoration_net_only() -> None:
    model = tiny_model(drop_path_rate=0.0).train()  # stochastic depth would zero some branches' gradients
    lq, _, ref_t = loader_pair(*photo_pair(), dtype=torch.float32)
    model(lq, ref_t).square().mean().backward()
    silent = [n for n, p in model.restoration.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not silent
    assert all(p.grad is None for p in model.correspondence_extractor.parameters())
    assert all(p.grad is None for p in model.texture_extractor.parameters())


def test_upscale_runs_the_lite_model_on_odd_sizes() -> None:
    img = load_photo("coffee.png")
    torch.manual_seed(0)
    out = refsr.upscale(img[:11, :13], img[:40, :50], model=refsr.create_model("datsr-lite").eval())
    assert out.shape == (44, 52, 3) and out.dtype == np.uint8


def test_golden_output_of_a_tiny_configuration() -> None:
    model = tiny_model(torch.float64, seed=2022)
    lq, _, ref_t = loader_pair(*photo_pair((32, 32)))
    with torch.no_grad():
        sr = model(lq, ref_t)
    assert sr.shape == (1, 3, 32, 32)
    check_golden(GOLDEN, sr, 1e-5)


def test_lite_config_validates() -> None:
    from refsr.eval import get_eval_protocol
    from refsr.train.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "datsr-lite.yaml")
    # Validation under DATSR's test loader (AMSA's size rule; the metric is the same crop-4 Y).
    assert cfg.model.name == "datsr-lite" and cfg.data.val.protocol == get_eval_protocol("datsr").data == "amsa"


if __name__ == "__main__":
    # Writes tests/assets/keys/DATSR_SwinUnetv3RestorationNet.txt from official_shapes (the official test config).
    shapes = official_shapes(**OFFICIAL)
    lines = [f"{k} {s}" for k, s in shapes.items()]
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("relative_position_index", "attn_mask")))
    lines.append(f"# state_dict entries: {len(shapes)}; parameters: {params}; buffers: relative_position_index, "
                 "attn_mask (img_size 160/80/40); from datsr/models/archs/swin_unetv3_ref_restoration_arch.py "
                 "@ 32240b5")
    (KEYS / f"{KEY_LIST}.txt").write_text("\n".join(lines) + "\n")
