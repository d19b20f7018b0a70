"""AMSA: Accelerated Multi-Scale Aggregation network for reference-based super-resolution (x4).

Paper: Binxin Xia, Yapeng Tian, Yucheng Hang, Wenming Yang, Qingmin Liao, Jie Zhou, "Coarse-to-Fine
Embedded PatchMatch and Multi-Scale Dynamic Aggregation for Reference-based Super-Resolution", AAAI 2022.
Official code: https://github.com/Zj-BinXia/AMSA at commit 538e888 (``AMSA/mmsr/models/archs/
{patch_match_arch,corres_generation_arch,ref_restoration_arch,contras_extractor_arch}.py``,
``mmsr/models/ref_restoration_model.py``, ``mmsr/data/ref_cufed_dataset.py``). Written from the paper and
from reading that code; its released checkpoints load through :func:`convert_official_amsa`.

Pipeline (:class:`AMSA`, one forward):

1. **Reference scales.** Five references: the Ref and four successive PIL-bicubic x0.8 resizes of the
   8-bit Ref (each from the previous one, to ``int(side * 0.8**i)``), each cropped to a multiple of 4 and
   zero-padded (bottom/right) to the working size (:meth:`AMSA.make_ref_scales`). ``ref_scales=`` takes
   them as an evaluation pipeline made them.
2. **Correspondence features** (:meth:`AMSA.encode`): C2-Matching's contrastive extractor
   (:mod:`refsr.models.contrastive_extractor`, frozen) embeds the LR upsampled x4 with PIL bicubic (LR
   branch) and every reference scale (Ref branch) at 1/4 resolution, plus a pyramid: the LR is reduced by
   torch bicubic to /2, /4, /8 (chained) and each brought back x4 by torch bicubic before the LR branch;
   each reference is reduced /2, /4, /8 (chained) before the Ref branch.
3. **CFE-PatchMatch** (:meth:`AMSA.match`, :func:`refsr.matching.patchmatch.match_patchmatch` with that
   pyramid, coarse to fine): top-1 3x3 patch matches of the LR features in each reference scale, all
   scales and samples in one batched call. The finest level is per-pixel L2-normalised, as officially.
   The official similarity ``S`` is the inner product of the (per-pixel normalised) LR patch with the
   L2-normalised Ref patch, in [-3, 3]; it is recomputed here exactly for the final matches.
4. **Offsets** (:func:`match_offsets`): the displacement field of the matches becomes DCN offsets for the
   nine taps at relu3_1 resolution, and x2 / x4 (nearest, magnitudes doubled / quadrupled) for relu2_1 /
   relu1_1, exactly as the official ``index_to_flow`` + ``tensor_shift`` construction (see below).
5. **Textures** (:meth:`AMSA.transfer`): frozen ImageNet VGG19 ``relu1_1, relu2_1, relu3_1`` of the
   reference(s) (:class:`refsr.models.vgg.VGG19Features`; weights from a user file).
6. **Multi-Scale Dynamic Aggregation** (:class:`RestorationNet`, :meth:`AMSA.decode`): for every reference
   scale, from the LR content features (conv + LReLU(0.1) + 16 ResBlocks): at relu3_1, relu2_1, relu1_1 a
   pre-warp DCN (offsets = the match offsets, 1 group, mask from a conv on the *unwarped* Ref feature),
   two convs on ``cat[x, warped]`` that predict a learned offset residual and mask for an 8-group DCN
   (offset = residual + match offsets), LReLU, ``cat[x, aggregated]`` -> head conv + LReLU -> 16
   ResBlocks (+ x) -> conv, PixelShuffle x2, LReLU (relu3, relu2 levels). The five relu1-level results are
   fused with ``softmax_i(10 * S_i)`` (S nearest-upsampled x4 to HR), then conv 64->32, LReLU, conv 32->3,
   plus the bilinear x4 LR (``align_corners=False``).

Modes (``mode=``):

- ``"official"`` reproduces the official code, quirks included, so that released weights give its
  outputs: (a) the VGG textures are taken from the scale-1 reference for all five scales (only offsets and
  similarities differ between scales); (b) the fusion weights of the *last* sample of the batch are used
  for the whole batch (``max_val`` is read after the per-sample loop); (c) PatchMatch with the official
  schedule (1, 1, 1, 4 iterations, coarse to fine) and index propagation. The official PatchMatch
  initialisation is unseeded (``torch.rand``); ours is seeded, so it is deterministic.
- ``"fixed"`` (default) fixes (a) and (b): textures from each reference scale, per-sample fusion
  weights, and uses the paper's schedule (1, 1, 2, 6) with displacement propagation. It takes the same
  weights; the matching options can be overridden in either mode (``schedule=``, ``propagation=``).

Where this follows the official implementation rather than the paper (in both modes):

1. **Offset alignment.** The official final matching level unfolds without padding, so match ``q`` belongs
   to the patch centred at ``q + (1, 1)``; its flow map is zero-padded by 2 at the bottom/right and the
   copy for DCN tap ``(i, j)`` is shifted by ``(i, j)``. Hence tap ``(i, j)`` at position ``p`` uses the
   displacement of the patch centred at ``p - (i-1, j-1)`` (zero where that centre is on or outside the
   border), and samples at ``match + 2 * (i-1, j-1)``. The trained weights expect exactly this, so
   :func:`match_offsets` reproduces it.
2. **Border patches.** Officially, only patches whose 3x3 window lies inside the map take part in the final
   matching, and ``S`` is zero-padded on the 1-pixel border. Our PatchMatch matches zero-padded patches at
   every position but, at the finest level, searches interior key patches only (``key_margin=1``), and
   ``S`` is computed for interior positions only, zero on the border.
3. **Pyramid.** The PatchMatch level sizes and iteration counts follow the official code, but the
   candidate search is refsr's (seeded, projected candidate ranking with an exact polish, see
   :mod:`refsr.matching.patchmatch`); on near-ties it may pick other patches than the official code,
   which itself varies from run to run.
4. **Initialisation** (``RestorationNet``): every ``nn.Conv2d`` ``N(0, 0.02^2)`` with zero bias
   (``srntt_init_weights``), the DCN weights uniform in ``±1/sqrt(9 C)`` with zero bias (DCNv2's own
   init), and every ``conv_offset_mask`` zeroed.
5. **Sizes.** All reference scales and the LR x4 must share one size (the DCNs warp the Ref features onto
   the LR grid). If the Ref is larger than 4x the LR, the LR is zero-padded (bottom/right) to it, as the
   official test loader pads its HR image, and the output is cropped back; the working size is rounded up
   to a multiple of 32 (relu3_1 divisible by 8 for the pyramid).
6. **Channel order** is RGB, as in the official pipeline (``totensor(bgr2rgb=True)``): no flip is needed.

Training (paper Sec. 4.2 and the official stage-3 ymls): the contrastive extractor and the texture VGG are
frozen here (``requires_grad=False``); only the restoration net trains.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.matching.patchmatch import DEFAULT_PROXY_DIM, match_patchmatch, resolve_schedule
from refsr.models._base import RefSRModel
from refsr.models._blocks import ResBlock, conv2d, lrelu
from refsr.models._convert import KeyRenames, check_keys, listing
from refsr.models._registry import build_variant, register_converter, register_model
from refsr.models._size import SizeRule
from refsr.models.contrastive_extractor import (
    ContrastiveExtractor,
    WeightsArg,
    convert_official_contrastive_extractor,
)
from refsr.models.vgg import VGG19Features, load_vgg19_weights
from refsr.ops import deform_conv2d

__all__ = [
    "AMSA",
    "RestorationNet",
    "ContentExtractor",
    "ResBlock",
    "MatchWarp",
    "DynamicAggregation",
    "match_offsets",
    "fusion_weights",
    "load_frozen_parts",
    "official_similarity",
    "make_ref_scales",
    "amsa",
    "amsa_lite",
    "convert_official_amsa",
    "official_key",
    "restoration_config",
    "RESTORATION_PARAMETERS",
    "MODES",
]

#: Parameters of the official ``RestorationNet(ngf=64, n_blocks=16, groups=8)``
#: (keys/AMSA_RestorationNet.txt: 308 entries).
RESTORATION_PARAMETERS = 9_676_454

MODES = ("fixed", "official")

_SCALE = 4
#: relu3_1 is at 1/4 of the HR size and the pyramid halves it three times: HR sides divide by 32.
_HR_MULTIPLE = 32
#: The fusion's softmax temperature (official ``torch.softmax(max_val * 10, dim=1)``).
_SIMILARITY_GAIN = 10.0
#: The texture (VGG19) channels at relu3_1, relu2_1, relu1_1 and their resolution relative to relu3_1.
_TEXTURE_LEVELS = (("relu3_1", 256, 1), ("relu2_1", 128, 2), ("relu1_1", 64, 4))
#: Official match-patch L2 normalisation epsilon (``F.normalize``'s default).
_NORM_EPS = 1e-12



def _lrelu(x: torch.Tensor) -> torch.Tensor:
    # In place is safe: every input here is a fresh conv / pixel-shuffle output whose backward does not
    # read its output.
    return lrelu(x, inplace=True)


# ---------------------------------------------------------------------------------------------------------
# Building blocks


class ContentExtractor(nn.Module):
    """LR content features: conv 3->ngf + LReLU(0.1), then ``n_blocks`` ResBlocks.

    ``(N,3,h,w)`` -> ``(N,ngf,h,w)``.
    """

    def __init__(self, ngf: int, n_blocks: int) -> None:
        super().__init__()
        self.conv_first = conv2d(3, ngf)
        self.body = nn.Sequential(*(ResBlock(ngf) for _ in range(n_blocks)))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.body(_lrelu(self.conv_first(lr)))


class MatchWarp(nn.Module):
    """The pre-warp DCN (official ``DCN_pre_offset``): a 3x3 modulated deformable conv, one group, whose
    offsets are the match offsets as given and whose mask is ``sigmoid(conv(feature))`` (9 channels).

    ``forward(feature (N,C,H,W), offsets (N,18,H,W))`` -> ``(N,C,H,W)``; offsets in
    :func:`refsr.ops.deform_conv2d`'s layout (``dy, dx`` per tap).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(channels))
        self.conv_offset_mask = conv2d(channels, 9)

    def forward(self, feature: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid(self.conv_offset_mask(feature))
        return deform_conv2d(feature, offsets, self.weight, self.bias, padding=1, mask=mask)


class DynamicAggregation(nn.Module):
    """The dynamic-aggregation DCN (official ``DCN_sep_pre_multi_offset``), ``groups`` deformable groups.

    ``conv_offset_mask`` (on the guide features) predicts ``groups * 27`` channels: the first
    ``groups * 18`` are offset residuals, in :func:`refsr.ops.deform_conv2d`'s layout, added to the match
    offsets (repeated for every group); the last ``groups * 9`` go through a sigmoid to the mask.

    ``forward(feature (N,C,H,W), guide (N,C,H,W), offsets (N,18,H,W))`` -> ``(N,C,H,W)``.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        if channels % groups:
            raise RefsrError(
                f"DCN groups must divide the channels; got {groups} groups for {channels} channels"
            )
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(channels))
        self.conv_offset_mask = conv2d(channels, groups * 27)

    def forward(self, feature: torch.Tensor, guide: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        predicted = self.conv_offset_mask(guide)
        split = 18 * self.groups
        offset = predicted[:, :split] + offsets.repeat(1, self.groups, 1, 1)
        mask = torch.sigmoid(predicted[:, split:])
        return deform_conv2d(feature, offset, self.weight, self.bias, padding=1, mask=mask)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class _AggregationLevel(nn.Module):
    """One texture level of MSDA (relu3_1, relu2_1 or relu1_1): warp, aggregate, fuse, refine (, upsample).

    Without ``prewarp`` this is C2-Matching's level: the offset branch sees the unwarped texture.
    """

    def __init__(self, texture_channels: int, ngf: int, n_blocks: int, groups: int, upsample: bool,
                 prewarp: bool = True) -> None:
        super().__init__()
        self.prewarp = MatchWarp(texture_channels) if prewarp else None
        self.offset_conv1 = conv2d(ngf + texture_channels, texture_channels)
        self.offset_conv2 = conv2d(texture_channels, texture_channels)
        self.aggregate = DynamicAggregation(texture_channels, groups)
        self.head = conv2d(ngf + texture_channels, ngf)
        self.body = nn.Sequential(*(ResBlock(ngf) for _ in range(n_blocks)))
        self.upsample = upsample
        if upsample:
            self.tail = conv2d(ngf, 4 * ngf)

    def forward(self, x: torch.Tensor, texture: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``x (M,ngf,H,W)``, ``texture (M,C,H,W)``, ``offsets (M,18,H,W)`` -> ``(M,ngf,2H,2W)`` or
        ``(M,ngf,H,W)`` (no upsampling, the relu1_1 level)."""
        warped = texture if self.prewarp is None else self.prewarp(texture, offsets)
        guide = _lrelu(self.offset_conv1(torch.cat((x, warped), dim=1)))
        del warped
        guide = _lrelu(self.offset_conv2(guide))
        aggregated = _lrelu(self.aggregate(texture, guide, offsets))
        del guide
        h = _lrelu(self.head(torch.cat((x, aggregated), dim=1)))
        del aggregated
        h = self.body(h).add_(x)
        if not self.upsample:
            return h
        return _lrelu(F.pixel_shuffle(self.tail(h), 2))


class RestorationNet(nn.Module):
    """AMSA's restoration network (official ``RestorationNet``): content extractor + MSDA + output convs.

    With ``ngf=64, n_blocks=16, groups=8`` it has exactly :data:`RESTORATION_PARAMETERS` parameters.
    ``prewarp=False`` drops the pre-warp DCNs: C2-Matching's ``RestorationNet`` (8,865,547 parameters).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, prewarp: bool = True) -> None:
        super().__init__()
        if ngf < 2 or n_blocks < 0:
            raise RefsrError(
                f"RestorationNet needs ngf >= 2 and n_blocks >= 0; got ngf={ngf}, n_blocks={n_blocks}"
            )
        self.content = ContentExtractor(ngf, n_blocks)
        self.relu3 = _AggregationLevel(256, ngf, n_blocks, groups, upsample=True, prewarp=prewarp)
        self.relu2 = _AggregationLevel(128, ngf, n_blocks, groups, upsample=True, prewarp=prewarp)
        self.relu1 = _AggregationLevel(64, ngf, n_blocks, groups, upsample=False, prewarp=prewarp)
        self.out_conv1 = conv2d(ngf, ngf // 2)
        self.out_conv2 = conv2d(ngf // 2, 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (see the module docstring, item 4)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (MatchWarp, DynamicAggregation)):
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, (MatchWarp, DynamicAggregation)):
                nn.init.zeros_(module.conv_offset_mask.weight)
                nn.init.zeros_(module.conv_offset_mask.bias)

    @property
    def levels(self) -> tuple[_AggregationLevel, _AggregationLevel, _AggregationLevel]:
        return self.relu3, self.relu2, self.relu1

    def aggregate(
        self, content: torch.Tensor, textures: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """MSDA for a batch of (sample, reference scale) pairs, before the fusion.

        Args:
            content: ``(M,ngf,h,w)`` content features (repeated for every reference scale).
            textures: relu3_1 ``(M,256,h,w)``, relu2_1 ``(M,128,2h,2w)``, relu1_1 ``(M,64,4h,4w)``.
            offsets: the match offsets at those three resolutions, ``(M,18,·,·)`` each.

        Returns:
            ``(M,ngf,4h,4w)``, the relu1-level features ``h_i`` of the official code.
        """
        x = content
        for level, texture, offset in zip(self.levels, textures, offsets):
            x = level(x, texture, offset)
        return x

    def output(self, fused: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """``fused (N,ngf,4h,4w)``, ``lr (N,3,h,w)`` -> the SR image ``(N,3,4h,4w)`` (convs + bilinear LR)."""
        residual = self.out_conv2(_lrelu(self.out_conv1(fused)))
        return residual + F.interpolate(lr, scale_factor=_SCALE, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------------
# Functional pieces: reference scales, offsets, similarity, fusion weights


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def _pad_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad bottom/right to ``size`` (the official ``mmcv.impad``)."""
    return F.pad(image, (0, size[1] - image.shape[-1], 0, size[0] - image.shape[-2]))


def make_ref_scales(ref: torch.Tensor, size: tuple[int, int], *, count: int = 5, factor: float = 0.8
                    ) -> list[torch.Tensor]:
    """The reference at ``count`` scales as the official dataset builds them.

    Scale 0 is ``ref`` itself (float, zero-padded). Scale ``i >= 1`` is the 8-bit ``ref`` resized with PIL
    bicubic (:func:`refsr.imresize`, ``kernel="pil"``) to ``(int(H * factor**i), int(W * factor**i))``,
    each from the previous scale's 8-bit image (the float products accumulate as officially), cropped
    bottom/right to a multiple of 4 and back to float in [0, 1]. Every scale is zero-padded bottom/right to
    ``size``.

    Args:
        ref: ``(N,3,H,W)`` RGB float in [0, 1], ``H <= size[0]``, ``W <= size[1]``.
        size: ``(height, width)`` of the outputs.

    Returns:
        ``count`` tensors ``(N,3,*size)``, dtype of ``ref``; only scale 0 carries gradients.
    """
    height, width = ref.shape[-2:]
    if height > size[0] or width > size[1]:
        raise RefsrError(
            f"the reference ({height}x{width}) is larger than the size to pad it to {tuple(size)}"
        )
    scales = [_pad_to(ref, size)]
    current = _to_uint8(ref)
    scaled_h, scaled_w = float(height), float(width)
    for _ in range(count - 1):
        scaled_w *= factor
        scaled_h *= factor
        target = (int(scaled_h), int(scaled_w))
        if min(target) < _SCALE:
            raise RefsrError(
                f"the reference ({height}x{width}) is too small for {count} scales of x{factor}: "
                f"its smallest would be {target[0]}x{target[1]}; use a larger reference"
            )
        current = imresize(current, size=target, kernel="pil")
        cropped = current[..., : target[0] // _SCALE * _SCALE, : target[1] // _SCALE * _SCALE]
        scales.append(_pad_to(cropped.to(ref.dtype) / 255, size))
    return scales


def match_offsets(displacement: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """DCN offsets for the nine 3x3 taps from a field of match displacements, the official way.

    ``displacement[:, :, c]`` is ``match(c) - c`` (``dy, dx``) of the patch centred at ``c`` on the relu3_1
    grid. As in the official ``index_to_flow`` + ``tensor_shift``: the flow map is
    ``flow[p] = displacement[p + (1, 1)]`` for ``p < (h-2, w-2)`` and zero elsewhere (the official final
    level has no border patches); for relu2_1 / relu1_1 it is repeated ``scale`` x ``scale`` (nearest) and
    multiplied by ``scale``; tap ``k = 3i + j`` gets that map shifted down by ``scale*i`` and right by
    ``scale*j`` (zero fill).

    Args:
        displacement: ``(M,2,h,w)`` float, ``(dy, dx)`` in relu3_1 pixels.
        scale: 1 (relu3_1), 2 (relu2_1) or 4 (relu1_1).

    Returns:
        ``(M,18,scale*h,scale*w)``: channel ``2k`` is ``dy`` and ``2k+1`` is ``dx`` of tap ``k``
        (:func:`refsr.ops.deform_conv2d`'s layout, one group).
    """
    m, _, h, w = displacement.shape
    flow = displacement.new_zeros(m, 2, h, w)
    flow[:, :, : h - 2, : w - 2] = displacement[:, :, 1 : h - 1, 1 : w - 1]
    if scale != 1:
        flow = flow.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3) * scale
    height, width = h * scale, w * scale
    taps = [
        F.pad(flow, (scale * j, 0, scale * i, 0))[:, :, :height, :width] for i in range(3) for j in range(3)
    ]
    return torch.stack(taps, dim=1).reshape(m, 18, height, width)


def official_similarity(query: torch.Tensor, key: torch.Tensor, match_y: torch.Tensor, match_x: torch.Tensor
                        ) -> torch.Tensor:
    """The official ``S``: inner product of each 3x3 query patch with its L2-normalised matched key patch.

    Args:
        query: ``(M,C,h,w)`` (per-pixel L2-normalised features, officially).
        key: ``(M,C,H,W)`` (idem).
        match_y, match_x: ``(M,h,w)`` integer key centres, inside ``[1, H-2] x [1, W-2]``.

    Returns:
        ``(M,h,w)``; positions on the 1-pixel border of the query are 0 (officially they are not matched).
    """
    m, c, h, w = query.shape
    height, width = key.shape[-2:]
    query_padded = F.pad(query, (1, 1, 1, 1))
    # Key patch norms at every centre (zero padding), the sum of the squares in its 3x3 window.
    key_norm = F.avg_pool2d(key.pow(2).sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=True)
    key_norm = (key_norm * 9).sqrt().clamp_min(_NORM_EPS).flatten(1)  # (M, H*W)
    key_flat = key.flatten(2)  # (M, C, H*W)
    centre = (match_y * width + match_x).flatten(1)  # (M, h*w)
    total = query.new_zeros(m, h * w)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            index = (centre + dy * width + dx).unsqueeze(1).expand(m, c, h * w)
            key_tap = torch.gather(key_flat, 2, index)
            query_tap = query_padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].flatten(2)
            total += (key_tap * query_tap).sum(1)
    similarity = (total / torch.gather(key_norm, 1, centre)).view(m, h, w)
    border = torch.zeros_like(similarity)
    border[:, 1:-1, 1:-1] = 1
    return similarity * border


def fusion_weights(similarity: torch.Tensor, *, last_sample_for_all: bool = False) -> torch.Tensor:
    """Softmax over reference scales of ``10 * S``, nearest-upsampled x4 to the HR grid.

    Args:
        similarity: ``(S,N,h,w)`` official similarities (reference scale first).
        last_sample_for_all: reproduce the official batch bug (the last sample's weights for every sample).

    Returns:
        ``(S,N,1,4h,4w)``, summing to 1 over the first dimension.
    """
    if last_sample_for_all:
        similarity = similarity[:, -1:].expand_as(similarity)
    weights = torch.softmax(similarity * _SIMILARITY_GAIN, dim=0)
    weights = weights.repeat_interleave(_SCALE, dim=2).repeat_interleave(_SCALE, dim=3)
    return weights.unsqueeze(2)


def _bicubic(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False)


# ---------------------------------------------------------------------------------------------------------
# The model


class AMSA(RefSRModel):
    """AMSA (AAAI 2022), x4. See the module docstring for the pipeline and the two modes.

    Args:
        ngf: content / restoration channels (64).
        n_blocks: ResBlocks in the content extractor and at each MSDA level (16).
        groups: deformable groups of the dynamic-aggregation DCNs (8).
        mode: ``"fixed"`` (default) or ``"official"``.
        num_ref_scales: reference scales (5); ``ref_scale_factor``: the resize factor between them (0.8).
        schedule: PatchMatch iterations per level, coarsest first; default ``"official"`` (1, 1, 1, 4) in
            official mode, ``"paper"`` (1, 1, 2, 6) in fixed mode.
        propagation: PatchMatch propagation, ``"index"`` (official) or ``"offset"``; default by mode.
        seed: seeds PatchMatch (same inputs and seed: same output).
        proxy_dim, polish: PatchMatch's candidate-ranking options (:func:`match_patchmatch`).
        decode_pixels: the decoder runs on chunks of (sample, scale) pairs holding at most this many HR
            pixels together (at least one pair), which bounds the DCNs' im2col memory.
    """

    scale = _SCALE
    size_rule = SizeRule(lr_multiple=8, ref_multiple=4, min_lr=8, min_ref=32, pad_mode="replicate")

    def __init__(
        self,
        *,
        ngf: int = 64,
        n_blocks: int = 16,
        groups: int = 8,
        mode: str = "fixed",
        num_ref_scales: int = 5,
        ref_scale_factor: float = 0.8,
        schedule: str | Sequence[int] | None = None,
        propagation: str | None = None,
        seed: int = 0,
        proxy_dim: int | None = DEFAULT_PROXY_DIM,
        polish: int = 1,
        decode_pixels: int = 1 << 18,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise RefsrError(f"AMSA mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
        if isinstance(num_ref_scales, bool) or not isinstance(num_ref_scales, int) or num_ref_scales < 1:
            raise RefsrError(f"num_ref_scales must be a positive int; got {num_ref_scales!r}")
        if not 0 < ref_scale_factor < 1:
            raise RefsrError(f"ref_scale_factor must be in (0, 1); got {ref_scale_factor!r}")
        official = mode == "official"
        self.mode = mode
        self.num_ref_scales = num_ref_scales
        self.ref_scale_factor = float(ref_scale_factor)
        default_schedule = "official" if official else "paper"
        self.schedule = resolve_schedule(schedule if schedule is not None else default_schedule)
        self.propagation = propagation if propagation is not None else ("index" if official else "offset")
        if self.propagation not in ("index", "offset"):
            raise RefsrError(f"propagation must be 'index' or 'offset'; got {self.propagation!r}")
        self.seed = seed
        self.proxy_dim = proxy_dim
        self.polish = polish
        self.decode_pixels = decode_pixels
        # The two bugs that mode="official" keeps (see the module docstring).
        self.per_scale_textures = not official
        self.per_sample_fusion = not official
        self.config = dict(
            ngf=ngf, n_blocks=n_blocks, groups=groups, mode=mode, num_ref_scales=num_ref_scales,
            ref_scale_factor=self.ref_scale_factor, schedule=self.schedule, propagation=self.propagation,
            seed=seed,
        )

        # Random until loaded: the builders' extractor_weights / vgg_weights (load_frozen_parts).
        self.correspondence_extractor = ContrastiveExtractor(trainable=False)
        self.texture_extractor = VGG19Features(("relu1_1", "relu2_1", "relu3_1"))
        self.restoration = RestorationNet(ngf, n_blocks, groups)

    def train(self, mode: bool = True) -> "AMSA":
        super().train(mode)
        # The frozen extractors stay in eval mode (no layer of theirs depends on it today; this keeps it so).
        self.correspondence_extractor.eval()
        self.texture_extractor.eval()
        return self

    # ------------------------------------------------------------------ sizes and inputs

    def working_size(self, lr_size: tuple[int, int], ref_size: tuple[int, int]) -> tuple[int, int]:
        """The HR size the pipeline runs at: ``4 x`` the LR, enlarged to hold the Ref, multiple of 32.

        >>> AMSA(ngf=4, n_blocks=0).working_size((40, 48), (150, 100))
        (160, 192)
        """
        def side(lr: int, ref: int) -> int:
            wanted = max(lr * _SCALE, ref)
            return -(-wanted // _HR_MULTIPLE) * _HR_MULTIPLE

        return side(lr_size[0], ref_size[0]), side(lr_size[1], ref_size[1])

    def make_ref_scales(self, ref: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        """:func:`make_ref_scales` with this model's number of scales and factor."""
        return make_ref_scales(ref, size, count=self.num_ref_scales, factor=self.ref_scale_factor)

    def _check_inputs(self, lr: Any, ref: Any, ref_scales: Any) -> None:
        for name, x in (("lr", lr), ("ref", ref)):
            good = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()
            if not good:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(f"AMSA needs {name} as a float (N, 3, H, W) RGB tensor; got {shape}")
        if ref.shape[0] != lr.shape[0]:
            raise RefsrError(
                f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}"
            )
        h, w = lr.shape[-2:]
        multiple = self.size_rule.lr_multiple
        if h % multiple or w % multiple:
            raise RefsrError(
                f"AMSA needs an LR whose sides divide by {multiple}; got {h}x{w}: pad it (refsr.upscale does)"
            )
        if min(ref.shape[-2:]) < self.size_rule.min_ref:
            raise RefsrError(
                f"AMSA needs a reference of at least {self.size_rule.min_ref} pixels a side; got "
                f"{ref.shape[-2]}x{ref.shape[-1]}"
            )
        if ref_scales is None:
            return
        if not isinstance(ref_scales, (list, tuple)) or len(ref_scales) != self.num_ref_scales:
            raise RefsrError(
                f"ref_scales must be a list of {self.num_ref_scales} (N, 3, H, W) tensors, scale 1 first"
            )
        size = tuple(ref_scales[0].shape[-2:]) if isinstance(ref_scales[0], torch.Tensor) else None
        for i, x in enumerate(ref_scales):
            if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[:2] == (lr.shape[0], 3)
                    and tuple(x.shape[-2:]) == size and x.is_floating_point()):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(
                    f"ref_scales[{i}] must be a float ({lr.shape[0]}, 3, H, W) tensor of the same size as "
                    f"ref_scales[0] {size}; got {shape}"
                )
        assert size is not None
        if size[0] < h * _SCALE or size[1] < w * _SCALE or size[0] % _HR_MULTIPLE or size[1] % _HR_MULTIPLE:
            raise RefsrError(
                f"ref_scales must be at least 4x the LR ({h * _SCALE}x{w * _SCALE}) and multiples of "
                f"{_HR_MULTIPLE}; got {size[0]}x{size[1]}"
            )

    # ------------------------------------------------------------------ stages

    def encode(self, lr: torch.Tensor, ref_scales: Sequence[torch.Tensor]
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Correspondence features of the LR and of every reference scale, with their pyramids.

        Args:
            lr: ``(N,3,h,w)`` at the working size / 4.
            ref_scales: ``S`` tensors ``(N,3,4h,4w)``.

        Returns:
            ``(lr_levels, ref_levels)``, finest first, 4 levels each: ``lr_levels[l]`` is ``(N,256,h/2^l,
            w/2^l)``; ``ref_levels[l]`` is ``(S*N,256,h/2^l,w/2^l)`` with the scales stacked scale-major
            (entry ``s*N + n``).
        """
        extractor = self.correspondence_extractor
        h, w = lr.shape[-2:]
        lr_up = imresize(_to_uint8(lr), size=(h * _SCALE, w * _SCALE), kernel="pil").to(lr.dtype) / 255
        lr_levels = [extractor.lr_branch(lr_up)]
        reduced = lr
        for level in (1, 2, 3):
            size = (h // 2**level, w // 2**level)
            reduced = _bicubic(reduced, size)
            lr_levels.append(extractor.lr_branch(_bicubic(reduced, (size[0] * _SCALE, size[1] * _SCALE))))
        refs = torch.cat(list(ref_scales), dim=0)
        ref_levels = [extractor.ref_branch(refs)]
        height, width = refs.shape[-2:]
        for level in (1, 2, 3):
            refs = _bicubic(refs, (height // 2**level, width // 2**level))
            ref_levels.append(extractor.ref_branch(refs))
        return lr_levels, ref_levels

    def match(self, lr_levels: Sequence[torch.Tensor], ref_levels: Sequence[torch.Tensor]
              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """CFE-PatchMatch of the LR features in every reference scale, then offsets and similarities.

        Returns:
            ``(offsets, similarity)``: the match offsets for relu3_1, relu2_1, relu1_1 (``(S*N,18,·,·)``,
            see :func:`match_offsets`) and the official ``S`` ``(S,N,h,w)`` (:func:`official_similarity`).
        """
        n = lr_levels[0].shape[0]
        repeats = ref_levels[0].shape[0] // n
        with torch.no_grad():
            query = F.normalize(lr_levels[0].detach(), dim=1, eps=_NORM_EPS).repeat(repeats, 1, 1, 1)
            key = F.normalize(ref_levels[0].detach(), dim=1, eps=_NORM_EPS)
            correspondence = match_patchmatch(
                query, key, patch_size=3, schedule=self.schedule, seed=self.seed,
                query_pyramid=[level.detach().repeat(repeats, 1, 1, 1) for level in lr_levels[1:]],
                key_pyramid=[level.detach() for level in ref_levels[1:]],
                propagation=self.propagation, proxy_dim=self.proxy_dim, polish=self.polish, key_margin=1,
            )
            width = key.shape[-1]
            # key_margin=1: officially only interior patches are keys, so the search never leaves them.
            match_y = correspondence.index // width
            match_x = correspondence.index % width
            similarity = official_similarity(query, key, match_y, match_x)
            m, h, w = match_y.shape
            grid_y = torch.arange(h, device=match_y.device).view(1, h, 1)
            grid_x = torch.arange(w, device=match_x.device).view(1, 1, w)
            displacement = torch.stack((match_y - grid_y, match_x - grid_x), dim=1).to(query.dtype)
            offsets = [match_offsets(displacement, scale) for _, _, scale in _TEXTURE_LEVELS]
        return offsets, similarity.view(repeats, n, h, w)

    def transfer(self, ref_scales: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """VGG19 textures relu3_1, relu2_1, relu1_1, ``(S*N,C,·,·)`` each, scale-major.

        Official mode takes them from the scale-1 reference for every scale (repeated); fixed mode from
        each scale.
        """
        count = len(ref_scales)
        source = torch.cat(list(ref_scales), dim=0) if self.per_scale_textures else ref_scales[0]
        features = self.texture_extractor(source)
        textures = [features[name] for name, _, _ in _TEXTURE_LEVELS]
        if not self.per_scale_textures:
            textures = [t.repeat(count, 1, 1, 1) for t in textures]
        return textures

    def decode(self, lr: torch.Tensor, textures: Sequence[torch.Tensor], offsets: Sequence[torch.Tensor],
               similarity: torch.Tensor) -> torch.Tensor:
        """MSDA over all reference scales, the fusion and the output: ``(N,3,4h,4w)``."""
        scales, n = similarity.shape[:2]
        weights = fusion_weights(similarity, last_sample_for_all=not self.per_sample_fusion).to(lr.dtype)
        net = self.restoration
        content = net.content(lr)
        hr_pixels = lr.shape[-2] * lr.shape[-1] * _SCALE * _SCALE
        chunk = max(1, self.decode_pixels // hr_pixels)
        pairs = scales * n
        fused = None
        for start in range(0, pairs, chunk):
            stop = min(start + chunk, pairs)
            pair = torch.arange(start, stop, device=lr.device)
            h = net.aggregate(
                content[pair % n], [t[start:stop] for t in textures], [o[start:stop] for o in offsets]
            )
            weighted = h * weights.reshape(pairs, 1, *weights.shape[-2:])[start:stop]
            # Sum the pairs of each sample (pair index s*N + n).
            part = torch.zeros(n, *h.shape[1:], dtype=h.dtype, device=h.device)
            part.index_add_(0, pair % n, weighted)
            fused = part if fused is None else fused + part
            del h, weighted
        assert fused is not None
        return net.output(fused, lr)

    # ------------------------------------------------------------------ forward

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, *, ref_scales: Sequence[torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Super-resolve ``lr`` x4 with textures from ``ref`` at several scales.

        Args:
            lr: ``(N,3,h,w)`` RGB float in [0, 1]; ``h``, ``w`` multiples of 8.
            ref: ``(N,3,H,W)`` RGB float in [0, 1], at least 32 pixels a side, any size. The pipeline runs
                at :meth:`working_size`; the Ref is zero-padded (bottom/right) to it, and so is the LR when
                the Ref is the larger.
            ref_scales: the ``num_ref_scales`` references exactly as an evaluation pipeline made them
                (scale 1 first, then the x0.8, x0.64, ... resizes, each zero-padded bottom/right), all of one
                size: at least 4x the LR, multiples of 32. When given, ``ref`` is only checked (the scale-1
                reference is ``ref_scales[0]``). When omitted they are made from ``ref`` with
                :meth:`make_ref_scales` (8-bit, PIL bicubic).

        Returns:
            ``(N,3,4h,4w)`` RGB float (not clamped).
        """
        self._check_inputs(lr, ref, ref_scales)
        h, w = lr.shape[-2:]
        if ref_scales is None:
            size = self.working_size((h, w), tuple(ref.shape[-2:]))
            scales = self.make_ref_scales(ref, size)
        else:
            size = tuple(ref_scales[0].shape[-2:])
            scales = [x.to(lr.dtype) for x in ref_scales]
        lr_work = _pad_to(lr, (size[0] // _SCALE, size[1] // _SCALE))
        lr_levels, ref_levels = self.encode(lr_work, scales)
        offsets, similarity = self.match(lr_levels, ref_levels)
        del lr_levels, ref_levels
        textures = self.transfer(scales)
        sr = self.decode(lr_work, textures, offsets, similarity)
        return sr[..., : h * _SCALE, : w * _SCALE]

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


# ---------------------------------------------------------------------------------------------------------
# Builders


M = TypeVar("M", bound=nn.Module)


def load_frozen_parts(model: M, extractor_weights: WeightsArg, vgg_weights: WeightsArg) -> M:
    """Load the frozen extractors of a model built on C2-Matching's (AMSA, C2-Matching, DATSR): C2-Matching's
    ``feature_extraction.pth`` (or a converted file) into ``correspondence_extractor``, an ImageNet VGG19
    (torchvision's ``vgg19-dcbb9e9d.pth`` or refsr's layout) into ``texture_extractor``. Either stays as it is
    when ``None``. Paths may start with ``~`` (config files). Returns ``model``."""
    if extractor_weights is not None:
        source = os.path.expanduser(extractor_weights) if isinstance(extractor_weights, (str, os.PathLike)) \
            else extractor_weights
        model.correspondence_extractor.load_weights(source)
    if vgg_weights is not None:
        source = os.path.expanduser(vgg_weights) if isinstance(vgg_weights, (str, os.PathLike)) else vgg_weights
        load_vgg19_weights(model.texture_extractor, source)
    return model


@register_model("amsa", paper="AMSA (AAAI 2022)")
def amsa(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None, **kwargs: Any) -> AMSA:
    """AMSA (AAAI 2022), x4: official architecture (restoration net 9,676,454 params), mode fixed/official.

    ``extractor_weights`` / ``vgg_weights`` load the frozen extractors (:func:`load_frozen_parts`).
    """
    return load_frozen_parts(build_variant(AMSA, "amsa", {}, kwargs), extractor_weights, vgg_weights)


@register_model("amsa-lite", paper="AMSA (AAAI 2022)")
def amsa_lite(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None, **kwargs: Any) -> AMSA:
    """AMSA sized for CPU training: 32 channels, 4 ResBlocks per stage, 4 DCN groups, 3 reference scales."""
    model_args = dict(ngf=32, n_blocks=4, groups=4, num_ref_scales=3)
    return load_frozen_parts(build_variant(AMSA, "amsa-lite", model_args, kwargs), extractor_weights, vgg_weights)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints

_LEVEL_NAMES = (("small", "relu3"), ("medium", "relu2"), ("large", "relu1"))


def _renames() -> tuple[tuple[str, str], ...]:
    """(official prefix, our prefix) of every restoration-net and texture-VGG parameter; ``{a}``, ``{b}``
    are numbers carried over."""
    table = [
        ("content_extractor.conv_first.", "restoration.content.conv_first."),
        ("content_extractor.body.{a}.conv{b}.", "restoration.content.body.{a}.conv{b}."),
    ]
    for official, ours in _LEVEL_NAMES:
        table += [
            (f"dyn_agg_restore.{official}_deform_conv.conv_offset_mask.",
             f"restoration.{ours}.prewarp.conv_offset_mask."),
            (f"dyn_agg_restore.{official}_deform_conv.", f"restoration.{ours}.prewarp."),
            (f"dyn_agg_restore.{official}_offset_conv{{a}}.", f"restoration.{ours}.offset_conv{{a}}."),
            (f"dyn_agg_restore.{official}_dyn_agg.conv_offset_mask.",
             f"restoration.{ours}.aggregate.conv_offset_mask."),
            (f"dyn_agg_restore.{official}_dyn_agg.", f"restoration.{ours}.aggregate."),
            (f"dyn_agg_restore.head_{official}.0.", f"restoration.{ours}.head."),
            (f"dyn_agg_restore.body_{official}.{{a}}.conv{{b}}.",
             f"restoration.{ours}.body.{{a}}.conv{{b}}."),
        ]
        if official != "large":
            table.append((f"dyn_agg_restore.tail_{official}.0.", f"restoration.{ours}.tail."))
    table += [
        ("dyn_agg_restore.tail_large.0.", "restoration.out_conv1."),
        ("dyn_agg_restore.tail_large.2.", "restoration.out_conv2."),
        ("vgg.vgg_net.conv{a}_{b}.", "texture_extractor.conv{a}_{b}."),
    ]
    return tuple(table)


_RENAMES = KeyRenames(_renames())
_EXTRACTOR_PREFIX = "correspondence_extractor."


def official_key(our_key: str) -> str:
    """The official key of one of our restoration-net or texture-VGG keys
    (``restoration.relu3.prewarp.weight`` -> ``dyn_agg_restore.small_deform_conv.weight``).
    Raises ``KeyError`` for keys with no counterpart (the extractor's: see
    :mod:`refsr.models.contrastive_extractor`)."""
    return _RENAMES.official_key(our_key)


#: Official net_map buffers (constants; dropped on conversion).
_NET_MAP_BUFFERS = {
    "vgg.mean": (1, 3, 1, 1), "vgg.std": (1, 3, 1, 1),
    "feature_match_index.PatchMatch.yoffset": (1, 9, 1, 1),
    "feature_match_index.PatchMatch.xoffset": (1, 9, 1, 1),
    "feature_match_index.PatchMatch.dx": (1, 9, 1, 1), "feature_match_index.PatchMatch.dy": (1, 9, 1, 1),
    "feature_match_index.PatchMatch.evaluate.DeformSearch.yoffset": (1, 1, 9, 1, 1),
    "feature_match_index.PatchMatch.evaluate.DeformSearch.xoffset": (1, 1, 9, 1, 1),
}


def restoration_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """``ngf``, ``n_blocks`` and ``groups`` of an official ``RestorationNet`` checkpoint (AMSA's or
    C2-Matching's, official key names); the official values where the checkpoint does not tell."""
    def shape(key: str, dim: int, default: int) -> int:
        value = state_dict.get(key)
        return int(value.shape[dim]) if isinstance(value, torch.Tensor) and value.dim() > dim else default

    ngf = shape("content_extractor.conv_first.weight", 0, 64)
    groups = max(1, shape("dyn_agg_restore.small_dyn_agg.conv_offset_mask.weight", 0, 216) // 27)
    block = re.compile(r"content_extractor\.body\.(\d+)\.")
    found = [int(m.group(1)) for m in map(block.match, state_dict) if m]
    return dict(ngf=ngf, n_blocks=max(found) + 1 if found else 16, groups=groups)


def _restoration_skeleton(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Official restoration keys and shapes for the ngf / n_blocks / groups the checkpoint was made with."""
    with torch.device("meta"):
        net = RestorationNet(**restoration_config(state_dict))
    return {official_key("restoration." + k): tuple(v.shape) for k, v in net.state_dict().items()}


_TEXTURE_SHAPES = {
    f"vgg.vgg_net.{name}.{kind}": shape
    for name, (cin, cout) in {
        "conv1_1": (3, 64), "conv1_2": (64, 64), "conv2_1": (64, 128), "conv2_2": (128, 128),
        "conv3_1": (128, 256),
    }.items()
    for kind, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,)))
}


@register_converter("amsa")
def convert_official_amsa(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official AMSA checkpoints onto :class:`AMSA`'s layout.

    Accepts, merged in one dict or alone: the restoration net (``restoration.pth`` /
    ``restoration_mse.pth``: ``content_extractor.*``, ``dyn_agg_restore.*``), C2-Matching's
    ``feature_extraction.pth`` (``feature_extraction_image{1,2}.*``) and the texture VGG of ``net_map``
    (``vgg.vgg_net.conv*``; its ``vgg.mean``/``vgg.std`` and ``feature_match_index.*`` buffers are
    constants and are dropped). Each part present must be complete. The result holds the converted parts
    (``restoration.*``, ``correspondence_extractor.*``, ``texture_extractor.*``); ``load_state_dict`` with
    ``strict=True`` needs all three, so merge the files first for ``refsr.create_model(weights=...)``, or
    pass ``extractor_weights=`` / ``vgg_weights=`` to the builder and load the restoration part with
    ``strict=False``.

    Raises:
        RefsrError: unknown keys, or a part with missing or misshapen keys (official names listed).
    """
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    restoration = {
        k: v for k, v in state_dict.items() if k.startswith(("content_extractor.", "dyn_agg_restore."))
    }
    extractor = {k: v for k, v in state_dict.items() if k.startswith("feature_extraction_image")}
    texture = {k: v for k, v in state_dict.items() if k.startswith(("vgg.", "feature_match_index."))}
    unknown = [k for k in state_dict if k not in restoration and k not in extractor and k not in texture]
    if unknown or not state_dict:
        what = f"unexpected keys: {listing(unknown)}" if unknown else "the state_dict is empty"
        raise RefsrError(
            "not an official AMSA checkpoint (RestorationNet content_extractor.*/dyn_agg_restore.*, "
            f"feature_extraction.pth feature_extraction_image*.*, or net_map vgg.*): {what}"
        )
    converted: dict[str, torch.Tensor] = {}
    parts_to_convert = (
        # (what, required keys and shapes, optional keys and shapes, the checkpoint's keys of that part)
        ("restoration net (ref_restoration_arch.RestorationNet)",
         _restoration_skeleton(restoration) if restoration else {}, {}, restoration),
        ("texture VGG (net_map.vgg)", _TEXTURE_SHAPES, _NET_MAP_BUFFERS, texture),
    )
    for part, required, optional, keys in parts_to_convert:
        if not keys:
            continue
        check_keys(keys, required, what=f"official AMSA {part}", optional=optional)
        for key, value in keys.items():
            ours = _RENAMES.to_ours(key)
            if ours is not None:  # None: a net_map buffer, dropped
                converted[ours] = value
    if extractor:
        for key, value in convert_official_contrastive_extractor(extractor).items():
            converted[_EXTRACTOR_PREFIX + key] = value
    return converted
