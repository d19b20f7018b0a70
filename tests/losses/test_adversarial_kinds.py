"""WGAN-GP (C2-Matching / AMSA) and the standard GAN with a PatchGAN (SSEN): values by hand, the penalty
against analytic gradients, the discriminators' sizes and receptive field; AMSA's Frobenius perceptual term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from refsr.errors import RefsrError
from refsr.losses import (
    ImageDiscriminator,
    PatchGANDiscriminator,
    PerceptualLoss,
    StandardAdversarialLoss,
    WGANGPLoss,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    perceptual_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from refsr.models.vgg import VGG19Features


class LinearCritic(nn.Module):
    """``D(x) = <w, x> + b`` per sample: its input gradient is ``w`` everywhere, so GP = (‖w‖ - 1)²."""

    def __init__(self, w: torch.Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True) + self.b


# --------------------------------------------------------------------------------------------- WGAN-GP
def test_wgan_losses_by_hand() -> None:
    real = torch.tensor([[1.0], [3.0]])
    fake = torch.tensor([[0.5], [1.5]])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(1.0 - 2.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("scale, expected", [(0.5, 0.0), (1.0, 1.0), (2.0, 9.0)])
def test_gradient_penalty_of_a_linear_critic_is_analytic(scale: float, expected: float) -> None:
    # w has 4 entries equal to `scale`: ‖w‖ = 2·scale, whatever the interpolation weights.
    critic = LinearCritic(torch.full((1, 2, 2), scale), b=0.3)
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(3, 1, 2, 2, generator=gen), torch.rand(3, 1, 2, 2, generator=gen)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(expected, abs=1e-6)
    gp.backward()
    # d/dw (‖w‖ - 1)² = 2 (‖w‖ - 1) w / ‖w‖ = (2·scale - 1) per entry; the bias has no part in it.
    torch.testing.assert_close(critic.w.grad, torch.full((1, 2, 2), 2 * scale - 1))
    assert critic.b.grad is None or critic.b.grad.item() == 0


def test_gradient_penalty_uses_the_interpolates_of_each_sample() -> None:
    # D(x) = ½‖x‖²: the gradient is x̂ itself. real = 1 (4 values), fake = 0: ‖x̂‖ = 2α.
    critic = lambda x: 0.5 * x.flatten(1).square().sum(1)  # noqa: E731
    real, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, alpha=torch.tensor([0.5, 1.0]))
    assert gp.item() == pytest.approx(((1.0 - 1) ** 2 + (2.0 - 1) ** 2) / 2)
    with pytest.raises(RefsrError, match="same shape"):
        gradient_penalty(critic, real, fake[:, :, :1])


def test_wgan_gp_module_critic_loss_and_gradients_by_hand() -> None:
    critic = LinearCritic(torch.ones(1, 2, 2), b=0.25)  # ‖w‖ = 2: GP = 1
    loss = WGANGPLoss(critic, penalty_weight=10.0)
    hr, sr = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2, requires_grad=True)
    d_loss = loss.discriminator_loss(sr, hr)
    # mean D(SR) - mean D(HR) + 10·GP = 0.25 - 4.25 + 10
    assert d_loss.item() == pytest.approx(6.0)
    d_loss.backward()
    assert sr.grad is None  # the critic's loss never reaches the generator
    # d/dw: mean(SR) - mean(HR) = -1, plus 10 · (2‖w‖ - 2) w / ‖w‖ = 10 per entry.
    torch.testing.assert_close(critic.w.grad, torch.full((1, 2, 2), 9.0))
    assert critic.b.grad.item() == pytest.approx(0.0)

    critic.zero_grad()
    g_loss = loss.generator_loss(sr, hr)
    assert g_loss.item() == pytest.approx(-0.25)
    g_loss.backward()
    torch.testing.assert_close(sr.grad, torch.full_like(sr, -0.5))  # -d mean_i <w, sr_i> / d sr = -w / 2
    assert critic.w.grad is None or critic.w.grad.abs().max() == 0
    assert all(p.requires_grad for p in critic.parameters())


def test_image_discriminator_matches_the_official_layout() -> None:
    torch.manual_seed(0)
    nf = 32
    disc = ImageDiscriminator(nf=nf)
    count, previous = 0, 3
    for width in (nf, 2 * nf, 4 * nf, 8 * nf, 16 * nf):
        count += previous * width * 9 + width + 2 * width  # conv3x3 (+ bias) + batch norm
        count += width * width * 9 + width + 2 * width  # conv3x3 stride 2 + batch norm
        previous = width
    count += 16 * nf * 1024 + 1024 + 1024 + 1  # the two 1x1 convs
    assert sum(p.numel() for p in disc.parameters()) == count
    assert sum(isinstance(m, nn.BatchNorm2d) for m in disc.modules()) == 10
    out = disc(torch.rand(2, 3, 160, 160))
    assert out.shape == (2, 1) and ((out > 0) & (out < 1)).all()  # the official sigmoid
    assert ImageDiscriminator(nf=4, sigmoid=False)(torch.rand(2, 3, 40, 40)).shape == (2, 1)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias.abs().max() == 0 for c in convs)
    assert 0.015 < torch.cat([c.weight.flatten() for c in convs]).std().item() < 0.025  # N(0, 0.02)


# ------------------------------------------------------------------------------------- PatchGAN / SSEN
def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_standard_gan_losses_by_hand() -> None:
    real, fake = torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([[[[-1.0, 0.5]]]])
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x), averaged over the patch map.
    d_expected = (_softplus(-2.0) + _softplus(0.0)) / 2 + (_softplus(-1.0) + _softplus(0.5)) / 2
    assert gan_discriminator_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert gan_generator_loss(fake).item() == pytest.approx((_softplus(1.0) + _softplus(-0.5)) / 2, rel=1e-6)
    zero = torch.zeros(1, 1, 3, 3)
    assert gan_discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))


def test_patchgan_has_pix2pix_size_and_a_70_pixel_receptive_field() -> None:
    torch.manual_seed(0)
    disc = PatchGANDiscriminator()
    # pix2pix's n_layers=3 discriminator with batch norm: 2,765,633 parameters (convs before BN: no bias).
    expected = (3 * 64 * 16 + 64) + (64 * 128 * 16 + 2 * 128) + (128 * 256 * 16 + 2 * 256) \
        + (256 * 512 * 16 + 2 * 512) + (512 * 16 + 1)
    assert sum(p.numel() for p in disc.parameters()) == expected == 2_765_633
    assert disc(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert disc(torch.rand(2, 3, 160, 160)).shape == (2, 1, 18, 18)
    # The receptive field, found by back-propagating one logit: a 70x70 square (no norm, so no batch coupling).
    plain = PatchGANDiscriminator(nf=8, norm="none")
    x = torch.rand(1, 3, 128, 128, requires_grad=True)
    plain(x)[0, 0, 7, 7].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    assert PatchGANDiscriminator(nf=8, n_layers=2, norm="instance")(torch.rand(1, 3, 48, 48)).shape == (1, 1, 10, 10)
    with pytest.raises(RefsrError, match="unknown PatchGAN norm"):
        PatchGANDiscriminator(norm="group")


def test_standard_adversarial_module_detaches_and_freezes() -> None:
    torch.manual_seed(0)
    adv = StandardAdversarialLoss(PatchGANDiscriminator(nf=4, n_layers=2))
    gen = torch.Generator().manual_seed(1)
    sr = torch.rand(2, 3, 48, 48, generator=gen, requires_grad=True)
    hr = torch.rand(2, 3, 48, 48, generator=gen)
    adv.generator_loss(sr, hr).backward()
    assert sr.grad.abs().max() > 0 and all(p.grad is None for p in adv.discriminator.parameters())
    sr.grad = None
    adv.discriminator_loss(sr, hr).backward()
    assert sr.grad is None and all(p.grad is not None for p in adv.discriminator.parameters())


# --------------------------------------------------------------------------- AMSA's perceptual criterion
def test_perceptual_frobenius_on_relu5_1() -> None:
    torch.manual_seed(0)
    loss = PerceptualLoss(layer="relu5_1", criterion="fro")
    gen = torch.Generator().manual_seed(0)
    sr = torch.rand(2, 3, 32, 32, generator=gen, requires_grad=True)
    hr = torch.rand(2, 3, 32, 32, generator=gen)
    with torch.no_grad():  # (building a second VGG19 would double the test's time)
        difference = loss.vgg(sr)["relu5_1"] - loss.vgg(hr)["relu5_1"]
    assert isinstance(loss.vgg, VGG19Features) and loss.vgg.outputs == ("relu5_1",)
    value = loss(sr, hr)
    # ‖·‖_F over the whole batch: the square root of the sum of squares, neither averaged nor squared.
    torch.testing.assert_close(value, difference.square().sum().sqrt())
    torch.testing.assert_close(perceptual_loss(sr, hr, loss.vgg, layer="relu5_1", criterion="mse") * difference.numel(),
                               value.square())
    value.backward()
    assert sr.grad.abs().max() > 0
    same = hr.clone().requires_grad_(True)
    zero = loss(same, hr)
    zero.backward()
    assert zero.item() == 0 and torch.isfinite(same.grad).all()  # no NaN gradient at a perfect output


def test_image_discriminator_keeps_the_official_parameter_names() -> None:
    names = list(ImageDiscriminator(nf=2).state_dict())
    assert names[:6] == ["conv_block1.0.weight", "conv_block1.0.bias", "conv_block1.1.weight", "conv_block1.1.bias",
                         "conv_block1.1.running_mean", "conv_block1.1.running_var"]
    assert names[-4:] == ["out_block.1.weight", "out_block.1.bias", "out_block.3.weight", "out_block.3.bias"]
    assert sum(n.startswith("conv_block5.4.") for n in names) == 5  # the last batch norm (with its counter)
