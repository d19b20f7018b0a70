"""SSEN (RefSR and self-similarity frameworks): shapes, gradients, the DCN and non-local primitives against
brute-force references, initial identity sampling, ablation parameter counts, golden output."""

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
from refsr.models.ssen import (
    SSEN,
    NonLocalBlock,
    OffsetEstimator,
    SSENNet,
    SSENSelf,
    embedded_gaussian_attention,
)

GOLDEN = Path(__file__).parent / "golden" / "ssen_tiny.safetensors"
TINY_REF = dict(nf=6, extractor_blocks=1, recon_blocks=1)
TINY_SELF = dict(nf=6, n_groups=2, n_blocks=1, reduction=2)


def photo_pair(lr_size=(16, 24), ref_size=(64, 96), dtype=torch.float32):
    """A real LR (area-downscaled crop of a photo) and an overlapping, shifted crop as the HR-sized Ref."""
    img = torch.tensor(load_photo("astronaut.png")).permute(2, 0, 1)[None].to(dtype) / 255
    hr = img[..., : 4 * lr_size[0], : 4 * lr_size[1]]
    lr = F.avg_pool2d(hr, 4)
    ref = img[..., 8 : 8 + ref_size[0], 12 : 12 + ref_size[1]]
    return lr, ref


def randomise(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Non-zero values everywhere (the zero-initialised offset predictors and W_y would hide their inputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", ["ssen", "ssen-lite", "ssen-self", "ssen-self-lite", "ssen-baseline",
                                  "ssen-baseline-lite", "rcan-lite"])
def test_registered_models_upscale_x4(name: str) -> None:
    model = refsr.create_model(name).eval()
    lr, ref = photo_pair(lr_size=(8, 8), ref_size=(32, 40))  # small: ssen-self is RCAN's 200 blocks
    with torch.no_grad():
        sr = model(lr, ref if model.uses_ref else None)
    assert model.scale == 4
    assert sr.shape == (1, 3, 32, 32) and sr.dtype == torch.float32
    assert torch.isfinite(sr).all()
    # At initialisation the output stays near the bicubic LR↑ of the global skip (RCAN: the mean shift).
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
    assert float((sr - bicubic).abs().mean()) < 0.5


def test_reference_of_another_size_is_resized_and_batches_work() -> None:
    torch.manual_seed(0)
    model = randomise(SSENNet(**TINY_REF)).eval()
    lr = torch.rand(2, 3, 8, 16)
    with torch.no_grad():
        sr = model(lr, torch.rand(2, 3, 50, 37))
        # The same Ref at exactly 4h x 4w is used as it is; resizing it first gives the same result.
        ref = torch.rand(2, 3, 45, 70)
        resized = F.interpolate(ref, size=(32, 64), mode="bicubic", align_corners=False, antialias=True)
        torch.testing.assert_close(model(lr, ref), model(lr, resized))
        # Each image of a batch is computed on its own.
        torch.testing.assert_close(model(lr[1:], ref[1:]), model(lr, ref)[1:])
    assert sr.shape == (2, 3, 32, 64)


def test_return_offsets_gives_one_field_per_layer_and_starts_as_identity_sampling() -> None:
    model = SSENNet(**TINY_REF, num_dcn_layers=2).eval()
    lr, ref = photo_pair()
    with torch.no_grad():
        sr, trace = model(lr, ref, return_offsets=True)
        assert torch.equal(sr, model(lr, ref))
    assert len(trace) == 2
    for offset, mask in trace:
        assert offset.shape == (1, 18, 16, 24) and mask.shape == (1, 9, 16, 24)
        # The zero-initialised predictors: no offset, every modulation scalar sigmoid(0).
        assert float(offset.abs().max()) == 0
        assert torch.equal(mask, torch.full_like(mask, 0.5))


def test_size_rule_and_input_errors() -> None:
    model = SSENNet(**TINY_REF)
    assert model.size_rule.lr_multiple == 8 and model.size_multiple == 8
    with pytest.raises(RefsrError, match="divide by 8"):
        model(torch.rand(1, 3, 12, 16), torch.rand(1, 3, 48, 64))
    with pytest.raises(RefsrError, match="needs a reference"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(RefsrError, match="same number"):
        model(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 32, 32))
    with pytest.raises(RefsrError, match="RGB"):
        model(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 32, 32))
    with pytest.raises(RefsrError, match="num_dcn_layers"):
        SSENNet(num_dcn_layers=-1)
    # Baselines take any size and ignore the reference.
    assert SSENNet(**TINY_REF, use_reference=False).size_rule.lr_multiple == 1
    assert SSENSelf(**TINY_SELF, use_ssen=False).size_rule.lr_multiple == 1


def test_self_similarity_model_ignores_a_reference_and_baselines_do_not_use_one() -> None:
    torch.manual_seed(0)
    lr, ref = photo_pair()
    for model in (randomise(SSENSelf(**TINY_SELF)), randomise(SSENNet(**TINY_REF, use_reference=False))):
        assert model.uses_ref is False
        with torch.no_grad():
            assert torch.equal(model(lr), model(lr, ref))
    ssen_model = refsr.create_model("ssen-lite")
    assert ssen_model.uses_ref is True and refsr.create_model("ssen-self").uses_ref is False


def test_zero_dcn_layers_fuses_the_unaligned_reference() -> None:
    """Table 4's "No layers" row: the Ref features still reach the output (unlike the baseline)."""
    model = randomise(SSENNet(**TINY_REF, num_dcn_layers=0)).eval()
    lr, ref = photo_pair()
    with torch.no_grad():
        assert not torch.allclose(model(lr, ref), model(lr, ref.flip(-1)))
        features = model.extract(ref)
        assert torch.equal(model.ssen(features, features), features)


# ------------------------------------------------------------------------------------------ primitives


def test_dcn_layer_with_zero_offsets_and_unit_mask_is_a_plain_convolution() -> None:
    torch.manual_seed(0)
    ssen_module = randomise(SSEN(5, num_layers=1)).double()
    dcn = ssen_module.dcns[0]
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    offset = torch.zeros(2, 18, 9, 11, dtype=torch.float64)
    mask = torch.ones(2, 9, 9, 11, dtype=torch.float64)
    expected = F.conv2d(x, dcn.weight, dcn.bias, padding=1)
    torch.testing.assert_close(dcn(x, offset, mask), expected, rtol=0, atol=1e-12)
    # An integer offset (dy, dx) = (1, -2) on every tap reads x[y + 1 + i, x - 2 + j] (zero outside): the
    # plain convolution of x zero-padded by 3, read 3 rows down and 3 columns left of the usual window.
    offset[:, 0::2], offset[:, 1::2] = 1.0, -2.0
    full = F.conv2d(F.pad(x, (3, 3, 3, 3)), dcn.weight, dcn.bias)
    torch.testing.assert_close(dcn(x, offset, mask), full[:, :, 3 : 3 + 9, 0:11], rtol=0, atol=1e-12)


def test_ssen_at_initialisation_is_a_half_weighted_convolution_stack() -> None:
    """Zero-initialised predictors: each layer is a conv with weights w/2 (mask 0.5), LReLU(0.1) between."""
    torch.manual_seed(0)
    module = SSEN(4, num_layers=2).double()
    lr_feat, ref_feat = (torch.randn(1, 4, 8, 8, dtype=torch.float64) for _ in range(2))
    x = ref_feat
    for index, dcn in enumerate(module.dcns):
        x = F.conv2d(x, dcn.weight / 2, dcn.bias, padding=1)
        if index == 0:
            x = F.leaky_relu(x, 0.1)
    torch.testing.assert_close(module(lr_feat, ref_feat), x, rtol=0, atol=1e-12)


def brute_force_non_local(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with Eq. 3 written as loops over output and input positions."""
    n, c, h, w = x.shape
    theta, phi, g = block.theta(x), block.phi(x), block.g(x)
    y = torch.zeros_like(theta)
    for b in range(n):
        for i in range(h * w):
            yi, xi = divmod(i, w)
            total = torch.zeros((), dtype=x.dtype)
            acc = torch.zeros(theta.shape[1], dtype=x.dtype)
            for j in range(h * w):
                yj, xj = divmod(j, w)
                f = torch.exp(torch.dot(theta[b, :, yi, xi], phi[b, :, yj, xj]))
                total = total + f
                acc = acc + f * g[b, :, yj, xj]
            y[b, :, yi, xi] = acc / total
    return x + block.out(y)


def test_non_local_block_matches_a_brute_force_embedded_gaussian() -> None:
    torch.manual_seed(0)
    block = randomise(NonLocalBlock(6), std=0.4).double()
    assert block.theta.out_channels == 3  # embeddings at half the channels
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), brute_force_non_local(block, x), rtol=1e-10, atol=1e-12)


def test_non_local_block_starts_as_the_identity() -> None:
    block = NonLocalBlock(4)
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(block(x), x)


def test_attention_is_unscaled_softmax_over_all_positions() -> None:
    gen = torch.Generator().manual_seed(1)
    theta, phi, g = (torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    weights = torch.softmax(theta.flatten(2).transpose(1, 2) @ phi.flatten(2), dim=-1)  # no 1/sqrt(2)
    expected = (weights @ g.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, 2, 3, 3)
    torch.testing.assert_close(embedded_gaussian_attention(theta, phi, g), expected)


def test_offset_estimator_output_layout() -> None:
    torch.manual_seed(0)
    estimator = OffsetEstimator(4).double()
    with torch.no_grad():
        estimator.conv_out.bias.copy_(torch.arange(27, dtype=torch.float64))
    offset, mask = estimator(*(torch.randn(1, 4, 8, 16, dtype=torch.float64) for _ in range(2)))
    assert offset.shape == (1, 18, 8, 16) and mask.shape == (1, 9, 8, 16)
    assert torch.equal(offset[0, :, 3, 5], torch.arange(18, dtype=torch.float64))
    torch.testing.assert_close(mask[0, :, 3, 5], torch.sigmoid(torch.arange(18, 27, dtype=torch.float64)))


# ------------------------------------------------------------------------------------------ ablations


def _non_local_params(c: int) -> int:
    inner = c // 2
    return 3 * (c * inner + inner) + (inner * c + c)


def _estimator_params(c: int, non_local: bool = True) -> int:
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    return conv(2 * c, c) + 6 * conv(c, c) + conv(c, 27) + (3 * _non_local_params(c) if non_local else 0)


def test_ablation_switches_change_exactly_the_expected_parameters() -> None:
    c = 64
    with torch.device("meta"):
        full = SSENNet()
        two = SSENNet(num_dcn_layers=2)
        no_nb = SSENNet(use_non_local=False)
        baseline = SSENNet(use_reference=False)
    per_layer = _estimator_params(c) + 9 * c * c + c
    assert n_params(full) - n_params(two) == per_layer
    assert n_params(full) - n_params(no_nb) == 3 * 3 * _non_local_params(c)
    assert n_params(full) - n_params(baseline) == 3 * per_layer + 9 * 2 * c * c + c
    assert n_params(full) == 2_747_060


def test_ssen_self_is_rcan_plus_ssen_and_fusion() -> None:
    with torch.device("meta"):
        model, baseline = SSENSelf(), SSENSelf(use_ssen=False)
    c = 64
    assert n_params(baseline) == 15_592_355  # RCAN x4 without the mean-shift convs (a fixed buffer here)
    per_layer = _estimator_params(c) + 9 * c * c + c
    assert n_params(model) - n_params(baseline) == 3 * per_layer + 9 * 2 * c * c + c


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("kind", ["ref", "self"])
def test_gradients_reach_every_parameter_and_the_inputs(kind: str) -> None:
    torch.manual_seed(0)
    model = randomise(SSENNet(**TINY_REF) if kind == "ref" else SSENSelf(**TINY_SELF), std=0.2)
    lr, ref = photo_pair(lr_size=(8, 16), ref_size=(32, 64))
    lr.requires_grad_(True)
    ref.requires_grad_(True)
    sr = model(lr, ref if kind == "ref" else None)
    sr.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    assert lr.grad.abs().max() > 0
    if kind == "ref":
        assert ref.grad.abs().max() > 0


def test_zero_initialised_offset_predictor_learns_from_the_first_step() -> None:
    """The predictors start at zero but get a gradient at once (through the bilinear sampling of the DCN)."""
    torch.manual_seed(0)
    model = SSENNet(**TINY_REF)
    lr, ref = photo_pair(lr_size=(8, 16), ref_size=(32, 64))
    model(lr, ref).square().mean().backward()
    for estimator in model.ssen.estimators:
        assert float(estimator.conv_out.weight.grad.abs().max()) > 0


def test_forward_is_deterministic() -> None:
    lr, ref = photo_pair(lr_size=(8, 16), ref_size=(32, 64))
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = randomise(SSENNet(**TINY_REF), seed=3).eval()
        with torch.no_grad():
            outputs.append(model(lr, ref))
            outputs.append(model(lr, ref))
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])


def test_upscale_pads_to_the_size_rule() -> None:
    img = load_photo("coffee.png")[:13, :19]
    out = refsr.upscale(img, img, model="ssen-lite", random_weights=True)
    assert out.shape == (52, 76, 3) and out.dtype == np.uint8
    assert refsr.upscale(img, model="ssen-self-lite", random_weights=True).shape == (52, 76, 3)


# ------------------------------------------------------------------------------------------ golden


def _golden_case() -> tuple[SSENNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(2020)
    model = randomise(SSENNet(nf=4, extractor_blocks=1, recon_blocks=1), seed=2020, std=0.2).double().eval()
    lr, ref = photo_pair(lr_size=(8, 16), ref_size=(40, 56), dtype=torch.float64)
    return model, lr, ref


def test_golden_output() -> None:
    from safetensors.torch import load_file, save_file

    model, lr, ref = _golden_case()
    if os.environ.get("REFSR_REGEN_GOLDEN") == "1":
        with torch.no_grad():
            sr, trace = model(lr, ref, return_offsets=True)
        GOLDEN.parent.mkdir(exist_ok=True)
        tensors = {f"weight.{k}": v.float() for k, v in model.state_dict().items()}
        save_file({**tensors, "sr": sr.float(), "offset.2": trace[2][0].float()}, str(GOLDEN))
    stored = load_file(str(GOLDEN))
    # The weights are stored too (float32, exact in float64), so the golden checks the forward computation
    # even if PyTorch's random number generator changes.
    weights = {k[len("weight.") :]: v.double() for k, v in stored.items() if k.startswith("weight.")}
    model.load_state_dict(weights)
    with torch.no_grad():
        sr, trace = model(lr, ref, return_offsets=True)
    assert sr.shape == stored["sr"].shape == (1, 3, 32, 64)
    # Non-trivial offsets: the golden covers the deformable sampling, not just identity sampling.
    assert float(stored["offset.2"].abs().max()) > 0.5
    assert float((trace[2][0] - stored["offset.2"].double()).abs().max()) < 1e-5
    assert float((sr - stored["sr"].double()).abs().max()) < 1e-5
