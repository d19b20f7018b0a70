"""Training losses: reconstruction (L1, Charbonnier), perceptual (VGG19), adversarial (relativistic average,
WGAN-GP, standard GAN with a PatchGAN) and the contrastive correspondence losses of C2-Matching's feature
extractor (teacher contrastive, student distillation).

Each is a function plus a thin ``nn.Module``. MASA-SR's full objective is
``1 * L1 + 1 * perceptual(conv5_4) + 5e-3 * adversarial`` (paper Eq. 18 and Sec. 4.2); AMSA's is
``1 * L1 + 1e-4 * perceptual(relu5_1, Frobenius) + 1e-6 * WGAN-GP`` (Sec. 3.3, 4.2).
"""

from __future__ import annotations

from refsr.losses.adversarial import (
    ImageDiscriminator,
    PatchGANDiscriminator,
    RelativisticAdversarialLoss,
    StandardAdversarialLoss,
    VGGStyleDiscriminator,
    WGANGPLoss,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from refsr.losses.contrastive import (
    CorrespondenceContrastiveLoss,
    CorrespondenceDistillationLoss,
    correspondence_contrastive_loss,
    correspondence_distillation_loss,
)
from refsr.losses.perceptual import PerceptualLoss, perceptual_loss
from refsr.losses.reconstruction import CharbonnierLoss, L1Loss, charbonnier_loss, l1_loss

__all__ = [
    "l1_loss",
    "charbonnier_loss",
    "L1Loss",
    "CharbonnierLoss",
    "perceptual_loss",
    "PerceptualLoss",
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
    "correspondence_contrastive_loss",
    "correspondence_distillation_loss",
    "CorrespondenceContrastiveLoss",
    "CorrespondenceDistillationLoss",
]
