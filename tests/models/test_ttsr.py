"""TTSR: parameter count and keys, conversion of official and MMagic checkpoints, the converted model against a
literal re-implementation of the official forward (float64), sizes, training, golden output."""

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
    one_thread,
    random_state,
    read_keys,
    residual_blocks,
    seeded,
)
from PIL import Image

import refsr
from refsr.errors import RefsrError
from refsr.models.ttsr import (
    MAIN_NET_PARAMETERS,
    OFFICIAL_PARAMETERS,
    TTSR,
    convert_official_ttsr,
    official_key,
)

GOLDEN = Path(__file__).parent / "golden" / "ttsr_tiny.safetensors"
TINY = dict(nf=6, num_res_blocks=(1, 2, 1, 1))
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)


def official_shapes(nf: int, blocks, lte_copy: bool = False) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official ``TTSR`` (``MainNet`` + ``LTE`` [+ ``LTE_copy``]), from the __init__s."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_shape(name, cin, cout, k=3):
        shapes[name + ".weight"] = (cout, cin, k, k)
        shapes[name + ".bias"] = (cout,)

    def rbs(prefix, n):
        for i in range(n):
            conv_shape(f"{prefix}.{i}.conv1", nf, nf)
            conv_shape(f"{prefix}.{i}.conv2", nf, nf)

    m = "MainNet."
    conv_shape(m + "SFE.conv_head", 3, nf)
    rbs(m + "SFE.RBs", blocks[0])
    conv_shape(m + "SFE.conv_tail", nf, nf)
    conv_shape(m + "conv11_head", 256 + nf, nf)
    rbs(m + "RB11", blocks[1])
    conv_shape(m + "conv11_tail", nf, nf)
    conv_shape(m + "conv12", nf, 4 * nf)
    conv_shape(m + "conv22_head", 128 + nf, nf)
    conv_shape(m + "ex12.conv12", nf, nf, 1)
    conv_shape(m + "ex12.conv21", nf, nf)
    conv_shape(m + "ex12.conv_merge1", 2 * nf, nf)
    conv_shape(m + "ex12.conv_merge2", 2 * nf, nf)
    rbs(m + "RB21", blocks[2])
    rbs(m + "RB22", blocks[2])
    conv_shape(m + "conv21_tail", nf, nf)
    conv_shape(m + "conv22_tail", nf, nf)
    conv_shape(m + "conv23", nf, 4 * nf)
    conv_shape(m + "conv33_head", 64 + nf, nf)
    for name in ("conv12", "conv13", "conv23"):
        conv_shape(m + "ex123." + name, nf, nf, 1)
    for name in ("conv21", "conv31_1", "conv31_2", "conv32"):
        conv_shape(m + "ex123." + name, nf, nf)
    for i in (1, 2, 3):
        conv_shape(m + f"ex123.conv_merge{i}", 3 * nf, nf)
    for i in (1, 2, 3):
        rbs(m + f"RB3{i}", blocks[3])
    for i in (1, 2, 3):
        conv_shape(m + f"conv3{i}_tail", nf, nf)
    conv_shape(m + "merge_tail.conv13", nf, nf, 1)
    conv_shape(m + "merge_tail.conv23", nf, nf, 1)
    conv_shape(m + "merge_tail.conv_merge", 3 * nf, nf)
    conv_shape(m + "merge_tail.conv_tail1", nf, nf // 2)
    conv_shape(m + "merge_tail.conv_tail2", nf // 2, 3, 1)
    for lte in ("LTE", "LTE_copy") if lte_copy else ("LTE",):
        for name, cin, cout in (("slice1.0", 3, 64), ("slice2.2", 64, 64), ("slice2.5", 64, 128),
                                ("slice3.7", 128, 128), ("slice3.10", 128, 256)):
            conv_shape(f"{lte}.{name}", cin, cout)
        conv_shape(f"{lte}.sub_mean", 3, 3, 1)
    return shapes


def official_state(nf=6, blocks=(1, 2, 1, 1), seed=0, lte_copy=False) -> dict[str, torch.Tensor]:
    state = random_state(official_shapes(nf, blocks, lte_copy), seed)
    for lte in ("LTE", "LTE_copy") if lte_copy else ("LTE",):  # MeanShift: frozen ImageNet constants
        state[f"{lte}.sub_mean.weight"] = torch.diag(1 / STD).view(3, 3, 1, 1)
        state[f"{lte}.sub_mean.bias"] = -MEAN / STD
    return state


def to_mmagic(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in MMagic's TTSR layout (``TTSRNet`` names from mmagic/models/editors/ttsr)."""
    fixed = {
        "SFE.conv_head": "sfe.conv_first", "SFE.conv_tail": "sfe.conv_last", "conv11_head": "conv_first1",
        "conv11_tail": "conv_last1", "conv12": "up1.upsample_conv", "conv22_head": "conv_first2",
        "ex12.conv12": "csfi2.conv1to2", "ex12.conv21": "csfi2.conv2to1", "ex12.conv_merge1": "csfi2.conv_merge1",
        "ex12.conv_merge2": "csfi2.conv_merge2", "conv21_tail": "conv_last2_1", "conv22_tail": "conv_last2_2",
        "conv23": "up2.upsample_conv", "conv33_head": "conv_first3", "ex123.conv12": "csfi3.conv1to2",
        "ex123.conv13": "csfi3.conv1to4", "ex123.conv21": "csfi3.conv2to1", "ex123.conv23": "csfi3.conv2to4",
        "ex123.conv31_1": "csfi3.conv4to1_1", "ex123.conv31_2": "csfi3.conv4to1_2", "ex123.conv32": "csfi3.conv4to2",
        "ex123.conv_merge1": "csfi3.conv_merge1", "ex123.conv_merge2": "csfi3.conv_merge2",
        "ex123.conv_merge3": "csfi3.conv_merge4", "conv31_tail": "conv_last3_1", "conv32_tail": "conv_last3_2",
        "conv33_tail": "conv_last3_3", "merge_tail.conv13": "merge_features.conv1to4",
        "merge_tail.conv23": "merge_features.conv2to4", "merge_tail.conv_merge": "merge_features.conv_merge",
        "merge_tail.conv_tail1": "merge_features.conv_last1", "merge_tail.conv_tail2": "merge_features.conv_last2",
    }
    blocks = {"SFE.RBs": "sfe.body", "RB11": "res_block1", "RB21": "res_block2_1", "RB22": "res_block2_2",
              "RB31": "res_block3_1", "RB32": "res_block3_2", "RB33": "res_block3_3"}
    out = {}
    for key, value in state.items():
        if key.startswith("LTE.sub_mean."):
            out["extractor.img_normalize." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("LTE."):
            out["extractor." + key[len("LTE."):]] = value
        else:
            module, kind = key[len("MainNet."):].rsplit(".", 1)
            for official, mmagic in blocks.items():
                if module.startswith(official + "."):
                    module = mmagic + module[len(official):]
                    break
            else:
                module = fixed[module]
            out[f"generator.{module}.{kind}"] = value
    return out


def official_forward(sd, lr, lrsr, ref, refsr):
    """``TTSR.forward`` (model/TTSR.py, LTE.py, SearchTransfer.py, MainNet.py) on [-1, 1] images."""
    relu = F.relu

    def bicubic(x, factor):
        return F.interpolate(x, scale_factor=factor, mode="bicubic")

    def lte(x):
        x = conv(sd, x, "LTE.sub_mean")
        lv1 = relu(conv(sd, x, "LTE.slice1.0"))
        x = F.max_pool2d(relu(conv(sd, lv1, "LTE.slice2.2")), 2, 2)
        lv2 = relu(conv(sd, x, "LTE.slice2.5"))
        x = F.max_pool2d(relu(conv(sd, lv2, "LTE.slice3.7")), 2, 2)
        return lv1, lv2, relu(conv(sd, x, "LTE.slice3.10"))

    _, _, lrsr_lv3 = lte((lrsr + 1.0) / 2.0)
    _, _, refsr_lv3 = lte((refsr + 1.0) / 2.0)
    ref_lv1, ref_lv2, ref_lv3 = lte((ref + 1.0) / 2.0)
    # SearchTransfer
    q = F.normalize(F.unfold(lrsr_lv3, 3, padding=1), dim=1)
    k = F.normalize(F.unfold(refsr_lv3, 3, padding=1).permute(0, 2, 1), dim=2)
    star, arg = torch.max(torch.bmm(k, q), dim=1)
    h, w = lrsr_lv3.shape[-2:]

    def hard(value, size, kernel, padding, stride):
        columns = F.unfold(value, kernel, padding=padding, stride=stride)
        taken = torch.gather(columns, 2, arg.view(arg.shape[0], 1, -1).expand(-1, columns.shape[1], -1))
        return F.fold(taken, size, kernel, padding=padding, stride=stride) / 9.0

    t_lv3 = hard(ref_lv3, (h, w), 3, 1, 1)
    t_lv2 = hard(ref_lv2, (2 * h, 2 * w), 6, 2, 2)
    t_lv1 = hard(ref_lv1, (4 * h, 4 * w), 12, 4, 4)
    s = star.view(star.shape[0], 1, h, w)
    # MainNet
    m = "MainNet."
    x = relu(conv(sd, lr, m + "SFE.conv_head"))
    x = conv(sd, residual_blocks(sd, x, m + "SFE.RBs"), m + "SFE.conv_tail") + x
    x11 = x + conv(sd, torch.cat((x, t_lv3), 1), m + "conv11_head") * s
    x11 = x11 + conv(sd, residual_blocks(sd, x11, m + "RB11"), m + "conv11_tail")
    x21 = x11
    x22 = relu(F.pixel_shuffle(conv(sd, x11, m + "conv12"), 2))
    x22 = x22 + conv(sd, torch.cat((x22, t_lv2), 1), m + "conv22_head") * bicubic(s, 2)
    x12 = relu(conv(sd, bicubic(x21, 2), m + "ex12.conv12"))
    x21_ = relu(conv(sd, x22, m + "ex12.conv21", stride=2))
    r21 = relu(conv(sd, torch.cat((x21, x21_), 1), m + "ex12.conv_merge1"))
    r22 = relu(conv(sd, torch.cat((x22, x12), 1), m + "ex12.conv_merge2"))
    x21 = x21 + conv(sd, residual_blocks(sd, r21, m + "RB21"), m + "conv21_tail")
    x22 = x22 + conv(sd, residual_blocks(sd, r22, m + "RB22"), m + "conv22_tail")
    x31, x32 = x21, x22
    x33 = relu(F.pixel_shuffle(conv(sd, x22, m + "conv23"), 2))
    x33 = x33 + conv(sd, torch.cat((x33, t_lv1), 1), m + "conv33_head") * bicubic(s, 4)
    e = m + "ex123."
    x12 = relu(conv(sd, bicubic(x31, 2), e + "conv12"))
    x13 = relu(conv(sd, bicubic(x31, 4), e + "conv13"))
    x21_ = relu(conv(sd, x32, e + "conv21", stride=2))
    x23 = relu(conv(sd, bicubic(x32, 2), e + "conv23"))
    x31_ = relu(conv(sd, relu(conv(sd, x33, e + "conv31_1", stride=2)), e + "conv31_2", stride=2))
    x32_ = relu(conv(sd, x33, e + "conv32", stride=2))
    r31 = relu(conv(sd, torch.cat((x31, x21_, x31_), 1), e + "conv_merge1"))
    r32 = relu(conv(sd, torch.cat((x32, x12, x32_), 1), e + "conv_merge2"))
    r33 = relu(conv(sd, torch.cat((x33, x13, x23), 1), e + "conv_merge3"))
    x31 = x31 + conv(sd, residual_blocks(sd, r31, m + "RB31"), m + "conv31_tail")
    x32 = x32 + conv(sd, residual_blocks(sd, r32, m + "RB32"), m + "conv32_tail")
    x33 = x33 + conv(sd, residual_blocks(sd, r33, m + "RB33"), m + "conv33_tail")
    t = m + "merge_tail."
    x13 = relu(conv(sd, bicubic(x31, 4), t + "conv13"))
    x23 = relu(conv(sd, bicubic(x32, 2), t + "conv23"))
    x = relu(conv(sd, torch.cat((x33, x13, x23), 1), t + "conv_merge"))
    return torch.clamp(conv(sd, conv(sd, x, t + "conv_tail1"), t + "conv_tail2"), -1, 1)


def official_inputs(hr: np.ndarray, ref: np.ndarray):
    """dataset/cufed.py's TestSet: LR, LR_sr, Ref, Ref_sr in [-1, 1] (float64), and our [0, 1] LR and Ref."""
    h, w = hr.shape[:2]
    h2, w2 = ref.shape[:2]
    lr = np.array(Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC))
    lr_sr = np.array(Image.fromarray(lr).resize((w, h), Image.BICUBIC))
    ref_sr = np.array(Image.fromarray(ref).resize((w2 // 4, h2 // 4), Image.BICUBIC))
    ref_sr = np.array(Image.fromarray(ref_sr).resize((w2, h2), Image.BICUBIC))

    def tensor(image, to_unit=False):
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
        return t / 255 if to_unit else t / 127.5 - 1.0

    return [tensor(x) for x in (lr, lr_sr, ref, ref_sr)], (tensor(lr, True), tensor(ref, True))


def photo_pair(hr_size=(32, 28), ref_size=(40, 36)):
    img = load_photo("coffee.png")
    h, w = hr_size
    rh, rw = ref_size
    return img[30 : 30 + h, 40 : 40 + w], np.ascontiguousarray(img[25 : 25 + rh, 52 : 52 + rw])


# ---------------------------------------------------------------------------------------------------------
# Architecture and conversion


def test_parameter_counts_and_keys_match_the_official_lists() -> None:
    full, saved = read_keys("TTSR_full_incl_LTE_copy"), read_keys("TTSR_as_saved")
    count = sum(int(np.prod(s)) for s in full.values())
    assert count == OFFICIAL_PARAMETERS == 7_284_955
    assert full == official_shapes(64, (16, 16, 8, 4), lte_copy=True)
    assert saved == {k: s for k, s in full.items() if not k.startswith("LTE_copy.")}
    with torch.device("meta"):
        model = TTSR()
    ours = {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    # Ours: the released layout without the LTE's frozen normalisation conv (constants here).
    assert ours == {k: s for k, s in saved.items() if not k.startswith("LTE.sub_mean.")}
    assert sum(p.numel() for p in model.restoration.parameters()) == MAIN_NET_PARAMETERS == 6_174_275
    total = sum(p.numel() for p in model.parameters())
    lte_copy = sum(int(np.prod(s)) for k, s in full.items() if k.startswith("LTE_copy."))
    assert total == 6_729_603 and total + lte_copy + 12 == OFFICIAL_PARAMETERS
    assert all(p.requires_grad for p in model.texture_extractor.parameters())


@pytest.mark.parametrize("layout", ["official", "official-with-copy", "mmagic"])
def test_official_and_mmagic_checkpoints_convert_to_the_same_weights(layout) -> None:
    state = official_state(seed=1, lte_copy=layout == "official-with-copy")
    source = to_mmagic(state) if layout == "mmagic" else state
    if layout == "mmagic":  # MMagic's training-only parts are dropped
        source["extractor_copy.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
        source["discriminator.conv0.weight"] = torch.zeros(1)
    converted = refsr.convert_official("ttsr", source)
    model = TTSR(**TINY)
    assert converted.keys() == model.state_dict().keys()
    for ours, value in converted.items():
        assert torch.equal(value, state[official_key(ours)]), ours


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("MainNet.RB11.1.conv2.bias"), "missing keys: MainNet.RB11.1.conv2.bias"),
        (lambda s: s.pop("LTE.slice3.10.weight"), "missing keys: LTE.slice3.10.weight"),
        (lambda s: s.update({"MainNet.extra.weight": torch.zeros(1)}), "unexpected keys: MainNet.extra.weight"),
        (lambda s: s.update({"MainNet.conv12.weight": torch.zeros(24, 6, 1, 1)}), "wrong shapes: MainNet.conv12"),
        (lambda s: s["LTE.sub_mean.bias"].mul_(2), "ImageNet normalisation"),
        (lambda s: s.clear(), "empty"),
    ],
)
def test_bad_checkpoints_are_rejected_clearly(edit, message) -> None:
    state = official_state()
    edit(state)
    with pytest.raises(RefsrError, match=message.replace(".", r"\.")):
        convert_official_ttsr(state)


def test_create_model_and_refsr_convert_take_an_official_checkpoint(tmp_path) -> None:
    from refsr.cli import main as cli_main

    state = official_state(seed=2)
    torch.save(state, tmp_path / "TTSR.pt")
    model = refsr.create_model("ttsr", weights=str(tmp_path / "TTSR.pt"), **TINY)
    assert torch.equal(model.restoration.stage3.cross.x4_to_x1[1].weight,
                       state["MainNet.ex123.conv31_2.weight"].float())
    assert not model.training
    out = tmp_path / "t.safetensors"
    assert cli_main(["convert", "--from", "ttsr", str(tmp_path / "TTSR.pt"), "-o", str(out)]) == 0
    converted = refsr.create_model("ttsr", weights=str(out), **TINY)
    assert torch.equal(converted.restoration.out2.bias, state["MainNet.merge_tail.conv_tail2.bias"].float())


# ---------------------------------------------------------------------------------------------------------
# The converted model against the official forward


@pytest.mark.parametrize("hr_size, ref_size", [((32, 28), (40, 36)), ((24, 36), (24, 36))])
def test_converted_model_reproduces_the_official_forward(hr_size, ref_size) -> None:
    state = official_state(seed=3)
    model = TTSR(**TINY).double().eval()
    model.load_state_dict(convert_official_ttsr(state), strict=True)
    official, (lr, ref) = official_inputs(*photo_pair(hr_size, ref_size))
    expected = (official_forward(state, *official) + 1.0) / 2.0
    with torch.no_grad():
        got = model(lr, ref)
        with_ref_down = model(lr, ref, ref_down=model.make_ref_down(ref))
    assert got.shape == expected.shape == (1, 3, *hr_size)
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative < 1e-9, relative
    assert torch.equal(got, with_ref_down)


def test_soft_attention_is_the_official_relevance() -> None:
    state = official_state(seed=4)
    model = TTSR(**TINY).double().eval()
    model.load_state_dict(convert_official_ttsr(state))
    _, (lr, ref) = official_inputs(*photo_pair())
    with torch.no_grad():
        _, corr = model(lr, ref, return_correspondence=True)
        query, key, _ = model.encode(lr, ref)
    q = F.normalize(F.unfold(query, 3, padding=1), dim=1)
    k = F.normalize(F.unfold(key, 3, padding=1).permute(0, 2, 1), dim=2)
    star, arg = torch.bmm(k, q).max(dim=1)
    assert torch.equal(corr.index.flatten(1), arg)
    torch.testing.assert_close(corr.score.flatten(1), star, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Evaluation protocol


def test_the_ttsr_protocol_prepares_pairs_as_the_official_test_loader() -> None:
    """dataset/cufed.py's TestSet: HR and Ref cut to multiples of 4 (top-left), no padding; LR and Ref↓ PIL
    bicubic ÷4. The metric: Y with TTSR's /256 coefficients, no border crop."""
    from refsr.data.standard import prepare_test_sample
    from refsr.eval import get_eval_protocol

    protocol = get_eval_protocol("ttsr")
    img = load_photo("astronaut.png")
    hr, ref = img[:203, :241], np.ascontiguousarray(img[30:190, 40:233])
    sample = prepare_test_sample(hr, ref, protocol=protocol.data)
    gt, cut_ref = hr[:200, :240], ref[:160, :192]
    expected = {"hr": gt, "lr": np.array(Image.fromarray(gt).resize((60, 50), Image.BICUBIC)), "ref": cut_ref,
                "ref_down": np.array(Image.fromarray(cut_ref).resize((48, 40), Image.BICUBIC))}
    for name, value in expected.items():
        assert np.array_equal(sample[name], value), name
    metric = protocol.metric
    assert (metric.crop_border, metric.y_divisor, metric.y_weights) == (0, 256.0, (65.738, 129.057, 25.064))


# ---------------------------------------------------------------------------------------------------------
# Sizes, training, golden output


def tiny_model(dtype=torch.float32, seed=0) -> TTSR:
    model = TTSR(**TINY)
    return seeded(model, seed).to(dtype).eval()


@pytest.mark.parametrize(
    "args, what",
    [((torch.rand(1, 3, 8, 8), torch.rand(1, 3, 30, 32)), "divide by 4"),
     ((torch.rand(1, 1, 8, 8), torch.rand(1, 3, 32, 32)), "RGB tensor"),
     ((torch.rand(2, 3, 8, 8), torch.rand(1, 3, 32, 32)), "same number")],
)
def test_bad_inputs_get_a_clear_error(args, what) -> None:
    with pytest.raises(RefsrError, match=what):
        tiny_model()(*args)
    with pytest.raises(RefsrError, match="ref_down"):
        tiny_model()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32), ref_down=torch.rand(1, 3, 4, 8))


def test_gradients_reach_the_main_net_and_the_texture_extractor() -> None:
    model = tiny_model().train()
    _, (lr, ref) = official_inputs(*photo_pair())
    model(lr.float(), ref.float()).square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not silent


def test_output_is_an_image_in_the_unit_range_and_upscale_runs_the_lite_model() -> None:
    model = tiny_model()
    with torch.no_grad():
        sr = model(torch.rand(1, 3, 5, 7), torch.rand(1, 3, 20, 24))
    assert sr.shape == (1, 3, 20, 28) and float(sr.min()) >= 0 and float(sr.max()) <= 1
    img = load_photo("chelsea.png")
    torch.manual_seed(0)
    out = refsr.upscale(img[:11, :13], img[:37, :50], model=refsr.create_model("ttsr-lite").eval())
    assert out.shape == (44, 52, 3) and out.dtype == np.uint8


def test_golden_output_of_a_tiny_configuration() -> None:
    # Seeded weights: the VGG part alone makes stored weights too large for a golden file.
    model = tiny_model(torch.float64, seed=2020)
    _, (lr, ref) = official_inputs(*photo_pair())
    with torch.no_grad():
        sr = model(lr, ref)
    assert sr.shape == (1, 3, 32, 28)
    check_golden(GOLDEN, sr, 1e-6)


def test_lite_config_validates() -> None:
    from refsr.train.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / "ttsr-lite.yaml")
    assert cfg.model.name == "ttsr-lite" and cfg.data.val.protocol == "ttsr"
