"""C2-Matching's contrastive correspondence extractor (``ContrasExtractorSep``), as AMSA uses it.

Paper: Yuming Jiang, Kelvin C.K. Chan, Xintao Wang, Chen Change Loy, Ziwei Liu, "Robust Reference-based
Super-Resolution via C2-Matching", CVPR 2021. Official code: https://github.com/yumingj/C2-Matching
(``mmsr/models/archs/contras_extractor_arch.py``); AMSA (https://github.com/Zj-BinXia/AMSA) reuses the same
class and C2-Matching's released weights (``feature_extraction.pth``). Written from reading that code.

Architecture: two separate copies of VGG16's first layers, ``conv1_1, relu1_1, conv1_2, relu1_2, pool1,
conv2_1, relu2_1, conv2_2, relu2_2, pool2, conv3_1``, stopping **at conv3_1, before its ReLU** (so the
features can be negative). Each copy normalises its RGB input in [0, 1] with the ImageNet mean and std
first. The output has 256 channels at 1/4 of the input size (two 2x2 max poolings, floor).

- ``lr_branch`` (the official ``feature_extraction_image1``) embeds the LR image upsampled x4 (bicubic);
- ``ref_branch`` (``feature_extraction_image2``) embeds the reference.

The two branches start from ImageNet VGG16 and are trained apart (contrastive teacher, then distillation
into the LR branch), so their weights differ. State-dict keys: ``lr_branch.conv1_1.weight``, ...,
``ref_branch.conv3_1.bias`` (20 tensors, 1,110,656 parameters); the normalisation constants are
non-persistent buffers. :func:`convert_official_contrastive_extractor` maps ``feature_extraction.pth``
onto this layout (``feature_extraction_image1.model.conv1_1.weight`` -> ``lr_branch.conv1_1.weight``; the
official ``mean``/``std`` buffers are checked and dropped).

No weights ship with refsr: random initialisation (PyTorch's default) unless a file is given.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Union

import torch
from torch import nn

from refsr.errors import RefsrError
from refsr.models.vgg import IMAGENET_MEAN, IMAGENET_STD
from refsr.weights_io import load_state_dict, read_checkpoint

__all__ = [
    "VGG16_TO_CONV3_1",
    "ContrastiveBranch",
    "ContrastiveExtractor",
    "convert_official_contrastive_extractor",
    "OFFICIAL_PREFIXES",
    "EXTRACTOR_PARAMETERS",
]

#: The layers of one branch, in order (VGG16 up to conv3_1).
VGG16_TO_CONV3_1: tuple[str, ...] = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1",
)
_CHANNELS = {"conv1_1": (3, 64), "conv1_2": (64, 64), "conv2_1": (64, 128), "conv2_2": (128, 128),
             "conv3_1": (128, 256)}

#: Official prefix of each of our branches.
OFFICIAL_PREFIXES = {"lr_branch": "feature_extraction_image1", "ref_branch": "feature_extraction_image2"}

#: Parameters of the two branches (keys/AMSA_ContrasExtractorSep.txt).
EXTRACTOR_PARAMETERS = 1_110_656

WeightsArg = Union[str, os.PathLike, Mapping[str, torch.Tensor], None]


class ContrastiveBranch(nn.Module):
    """One branch: ImageNet normalisation, then VGG16 to conv3_1 (no final ReLU).

    The parameters are named after the layers (``conv1_1.weight``); ``forward`` maps ``(N,3,H,W)`` RGB in
    [0, 1] to ``(N,256,H//4,W//4)`` features (any real values).
    """

    def __init__(self) -> None:
        super().__init__()
        for name in VGG16_TO_CONV3_1:
            if name.startswith("conv"):
                self.add_module(name, nn.Conv2d(*_CHANNELS[name], 3, padding=1))
            elif name.startswith("relu"):
                self.add_module(name, nn.ReLU())
            else:
                self.add_module(name, nn.MaxPool2d(2, stride=2))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image (N,3,H,W)`` RGB float in [0, 1] -> ``(N,256,H//4,W//4)``, same dtype."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise RefsrError(
                f"the contrastive extractor expects (N, 3, H, W) RGB images; got {tuple(image.shape)}"
            )
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        for layer in self.children():
            x = layer(x)
        return x


class ContrastiveExtractor(nn.Module):
    """C2-Matching's two-branch extractor: ``forward(lr_up, ref) -> (feat_lr, feat_ref)``.

    The weights start random (PyTorch's default); :meth:`load_weights` reads C2-Matching's
    ``feature_extraction.pth`` or a refsr file.

    Args:
        trainable: leave ``requires_grad`` on (for contrastive training); otherwise frozen and in eval mode.
    """

    def __init__(self, *, trainable: bool = True) -> None:
        super().__init__()
        self.lr_branch = ContrastiveBranch()
        self.ref_branch = ContrastiveBranch()
        if not trainable:
            self.requires_grad_(False)
            self.eval()

    def branch(self, which: str) -> ContrastiveBranch:
        """The branch ``"lr"`` (the official ``image1``) or ``"ref"`` (``image2``)."""
        if which not in ("lr", "ref"):
            raise RefsrError(f"branch must be 'lr' or 'ref'; got {which!r}")
        return self.lr_branch if which == "lr" else self.ref_branch

    def forward(self, lr_up: torch.Tensor, ref: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed both images.

        Args:
            lr_up: ``(N,3,H,W)`` the LR image upsampled x4 (bicubic), RGB float in [0, 1].
            ref: ``(M,3,H',W')`` the reference, RGB float in [0, 1], or ``None``.

        Returns:
            ``(feat_lr (N,256,H//4,W//4), feat_ref (M,256,H'//4,W'//4) or None)``.
        """
        return self.lr_branch(lr_up), (None if ref is None else self.ref_branch(ref))

    def load_weights(self, source: WeightsArg) -> "ContrastiveExtractor":
        """Load weights from a file or state_dict in the official (``feature_extraction_image1.model.*``)
        or refsr (``lr_branch.*``) layout; strict. Returns ``self``."""
        if isinstance(source, Mapping):
            state = dict(source)
        else:
            state = read_checkpoint(source)
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
        if any(k.startswith(tuple(OFFICIAL_PREFIXES.values())) for k in state):
            state = convert_official_contrastive_extractor(state)
        load_state_dict(self, state, source="the contrastive extractor weights")
        return self


_OFFICIAL_KEY = re.compile(
    r"^(feature_extraction_image[12])\.(?:model\.(conv\d_\d)\.(weight|bias)|(mean|std))$"
)


def convert_official_contrastive_extractor(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map C2-Matching's ``feature_extraction.pth`` (``ContrasExtractorSep``) onto
    :class:`ContrastiveExtractor`.

    ``feature_extraction_image1.model.conv1_1.weight`` -> ``lr_branch.conv1_1.weight`` and ``image2`` ->
    ``ref_branch``. The official ``mean`` and ``std`` buffers must hold the ImageNet constants (they are
    constants here) and are dropped. ``module.`` prefixes are stripped.

    Raises:
        RefsrError: unknown, missing or misshapen keys, or normalisation buffers of other values.
    """
    to_ours = {official: ours for ours, official in OFFICIAL_PREFIXES.items()}
    expected = {
        f"{prefix}.model.{conv}.{kind}": (cout, cin, 3, 3) if kind == "weight" else (cout,)
        for prefix in OFFICIAL_PREFIXES.values()
        for conv, (cin, cout) in _CHANNELS.items()
        for kind in ("weight", "bias")
    }
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    misshapen: list[str] = []
    seen: set[str] = set()
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        seen.add(key)
        found = _OFFICIAL_KEY.match(key)
        if found is None or not isinstance(value, torch.Tensor):
            unexpected.append(key)
            continue
        prefix, conv, kind, buffer = found.groups()
        if buffer is not None:
            constant = IMAGENET_MEAN if buffer == "mean" else IMAGENET_STD
            reference = torch.tensor(constant, dtype=torch.float64)
            if value.numel() != 3 or not torch.allclose(value.double().flatten(), reference, atol=1e-6):
                raise RefsrError(
                    f"{key} must hold the ImageNet {buffer} {constant}; got {value.flatten().tolist()}"
                )
            continue
        if key not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != expected[key]:
            misshapen.append(f"{key} {tuple(value.shape)} != {expected[key]}")
        else:
            converted[f"{to_ours[prefix]}.{conv}.{kind}"] = value
    missing = sorted(k for k in expected if k not in seen)
    if unexpected or missing or misshapen:
        parts = []
        problems = (
            ("missing keys", missing), ("unexpected keys", sorted(unexpected)), ("wrong shapes", misshapen)
        )
        for what, keys in problems:
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 6 else ""
                parts.append(f"{what}: " + ", ".join(keys[:6]) + more)
        raise RefsrError(
            "not C2-Matching's feature_extraction.pth (ContrasExtractorSep): " + "; ".join(parts)
        )
    return converted
