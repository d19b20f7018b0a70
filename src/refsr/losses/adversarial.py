"""Adversarial losses and discriminators: ESRGAN's relativistic average GAN (MASA-SR), WGAN-GP (C2-Matching,
AMSA) and the standard GAN with a PatchGAN discriminator (SSEN).

**Relativistic average GAN** (MASA-SR, Eqs. 16-17, which cite relativistic GANs). The official
``AdversarialLoss`` uses the relativistic *average* discriminator with binary cross-entropy on logits
(``GANLoss('vanilla')``):

- discriminator: ``0.5 * BCE(D(HR) - mean D(SR), 1) + 0.5 * BCE(D(SR) - mean D(HR), 0)``, where in each
  term the other side's mean is a constant (the official code detaches it and back-propagates the two
  terms separately, which gives the same gradients as :func:`relativistic_discriminator_loss`), and SR is
  detached from the generator;
- generator: ``0.5 * BCE(D(HR) - mean D(SR), 0) + 0.5 * BCE(D(SR) - mean D(HR), 1)``, with ``D(HR)`` a
  constant and the discriminator's weights frozen.

The paper weights it 5e-3 against L1 and perceptual losses of weight 1; the discriminator is trained with
Adam, lr 1e-4, betas (0, 0.9), one step per generator step (the official ``gan_k=1``). Its discriminator
is the ESRGAN/SRGAN VGG-style network for 160x160 inputs (CUFED's training size): ten convolutions in five
stages (3x3, then 4x4 with stride 2; batch norm after every conv but the first; LeakyReLU 0.2), channels
64, 128, 256, 512, 512, then two linear layers (100 units, then 1 logit). Its parameter names are
BasicSR's (``conv0_0``, ``bn0_1``, ..., ``linear2``), so that such checkpoints load.

**WGAN-GP** (AMSA Sec. 3.3, weight 1e-6, and C2-Matching's GAN stage; official ``GANLoss('wgan')`` plus
``GradientPenaltyLoss(loss_weight=10)``): critic loss ``mean D(SR) - mean D(HR) + λ · mean_i (‖∇D(x̂_i)‖₂ -
1)²`` on per-sample random interpolates ``x̂ = α·HR + (1-α)·SR``, α ~ U(0, 1); generator loss ``-mean D(SR)``.
Both official repositories use :class:`ImageDiscriminator` (SRNTT's): five blocks of conv3x3 + batch norm +
LeakyReLU(0.2) and conv3x3 stride 2 + batch norm + LeakyReLU(0.2), channels ``nf * (1, 2, 4, 8, 16)`` with
``nf = 32``, then global average pooling, a 1x1 conv to 1024, LeakyReLU(0.2), a 1x1 conv to 1 and a
**sigmoid**. Batch norm and a bounded output are both unusual for a WGAN critic (Gulrajani et al. advise
against batch norm, since the penalty is per sample), but that is what the official critic is, and the
default here matches it (``sigmoid=True``). Where this differs from the official code: the interpolates are
detached from the generator (the official ``gradient_penalty_loss`` is given the undetached output, so two
of every three accumulated generator steps also receive the penalty's gradient), and the critic's batch
norm sees real and fake batches separately in both (as the official code).

**Standard GAN with a PatchGAN** (SSEN Eq. 5: ``min_G max_D E[log D(HR)] + E[log(1 - D(SR))]`` judged by a
PatchGAN, pix2pix's 70x70 discriminator [Isola et al.]): discriminator loss ``BCE(D(HR), 1) + BCE(D(SR), 0)``
averaged over the patch map; generator loss the non-saturating ``BCE(D(SR), 1)`` (as pix2pix and every
public GAN code base train the minimax objective). :class:`PatchGANDiscriminator` is pix2pix's
``NLayerDiscriminator``: conv4x4 stride 2 + LeakyReLU(0.2); ``n_layers - 1`` more conv4x4 stride 2 + norm +
LeakyReLU with channels doubling up to ``8 * nf``; conv4x4 stride 1 + norm + LeakyReLU; conv4x4 stride 1 to
one logit per patch; padding 1 throughout; weights N(0, 0.02). SSEN's paper names neither the norm nor the
GAN weight; the default norm is pix2pix's batch norm (``norm="batch"``; convs followed by a batch norm have
no bias, as in pix2pix).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError

__all__ = [
    "relativistic_discriminator_loss",
    "relativistic_generator_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
    "gradient_penalty",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "VGGStyleDiscriminator",
    "ImageDiscriminator",
    "PatchGANDiscriminator",
    "RelativisticAdversarialLoss",
    "WGANGPLoss",
    "StandardAdversarialLoss",
]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def relativistic_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's relativistic average loss.

    Args:
        real_logits: ``D(HR)``, shape ``(N, 1)``.
        fake_logits: ``D(SR)`` with SR detached from the generator, shape ``(N, 1)``.

    Returns:
        ``0.5 * BCE(real - mean(fake), 1) + 0.5 * BCE(fake - mean(real), 0)``; in each term the other
        side's mean is held constant.
    """
    return 0.5 * _bce(real_logits - fake_logits.mean().detach(), 1.0) + 0.5 * _bce(
        fake_logits - real_logits.mean().detach(), 0.0
    )


def relativistic_generator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's relativistic average loss.

    Args:
        real_logits: ``D(HR)``, shape ``(N, 1)``; treated as a constant.
        fake_logits: ``D(SR)``, shape ``(N, 1)``, with gradients to the generator.

    Returns:
        ``0.5 * BCE(real - mean(fake), 0) + 0.5 * BCE(fake - mean(real), 1)``.
    """
    real_logits = real_logits.detach()
    return 0.5 * _bce(real_logits - fake_logits.mean(), 0.0) + 0.5 * _bce(
        fake_logits - real_logits.mean(), 1.0
    )


class VGGStyleDiscriminator(nn.Module):
    """VGG-style discriminator (SRGAN/ESRGAN) for square ``input_size`` images; MASA uses 160.

    Args:
        in_channels: image channels (3).
        nf: channels of the first stage (64); the stages have ``nf * (1, 2, 4, 8, 8)``.
        input_size: the image side; it must divide by 32 (five stride-2 convs).

    ``forward(x)``: ``(N, in_channels, input_size, input_size)`` -> logits ``(N, 1)``.
    """

    def __init__(self, in_channels: int = 3, nf: int = 64, input_size: int = 160) -> None:
        super().__init__()
        if input_size % 32 or input_size < 32:
            raise RefsrError(f"the discriminator's input size must be a multiple of 32; got {input_size}")
        self.input_size = input_size
        widths = (nf, nf * 2, nf * 4, nf * 8, nf * 8)
        previous = in_channels
        for stage, width in enumerate(widths):
            # The first conv of the network keeps its bias and has no batch norm; every other conv feeds
            # a batch norm, which makes a bias redundant.
            first = stage == 0
            self.add_module(f"conv{stage}_0", nn.Conv2d(previous, width, 3, 1, 1, bias=first))
            if not first:
                self.add_module(f"bn{stage}_0", nn.BatchNorm2d(width))
            self.add_module(f"conv{stage}_1", nn.Conv2d(width, width, 4, 2, 1, bias=False))
            self.add_module(f"bn{stage}_1", nn.BatchNorm2d(width))
            previous = width
        side = input_size // 32
        self.linear1 = nn.Linear(widths[-1] * side * side, 100)
        self.linear2 = nn.Linear(100, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise RefsrError(
                f"the discriminator takes {self.input_size}x{self.input_size} images; got shape "
                f"{tuple(x.shape)}: crop the training patches to that size"
            )
        for stage in range(5):
            for half in (0, 1):
                x = getattr(self, f"conv{stage}_{half}")(x)
                norm = getattr(self, f"bn{stage}_{half}", None)
                if norm is not None:
                    x = norm(x)
                x = F.leaky_relu(x, 0.2)
        x = F.leaky_relu(self.linear1(x.flatten(1)), 0.2)
        return self.linear2(x)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` of ``module``'s parameters for a while, then restore the flags."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class RelativisticAdversarialLoss(nn.Module):
    """The adversarial pair of losses with its discriminator.

    ``discriminator_loss(sr, hr)`` is what the discriminator's optimiser minimises (SR is detached);
    ``generator_loss(sr, hr)`` (also ``forward``) is the generator's term, computed with the
    discriminator's weights frozen so that it leaves no gradient on them.

    Args:
        discriminator: defaults to :class:`VGGStyleDiscriminator` for 160x160 inputs.
    """

    def __init__(self, discriminator: nn.Module | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator if discriminator is not None else VGGStyleDiscriminator()

    def discriminator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """``(N,3,H,W)`` output and target -> the discriminator's scalar loss."""
        return relativistic_discriminator_loss(self.discriminator(hr), self.discriminator(sr.detach()))

    def generator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """``(N,3,H,W)`` output and target -> the generator's scalar loss (gradients to ``sr`` only)."""
        with _frozen(self.discriminator):
            with torch.no_grad():
                real_logits = self.discriminator(hr)
            return relativistic_generator_loss(real_logits, self.discriminator(sr))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(sr, hr)


# ------------------------------------------------------------------------------------------------ WGAN-GP
def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The Wasserstein critic's loss without the penalty: ``mean D(SR) - mean D(HR)``.

    Args:
        real_scores: ``D(HR)``, any shape (``(N, 1)`` for image critics).
        fake_scores: ``D(SR)`` with SR detached from the generator, any shape.

    Returns:
        A scalar tensor.
    """
    return fake_scores.mean() - real_scores.mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's Wasserstein loss ``-mean D(SR)`` (``fake_scores`` with gradients to the generator)."""
    return -fake_scores.mean()


def gradient_penalty(
    critic: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty ``mean_i (‖∇_x D(x̂_i)‖₂ - 1)²`` on ``x̂_i = α_i·real_i + (1 - α_i)·fake_i``.

    The gradient is taken with ``create_graph=True``, so the penalty back-propagates into the critic's
    weights. Both images are detached: the penalty trains the critic only.

    Args:
        critic: maps ``(N, C, H, W)`` to scores of any shape (each sample's scores are summed for its gradient).
        real: ``(N, C, H, W)`` target images (RGB in [0, 1] in the training loop).
        fake: the generator's output, same shape.
        alpha: ``(N,)`` or ``(N, 1, 1, 1)`` mixing weights in [0, 1]; by default drawn uniformly with
            ``torch.rand`` (the global generator, which checkpoints save).

    Returns:
        A scalar tensor.
    """
    if real.shape != fake.shape:
        raise RefsrError(f"the real and fake batches must have the same shape; got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    n = real.shape[0]
    if alpha is None:
        alpha = torch.rand(n, device=real.device, dtype=real.dtype)
    alpha = alpha.reshape(n, *([1] * (real.dim() - 1))).to(real)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


def _srntt_init(module: nn.Module) -> None:
    """N(0, 0.02) conv weights and zero biases; batch-norm scales N(1, 0.02) (SRNTT's and pix2pix's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ImageDiscriminator(nn.Module):
    """SRNTT's image discriminator, the critic of C2-Matching's and AMSA's WGAN-GP (official ``nf=32``).

    Args:
        in_channels: image channels (3).
        nf: channels of the first block; the five blocks have ``nf * (1, 2, 4, 8, 16)``.
        sigmoid: end with a sigmoid, as the official critic does (scores in (0, 1)); ``False`` gives the
            unbounded critic of the WGAN-GP paper.

    ``forward(x)``: ``(N, in_channels, H, W)`` with ``H, W >= 1`` (global pooling: any size) -> ``(N, 1)``.
    Parameter names are the official ones (``conv_block1.0.weight``, ..., ``out_block.3.bias``), so that a
    C2-Matching/AMSA ``net_d`` checkpoint loads as it is.
    """

    def __init__(self, in_channels: int = 3, nf: int = 32, *, sigmoid: bool = True) -> None:
        super().__init__()
        previous = in_channels
        for i, width in enumerate((nf, nf * 2, nf * 4, nf * 8, nf * 16), start=1):
            self.add_module(f"conv_block{i}", nn.Sequential(
                nn.Conv2d(previous, width, 3, 1, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
                nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            ))
            previous = width
        self.out_block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(previous, 1024, 1), nn.LeakyReLU(0.2),
                                       nn.Conv2d(1024, 1, 1))
        self.sigmoid = sigmoid
        _srntt_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise RefsrError(f"the discriminator takes (N, C, H, W) images; got shape {tuple(x.shape)}")
        for i in range(1, 6):
            x = getattr(self, f"conv_block{i}")(x)
        out = self.out_block(x).flatten(1)
        return torch.sigmoid(out) if self.sigmoid else out


class WGANGPLoss(nn.Module):
    """WGAN-GP with its critic: ``discriminator_loss(sr, hr)`` is the critic's loss including ``λ·GP``
    (SR detached), ``generator_loss(sr, hr)`` (also ``forward``) is ``-mean D(SR)`` with the critic frozen.

    Args:
        discriminator: the critic; defaults to :class:`ImageDiscriminator` (``nf=32``, as C2/AMSA).
        penalty_weight: λ (10, the official ``grad_penalty_weight``).
    """

    def __init__(self, discriminator: nn.Module | None = None, *, penalty_weight: float = 10.0) -> None:
        super().__init__()
        if not penalty_weight >= 0:
            raise RefsrError(f"the gradient penalty weight must be >= 0; got {penalty_weight}")
        self.discriminator = discriminator if discriminator is not None else ImageDiscriminator()
        self.penalty_weight = penalty_weight

    def discriminator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """``(N,3,H,W)`` output and target -> the critic's scalar loss."""
        sr = sr.detach()
        loss = wgan_critic_loss(self.discriminator(hr), self.discriminator(sr))
        if self.penalty_weight > 0:
            loss = loss + self.penalty_weight * gradient_penalty(self.discriminator, hr, sr)
        return loss

    def generator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """``(N,3,H,W)`` output and target -> the generator's scalar loss (``hr`` is unused)."""
        with _frozen(self.discriminator):
            return wgan_generator_loss(self.discriminator(sr))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(sr, hr)

    def extra_repr(self) -> str:
        return f"penalty_weight={self.penalty_weight}"


# ------------------------------------------------------------------------------------ standard / PatchGAN
def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The standard GAN discriminator's loss ``BCE(D(HR), 1) + BCE(D(SR), 0)`` (SSEN Eq. 5, negated).

    Args:
        real_logits: ``D(HR)`` logits, any shape (a PatchGAN's ``(N, 1, h, w)`` map: averaged over patches).
        fake_logits: ``D(SR)`` logits with SR detached, any shape.

    Returns:
        A scalar tensor: ``-mean log σ(real) - mean log(1 - σ(fake))``.
    """
    return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss ``BCE(D(SR), 1) = -mean log σ(D(SR))``."""
    return _bce(fake_logits, 1.0)


_NORMS = ("batch", "instance", "none")


class PatchGANDiscriminator(nn.Module):
    """pix2pix's PatchGAN (``NLayerDiscriminator``); with ``n_layers=3`` each logit sees a 70x70 patch.

    Args:
        in_channels: image channels (3).
        nf: channels of the first conv (64).
        n_layers: stride-2 convs; each logit sees ``9 * 2**n_layers - 2`` pixels square (3: 70x70).
        norm: ``"batch"`` (pix2pix's default), ``"instance"`` or ``"none"``.

    ``forward(x)``: ``(N, in_channels, H, W)`` -> logits ``(N, 1, H // 2**n_layers - 2, ...)``; e.g. 256 -> 30,
    160 -> 18 (n=3). Sides must be at least ``3 * 2**n_layers`` pixels.
    """

    def __init__(self, in_channels: int = 3, nf: int = 64, n_layers: int = 3, *, norm: str = "batch") -> None:
        super().__init__()
        if norm not in _NORMS:
            raise RefsrError(f"unknown PatchGAN norm {norm!r}; choose one of {', '.join(_NORMS)}")
        if n_layers < 1:
            raise RefsrError(f"the PatchGAN needs at least one stride-2 layer; got n_layers={n_layers}")
        self.n_layers = n_layers
        self.norm = norm

        def normalised(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            # A conv followed by batch norm needs no bias (the norm's shift replaces it), as in pix2pix;
            # instance norm without affine parameters keeps the conv's bias (pix2pix does the same).
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=norm != "batch")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif norm == "instance":
                layers.append(nn.InstanceNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            return layers

        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = nf
        for n in range(1, n_layers):
            new = nf * min(2**n, 8)
            layers += normalised(width, new, 2)
            width = new
        new = nf * min(2**n_layers, 8)
        layers += normalised(width, new, 1)
        layers.append(nn.Conv2d(new, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        _srntt_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise RefsrError(f"the PatchGAN takes (N, C, H, W) images; got shape {tuple(x.shape)}")
        return self.model(x)

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, norm={self.norm!r}"


class StandardAdversarialLoss(nn.Module):
    """The standard (minimax, non-saturating) GAN with its discriminator, SSEN's objective.

    ``discriminator_loss(sr, hr)``: ``BCE(D(HR), 1) + BCE(D(SR), 0)`` with SR detached;
    ``generator_loss(sr, hr)`` (also ``forward``): ``BCE(D(SR), 1)`` with the discriminator frozen.

    Args:
        discriminator: defaults to :class:`PatchGANDiscriminator` (70x70, batch norm).
    """

    def __init__(self, discriminator: nn.Module | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator if discriminator is not None else PatchGANDiscriminator()

    def discriminator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return gan_discriminator_loss(self.discriminator(hr), self.discriminator(sr.detach()))

    def generator_loss(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with _frozen(self.discriminator):
            return gan_generator_loss(self.discriminator(sr))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(sr, hr)
