"""Low-level operators shared by the models.

``deform_conv2d`` is modulated deformable convolution (DCNv2) with torchvision's argument order and offset
layout; :class:`DeformConv2d` is its thin ``nn.Module`` wrapper. See :mod:`refsr.ops.deform_conv`.
"""

from __future__ import annotations

from refsr.ops.deform_conv import BACKENDS, DeformConv2d, deform_conv2d, torchvision_available

__all__ = ["deform_conv2d", "DeformConv2d", "BACKENDS", "torchvision_available"]
