"""Training losses: reconstruction (L1, Charbonnier), perceptual (VGG19) and relativistic adversarial.

Each is a function plus a thin ``nn.Module``. MASA-SR's full objective is
``1 * L1 + 1 * perceptual(conv5_4) + 5e-3 * adversarial`` (paper Eq. 18 and Sec. 4.2).
"""

from __future__ import annotations

from refsr.losses.adversarial import (
    RelativisticAdversarialLoss,
    VGGStyleDiscriminator,
    relativistic_discriminator_loss,
    relativistic_generator_loss,
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
    "VGGStyleDiscriminator",
    "RelativisticAdversarialLoss",
]
