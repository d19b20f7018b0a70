"""Losses: L1 / Charbonnier by hand, perceptual on random VGG weights, relativistic GAN against BCE."""

from __future__ import annotations

import math

import pytest
import torch

from refsr.errors import RefsrError
from refsr.losses import (
    CharbonnierLoss,
    L1Loss,
    PerceptualLoss,
    RelativisticAdversarialLoss,
    VGGStyleDiscriminator,
    charbonnier_loss,
    l1_loss,
    perceptual_loss,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
)
from refsr.models.vgg import VGG19Features


def test_l1_and_charbonnier_by_hand() -> None:
    sr = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    hr = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    assert l1_loss(sr, hr).item() == pytest.approx((0.5 + 0 + 1 + 0.75) / 4)
    assert L1Loss()(sr, hr).item() == pytest.approx(0.5625)
    eps = 0.1
    expected = sum(math.sqrt(d * d + eps * eps) for d in (0.5, 0.0, 1.0, 0.75)) / 4
    assert charbonnier_loss(sr, hr, eps=eps).item() == pytest.approx(expected)
    assert CharbonnierLoss()(sr, hr).item() == pytest.approx(0.5625, abs=1e-6)  # eps 1e-6: almost L1
    with pytest.raises(RefsrError, match="same shape"):
        l1_loss(sr, hr[..., :1])


def test_perceptual_loss_is_l1_on_conv5_4_with_a_frozen_target() -> None:
    torch.manual_seed(0)
    loss = PerceptualLoss()
    gen = torch.Generator().manual_seed(0)
    sr = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    hr = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    value = loss(sr, hr)
    features = VGG19Features(("conv5_4",))
    features.load_state_dict(loss.vgg.state_dict())
    expected = (features(sr)["conv5_4"] - features(hr)["conv5_4"]).abs().mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert sr.grad.abs().max() > 0 and hr.grad is None
    assert all(p.grad is None for p in loss.parameters())
    assert loss(hr.detach(), hr.detach()).item() == 0
    mse = perceptual_loss(sr, hr, loss.vgg, criterion="mse")
    torch.testing.assert_close(mse, (features(sr)["conv5_4"] - features(hr)["conv5_4"]).square().mean())
    loss.train()
    assert not loss.vgg.training


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_relativistic_losses_by_hand() -> None:
    real = torch.tensor([[1.0], [-0.5], [2.0]])
    fake = torch.tensor([[0.2], [-1.0], [0.4]])
    mr, mf = real.mean().item(), fake.mean().item()
    d_expected = 0.5 * sum(_bce(r - mf, 1) for r in real.flatten().tolist()) / 3 + 0.5 * sum(
        _bce(f - mr, 0) for f in fake.flatten().tolist()
    ) / 3
    g_expected = 0.5 * sum(_bce(r - mf, 0) for r in real.flatten().tolist()) / 3 + 0.5 * sum(
        _bce(f - mr, 1) for f in fake.flatten().tolist()
    ) / 3
    assert relativistic_discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert relativistic_generator_loss(real, fake).item() == pytest.approx(g_expected, rel=1e-6)


def test_relativistic_gradients_follow_the_official_detaching() -> None:
    """D: each term differentiates only its own logits (the other mean is a constant). G: only the fake."""
    real = torch.tensor([[1.0], [-0.5]], requires_grad=True)
    fake = torch.tensor([[0.2], [-1.0]], requires_grad=True)
    relativistic_discriminator_loss(real, fake).backward()
    # d/dr_i of 0.5 * mean_i BCE(r_i - const, 1) = 0.5 * (sigmoid(r_i - mf) - 1) / n
    mf, mr = fake.mean().item(), real.mean().item()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_real = [0.5 * (sig(r - mf) - 1) / 2 for r in (1.0, -0.5)]
    expected_fake = [0.5 * sig(f - mr) / 2 for f in (0.2, -1.0)]
    assert real.grad.flatten().tolist() == pytest.approx(expected_real, rel=1e-6)
    assert fake.grad.flatten().tolist() == pytest.approx(expected_fake, rel=1e-6)

    real.grad = None
    fake.grad = None
    relativistic_generator_loss(real, fake).backward()
    assert real.grad is None
    # G term 1: 0.5 * mean_i BCE(r_i - mean(f), 0) -> d/df_j = 0.5 * mean_i sigmoid(r_i - mf) * (-1/n)
    # G term 2: 0.5 * mean_j BCE(f_j - mr, 1) -> d/df_j = 0.5 * (sigmoid(f_j - mr) - 1) / n
    term1 = -0.5 * sum(sig(r - mf) for r in (1.0, -0.5)) / 2 / 2
    expected = [term1 + 0.5 * (sig(f - mr) - 1) / 2 for f in (0.2, -1.0)]
    assert fake.grad.flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_discriminator_size_and_parameter_count() -> None:
    torch.manual_seed(0)
    disc = VGGStyleDiscriminator()
    # Hand count: convs (first with bias), batch norms (weight + bias), the two linear layers.
    widths = [64, 128, 256, 512, 512]
    count, previous = 0, 3
    for i, w in enumerate(widths):
        count += previous * w * 9 + (w if i == 0 else 0) + (0 if i == 0 else 2 * w)  # 3x3 conv (+bias | +bn)
        count += w * w * 16 + 2 * w  # 4x4 stride-2 conv + bn
        previous = w
    count += 512 * 5 * 5 * 100 + 100 + 100 + 1
    assert sum(p.numel() for p in disc.parameters()) == count
    assert disc(torch.rand(2, 3, 160, 160)).shape == (2, 1)
    with pytest.raises(RefsrError, match="160x160"):
        disc(torch.rand(1, 3, 128, 128))
    assert VGGStyleDiscriminator(nf=8, input_size=64)(torch.rand(3, 3, 64, 64)).shape == (3, 1)


def test_adversarial_module_leaves_no_generator_gradient_on_the_discriminator() -> None:
    torch.manual_seed(0)
    adv = RelativisticAdversarialLoss(VGGStyleDiscriminator(nf=4, input_size=32))
    gen = torch.Generator().manual_seed(0)
    sr = torch.rand(4, 3, 32, 32, generator=gen, requires_grad=True)
    hr = torch.rand(4, 3, 32, 32, generator=gen)
    adv.generator_loss(sr, hr).backward()
    assert sr.grad.abs().max() > 0
    assert all(p.grad is None for p in adv.discriminator.parameters())
    assert all(p.requires_grad for p in adv.discriminator.parameters())  # flags restored
    sr.grad = None
    d_loss = adv.discriminator_loss(sr, hr)
    d_loss.backward()
    assert sr.grad is None
    assert all(p.grad is not None for p in adv.discriminator.parameters())
