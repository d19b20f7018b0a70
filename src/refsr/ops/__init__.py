"""Low-level operators shared by the models.

``deform_conv2d`` is modulated deformable convolution (DCNv2) with torchvision's argument order and offset
layout; :class:`DeformConv2d` is its thin ``nn.Module`` wrapper. See :mod:`refsr.ops.deform_conv`.

``sliding_window_fuse`` reassembles an image from overlapping patch predictions (RefSR-Net's fusion), plainly
averaged or weighted by Gaussian-smoothed masks; :class:`SlidingWindowFusion` wraps it. See
:mod:`refsr.ops.sliding_window`.
"""

from __future__ import annotations

from refsr.ops.deform_conv import BACKENDS, DeformConv2d, deform_conv2d, torchvision_available
from refsr.ops.sliding_window import SlidingWindowFusion, sliding_window_fuse, sliding_window_positions

__all__ = ["deform_conv2d", "DeformConv2d", "BACKENDS", "torchvision_available", "sliding_window_fuse",
           "SlidingWindowFusion", "sliding_window_positions"]
