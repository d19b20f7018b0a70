"""C2-Matching: parameter count and keys, conversion of the official checkpoints, the whole converted model
against a literal re-implementation of the official pipeline (float64), sizes, training, golden output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_photo
from official_pipelines import (  # noqa: F401 (one_thread: an autouse fixture)
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
from refsr.models.amsa import RestorationNet, official_key
from refsr.models.c2_matching import RESTORATION_PARAMETERS, C2Matching, convert_official_c2_matching

GOLDEN = Path(__file__).parent / "golden" / "c2_matching_tiny.safetensors"
TINY = dict(ngf=8, n_blocks=1, groups=2)
_BUFFERS = ("feature_extraction_image1.", "feature_extraction_image2.", "vgg.")


def official_restoration_shapes(ngf: int, n_blocks: int, groups: int) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the official ``RestorationNet(ngf, n_blocks, groups)``, from its ``__init__``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_shape(name, cin, cout):
        shapes[name + ".weight"] = (cout, cin, 3, 3)
        shapes[name + ".bias"] = (cout,)

    def blocks(prefix):
        for i in range(n_blocks):
            conv_shape(f"{prefix}.{i}.conv1", ngf, ngf)
            conv_shape(f"{prefix}.{i}.conv2", ngf, ngf)

    conv_shape("content_extractor.conv_first", 3, ngf)
    blocks("content_extractor.body")
    p = "dyn_agg_restore."
    for level, c in (("small", 256), ("medium", 128), ("large", 64)):
        conv_shape(f"{p}{level}_offset_conv1", ngf + c, c)
        conv_shape(f"{p}{level}_offset_conv2", c, c)
        conv_shape(f"{p}{level}_dyn_agg", c, c)
        conv_shape(f"{p}{level}_dyn_agg.conv_offset_mask", c, groups * 27)
        conv_shape(f"{p}head_{level}.0", ngf + c, ngf)
        blocks(f"{p}body_{level}")
        if level == "large":
            conv_shape(f"{p}tail_large.0", ngf, ngf // 2)
            conv_shape(f"{p}tail_large.2", ngf // 2, 3)
        else:
            conv_shape(f"{p}tail_{level}.0", ngf, 4 * ngf)
    return shapes


def official_state(ngf=8, n_blocks=1, groups=2, seed=0) -> dict[str, torch.Tensor]:
    """A complete official file set (restoration net, feature_extraction.pth, net_map's VGG), random values."""
    shapes = {**official_restoration_shapes(ngf, n_blocks, groups),
              **read_keys("C2Matching_ContrasExtractorSep"), **read_keys("C2Matching_CorrespondenceGenerationArch")}
    shapes = {k: s for k, s in shapes.items() if not k.endswith((".mean", ".std"))}
    return with_imagenet_buffers(random_state(shapes, seed), _BUFFERS)


def official_restoration(sd, lr, pre_offset, textures, groups):
    """``RestorationNet.forward`` of ref_restoration_arch.py."""
    def lrelu(x):
        return F.leaky_relu(x, 0.1)

    base = F.interpolate(lr, None, 4, "bilinear", False)
    x = residual_blocks(sd, lrelu(conv(sd, lr, "content_extractor.conv_first")), "content_extractor.body")
    p = "dyn_agg_restore."
    for level, layer in (("small", "relu3_1"), ("medium", "relu2_1"), ("large", "relu1_1")):
        feat = textures[layer]
        off = lrelu(conv(sd, torch.cat([x, feat], 1), f"{p}{level}_offset_conv1"))
        off = lrelu(conv(sd, off, f"{p}{level}_offset_conv2"))
        swapped = lrelu(dcn_pre_multi_offset(sd, feat, off, pre_offset[layer], f"{p}{level}_dyn_agg", groups))
        h = lrelu(conv(sd, torch.cat([x, swapped], 1), f"{p}head_{level}.0"))
        h = residual_blocks(sd, h, f"{p}body_{level}") + x
        if level == "large":
            x = conv(sd, lrelu(conv(sd, h, f"{p}tail_large.0")), f"{p}tail_large.2")
        else:
            x = lrelu(F.pixel_shuffle(conv(sd, h, f"{p}tail_{level}.0"), 2))
    return x + base


def photo_pair(hr_size=(32, 40)):
    """An HR crop and a shifted Ref crop of one size (the official pipeline needs one size), uint8."""
    img = load_photo("astronaut.png")
    h, w = hr_size
    return img[20 : 20 + h, 30 : 30 + w], img[26 : 26 + h, 41 : 41 + w]


# ---------------------------------------------------------------------------------------------------------
# Architecture and conversion


def test_restoration_net_has_the_official_parameter_count_keys_and_shapes() -> None:
    with torch.device("meta"):
        net = RestorationNet(64, 16, 8, prewarp=False)
    assert sum(p.numel() for p in net.parameters()) == RESTORATION_PARAMETERS == 8_865_547
    ours = {official_key("restoration." + k): tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == read_keys("C2Matching_RestorationNet") == official_restoration_shapes(64, 16, 8)
    with torch.device("meta"):
        model = C2Matching()
    assert sum(p.numel() for p in model.correspondence_extractor.parameters()) == 1_110_656
    assert sum(p.numel() for p in model.texture_extractor.parameters()) == 555_328
    assert all(p.requires_grad for p in model.restoration.parameters())
    assert not any(p.requires_grad for p in model.correspondence_extractor.parameters())
    assert not any(p.requires_grad for p in model.texture_extractor.parameters())


def test_full_official_file_set_converts_and_loads_strictly() -> None:
    state = official_state(64, 16, 8)
    converted = refsr.convert_official("c2-matching", {"module." + k: v for k, v in state.items()})
    with torch.device("meta"):
        expected = C2Matching().state_dict()
    assert converted.keys() == expected.keys()
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in expected.items())
    assert torch.equal(converted["restoration.relu2.aggregate.conv_offset_mask.bias"],
                       state["dyn_agg_restore.medium_dyn_agg.conv_offset_mask.bias"])
    assert torch.equal(converted["texture_extractor.conv3_1.weight"], state["vgg.vgg_net.conv3_1.weight"])
    assert torch.equal(converted["correspondence_extractor.ref_branch.conv2_2.bias"],
                       state["feature_extraction_image2.model.conv2_2.bias"])
    # The restoration file alone converts to its own part.
    alone = convert_official_c2_matching({k: v for k, v in state.items() if k.startswith(("content", "dyn_agg"))})
    assert alone and all(k.startswith("restoration.") for k in alone)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("dyn_agg_restore.body_large.0.conv2.bias"), "missing keys: dyn_agg_restore.body_large"),
        (lambda s: s.update({"dyn_agg_restore.small_deform_conv.weight": torch.zeros(256, 256, 3, 3)}),
         "unexpected keys: dyn_agg_restore.small_deform_conv.weight"),  # an AMSA file is not a C2 file
        (lambda s: s.update({"enc.conv_L1.weight": torch.zeros(1)}), "unexpected keys: enc.conv_L1.weight"),
        (lambda s: s.update({"vgg.vgg_net.conv1_1.weight": torch.zeros(64, 3, 5, 5)}),
         "wrong shapes: vgg.vgg_net.conv1_1.weight"),
    ],
)
def test_bad_checkpoints_are_rejected_clearly(edit, message) -> None:
    state = official_state()
    edit(state)
    with pytest.raises(RefsrError, match=message.replace(".", r"\.")):
        convert_official_c2_matching(state)


def test_refsr_convert_and_create_model_take_the_official_files(tmp_path) -> None:
    from safetensors.torch import load_file

    from refsr.cli import main as cli_main

    state = official_state(**TINY, seed=3)
    parts = {
        "c2_matching_restoration_mse.pth": {k: v for k, v in state.items() if k.startswith(("content", "dyn_agg"))},
        "feature_extraction.pth": {k: v for k, v in state.items() if k.startswith("feature_extraction")},
        "vgg.pth": {k: v for k, v in state.items() if k.startswith("vgg.")},
    }
    for name, part in parts.items():
        torch.save(part, tmp_path / name)
    out = tmp_path / "c2.safetensors"
    assert cli_main(["convert", "--from", "c2-matching", *(str(tmp_path / n) for n in parts), "-o", str(out)]) == 0
    converted = load_file(str(out))
    assert converted.keys() == convert_official_c2_matching(state).keys()
    torch.save(state, tmp_path / "merged.pth")
    model = refsr.create_model("c2-matching", weights=str(tmp_path / "merged.pth"), **TINY)
    assert torch.equal(model.restoration.content.conv_first.weight,
                       state["content_extractor.conv_first.weight"].float())
    # The extractors from the user's own files (builder options): feature_extraction.pth and torchvision's VGG19.
    torchvision_layout = {f"features.{i}.{kind}": state[f"vgg.vgg_net.{name}.{kind}"]
                          for i, name in ((0, "conv1_1"), (2, "conv1_2"), (5, "conv2_1"), (7, "conv2_2"),
                                          (10, "conv3_1"))
                          for kind in ("weight", "bias")}
    torch.save(torchvision_layout, tmp_path / "vgg19.pth")
    model = refsr.create_model("c2-matching", extractor_weights=str(tmp_path / "feature_extraction.pth"),
                               vgg_weights=str(tmp_path / "vgg19.pth"), **TINY)
    assert torch.equal(model.texture_extractor.conv1_2.weight, state["vgg.vgg_net.conv1_2.weight"].float())


# ---------------------------------------------------------------------------------------------------------
# The converted model against the official pipeline


def test_converted_model_reproduces_the_official_forward() -> None:
    groups = TINY["groups"]
    state = official_state(**TINY, seed=5)
    model = C2Matching(**TINY).double().eval()
    model.load_state_dict(convert_official_c2_matching(state), strict=True)
    hr, ref = photo_pair((32, 40))
    lq, up, ref_t = loader_pair(hr, ref)
    offsets, _, _, textures = correspondence(state, up, ref_t)
    expected = official_restoration(state, lq, offsets, textures, groups)
    with torch.no_grad():
        got = model(lq, ref_t)
    assert got.shape == expected.shape == (1, 3, 32, 40)
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative < 1e-9, relative


def test_matching_offsets_equal_the_official_ones_batched() -> None:
    """Two different pairs in one batch: the batched matching equals the official per-sample loop."""
    state = official_state(**TINY, seed=6)
    model = C2Matching(**TINY).double().eval()
    model.load_state_dict(convert_official_c2_matching(state))
    pairs = [loader_pair(*photo_pair((24, 28))), loader_pair(*(x[::-1].copy() for x in photo_pair((24, 28))))]
    lq = torch.cat([p[0] for p in pairs])
    ref = torch.cat([p[2] for p in pairs])
    offsets, _, _, _ = correspondence(state, torch.cat([p[1] for p in pairs]), ref)
    ours = model.match(*model.encode(lq, ref))
    for got, name in zip(ours, ("relu3_1", "relu2_1", "relu1_1")):
        pre = offsets[name]  # [b, 9, H, W, 2] (x, y)
        expected = torch.zeros_like(got)
        expected[:, 0::2] = pre[..., 1]
        expected[:, 1::2] = pre[..., 0]
        assert torch.equal(got, expected), name


# ---------------------------------------------------------------------------------------------------------
# Evaluation protocol


def test_the_c2_protocol_prepares_pairs_as_the_official_test_loader() -> None:
    from refsr.data.standard import prepare_test_sample
    from refsr.eval import get_eval_protocol

    protocol = get_eval_protocol("c2")
    img = load_photo("astronaut.png")
    hr, ref = img[:203, :241], np.ascontiguousarray(img[30:190, 40:233])
    sample = prepare_test_sample(hr, ref, protocol=protocol.data)
    for name, expected in zip(("hr", "lr", "ref", "ref_down"), official_test_pair(hr, ref, 4)):
        assert np.array_equal(sample[name], expected), name
    assert (protocol.metric.crop_border, protocol.metric.y_channel, protocol.metric.y_divisor) == (4, True, 255.0)


# ---------------------------------------------------------------------------------------------------------
# Sizes, training, golden output


def tiny_model(dtype=torch.float32, seed=0) -> C2Matching:
    model = C2Matching(**TINY)
    return seeded(model, seed).to(dtype).eval()


def test_sizes_are_padded_to_one_and_cropped_back() -> None:
    model = tiny_model()
    assert model.working_size((10, 12), (37, 60)) == (40, 60)
    lr = torch.rand(1, 3, 10, 12)
    ref = torch.rand(1, 3, 37, 60)
    with torch.no_grad():
        sr = model(lr, ref)
        # The same as padding by hand (LR and Ref zero-padded, bottom/right, to 40x60) and cropping.
        padded = model(F.pad(lr, (0, 3, 0, 0)), F.pad(ref, (0, 0, 0, 3)))
    assert sr.shape == (1, 3, 40, 48)
    torch.testing.assert_close(sr, padded[..., :48])


@pytest.mark.parametrize(
    "lr_shape, ref_shape, what",
    [((1, 3, 2, 8), (1, 3, 32, 32), "at least 3"), ((1, 3, 8, 8), (1, 3, 8, 32), "at least 12"),
     ((1, 1, 8, 8), (1, 3, 32, 32), "RGB tensor"), ((2, 3, 8, 8), (1, 3, 32, 32), "same number")],
)
def test_bad_inputs_get_a_clear_error(lr_shape, ref_shape, what) -> None:
    with pytest.raises(RefsrError, match=what):
        tiny_model()(torch.rand(lr_shape), torch.rand(ref_shape))


def test_gradients_reach_the_restoration_net_only() -> None:
    model = tiny_model().train()
    hr, ref = photo_pair((24, 24))
    lq, _, ref_t = loader_pair(hr, ref, dtype=torch.float32)
    model(lq, ref_t).square().mean().backward()
    missing = [n for n, p in model.restoration.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not missing
    assert all(p.grad is None for p in model.correspondence_extractor.parameters())
    assert all(p.grad is None for p in model.texture_extractor.parameters())
    assert not model.correspondence_extractor.training and not model.texture_extractor.training


def test_upscale_runs_the_lite_model_on_odd_sizes() -> None:
    img = load_photo("chelsea.png")
    torch.manual_seed(0)
    out = refsr.upscale(img[:11, :13], img[:40, :50], model=refsr.create_model("c2-matching-lite").eval())
    assert out.shape == (44, 52, 3) and out.dtype == np.uint8


def test_golden_output_of_a_tiny_configuration() -> None:
    # Seeded weights (the 256-channel DCN and the two VGGs make a stored copy too large for a golden file).
    model = tiny_model(torch.float64, seed=2021)
    hr, ref = photo_pair((32, 32))
    lq, _, ref_t = loader_pair(hr, ref)
    with torch.no_grad():
        sr = model(lq, ref_t)
    assert sr.shape == (1, 3, 32, 32)
    check_golden(GOLDEN, sr, 1e-5)


def test_lite_config_validates() -> None:
    from refsr.train.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "c2-matching-lite.yaml")
    assert cfg.model.name == "c2-matching-lite" and cfg.data.val.protocol == "c2"
