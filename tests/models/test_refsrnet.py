"""RefSR-Net: CC-Net structure and receptive field, SS-Net's Eq. 2, patch bookkeeping, x8 shapes, golden."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import refsr
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.matching.ccnet import upsample_lr
from refsr.matching.correspondence import Correspondence
from refsr.models.refsrnet import CCNet, PredictionModule, RefSRNet, SRResNetNN

GOLDEN = Path(__file__).parent / "golden" / "refsrnet_tiny.safetensors"
TINY = dict(ccnet_channels=(4, 4, 6, 6, 6, 8), ccnet_out_channels=8, sisr_channels=8, sisr_blocks=1,
            hr_channels=(6, 6, 6, 6), fuse_channels=8, search_range=12)


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random values in every parameter and BN buffer (running variances kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.1)
    return model


def photo_pair(lr_size=(8, 16), ref_size=(72, 136), dtype=torch.float64):
    """LR = PIL bicubic /8 of an HR crop of coffee.png; Ref = an overlapping crop of the same photo."""
    from PIL import Image

    img = load_photo("coffee.png")
    hr = img[: 8 * lr_size[0], : 8 * lr_size[1]]
    lr = np.asarray(Image.fromarray(hr).resize((lr_size[1], lr_size[0]), Image.BICUBIC))
    ref = img[5 : 5 + ref_size[0], 9 : 9 + ref_size[1]]

    def tensor(a):
        return torch.tensor(np.ascontiguousarray(a)).permute(2, 0, 1)[None].to(dtype) / 255

    return tensor(lr), tensor(ref), tensor(hr)


def tiny(**options) -> RefSRNet:
    torch.manual_seed(0)
    return randomise(RefSRNet(**{**TINY, **options})).double().eval()


# ---------------------------------------------------------------------------------------------------------
# CC-Net


def test_ccnet_follows_table_1() -> None:
    net = CCNet()
    convs = [layer["conv"] for layer in net.layers]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 64, 128]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert all(isinstance(layer["bn"], torch.nn.BatchNorm2d) for layer in net.layers)
    assert net.fc.kernel_size == (1, 1) and net.fc.out_channels == 256
    # Table 1's receptive-field column: 3, 5, 9, 17, 33, 65, 65.
    fields = np.cumsum([0] + [2 * d for d in (1, 1, 2, 4, 8, 16)])[1:] + 1
    assert fields.tolist() == [3, 5, 9, 17, 33, 65] and net.receptive_field == 65
    assert sum(p.numel() for p in net.parameters()) == 204_688


def test_ccnet_receptive_field_is_exactly_65_by_gradient() -> None:
    """The gradient of one output descriptor with respect to the input is non-zero on exactly 65x65 pixels,
    every one of them (the dilations 1,1,2,4,8,16 leave no holes)."""
    net = randomise(CCNet(), seed=1).double().eval()
    x = torch.rand(1, 3, 81, 77, dtype=torch.float64, requires_grad=True)
    out = net(x)
    assert out.shape == (1, 256, 81, 77)
    y0, x0 = 40, 37
    out[0, :, y0, x0].sum().backward()
    support = x.grad.abs().sum(dim=1)[0] > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    assert (rows.min().item(), rows.max().item()) == (y0 - 32, y0 + 32)
    assert (cols.min().item(), cols.max().item()) == (x0 - 32, x0 + 32)
    assert int(support.sum()) == 65 * 65


def test_ccnet_valid_mode_is_the_interior_of_same_mode() -> None:
    net = randomise(CCNet(channels=(4, 4, 4, 4, 4, 4), out_channels=5), seed=2).double().eval()
    x = torch.rand(1, 3, 70, 75, dtype=torch.float64)
    valid = net(x, padding="valid")
    assert valid.shape == (1, 5, 6, 11)
    # Away from the borders zero padding is never reached: the same descriptors.
    torch.testing.assert_close(valid, net(x)[:, :, 32:38, 32:43], rtol=1e-12, atol=1e-12)
    # A 65x65 patch gives one descriptor and a 193x193 window a 129x129 map (Sec. 3).
    assert net(torch.rand(1, 3, 65, 65, dtype=torch.float64), padding="valid").shape[-2:] == (1, 1)


# ---------------------------------------------------------------------------------------------------------
# SS-Net


def literal_eq2(module: PredictionModule, f_lr, f_hr, mask_relu=True):
    """Paper Eq. 2 written out with the module's weights, one scale at a time."""
    def conv(x, c):
        return F.conv2d(x, c.weight, c.bias, padding=1)

    def sp(x, seq):
        return F.pixel_shuffle(conv(x, seq[0]), 2)

    def up(x):
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    act = F.relu if mask_relu else (lambda t: t)
    ml = act(conv(torch.cat([f_lr, f_hr[3]], 1), module.mask3))
    m = torch.sigmoid(ml)
    ff = torch.sigmoid(conv(torch.cat([f_lr, f_hr[3] * m], 1), module.fuse3))
    for k, i in enumerate((2, 1, 0)):
        ml = act(conv(torch.cat([sp(ff, module.subpixel[k]), f_hr[i], up(ml)], 1), module.mask[k]))
        m = torch.sigmoid(ml)
        ff = torch.sigmoid(conv(torch.cat([up(ff), f_hr[i] * m], 1), module.fuse[k]))
    return conv(ff, module.conv_out), m


@pytest.mark.parametrize("mask_relu", [True, False])
def test_prediction_module_is_eq_2(mask_relu) -> None:
    module = randomise(PredictionModule(lr_channels=5, hr_channels=(3, 4, 5, 6), fuse_channels=7,
                                        mask_relu=mask_relu), seed=3).double()
    gen = torch.Generator().manual_seed(4)
    f_lr = torch.randn(2, 5, 8, 8, generator=gen, dtype=torch.float64)
    f_hr = [torch.randn(2, c, s, s, generator=gen, dtype=torch.float64) for c, s in ((3, 64), (4, 32), (5, 16), (6, 8))]
    image, masks = module(f_lr, f_hr)
    expected_image, expected_mask = literal_eq2(module, f_lr, f_hr, mask_relu)
    torch.testing.assert_close(image, expected_image, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(masks[-1], expected_mask, rtol=1e-12, atol=1e-12)
    assert [m.shape[-1] for m in masks] == [8, 16, 32, 64] and all(m.shape[1] == 1 for m in masks)
    # Eq. 2 as written, sig(relu(.)), keeps masks in [0.5, 1); without the ReLU they go below.
    lowest = min(float(m.detach().min()) for m in masks)
    assert (lowest >= 0.5) if mask_relu else (lowest < 0.5)


def test_hr_feature_module_scales() -> None:
    model = RefSRNet(**TINY)
    feats = model.ssnet.hr_features(torch.rand(3, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(3, 6, 64, 64), (3, 6, 32, 32), (3, 6, 16, 16), (3, 6, 8, 8)]


# ---------------------------------------------------------------------------------------------------------
# The whole model


@pytest.mark.parametrize("lr_hw, ref_hw", [((8, 16), (72, 136)), ((13, 19), (90, 161)), ((8, 8), (40, 30))])
def test_shapes_at_x8(lr_hw, ref_hw) -> None:
    model = tiny()
    lr, ref, _ = photo_pair(lr_hw, ref_hw)
    with torch.no_grad():
        sr, corr = model(lr, ref, return_correspondence=True)
    assert sr.shape == (1, 3, 8 * lr_hw[0], 8 * lr_hw[1]) and torch.isfinite(sr).all()
    corners = model.patch_corners(lr_hw)
    rows, cols = corners[:, 0].unique().numel(), corners[:, 1].unique().numel()
    assert corr.index.shape == (1, rows, cols) and int(corr.index.max()) < ref_hw[0] * ref_hw[1]


def test_batch_items_are_independent() -> None:
    model = tiny()
    lr1, ref1, _ = photo_pair((8, 12), (48, 60))
    lr2, ref2 = lr1.flip(-1), ref1.flip(-2)
    with torch.no_grad():
        both = model(torch.cat([lr1, lr2]), torch.cat([ref1, ref2]))
        torch.testing.assert_close(both[1:], model(lr2, ref2), rtol=1e-10, atol=1e-10)


def test_exact_patch_predictions_reassemble_the_hr_image(monkeypatch) -> None:
    """Patch bookkeeping end to end: if SS-Net predicted each patch's true HR pixels, the output would be the
    HR image exactly, borders included, with either fusion (LR 13x19: the last patches sit flush)."""
    lr, ref, _ = photo_pair((13, 19), (90, 161))
    hr = torch.rand(1, 3, 104, 152, dtype=torch.float64)
    for fusion in ("mask-gaussian", "average"):
        model = tiny(fusion=fusion)
        corners = model.patch_corners((13, 19)) * 8

        def oracle(lr_feats, ref_patches):
            n, p = ref_patches.shape[:2]
            truth = torch.stack([hr[:, :, y : y + 64, x : x + 64] for y, x in corners.tolist()], dim=1)
            masks = torch.rand(n, p, 1, 64, 64, dtype=torch.float64) + 0.01
            return truth, masks

        monkeypatch.setattr(model, "synthesise", oracle)
        with torch.no_grad():
            torch.testing.assert_close(model(lr, ref), hr, rtol=0, atol=1e-12)


def test_bicubic_residual_adds_the_upscaled_lr() -> None:
    """residual="bicubic" is the plain network's output plus PyTorch bicubic x8 of the LR, nothing else."""
    lr, ref, _ = photo_pair((13, 19), (90, 161))
    plain, residual = tiny(), tiny(residual="bicubic")
    residual.load_state_dict(plain.state_dict())
    with torch.no_grad():
        expected = plain(lr, ref) + F.interpolate(lr, scale_factor=8, mode="bicubic", align_corners=False)
        torch.testing.assert_close(residual(lr, ref), expected, rtol=0, atol=1e-12)
    assert refsr.create_model("refsrnet-lite").residual == "bicubic"
    assert refsr.create_model("refsrnet").residual == "none"


def test_matching_uses_patch_centres_and_the_search_range() -> None:
    model = tiny()
    lr, ref, _ = photo_pair((12, 16), (100, 140))
    corners = model.patch_corners((12, 16))
    with torch.no_grad():
        corr = model.match(lr, ref, corners)
        query = model.ccnet(upsample_lr(lr, 8))
        key = model.ccnet(ref)
    centres = corners * 8 + 32
    # Scaled to the reference (100x140 against the 96x128 upsampled LR).
    cy = ((centres[:, 0] + 0.5) * 100 / 96).floor().long()
    cx = ((centres[:, 1] + 0.5) * 140 / 128).floor().long()
    for i, (y, x) in enumerate(centres.tolist()):
        q = query[0, :, y, x]
        y0, y1 = max(0, int(cy[i]) - 12), min(100, int(cy[i]) + 13)
        x0, x1 = max(0, int(cx[i]) - 12), min(140, int(cx[i]) + 13)
        scores = torch.einsum("c,chw->hw", q, key[0, :, y0:y1, x0:x1])
        best = int(scores.argmax())
        expected = (y0 + best // (x1 - x0)) * 140 + x0 + best % (x1 - x0)
        assert int(corr.index.view(-1)[i]) == expected


def test_reference_patches_are_crops_around_the_match() -> None:
    model = tiny()
    gen = torch.Generator().manual_seed(5)
    ref = torch.rand(2, 3, 50, 70, generator=gen, dtype=torch.float64)
    coords = torch.tensor([[[0, 0], [49, 69], [20, 33]], [[10, 68], [30, 5], [25, 35]]])
    index = (coords[..., 0] * 70 + coords[..., 1]).view(2, 1, 3)
    corr = Correspondence(index=index, score=torch.zeros(2, 1, 3), key_size=(50, 70))
    patches = model.reference_patches(ref, corr)
    padded = F.pad(ref, (32, 32, 32, 32), mode="replicate")
    for b in range(2):
        for i, (y, x) in enumerate(coords[b].tolist()):
            # The 64x64 crop whose pixel (32, 32) is the matched pixel, borders replicated.
            torch.testing.assert_close(patches[b, i], padded[b, :, y : y + 64, x : x + 64], rtol=0, atol=0)


def test_training_reaches_ss_net_only_and_keeps_frozen_statistics() -> None:
    model = randomise(RefSRNet(**TINY), seed=6).train()
    frozen_stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    lr, ref, hr = (x.float() for x in photo_pair())
    sr = model(lr, ref)
    F.l1_loss(sr, hr).backward()
    for name, p in model.ssnet.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.ccnet.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.lr_features.parameters())
    assert not model.ccnet.training and not model.lr_features.training and model.ssnet.training
    for key, value in model.state_dict().items():
        if "running" in key:
            assert torch.equal(value, frozen_stats[key]), key
    # Unfrozen, the LR trunk trains too.
    free = randomise(RefSRNet(**TINY, freeze_lr_features=False), seed=6).train()
    lr, ref, hr = (x.float() for x in photo_pair((8, 8), (40, 48)))
    F.l1_loss(free(lr, ref), hr).backward()
    assert free.lr_features.conv_first.weight.grad.abs().max() > 0


def test_fusion_modes_differ_and_parameter_counts() -> None:
    lr, ref, _ = photo_pair()
    with torch.no_grad():
        weighted = tiny(fusion="mask-gaussian")(lr, ref)
        averaged = tiny(fusion="average")(lr, ref)
    assert (weighted - averaged).abs().max() > 1e-6
    from refsr.models.refsrnet import refsrnet, refsrnet_lite, srresnet_x8

    with torch.device("meta"):
        models = {"refsrnet": refsrnet(), "refsrnet-lite": refsrnet_lite(), "srresnet-x8": srresnet_x8()}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert counts == {"refsrnet": 2_300_419, "refsrnet-lite": 359_823, "srresnet-x8": 1_364_823}


def test_srresnet_x8_and_loading_the_parts(tmp_path) -> None:
    from safetensors.torch import save_file

    sisr = randomise(SRResNetNN(nf=8, blocks=1), seed=7).eval()
    assert sisr(torch.rand(2, 3, 5, 7)).shape == (2, 3, 40, 56) and sisr.uses_ref is False
    ccnet = randomise(CCNet(channels=TINY["ccnet_channels"], out_channels=8), seed=8)
    save_file({k: v.contiguous() for k, v in sisr.state_dict().items()}, str(tmp_path / "sisr.safetensors"))
    save_file(ccnet.state_dict(), str(tmp_path / "ccnet.safetensors"))
    model = refsr.create_model("refsrnet", **TINY, sisr_weights=str(tmp_path / "sisr.safetensors"),
                               ccnet_weights=str(tmp_path / "ccnet.safetensors"))
    for key, value in sisr.trunk.state_dict().items():
        assert torch.equal(model.lr_features.state_dict()[key], value), key
    for key, value in ccnet.state_dict().items():
        assert torch.equal(model.ccnet.state_dict()[key], value), key
    with pytest.raises(RefsrError, match="do not fit"):
        refsr.create_model("refsrnet", ccnet_weights=str(tmp_path / "ccnet.safetensors"))


def test_size_rule_and_upscale_pads_and_crops() -> None:
    model = tiny().float()
    assert model.size_multiple == 8 and model.size_rule.min_lr == 8 and model.scale == 8
    lr = load_photo("chelsea.png")[:11, :14]
    ref = load_photo("chelsea.png")[:100, :120]
    sr = refsr.upscale(lr, ref, model=model)
    assert sr.shape == (88, 112, 3) and sr.dtype == np.uint8


@pytest.mark.parametrize(
    "lr_shape, ref_shape, what",
    [((1, 3, 7, 16), (1, 3, 64, 64), "at least 8x8"), ((1, 1, 8, 8), (1, 3, 64, 64), "RGB"),
     ((2, 3, 8, 8), (1, 3, 64, 64), "same number")],
)
def test_bad_inputs_get_a_clear_error(lr_shape, ref_shape, what) -> None:
    with pytest.raises(RefsrError, match=what):
        tiny().float()(torch.rand(lr_shape), torch.rand(ref_shape))


@pytest.mark.parametrize("options, what", [({"fusion": "median"}, "fusion"), ({"patch_stride": 0}, "patch_stride"),
                                           ({"ccnet_dilations": (1, 2)}, "dilations"),
                                           ({"fuse_activation": "tanh"}, "fuse_activation"),
                                           ({"residual": "lr"}, "residual")])
def test_bad_options(options, what) -> None:
    with pytest.raises(RefsrError, match=what):
        RefSRNet(**{**TINY, **options})


# ---------------------------------------------------------------------------------------------------------
# Golden output


def test_golden_output() -> None:
    from safetensors.torch import load_file, save_file

    model = tiny(search_range=20)
    lr, ref, _ = photo_pair((8, 12), (72, 100))
    if os.environ.get("REFSR_REGEN_GOLDEN") == "1":
        with torch.no_grad():
            sr = model(lr, ref)
        GOLDEN.parent.mkdir(exist_ok=True)
        tensors = {f"weight.{k}": v.float() for k, v in model.state_dict().items() if v.is_floating_point()}
        save_file({**tensors, "sr": sr.float()}, str(GOLDEN))
    stored = load_file(str(GOLDEN))
    # The weights are stored too (exact in float64), so the golden checks the computation even if PyTorch's
    # random number generator changes.
    weights = {k[len("weight."):]: v.double() for k, v in stored.items() if k.startswith("weight.")}
    model.load_state_dict(weights, strict=False)
    with torch.no_grad():
        sr = model(lr, ref)
    assert sr.shape == stored["sr"].shape == (1, 3, 64, 96)
    assert float((sr - stored["sr"].double()).abs().max()) < 1e-5
