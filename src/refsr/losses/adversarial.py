"""Relativistic average GAN loss (ESRGAN's form, as MASA-SR trains with it) and the VGG-style discriminator.

MASA-SR (Eqs. 16-17) cites relativistic GANs; the official ``AdversarialLoss`` uses the relativistic
*average* discriminator with binary cross-entropy on logits (``GANLoss('vanilla')``):

- discriminator: ``0.5 * BCE(D(HR) - mean D(SR), 1) + 0.5 * BCE(D(SR) - mean D(HR), 0)``, where in each
  term the other side's mean is a constant (the official code detaches it and back-propagates the two
  terms separately, which gives the same gradients as :func:`relativistic_discriminator_loss`), and SR is
  detached from the generator;
- generator: ``0.5 * BCE(D(HR) - mean D(SR), 0) + 0.5 * BCE(D(SR) - mean D(HR), 1)``, with ``D(HR)`` a
  constant and the discriminator's weights frozen.

The paper weights it 5e-3 against L1 and perceptual losses of weight 1; the discriminator is trained with
Adam, lr 1e-4, betas (0, 0.9), one step per generator step (the official ``gan_k=1``).

The discriminator is the ESRGAN/SRGAN VGG-style network for 160x160 inputs (CUFED's training size): ten
convolutions in five stages (3x3, then 4x4 with stride 2; batch norm after every conv but the first;
LeakyReLU 0.2), channels 64, 128, 256, 512, 512, then two linear layers (100 units, then 1 logit). Its
parameter names are BasicSR's (``conv0_0``, ``bn0_1``, ..., ``linear2``), so that such checkpoints load.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError

__all__ = [
    "relativistic_discriminator_loss",
    "relativistic_generator_loss",
    "VGGStyleDiscriminator",
    "RelativisticAdversarialLoss",
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
