"""VGG19's convolutional part as a named feature extractor, with weights from a file the user provides.

The architecture is Simonyan & Zisserman's VGG19 ("E" configuration): 16 convolutions 3x3 with padding 1,
each followed by a ReLU, in five stages separated by 2x2 max pooling. Every layer has a name,
``conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..., conv5_4, relu5_4, pool5``, so that losses and
texture extractors can ask for ``conv5_4`` (MASA-SR's perceptual loss) or ``relu3_1`` (AMSA's textures) by
name. The network stops after the last layer asked for.

No weights ship with refsr. :func:`load_vgg19_weights` reads a file the user downloaded, in either layout:

- torchvision's ``vgg19`` checkpoint (``vgg19-dcbb9e9d.pth``): ``features.<i>.weight`` / ``.bias`` where
  ``i`` is the position in ``torchvision.models.vgg19().features`` (0, 2, 5, 7, 10, ...); the
  ``classifier.*`` entries are ignored;
- refsr's own: ``conv1_1.weight``, ``conv1_1.bias``, ... (what ``VGG19Features.state_dict()`` holds).

Inputs are RGB in [0, 1]; the ImageNet normalisation that torchvision's weights expect is applied inside.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from refsr.errors import RefsrError
from refsr.weights_io import read_checkpoint

__all__ = [
    "VGG19_LAYERS",
    "VGG19_CONVS",
    "TORCHVISION_FEATURE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEXTURE_LEVELS",
    "VGG19Features",
    "load_vgg19_weights",
]

# (stage, number of convolutions, output channels) of VGG19.
_STAGES = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The VGG19 layers that TTSR, C2-Matching, AMSA and DATSR take their textures from, coarsest first:
#: (layer, channels, resolution relative to relu3_1).
TEXTURE_LEVELS: tuple[tuple[str, int, int], ...] = (("relu3_1", 256, 1), ("relu2_1", 128, 2), ("relu1_1", 64, 4))


def _layer_table() -> tuple[tuple[str, ...], dict[str, int]]:
    """All layer names in order, and each convolution's index in torchvision's ``features``."""
    names: list[str] = []
    for stage, convs, _ in _STAGES:
        for i in range(1, convs + 1):
            names += [f"conv{stage}_{i}", f"relu{stage}_{i}"]
        names.append(f"pool{stage}")
    # torchvision's features is the same flat sequence (conv, ReLU, ..., MaxPool), so positions coincide.
    index = {name: position for position, name in enumerate(names) if name.startswith("conv")}
    return tuple(names), index


VGG19_LAYERS, TORCHVISION_FEATURE_INDEX = _layer_table()
VGG19_CONVS: tuple[str, ...] = tuple(name for name in VGG19_LAYERS if name.startswith("conv"))


class VGG19Features(nn.Module):
    """VGG19 up to the last of ``layers``, returning the named layers' outputs.

    Args:
        layers: names from :data:`VGG19_LAYERS` whose outputs ``forward`` returns (``conv*`` outputs are
            before their ReLU).
        normalize_input: subtract the ImageNet mean and divide by its std first, as torchvision's weights
            expect of RGB input in [0, 1].
        trainable: leave ``requires_grad`` on; by default the network is frozen and in eval mode (it is a
            fixed feature extractor for losses; gradients still flow to the input).

    The parameters are named after the layers (``conv1_1.weight``); the normalisation constants are
    non-persistent buffers, so ``state_dict()`` holds the convolutions only. The weights start random
    (PyTorch's default); :func:`load_vgg19_weights` fills them from a file or state_dict.
    """

    def __init__(
        self,
        layers: Sequence[str] = ("conv5_4",),
        *,
        normalize_input: bool = True,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if not layers or unknown:
            raise RefsrError(
                f"unknown VGG19 layer(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"choose from {VGG19_LAYERS[0]} ... {VGG19_LAYERS[-1]}"
            )
        self.outputs = layers
        last = max(VGG19_LAYERS.index(name) for name in layers)
        in_channels = 3
        for name in VGG19_LAYERS[: last + 1]:
            if name.startswith("conv"):
                out_channels = _STAGES[int(name[4]) - 1][2]
                self.add_module(name, nn.Conv2d(in_channels, out_channels, 3, padding=1))
                in_channels = out_channels
            elif name.startswith("relu"):
                self.add_module(name, nn.ReLU(inplace=False))
            else:
                self.add_module(name, nn.MaxPool2d(2, stride=2))
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if not trainable:
            self.requires_grad_(False)
            self.eval()

    @property
    def convs(self) -> tuple[str, ...]:
        """Names of the convolutions this (possibly truncated) network holds."""
        return tuple(name for name, _ in self.named_children() if name.startswith("conv"))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x (N,3,H,W)`` RGB float in [0, 1] -> ``{layer name: (N,C,H',W')}`` for each asked-for layer.

        Each pooling halves H and W (floor), so ``conv5_4`` is at ``H // 16``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise RefsrError(f"VGG19 expects (N, 3, H, W) RGB images; got shape {tuple(x.shape)}")
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted = set(self.outputs)
        found: dict[str, torch.Tensor] = {}
        for name, layer in self.named_children():
            x = layer(x)
            if name in wanted:
                found[name] = x
                if len(found) == len(wanted):
                    break
        return {name: found[name] for name in self.outputs}

    def extra_repr(self) -> str:
        return f"outputs={self.outputs}, normalize_input={self.normalize_input}"


_OURS = re.compile(r"^(conv\d_\d)\.(weight|bias)$")
_TORCHVISION = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def _to_our_names(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a torchvision- or refsr-layout VGG19 state_dict to refsr's names; also return unknown keys."""
    conv_at = {index: name for name, index in TORCHVISION_FEATURE_INDEX.items()}
    renamed: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("classifier."):
            continue  # torchvision's fully connected head; not part of the feature extractor
        ours, tv = _OURS.match(key), _TORCHVISION.match(key)
        if ours and ours.group(1) in TORCHVISION_FEATURE_INDEX:
            renamed[key] = value
        elif tv and int(tv.group(1)) in conv_at:
            renamed[f"{conv_at[int(tv.group(1))]}.{tv.group(2)}"] = value
        else:
            unknown.append(key)
    return renamed, unknown


def load_vgg19_weights(
    model: VGG19Features, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]
) -> VGG19Features:
    """Load VGG19 weights into ``model`` from a file or a state_dict, in torchvision's or refsr's layout.

    Files are read with :func:`refsr.weights_io.read_checkpoint` (``.safetensors``, or ``.pth`` with
    ``weights_only=True``). Layers beyond the model's last one are ignored, as is torchvision's
    ``classifier``; every convolution the model has must be present with the right shape.

    Args:
        model: the extractor to fill.
        source: a path, or a ``{name: tensor}`` mapping.

    Returns:
        ``model``, for chaining.

    Raises:
        RefsrError: unreadable file, keys of neither layout, or missing / misshapen convolutions.
    """
    if isinstance(source, Mapping):
        state = dict(source)
        where = "the VGG19 state_dict"
    else:
        state = read_checkpoint(source)
        where = f"{source}"
    renamed, unknown = _to_our_names(state)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        raise RefsrError(
            f"{where}: not a VGG19 checkpoint in torchvision's (features.N.weight) or refsr's "
            f"(conv1_1.weight) layout; unexpected keys: {shown}"
        )
    own = model.state_dict()
    missing = [key for key in own if key not in renamed]
    misshapen = [
        f"{key} {tuple(renamed[key].shape)} != {tuple(own[key].shape)}"
        for key in own
        if key in renamed and tuple(renamed[key].shape) != tuple(own[key].shape)
    ]
    if missing or misshapen:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        if misshapen:
            parts.append("wrong shapes: " + ", ".join(misshapen[:8]))
        raise RefsrError(f"{where}: does not fit VGG19 up to {model.convs[-1]}: " + "; ".join(parts))
    model.load_state_dict(OrderedDict((key, renamed[key]) for key in own), strict=True)
    return model
