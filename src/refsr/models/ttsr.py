"""TTSR: Texture Transformer Network for reference-based image super-resolution (x4).

Paper: Fuzhi Yang, Huan Yang, Jianlong Fu, Hongtao Lu, Baining Guo, "Learning Texture Transformer Network
for Image Super-Resolution", CVPR 2020.
Official code: https://github.com/researchmm/TTSR at commit 550e4c9 (``model/{TTSR,MainNet,LTE,
SearchTransfer}.py``, ``dataset/cufed.py``, ``trainer.py``, ``utils.py``). Written from reading that code; the
paper was not at hand, so where the two might differ this follows the code. Its released checkpoints
(``TTSR-rec.pt``, ``TTSR.pt``) and MMagic's TTSR checkpoints (``generator.*`` = ``TTSRNet``, ``extractor.*`` =
``LTE``) load through :func:`convert_official_ttsr`.

Pipeline (:class:`TTSR`, one forward), as coded officially:

1. **Inputs.** ``LR↑``: the 8-bit LR enlarged x4 with PIL bicubic; ``Ref↓↑``: the 8-bit Ref reduced x4 and
   enlarged back, both with PIL bicubic (:meth:`TTSR.make_ref_down`; ``ref_down=`` takes Ref↓ as an
   evaluation pipeline made it). The network proper works on images in [-1, 1]: ``2 x - 1`` in, and its
   output (clamped to [-1, 1] by the last layer) comes back as ``(y + 1) / 2``, so ours is in [0, 1].
2. **Learnable texture extractor** (LTE, :class:`refsr.models.vgg.VGG19Features`): VGG19 up to relu3_1,
   ImageNet input normalisation, *trained* with the network (the official learning rate is 1e-5 against
   1e-4). Q = relu3_1(LR↑), K = relu3_1(Ref↓↑), V = relu1_1, relu2_1, relu3_1 of the Ref.
3. **Hard and soft attention** (:meth:`TTSR.match`, :func:`refsr.matching.dense.match_dense`): every 3x3
   patch of Q (zero padding) against every 3x3 patch of K, cosine similarity (``F.normalize``); the argmax is
   the hard attention, the max value S the soft attention. Exhaustive: ``h*w x (H/4)*(W/4)`` patch pairs.
4. **Transfer** (:func:`refsr.matching.transfer.fold_transfer`): the 3x3 / 6x6 / 12x12 patches of V
   around the match (stride 1 / 2 / 4, padding 1 / 2 / 4), folded back and divided by 9: T3 at LR size,
   T2 at x2, T1 at x4.
5. **Main network** (:class:`TTSRMainNet`): a shallow encoder (conv + ReLU, 16 ResBlocks, conv, + skip),
   then three stages at x1, x2, x4. Each stage adds ``conv(cat[F, T]) * S`` to its newest features (S
   bicubic-upsampled x2 / x4, *no* ReLU on that conv; the official code has it commented out), stages 2 and 3
   first make the new scale with a sub-pixel conv (conv to 4 nf, PixelShuffle, ReLU) and then exchange
   features across scales (CSFI, :class:`CrossScaleFusion`: bicubic + 1x1 conv upwards, stride-2 3x3 convs
   downwards, each followed by a ReLU; ``ReLU(conv(cat[own, others...]))`` per scale), and every scale
   ends with ResBlocks and a conv, added to its input. A last cross-scale merge into x4, a 3x3 conv to nf/2
   and a 1x1 conv to RGB (no activation between), clamped to [-1, 1].
   ResBlock: ``x + conv(ReLU(conv(x)))`` (:class:`refsr.models.masa.ResBlock`; ``res_scale`` is 1).
   Bicubic is ``F.interpolate(mode="bicubic", align_corners=False)`` (PyTorch's a = -0.75).

Parameters: the main network 6,174,275 and the LTE 555,328 (the official LTE also stores its ImageNet
normalisation as a frozen 1x1 conv, 12 values, which are constants here), 6,729,603 in all. The official
model also holds ``LTE_copy``, a frozen copy of the LTE reloaded from it at every step for the transferal
perceptual loss (7,284,955 parameters with it); the released checkpoints omit it, and so does this model.

Sizes: any LR size; the Ref sides must divide by 4 (relu3_1 and the unfolds line up). The official test
loader crops the HR and the Ref to multiples of 4 (top-left), makes the LR and Ref↓ with PIL bicubic and uses
one reference (CUFED5 level 1); :data:`SizeRule` pads instead, for any input. The official metric is Y with
TTSR's own coefficients (/256), no border crop (``refsr eval --protocol ttsr``).

Where this differs from the official code (the outputs do not):

1. The search runs in chunks of query positions (:func:`match_dense`), never materialising the
   ``(H/4 * W/4) x (h*w)`` similarity matrix; the transfer computes each output pixel from its (at most) 9
   sources instead of unfolding the Ref maps (the x4 unfold alone is ``64 * 144 * H/4 * W/4`` values).
2. The ImageNet normalisation is ``(x - mean) / std`` rather than a 1x1 conv with those constants; the
   official LTE's input ``(x + 1) / 2`` is taken as the [0, 1] image itself. Both agree to rounding.
3. Images are RGB on both sides (imageio reads RGB), so nothing is flipped.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.matching.correspondence import Correspondence
from refsr.matching.dense import match_dense
from refsr.matching.transfer import fold_transfer
from refsr.models._base import RefSRModel
from refsr.models._blocks import ResBlock  # TTSR's ResBlock with res_scale 1: conv-ReLU-conv + x
from refsr.models._convert import KeyRenames, check_keys
from refsr.models._registry import build_variant, register_converter, register_model
from refsr.models._size import SizeRule
from refsr.models.contrastive_extractor import WeightsArg
from refsr.models.vgg import IMAGENET_MEAN, IMAGENET_STD, TEXTURE_LEVELS, VGG19Features, load_vgg19_weights

__all__ = [
    "TTSR",
    "TTSRMainNet",
    "CrossScaleFusion",
    "ttsr",
    "ttsr_lite",
    "convert_official_ttsr",
    "official_key",
    "OFFICIAL_PARAMETERS",
    "MAIN_NET_PARAMETERS",
]

#: Parameters of the official ``TTSR`` module with ``LTE_copy`` (keys/TTSR_full_incl_LTE_copy.txt).
OFFICIAL_PARAMETERS = 7_284_955
#: Parameters of the official ``MainNet(num_res_blocks=[16, 16, 8, 4], n_feats=64)``.
MAIN_NET_PARAMETERS = 6_174_275

_SCALE = 4


def _conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


def _bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


def _blocks(nf: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(nf) for _ in range(count)))


# ---------------------------------------------------------------------------------------------------------
# Blocks


class _Encoder(nn.Module):
    """The shallow feature extractor (official ``SFE``): ``x0 + tail(blocks(x0))``, ``x0 = ReLU(head(x))``."""

    def __init__(self, nf: int, blocks: int) -> None:
        super().__init__()
        self.head = _conv3(3, nf)
        self.blocks = _blocks(nf, blocks)
        self.tail = _conv3(nf, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.head(x))
        return self.tail(self.blocks(x)) + x


class CrossScaleFusion(nn.Module):
    """Cross-scale feature integration (official ``CSFI2``, ``CSFI3`` and the merge of ``MergeTail``).

    Features at scales ``scales`` (1, 2, 4: sizes ``h``, ``2h``, ``4h``) are exchanged: towards a larger
    scale by bicubic upsampling then a 1x1 conv (``x1_to_x2``), towards a smaller one by stride-2 3x3 convs,
    one per halving (``x4_to_x1.0``, ``x4_to_x1.1``), each conv followed by a ReLU. Each target scale
    ``t`` then gets ``ReLU(merge_x{t}(cat[own, from the other scales in increasing order]))``.

    Args:
        nf: channels at every scale.
        scales: the scales present, increasing.
        targets: the scales to produce (default: all).
    """

    def __init__(self, nf: int, scales: Sequence[int], targets: Sequence[int] | None = None) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.targets = tuple(targets) if targets is not None else self.scales
        for target in self.targets:
            for source in self.scales:
                if source < target:
                    self.add_module(f"x{source}_to_x{target}", nn.Conv2d(nf, nf, 1))
                elif source > target:
                    halvings = int(math.log2(source // target))
                    self.add_module(f"x{source}_to_x{target}",
                                    nn.ModuleList(_conv3(nf, nf, stride=2) for _ in range(halvings)))
            self.add_module(f"merge_x{target}", _conv3(len(self.scales) * nf, nf))

    def _carry(self, x: torch.Tensor, source: int, target: int) -> torch.Tensor:
        path = getattr(self, f"x{source}_to_x{target}")
        if source < target:
            return F.relu(path(_bicubic(x, target // source)))
        for conv in path:
            x = F.relu(conv(x))
        return x

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``feats``: one ``(N, nf, s*h, s*w)`` map per scale ``s`` -> one map per target scale."""
        by_scale = dict(zip(self.scales, feats))
        outputs = []
        for target in self.targets:
            parts = [by_scale[target]] + [self._carry(by_scale[s], s, target) for s in self.scales if s != target]
            outputs.append(F.relu(getattr(self, f"merge_x{target}")(torch.cat(parts, dim=1))))
        return outputs

    def extra_repr(self) -> str:
        return f"scales={self.scales}, targets={self.targets}"


class _Stage(nn.Module):
    """One stage of the main network at scales ``scales``; the largest is the newest, the one that takes
    the textures (and is made by ``up``, a sub-pixel x2 conv, except in the first stage)."""

    def __init__(self, nf: int, scales: Sequence[int], texture_channels: int, blocks: int) -> None:
        super().__init__()
        self.scales = tuple(scales)
        if len(self.scales) > 1:
            self.up = _conv3(nf, 4 * nf)
            self.cross = CrossScaleFusion(nf, self.scales)
        self.fuse = _conv3(nf + texture_channels, nf)
        for s in self.scales:
            self.add_module(f"blocks_x{s}", _blocks(nf, blocks))
            self.add_module(f"tail_x{s}", _conv3(nf, nf))

    def forward(self, feats: list[torch.Tensor], texture: torch.Tensor, attention: torch.Tensor
                ) -> list[torch.Tensor]:
        """``feats``: the previous stage's maps (one fewer scale, or the encoder's for stage 1);
        ``texture``, ``attention``: at the newest scale. Returns one map per scale."""
        feats = list(feats)
        if len(self.scales) > 1:
            feats.append(F.relu(F.pixel_shuffle(self.up(feats[-1]), 2)))
        newest = feats[-1]
        feats[-1] = newest + self.fuse(torch.cat((newest, texture), dim=1)) * attention
        mixed = self.cross(feats) if len(self.scales) > 1 else feats
        return [x + getattr(self, f"tail_x{s}")(getattr(self, f"blocks_x{s}")(m))
                for s, x, m in zip(self.scales, feats, mixed)]


class TTSRMainNet(nn.Module):
    """TTSR's main network (official ``MainNet``); images in [-1, 1].

    Args:
        nf: channels (64).
        num_res_blocks: ResBlocks of the encoder and of each scale in stages 1, 2, 3 ((16, 16, 8, 4)).
    """

    def __init__(self, nf: int = 64, num_res_blocks: Sequence[int] = (16, 16, 8, 4)) -> None:
        super().__init__()
        blocks = tuple(num_res_blocks)
        if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks) \
                or isinstance(nf, bool) or not isinstance(nf, int) or nf < 2:
            raise RefsrError(f"TTSR needs nf >= 2 and four non-negative block counts; got nf={nf!r}, "
                             f"num_res_blocks={num_res_blocks!r}")
        self.encoder = _Encoder(nf, blocks[0])
        self.stage1 = _Stage(nf, (1,), TEXTURE_LEVELS[0][1], blocks[1])
        self.stage2 = _Stage(nf, (1, 2), TEXTURE_LEVELS[1][1], blocks[2])
        self.stage3 = _Stage(nf, (1, 2, 4), TEXTURE_LEVELS[2][1], blocks[3])
        self.merge = CrossScaleFusion(nf, (1, 2, 4), targets=(4,))
        self.out1 = _conv3(nf, nf // 2)
        self.out2 = nn.Conv2d(nf // 2, 3, 1)

    def forward(self, x: torch.Tensor, attention: torch.Tensor, textures: Sequence[torch.Tensor]) -> torch.Tensor:
        """``x (N,3,h,w)`` in [-1, 1], ``attention (N,1,h,w)`` (S), ``textures`` T3 ``(N,256,h,w)``, T2
        ``(N,128,2h,2w)``, T1 ``(N,64,4h,4w)`` -> ``(N,3,4h,4w)`` in [-1, 1]."""
        feats = [self.encoder(x)]
        for stage, texture, factor in zip((self.stage1, self.stage2, self.stage3), textures, (1, 2, 4)):
            feats = stage(feats, texture, attention if factor == 1 else _bicubic(attention, factor))
        (merged,) = self.merge(feats)
        return self.out2(self.out1(merged)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------------------
# The model


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def _pil_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image`` as 8 bits, PIL bicubic to ``size``, back to float in [0, 1] (no gradient)."""
    return imresize(_to_uint8(image), size=size, kernel="pil").to(image.dtype) / 255


class TTSR(RefSRModel):
    """TTSR (CVPR 2020), x4. See the module docstring for the pipeline.

    Args:
        nf: channels of the main network (64).
        num_res_blocks: ResBlocks of the encoder and of each scale in stages 1, 2, 3 ((16, 16, 8, 4)).
        match_max_bytes: working-memory budget of one chunk of the search.

    The texture extractor starts random; :func:`ttsr` loads ImageNet VGG19 weights into it when given
    ``vgg_weights`` (the official LTE starts from torchvision's).
    """

    scale = _SCALE
    uses_ref = True
    size_rule = SizeRule(lr_multiple=1, ref_multiple=_SCALE, min_lr=1, min_ref=_SCALE, pad_mode="replicate")

    def __init__(self, *, nf: int = 64, num_res_blocks: Sequence[int] = (16, 16, 8, 4),
                 match_max_bytes: int = 256 * 2**20) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(nf=nf, num_res_blocks=tuple(num_res_blocks))
        self.match_max_bytes = match_max_bytes
        self.texture_extractor = VGG19Features(tuple(name for name, _, _ in reversed(TEXTURE_LEVELS)),
                                               trainable=True)
        self.restoration = TTSRMainNet(nf, num_res_blocks)

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def make_ref_down(ref: torch.Tensor) -> torch.Tensor:
        """Ref↓ as the official loader makes it: ``ref`` as 8 bits, PIL bicubic ÷4, float in [0, 1].

        ``ref (N,3,H,W)``, ``H`` and ``W`` multiples of 4 -> ``(N,3,H/4,W/4)``, no gradient.
        """
        return _pil_resize(ref, (ref.shape[-2] // _SCALE, ref.shape[-1] // _SCALE))

    def _check_inputs(self, lr: Any, ref: Any, ref_down: Any) -> None:
        named = [("lr", lr), ("ref", ref)] + ([("ref_down", ref_down)] if ref_down is not None else [])
        for name, x in named:
            if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(f"TTSR needs {name} as a float (N, 3, H, W) RGB tensor; got {shape}")
        if ref.shape[0] != lr.shape[0]:
            raise RefsrError(f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}")
        height, width = ref.shape[-2:]
        if height % _SCALE or width % _SCALE or min(height, width) < self.size_rule.min_ref:
            raise RefsrError(f"TTSR needs a Ref whose sides divide by {_SCALE}; got {height}x{width}: pad or crop "
                             f"it (refsr.upscale pads)")
        expected = (ref.shape[0], 3, height // _SCALE, width // _SCALE)
        if ref_down is not None and tuple(ref_down.shape) != expected:
            raise RefsrError(f"ref_down must be the Ref at 1/4 size, {expected}; got {tuple(ref_down.shape)}")

    # ------------------------------------------------------------------ stages

    def encode(self, lr: torch.Tensor, ref: torch.Tensor, ref_down: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The LTE's Q = relu3_1(LR↑), K = relu3_1(Ref↓↑) and V = [relu3_1, relu2_1, relu1_1](Ref)."""
        h, w = lr.shape[-2:]
        if ref_down is None:
            ref_down = self.make_ref_down(ref)
        lr_up = _pil_resize(lr, (h * _SCALE, w * _SCALE))
        ref_down_up = _pil_resize(ref_down.to(ref.dtype), tuple(ref.shape[-2:]))
        query = self.texture_extractor(lr_up)["relu3_1"]
        key = self.texture_extractor(ref_down_up)["relu3_1"]
        values = self.texture_extractor(ref)
        return query, key, [values[name] for name, _, _ in TEXTURE_LEVELS]

    def match(self, query: torch.Tensor, key: torch.Tensor) -> Correspondence:
        """The search: top-1 cosine of 3x3 patches (zero padding) of Q among all of K's."""
        return match_dense(query, key, patch_size=3, max_bytes=self.match_max_bytes)

    def transfer(self, corr: Correspondence, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """T3, T2, T1: the matched V patches folded back and divided by 9."""
        return fold_transfer(corr, values, scales=tuple(s for _, _, s in TEXTURE_LEVELS))

    def decode(self, lr: torch.Tensor, attention: torch.Tensor, textures: Sequence[torch.Tensor]) -> torch.Tensor:
        """``lr (N,3,h,w)`` in [0, 1], ``attention (N,h,w)``, the textures -> SR ``(N,3,4h,4w)`` in [0, 1]."""
        out = self.restoration(lr * 2 - 1, attention.unsqueeze(1), textures)
        return (out + 1) / 2

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, *, ref_down: torch.Tensor | None = None,
                return_correspondence: bool = False) -> torch.Tensor | tuple[torch.Tensor, Correspondence]:
        """Super-resolve ``lr`` x4 with textures from ``ref``.

        Args:
            lr: ``(N,3,h,w)`` RGB float in [0, 1].
            ref: ``(N,3,H,W)`` RGB float in [0, 1], ``H`` and ``W`` multiples of 4.
            ref_down: ``(N,3,H/4,W/4)``, Ref↓ as an evaluation pipeline made it; made from ``ref`` with
                :meth:`make_ref_down` (8-bit, PIL bicubic) when omitted.
            return_correspondence: also return the search's :class:`~refsr.matching.Correspondence`
                (LR position to Ref↓ position; ``score`` is the soft attention S).

        Returns:
            ``(N,3,4h,4w)`` RGB in [0, 1], or ``(sr, correspondence)``.
        """
        self._check_inputs(lr, ref, ref_down)
        query, key, values = self.encode(lr, ref, ref_down)
        corr = self.match(query, key)
        del query, key
        sr = self.decode(lr, corr.score, self.transfer(corr, values))
        return (sr, corr) if return_correspondence else sr

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


# ---------------------------------------------------------------------------------------------------------
# Builders


def _load_vgg(model: TTSR, vgg_weights: WeightsArg) -> TTSR:
    if vgg_weights is not None:
        path = os.path.expanduser(vgg_weights) if isinstance(vgg_weights, (str, os.PathLike)) else vgg_weights
        load_vgg19_weights(model.texture_extractor, path)
    return model


@register_model("ttsr", paper="TTSR (CVPR 2020)")
def ttsr(*, vgg_weights: WeightsArg = None, **kwargs: Any) -> TTSR:
    """TTSR (CVPR 2020), x4: official architecture (6,729,603 parameters; 7,284,955 with the LTE copy)."""
    return _load_vgg(build_variant(TTSR, "ttsr", {}, kwargs), vgg_weights)


@register_model("ttsr-lite", paper="TTSR (CVPR 2020)")
def ttsr_lite(*, vgg_weights: WeightsArg = None, **kwargs: Any) -> TTSR:
    """TTSR (CVPR 2020) with 32 channels and half the ResBlocks, sized for short training runs."""
    return _load_vgg(build_variant(TTSR, "ttsr-lite", dict(nf=32, num_res_blocks=(8, 8, 4, 2)), kwargs), vgg_weights)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints


# (official, ours) of the official researchmm/TTSR layout (``MainNet.*``, ``LTE.*``).
_OFFICIAL = KeyRenames([
    ("MainNet.SFE.conv_head.", "restoration.encoder.head."),
    ("MainNet.SFE.RBs.{a}.conv{b}.", "restoration.encoder.blocks.{a}.conv{b}."),
    ("MainNet.SFE.conv_tail.", "restoration.encoder.tail."),
    ("MainNet.conv11_head.", "restoration.stage1.fuse."),
    ("MainNet.RB11.{a}.conv{b}.", "restoration.stage1.blocks_x1.{a}.conv{b}."),
    ("MainNet.conv11_tail.", "restoration.stage1.tail_x1."),
    ("MainNet.conv12.", "restoration.stage2.up."),
    ("MainNet.conv22_head.", "restoration.stage2.fuse."),
    ("MainNet.ex12.conv12.", "restoration.stage2.cross.x1_to_x2."),
    ("MainNet.ex12.conv21.", "restoration.stage2.cross.x2_to_x1.0."),
    ("MainNet.ex12.conv_merge{a}.", "restoration.stage2.cross.merge_x{a}."),
    ("MainNet.RB2{a}.{b}.conv{c}.", "restoration.stage2.blocks_x{a}.{b}.conv{c}."),
    ("MainNet.conv2{a}_tail.", "restoration.stage2.tail_x{a}."),
    ("MainNet.conv23.", "restoration.stage3.up."),
    ("MainNet.conv33_head.", "restoration.stage3.fuse."),
    ("MainNet.ex123.conv12.", "restoration.stage3.cross.x1_to_x2."),
    ("MainNet.ex123.conv13.", "restoration.stage3.cross.x1_to_x4."),
    ("MainNet.ex123.conv21.", "restoration.stage3.cross.x2_to_x1.0."),
    ("MainNet.ex123.conv23.", "restoration.stage3.cross.x2_to_x4."),
    ("MainNet.ex123.conv31_1.", "restoration.stage3.cross.x4_to_x1.0."),
    ("MainNet.ex123.conv31_2.", "restoration.stage3.cross.x4_to_x1.1."),
    ("MainNet.ex123.conv32.", "restoration.stage3.cross.x4_to_x2.0."),
    ("MainNet.ex123.conv_merge1.", "restoration.stage3.cross.merge_x1."),
    ("MainNet.ex123.conv_merge2.", "restoration.stage3.cross.merge_x2."),
    ("MainNet.ex123.conv_merge3.", "restoration.stage3.cross.merge_x4."),
    ("MainNet.RB31.{a}.conv{b}.", "restoration.stage3.blocks_x1.{a}.conv{b}."),
    ("MainNet.RB32.{a}.conv{b}.", "restoration.stage3.blocks_x2.{a}.conv{b}."),
    ("MainNet.RB33.{a}.conv{b}.", "restoration.stage3.blocks_x4.{a}.conv{b}."),
    ("MainNet.conv31_tail.", "restoration.stage3.tail_x1."),
    ("MainNet.conv32_tail.", "restoration.stage3.tail_x2."),
    ("MainNet.conv33_tail.", "restoration.stage3.tail_x4."),
    ("MainNet.merge_tail.conv13.", "restoration.merge.x1_to_x4."),
    ("MainNet.merge_tail.conv23.", "restoration.merge.x2_to_x4."),
    ("MainNet.merge_tail.conv_merge.", "restoration.merge.merge_x4."),
    ("MainNet.merge_tail.conv_tail{a}.", "restoration.out{a}."),
    ("LTE.slice1.0.", "texture_extractor.conv1_1."),
    ("LTE.slice2.2.", "texture_extractor.conv1_2."),
    ("LTE.slice2.5.", "texture_extractor.conv2_1."),
    ("LTE.slice3.7.", "texture_extractor.conv2_2."),
    ("LTE.slice3.10.", "texture_extractor.conv3_1."),
])

# (MMagic, ours) of MMagic's / MMEditing's TTSR (``generator.*`` = TTSRNet, ``extractor.*`` = LTE).
_MMAGIC = KeyRenames([
    ("generator.sfe.conv_first.", "restoration.encoder.head."),
    ("generator.sfe.body.{a}.conv{b}.", "restoration.encoder.blocks.{a}.conv{b}."),
    ("generator.sfe.conv_last.", "restoration.encoder.tail."),
    ("generator.conv_first1.", "restoration.stage1.fuse."),
    ("generator.res_block1.{a}.conv{b}.", "restoration.stage1.blocks_x1.{a}.conv{b}."),
    ("generator.conv_last1.", "restoration.stage1.tail_x1."),
    ("generator.up1.upsample_conv.", "restoration.stage2.up."),
    ("generator.conv_first2.", "restoration.stage2.fuse."),
    ("generator.csfi2.conv1to2.", "restoration.stage2.cross.x1_to_x2."),
    ("generator.csfi2.conv2to1.", "restoration.stage2.cross.x2_to_x1.0."),
    ("generator.csfi2.conv_merge{a}.", "restoration.stage2.cross.merge_x{a}."),
    ("generator.res_block2_{a}.{b}.conv{c}.", "restoration.stage2.blocks_x{a}.{b}.conv{c}."),
    ("generator.conv_last2_{a}.", "restoration.stage2.tail_x{a}."),
    ("generator.up2.upsample_conv.", "restoration.stage3.up."),
    ("generator.conv_first3.", "restoration.stage3.fuse."),
    ("generator.csfi3.conv1to2.", "restoration.stage3.cross.x1_to_x2."),
    ("generator.csfi3.conv1to4.", "restoration.stage3.cross.x1_to_x4."),
    ("generator.csfi3.conv2to1.", "restoration.stage3.cross.x2_to_x1.0."),
    ("generator.csfi3.conv2to4.", "restoration.stage3.cross.x2_to_x4."),
    ("generator.csfi3.conv4to1_1.", "restoration.stage3.cross.x4_to_x1.0."),
    ("generator.csfi3.conv4to1_2.", "restoration.stage3.cross.x4_to_x1.1."),
    ("generator.csfi3.conv4to2.", "restoration.stage3.cross.x4_to_x2.0."),
    ("generator.csfi3.conv_merge{a}.", "restoration.stage3.cross.merge_x{a}."),
    ("generator.res_block3_1.{a}.conv{b}.", "restoration.stage3.blocks_x1.{a}.conv{b}."),
    ("generator.res_block3_2.{a}.conv{b}.", "restoration.stage3.blocks_x2.{a}.conv{b}."),
    ("generator.res_block3_3.{a}.conv{b}.", "restoration.stage3.blocks_x4.{a}.conv{b}."),
    ("generator.conv_last3_1.", "restoration.stage3.tail_x1."),
    ("generator.conv_last3_2.", "restoration.stage3.tail_x2."),
    ("generator.conv_last3_3.", "restoration.stage3.tail_x4."),
    ("generator.merge_features.conv1to4.", "restoration.merge.x1_to_x4."),
    ("generator.merge_features.conv2to4.", "restoration.merge.x2_to_x4."),
    ("generator.merge_features.conv_merge.", "restoration.merge.merge_x4."),
    ("generator.merge_features.conv_last{a}.", "restoration.out{a}."),
    ("extractor.slice1.0.", "texture_extractor.conv1_1."),
    ("extractor.slice2.2.", "texture_extractor.conv1_2."),
    ("extractor.slice2.5.", "texture_extractor.conv2_1."),
    ("extractor.slice3.7.", "texture_extractor.conv2_2."),
    ("extractor.slice3.10.", "texture_extractor.conv3_1."),
])

#: The ImageNet normalisation the official LTE stores as a frozen 1x1 conv (``MeanShift``; MMagic's
#: ``ImgNormalize``): weight ``diag(1 / std)``, bias ``-mean / std``.
_NORMALISATION = {"LTE.sub_mean": _OFFICIAL, "extractor.img_normalize": _MMAGIC}
#: Prefixes of training-only parts that converting drops: the official frozen LTE copy, MMagic's copy,
#: discriminator, losses and data preprocessor.
_DROPPED = ("LTE_copy.", "extractor_copy.", "discriminator.", "perceptual_loss.", "transferal_perceptual_loss.",
            "gan_loss.", "pixel_loss.", "data_preprocessor.")


def official_key(our_key: str) -> str:
    """The official (researchmm/TTSR) key of one of our keys (``restoration.stage3.cross.x4_to_x1.1.weight``
    -> ``MainNet.ex123.conv31_2.weight``). Raises ``KeyError`` for keys with no counterpart."""
    official = _OFFICIAL.to_official(our_key)
    if official is None:
        raise KeyError(our_key)
    return official


def _check_normalisation(state_dict: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The frozen normalisation conv must hold the ImageNet constants (they are constants here)."""
    weight, bias = state_dict.get(prefix + ".weight"), state_dict.get(prefix + ".bias")
    if weight is None and bias is None:
        return
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    expected_weight = torch.diag(1 / std).view(3, 3, 1, 1)
    expected_bias = -torch.tensor(IMAGENET_MEAN, dtype=torch.float64) / std
    good = (isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
            and weight.shape == (3, 3, 1, 1) and bias.shape == (3,)
            and torch.allclose(weight.double(), expected_weight, atol=1e-5)
            and torch.allclose(bias.double(), expected_bias, atol=1e-5))
    if not good:
        raise RefsrError(f"{prefix}.weight/.bias must hold the ImageNet normalisation (weight diag(1/std), "
                         f"bias -mean/std); this checkpoint has other values or shapes")


def _skeleton(state_dict: Mapping[str, torch.Tensor], layout: KeyRenames) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{official key: (our key, shape)}`` of a complete checkpoint with the checkpoint's nf and block counts."""
    head = layout.to_official("restoration.encoder.head.weight")
    nf = int(state_dict[head].shape[0]) if isinstance(state_dict.get(head), torch.Tensor) else 64

    def count(our_prefix: str, default: int) -> int:
        official = layout.to_official(our_prefix + "0.conv1.weight")
        assert official is not None
        pattern = re.compile(re.escape(official[: -len("0.conv1.weight")]) + r"(\d+)\.")
        found = [int(m.group(1)) for m in map(pattern.match, state_dict) if m]
        return max(found) + 1 if found else default

    blocks = (count("restoration.encoder.blocks.", 16), count("restoration.stage1.blocks_x1.", 16),
              count("restoration.stage2.blocks_x1.", 8), count("restoration.stage3.blocks_x1.", 4))
    with torch.device("meta"):
        model = TTSR(nf=nf, num_res_blocks=blocks)
    table = {}
    for key, value in model.state_dict().items():
        official = layout.to_official(key)
        assert official is not None, key
        table[official] = (key, tuple(value.shape))
    return table


@register_converter("ttsr")
def convert_official_ttsr(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official TTSR checkpoint, or MMagic's, onto :class:`TTSR`.

    Accepts the researchmm/TTSR layout (``MainNet.*`` and ``LTE.*``: the released ``TTSR-rec.pt`` and
    ``TTSR.pt``, written without ``LTE_copy``; a full ``state_dict()`` with ``LTE_copy.*`` converts too) and
    MMagic's / MMEditing's (``generator.*`` = ``TTSRNet``, ``extractor.*`` = ``LTE``; its
    ``extractor_copy``, discriminator and loss entries are dropped). Both the main network and the LTE
    must be complete. The LTE's frozen ImageNet normalisation conv (``LTE.sub_mean``,
    ``extractor.img_normalize``) must hold the ImageNet constants and is dropped. Block counts and width are
    read from the checkpoint. MMagic's checkpoint files also pickle training metadata, which refsr's
    ``weights_only`` loading refuses: save their ``state_dict`` entry alone first.

    Raises:
        RefsrError: keys of neither layout, missing, unexpected or misshapen ones (official names).
    """
    kept = {k: v for k, v in state_dict.items() if not k.startswith(_DROPPED)}
    mmagic = any(k.startswith(("generator.", "extractor.")) for k in kept)
    layout, what = (_MMAGIC, "MMagic TTSR checkpoint (generator TTSRNet, extractor LTE)") if mmagic else \
        (_OFFICIAL, "official TTSR checkpoint (model/TTSR.py: MainNet, LTE)")
    normalisation = [prefix for prefix, table in _NORMALISATION.items() if table is layout]
    constants = {key: shape for prefix in normalisation
                 for key, shape in ((prefix + ".weight", (3, 3, 1, 1)), (prefix + ".bias", (3,)))}
    if not kept:
        raise RefsrError(f"not an {what}: the state_dict is empty")
    skeleton = _skeleton(kept, layout)
    check_keys(kept, {k: shape for k, (_, shape) in skeleton.items()}, what=what, optional=constants)
    for prefix in normalisation:
        _check_normalisation(kept, prefix)
    return {skeleton[k][0]: v for k, v in kept.items() if k in skeleton}
