"""DATSR: deformable attention Transformer for reference-based image super-resolution (x4).

Paper: Jiezhang Cao, Jingyun Liang, Kai Zhang, Yawei Li, Yulun Zhang, Wenguan Wang, Luc Van Gool,
"Reference-based Image Super-Resolution with Deformable Attention Transformer", ECCV 2022.
Official code: https://github.com/caojiezhang/DATSR at commit 32240b5 (``datsr/models/archs/
{swin_unetv3_ref_restoration_arch,flow_similarity_corres_generation_arch,dcn_v2,ref_map_util}.py``,
``datsr/models/ref_restoration_model.py``, ``datsr/data/{ref_cufed_dataset,transforms}.py``,
``options/test/test_restoration_mse.yml``). Written from reading that code, which is built on C2-Matching's;
the paper was not at hand, so where the two might differ this follows the code. Its released checkpoints
(``restoration_mse.pth``, ``restoration_gan.pth``, ``feature_extraction.pth``) load through
:func:`convert_official_datsr`. The Swin Transformer blocks are written here (the official code takes them
from timm, and its DCN from mmcv-full).

Pipeline (:class:`DATSR`, one forward), as coded officially with ``SwinUnetv3RestorationNet(ngf=128,
n_blocks=8, groups=8, depths=[4, 4], num_heads=[4, 4], window_size=8)`` and
``FlowSimCorrespondenceGenerationArch``:

1. **Sizes, features, matching, textures**: C2-Matching's (:class:`refsr.models.c2_matching.C2Pipeline`):
   LR↑ and Ref zero-padded to one size, the frozen contrastive extractor, per-pixel normalised features,
   the exhaustive matching of inside 3x3 patches, frozen ImageNet VGG19 relu1_1/relu2_1/relu3_1 of the Ref.
   The official test loader crops HR and Ref to multiples of **32** (``mod_crop`` uses ``scale * 8``), not 4
   as C2-Matching's does, so that every Swin stage holds whole 8x8 windows: the LR must divide by the window
   size, and the working size here divides by ``4 * window_size``.
2. **What the matching hands on** (:meth:`DATSR.match`): the DCN offsets of C2-Matching
   (:func:`refsr.models.amsa.match_offsets`), the flows (the offsets' unshifted first tap: the match
   displacement of the patch whose top-left corner is at each position, zero on the last two rows and
   columns, nearest-repeated and scaled at x2 / x4), and the similarity (:func:`patch_similarity`: the
   matched patches' inner product over ``(|q| + 1e-5)(|k| + 1e-5)``, zero on the 1-pixel border, nearest
   x2 / x4).
3. **Restoration** (:class:`DATSRRestorationNet`), a U-Net at x4, x2, x1 on the bilinear x4 LR: a conv to
   ngf channels, then five texture levels: down at relu1_1 (x4) and relu2_1 (x2), up at relu3_1 (x1),
   relu2_1, relu1_1. Each level warps the texture by the flow (``grid_sample``, bilinear, zeros,
   ``align_corners=True``), predicts an offset residual and a mask from ``cat[x, warped, texture]`` (two
   convs + LReLU(0.1)) for a ``groups``-group DCN on the texture (offset = 10 tanh(residual) + match offsets,
   mask = sigmoid(mask logits x similarity), :class:`SimilarityAggregation`), LReLU, ``cat[x (+ skip),
   aggregated]`` -> conv + LReLU -> a Swin group (:class:`SwinGroup`) + x -> tail: a stride-2 conv (down),
   conv + PixelShuffle x2 + LReLU (up), or conv to ngf/2, LReLU, conv to RGB (last). The up levels at x2
   and x4 add the down path's features of their scale (skip) before the head conv only. Output + the
   bilinear x4 LR.
4. **Swin group** (official ``SwinBlock``, from SwinIR's RSTB): tokens, LayerNorm, then per layer
   ``depth`` Swin Transformer blocks (window attention with a relative position bias, every second block
   with windows shifted by ``window_size // 2`` and the usual -100 mask, MLP ratio 2 with GELU,
   pre-norm residuals, stochastic depth rising from 0 to 0.1 over the blocks) and a 3x3 conv, added to the
   layer's input; a final LayerNorm.

Where this differs from the official code (the outputs do not):

1. **The content extractor is left out.** The official ``SwinUnetv3RestorationNet`` builds and runs a
   ``ContentExtractor`` (conv + 8 ResBlocks at ngf = 128, 2,364,928 parameters) whose output it never reads:
   ``DynamicAggregationRestoration.forward`` overwrites that argument before using it. Its weights are in
   every official checkpoint and :func:`convert_official_datsr` drops them. The official restoration
   network has 18,026,971 parameters; this one 15,662,043.
2. ``embed_dim``, ``img_size`` and ``use_checkpoint`` are unused or only size cached masks officially;
   the attention masks and relative position indices are computed here for the input's size (the official
   checkpoints store them as buffers for 40x40, 80x80 and 160x160; conversion drops them).
3. The matching is C2-Matching's with the notes of :mod:`refsr.models.c2_matching` (chunks, argmax-equal
   normalisation); the similarity is recomputed exactly at the matches.

Evaluation (``refsr eval --protocol datsr``): CUFED5 pairs with reference level 1; HR and Ref mod-cropped to
32, zero-padded to their common size; Y (BT.601, float), 4-pixel border crop. RGB throughout.

Training (``train_restoration_mse.yml``): Adam lr 1e-4 with the ``offset`` parameters at 1e-6 (``small``,
relu3), 1e-5 (``medium``, relu2), 1e-4 (others), batch 9, 160x160 crops, L1 only, 400k iterations; the
extractor and the VGG stay frozen.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching.correspondence import Correspondence
from refsr.models._convert import KeyRenames
from refsr.models._registry import build_variant, register_converter, register_model
from refsr.models._size import SizeRule
from refsr.models.amsa import ContentExtractor, DynamicAggregation, load_frozen_parts, match_offsets
from refsr.models.amsa import official_key as amsa_official_key
from refsr.models.c2_matching import (
    C2Pipeline,
    KeyEntry,
    KeyTable,
    WeightsArg,
    convert_checkpoint_files,
    match_displacement,
)
from refsr.models.vgg import TEXTURE_LEVELS
from refsr.ops import deform_conv2d

__all__ = [
    "DATSR",
    "DATSRRestorationNet",
    "DATSRGuidance",
    "SwinGroup",
    "SwinTransformerBlock",
    "WindowAttention",
    "SimilarityAggregation",
    "patch_similarity",
    "warp_by_flow",
    "datsr",
    "datsr_lite",
    "convert_official_datsr",
    "official_key",
    "OFFICIAL_PARAMETERS",
    "RESTORATION_PARAMETERS",
]

#: Parameters of the official ``SwinUnetv3RestorationNet`` of the test configs, content extractor included.
OFFICIAL_PARAMETERS = 18_026_971
#: Parameters of :class:`DATSRRestorationNet` with the same configuration (no content extractor).
RESTORATION_PARAMETERS = 15_662_043

_SCALE = 4
#: The official attention mask value between tokens of different regions of a shifted window.
_MASKED = -100.0

def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


def _conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


# ---------------------------------------------------------------------------------------------------------
# Swin Transformer blocks


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of a sample with probability ``p`` and
    scale the kept ones by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _windows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * H/size * W/size, size*size, C)``, windows row-major within each image."""
    b, h, w, c = x.shape
    x = x.view(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def _unwindow(windows: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`_windows`: ``(B * nW, size*size, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // size, w // size, size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, size: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """The attention mask of shifted windows: ``(nW, size*size, size*size)``, 0 between tokens of one region
    of the rolled image and -100 between regions (the last ``size`` rows/columns split at ``shift``)."""
    def regions(length: int) -> torch.Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - size).long() + (index >= length - shift).long()

    label = (regions(h)[:, None] * 3 + regions(w)[None, :]).view(1, h, w, 1)
    label = _windows(label, size).squeeze(-1)  # (nW, size*size)
    different = label[:, None, :] != label[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, _MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned relative position bias.

    Args:
        dim: token channels; num_heads: heads (divide ``dim``); window_size: the window side.

    ``forward(x (B*nW, N, C), mask (nW, N, N) or None)`` -> ``(B*nW, N, C)``, ``N = window_size**2``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise RefsrError(f"the attention heads must divide the channels; got {num_heads} heads for {dim}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        relative = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]  # (2, N, N)
        index = (relative[0] + window_size - 1) * (2 * window_size - 1) + relative[1] + window_size - 1
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, n, c = x.shape
        qkv = self.qkv(x).view(windows, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attention = q @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attention = attention + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            groups = mask.shape[0]
            attention = (attention.view(windows // groups, groups, self.num_heads, n, n)
                         + mask.to(attention.dtype)[None, :, None]).view(windows, self.num_heads, n, n)
        out = (attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, n, c)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}"


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """Pre-norm window attention and MLP, each a residual branch with stochastic depth.

    ``forward(x (B,H,W,C), mask)`` with ``H``, ``W`` multiples of ``window_size``; ``mask`` is
    :func:`shifted_window_mask` for a shifted block (``shift > 0``) and ignored otherwise.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 drop_path: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _, h, w, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = _unwindow(self.attn(_windows(y, self.window_size), mask if self.shift else None), self.window_size, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift={self.shift}"


class _SwinLayer(nn.Module):
    """Swin blocks then a 3x3 conv, added to the layer's input (official ``RSTB``, ``resi_connection='1conv'``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Sequence[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 drop_path[i])
            for i in range(depth)
        )
        self.conv = _conv3(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.blocks:
            y = block(y, mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SwinGroup(nn.Module):
    """The official ``SwinBlock``: LayerNorm, residual Swin layers, LayerNorm, on a feature map.

    Args:
        dim: channels; depths, num_heads: blocks and heads per layer; window_size: the window side;
        mlp_ratio: MLP width over ``dim``; drop_path_rate: stochastic depth of the last block (linear from 0).

    ``(N, dim, H, W)`` -> ``(N, dim, H, W)``, ``H`` and ``W`` multiples of ``window_size``.
    """

    def __init__(self, dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 mlp_ratio: float = 2.0, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise RefsrError(f"depths and num_heads need one entry per Swin layer; got {depths!r}, {num_heads!r}")
        self.window_size = window_size
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linspace(0, rate, total)
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            _SwinLayer(dim, depth, heads, window_size, mlp_ratio, rates[start : start + depth])
            for depth, heads, start in zip(depths, num_heads, starts)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        mask = shifted_window_mask(h, w, self.window_size, self.window_size // 2, x.device)
        y = self.embed_norm(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            y = layer(y, mask)
        return self.norm(y).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------
# Texture aggregation and the restoration network


class SimilarityAggregation(DynamicAggregation):
    """DATSR's DCN (official ``DCN_sep_pre_multi_offset_flow_similarity``): as
    :class:`refsr.models.amsa.DynamicAggregation`, with the predicted offset residual bounded by
    ``max_residue * tanh`` and the mask logits multiplied by the match similarity before the sigmoid.

    ``forward(feature (N,C,H,W), guide (N,C,H,W), offsets (N,18,H,W), similarity (N,1,H,W))`` -> ``(N,C,H,W)``.
    """

    def __init__(self, channels: int, groups: int, max_residue: float = 10.0) -> None:
        super().__init__(channels, groups)
        self.max_residue = max_residue

    def forward(self, feature: torch.Tensor, guide: torch.Tensor, offsets: torch.Tensor,  # type: ignore[override]
                similarity: torch.Tensor) -> torch.Tensor:
        predicted = self.conv_offset_mask(guide)
        split = 18 * self.groups
        offset = self.max_residue * torch.tanh(predicted[:, :split]) + offsets.repeat(1, self.groups, 1, 1)
        mask = torch.sigmoid(predicted[:, split:] * similarity)
        return deform_conv2d(feature, offset, self.weight, self.bias, padding=1, mask=mask)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, max_residue={self.max_residue}"


def warp_by_flow(feature: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``feature (N,C,H,W)`` sampled at ``(y + dy, x + dx)``, ``flow (N,2,H,W)`` = ``(dy, dx)``: bilinear,
    zero outside, pixel centres at ``align_corners=True`` positions (the official ``flow_warp``)."""
    _, _, h, w = feature.shape
    grid_y = torch.arange(h, dtype=feature.dtype, device=feature.device).view(1, h, 1)
    grid_x = torch.arange(w, dtype=feature.dtype, device=feature.device).view(1, 1, w)
    x = 2.0 * (grid_x + flow[:, 1]) / max(w - 1, 1) - 1.0
    y = 2.0 * (grid_y + flow[:, 0]) / max(h - 1, 1) - 1.0
    return F.grid_sample(feature, torch.stack((x, y), dim=-1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


class _TextureLevel(nn.Module):
    """One level of DATSR's U-Net: warp-guided DCN aggregation of one VGG texture, fusion, Swin group, tail.

    ``tail``: ``"down"`` (a stride-2 conv), ``"up"`` (conv to 4 ngf, PixelShuffle x2, LReLU) or ``"out"``
    (conv to ngf/2, LReLU, conv to RGB).
    """

    def __init__(self, texture_channels: int, ngf: int, groups: int, tail: str, swin: dict[str, Any]) -> None:
        super().__init__()
        self.offset_conv1 = _conv3(ngf + 2 * texture_channels, texture_channels)
        self.offset_conv2 = _conv3(texture_channels, texture_channels)
        self.aggregate = SimilarityAggregation(texture_channels, groups)
        self.head = _conv3(ngf + texture_channels, ngf)
        self.body = SwinGroup(ngf, **swin)
        self.kind = tail
        if tail == "down":
            self.tail = _conv3(ngf, ngf, stride=2)
        elif tail == "up":
            self.tail = _conv3(ngf, 4 * ngf)
        else:
            self.tail = _conv3(ngf, ngf // 2)
            self.out = _conv3(ngf // 2, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, texture: torch.Tensor, warped: torch.Tensor,
                offsets: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        guide = _lrelu(self.offset_conv1(torch.cat((x, warped, texture), dim=1)))
        guide = _lrelu(self.offset_conv2(guide))
        aggregated = _lrelu(self.aggregate(texture, guide, offsets, similarity))
        h = _lrelu(self.head(torch.cat((x if skip is None else x + skip, aggregated), dim=1)))
        h = self.body(h) + x
        if self.kind == "down":
            return self.tail(h)
        if self.kind == "up":
            return _lrelu(F.pixel_shuffle(self.tail(h), 2))
        return self.out(_lrelu(self.tail(h)))

    def extra_repr(self) -> str:
        return f"tail={self.kind!r}"


class DATSRGuidance(NamedTuple):
    """What DATSR's matching hands to the restoration net, per texture level (relu3_1, relu2_1, relu1_1).

    Attributes:
        offsets: ``(N,18,s*h,s*w)`` DCN offsets (:func:`refsr.models.amsa.match_offsets`).
        flows: ``(N,2,s*h,s*w)`` ``(dy, dx)`` warps.
        similarities: ``(N,1,s*h,s*w)``.
    """

    offsets: list[torch.Tensor]
    flows: list[torch.Tensor]
    similarities: list[torch.Tensor]


class DATSRRestorationNet(nn.Module):
    """DATSR's restoration network (official ``SwinUnetv3RestorationNet`` without its unused content
    extractor). See the module docstring, step 3.

    Args:
        ngf: channels (128); groups: DCN groups (8); depths, num_heads: per Swin layer ((4, 4), (4, 4));
        window_size: 8; mlp_ratio: 2; drop_path_rate: 0.1.
    """

    def __init__(self, ngf: int = 128, groups: int = 8, depths: Sequence[int] = (4, 4),
                 num_heads: Sequence[int] = (4, 4), window_size: int = 8, mlp_ratio: float = 2.0,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if isinstance(ngf, bool) or not isinstance(ngf, int) or ngf < 2:
            raise RefsrError(f"DATSR needs ngf >= 2; got {ngf!r}")
        swin = dict(depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size, mlp_ratio=mlp_ratio,
                    drop_path_rate=drop_path_rate)
        channels = {name: c for name, c, _ in TEXTURE_LEVELS}
        self.head = _conv3(3, ngf)
        self.down1 = _TextureLevel(channels["relu1_1"], ngf, groups, "down", swin)
        self.down2 = _TextureLevel(channels["relu2_1"], ngf, groups, "down", swin)
        self.up3 = _TextureLevel(channels["relu3_1"], ngf, groups, "up", swin)
        self.up2 = _TextureLevel(channels["relu2_1"], ngf, groups, "up", swin)
        self.up1 = _TextureLevel(channels["relu1_1"], ngf, groups, "out", swin)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: convs and linear layers N(0, 0.02^2) with zero bias, DCN weights
        uniform in ±1/sqrt(9 C) with zero bias, the offset/mask convs zero, LayerNorms (1, 0), relative
        position biases truncated N(0, 0.02^2)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, SimilarityAggregation):
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)
                nn.init.zeros_(module.conv_offset_mask.weight)
                nn.init.zeros_(module.conv_offset_mask.bias)

    def forward(self, lr: torch.Tensor, textures: Sequence[torch.Tensor], guidance: DATSRGuidance) -> torch.Tensor:
        """``lr (N,3,h,w)``, textures relu3_1, relu2_1, relu1_1 and the guidance -> SR ``(N,3,4h,4w)``."""
        base = F.interpolate(lr, scale_factor=_SCALE, mode="bilinear", align_corners=False)
        t3, t2, t1 = textures
        o3, o2, o1 = guidance.offsets
        s3, s2, s1 = guidance.similarities
        w3, w2, w1 = (warp_by_flow(t, f) for t, f in zip(textures, guidance.flows))
        x0 = self.head(base)
        x1 = self.down1(x0, None, t1, w1, o1, s1)
        x2 = self.down2(x1, None, t2, w2, o2, s2)
        x = self.up3(x2, None, t3, w3, o3, s3)
        x = self.up2(x, x1, t2, w2, o2, s2)
        return self.up1(x, x0, t1, w1, o1, s1) + base


# ---------------------------------------------------------------------------------------------------------
# The model


def patch_similarity(query: torch.Tensor, key: torch.Tensor, corr: Correspondence, eps: float = 1e-5) -> torch.Tensor:
    """The official matching's ``max_val`` at each query position: ``<q, k> / ((|q| + eps)(|k| + eps))`` of the
    query's 3x3 patch and its matched key patch, zero on the query's 1-pixel border (the official map covers
    the inside patches and is zero-padded by 1).

    Args:
        query: ``(N,C,h,w)``; key: ``(N,C,H,W)``; corr: a match of ``query`` in ``key`` whose ``score`` is the
            cosine (:func:`refsr.matching.dense.match_dense`).

    Returns:
        ``(N,1,h,w)``.
    """
    def norms(x: torch.Tensor) -> torch.Tensor:  # the 3x3 patch norm at every position, zero padding
        energy = F.avg_pool2d(x.pow(2).sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=True)
        return (energy * 9).clamp_min(0).sqrt().flatten(1)

    n, _, h, w = query.shape
    query_norm = norms(query)
    key_norm = torch.gather(norms(key), 1, corr.index.flatten(1))
    # match_dense's cosine divides by norms clamped at 1e-12: undo that, then apply the official divisor.
    factor = query_norm.clamp_min(1e-12) * key_norm.clamp_min(1e-12) / ((query_norm + eps) * (key_norm + eps))
    similarity = corr.score * factor.view(n, h, w)
    inside = torch.zeros_like(similarity)
    inside[:, 1:-1, 1:-1] = 1
    return (similarity * inside).unsqueeze(1)


def _nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


class DATSR(C2Pipeline):
    """DATSR (ECCV 2022), x4. See the module docstring for the pipeline.

    Args:
        ngf: channels (128); groups: DCN groups (8); depths, num_heads: per Swin layer ((4, 4), (4, 4));
        window_size: 8; mlp_ratio: 2; drop_path_rate: 0.1 (training only).
        match_max_bytes: working-memory budget of one chunk of the matching.

    The two extractors start random and frozen; :func:`datsr` loads ``feature_extraction.pth`` and ImageNet
    VGG19 weights into them when given.

    Attributes:
        size_rule: LR sides multiples of ``window_size`` (at least one window), Ref at least 12 pixels.
    """

    def __init__(self, *, ngf: int = 128, groups: int = 8, depths: Sequence[int] = (4, 4),
                 num_heads: Sequence[int] = (4, 4), window_size: int = 8, mlp_ratio: float = 2.0,
                 drop_path_rate: float = 0.1, match_max_bytes: int = 256 * 2**20) -> None:
        super().__init__(match_max_bytes=match_max_bytes)
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise RefsrError(f"window_size must be an integer >= 2; got {window_size!r}")
        self.config: dict[str, Any] = dict(ngf=ngf, groups=groups, depths=tuple(depths), num_heads=tuple(num_heads),
                                           window_size=window_size, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)
        self.hr_multiple = _SCALE * window_size
        self.size_rule = SizeRule(lr_multiple=window_size, ref_multiple=_SCALE, min_lr=window_size,
                                  min_ref=3 * _SCALE, pad_mode="replicate")
        self.restoration = DATSRRestorationNet(**self.config)

    def match(self, feat_lr: torch.Tensor, feat_ref: torch.Tensor) -> DATSRGuidance:
        """The matching and what the restoration net takes of it (module docstring, step 2)."""
        corr, query, key = self.correspond(feat_lr, feat_ref)
        with torch.no_grad():
            displacement = match_displacement(corr, feat_lr.dtype)
            offsets = [match_offsets(displacement, s) for _, _, s in TEXTURE_LEVELS]
            similarity = patch_similarity(query, key, corr)
        return DATSRGuidance(
            offsets=offsets,
            flows=[offset[:, :2] for offset in offsets],  # tap (0, 0) is the flow itself, unshifted
            similarities=[_nearest(similarity, s) for _, _, s in TEXTURE_LEVELS],
        )

    def decode(self, lr: torch.Tensor, textures: Sequence[torch.Tensor], guidance: DATSRGuidance) -> torch.Tensor:
        """The restoration net: ``(N,3,4h,4w)``."""
        return self.restoration(lr, textures, guidance)


@register_model("datsr", paper="DATSR (ECCV 2022)")
def datsr(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None, **kwargs: Any) -> DATSR:
    """DATSR (ECCV 2022), x4: official architecture (restoration net 15,662,043 parameters; 18,026,971 officially)."""
    return load_frozen_parts(build_variant(DATSR, "datsr", {}, kwargs), extractor_weights, vgg_weights)


@register_model("datsr-lite", paper="DATSR (ECCV 2022)")
def datsr_lite(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None, **kwargs: Any) -> DATSR:
    """DATSR (ECCV 2022) with 32 channels, two 2-block Swin layers per level and 4 DCN groups."""
    model_args = dict(ngf=32, groups=4, depths=(2, 2), num_heads=(2, 2))
    return load_frozen_parts(build_variant(DATSR, "datsr-lite", model_args, kwargs), extractor_weights, vgg_weights)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints

#: (official level prefix, head/body/tail name parts, ours).
_LEVELS = (("down", "large", "down1"), ("down", "medium", "down2"), ("up", "small", "up3"),
           ("up", "medium", "up2"), ("up", "large", "up1"))


def _renames() -> list[tuple[str, str]]:
    pairs = [("dyn_agg_restore.unet_head.", "restoration.head.")]
    for direction, size, ours in _LEVELS:
        official, level = f"dyn_agg_restore.{direction}_", f"restoration.{ours}."
        body = f"{official}body_{size}."
        block = f"{body}layers.{{a}}.residual_group.blocks.{{b}}."
        pairs += [
            (f"{official}{size}_offset_conv{{a}}.", f"{level}offset_conv{{a}}."),
            (f"{official}{size}_dyn_agg.conv_offset_mask.", f"{level}aggregate.conv_offset_mask."),
            (f"{official}{size}_dyn_agg.", f"{level}aggregate."),
            (f"{official}head_{size}.0.", f"{level}head."),
            (f"{body}patch_embed.norm.", f"{level}body.embed_norm."),
            (f"{body}layers.{{a}}.conv.", f"{level}body.layers.{{a}}.conv."),
            (f"{body}norm.", f"{level}body.norm."),
        ]
        pairs += [(f"{block}{part}.", f"{level}body.layers.{{a}}.blocks.{{b}}.{part}.")
                  for part in ("norm1", "attn", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")]
        if direction == "down":
            pairs.append((f"{official}tail_{size}.", f"{level}tail."))
        else:
            pairs.append((f"{official}tail_{size}.0.", f"{level}tail."))
            if size == "large":
                pairs.append((f"{official}tail_{size}.2.", f"{level}out."))
    return pairs


_OFFICIAL = KeyRenames(_renames())


def official_key(our_key: str) -> str:
    """The official key of one of our restoration keys (``restoration.up3.body.layers.0.blocks.1.attn.qkv.weight``
    -> ``dyn_agg_restore.up_body_small.layers.0.residual_group.blocks.1.attn.qkv.weight``). Raises
    ``KeyError`` for keys with no counterpart (the extractors': see :mod:`refsr.models.c2_matching`)."""
    official = _OFFICIAL.to_official(our_key)
    if official is None:
        raise KeyError(our_key)
    return official


def _datsr_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], int]:
    """The restoration configuration of an official checkpoint, and its (unused) content extractor's block count."""
    def tensor(key: str) -> torch.Tensor | None:
        value = state_dict.get(key)
        return value if isinstance(value, torch.Tensor) else None

    prefix = "dyn_agg_restore.down_body_large."
    block = re.compile(re.escape(prefix) + r"layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")
    depths: dict[int, int] = {}
    for match in map(block.match, state_dict):
        if match:
            layer, index = int(match.group(1)), int(match.group(2))
            depths[layer] = max(depths.get(layer, 0), index + 1)
    layers = sorted(depths) or [0, 1]
    heads, window = [], 8
    for layer in layers:
        table = tensor(f"{prefix}layers.{layer}.residual_group.blocks.0.attn.relative_position_bias_table")
        heads.append(int(table.shape[1]) if table is not None and table.dim() == 2 else 4)
        if table is not None and table.dim() == 2:
            window = (math.isqrt(int(table.shape[0])) + 1) // 2
    head = tensor("dyn_agg_restore.unet_head.weight")
    ngf = int(head.shape[0]) if head is not None and head.dim() == 4 else 128
    fc1 = tensor(f"{prefix}layers.0.residual_group.blocks.0.mlp.fc1.weight")
    offset_mask = tensor("dyn_agg_restore.down_large_dyn_agg.conv_offset_mask.weight")
    content = re.compile(r"content_extractor\.body\.(\d+)\.")
    found = [int(m.group(1)) for m in map(content.match, state_dict) if m]
    config = dict(ngf=ngf, groups=max(1, int(offset_mask.shape[0]) // 27) if offset_mask is not None else 8,
                  depths=tuple(depths.get(i, 4) for i in layers), num_heads=tuple(heads), window_size=window,
                  mlp_ratio=int(fc1.shape[0]) / ngf if fc1 is not None else 2.0)
    return config, max(found) + 1 if found else 8


def _datsr_restoration_table(state_dict: Mapping[str, torch.Tensor]) -> KeyTable:
    """The official restoration keys for the checkpoint's configuration; the unused content extractor and the
    attention buffers are checked and dropped."""
    config, content_blocks = _datsr_config(state_dict)
    with torch.device("meta"):
        net = DATSRRestorationNet(**config)
        content = ContentExtractor(config["ngf"], content_blocks)
    table: KeyTable = {official_key("restoration." + k): KeyEntry("restoration." + k, tuple(v.shape))
                       for k, v in net.state_dict().items()}
    table.update({amsa_official_key("restoration.content." + k): KeyEntry(None, tuple(v.shape))
                  for k, v in content.state_dict().items()})
    tokens = config["window_size"] ** 2
    for name, module in net.named_modules():
        if isinstance(module, SwinTransformerBlock):
            attn = official_key(f"restoration.{name}.attn.qkv.weight")[: -len("qkv.weight")]
            table[attn + "relative_position_index"] = KeyEntry(None, (tokens, tokens), required=False)
            mask = attn[: -len("attn.")] + "attn_mask"
            if module.shift and isinstance(state_dict.get(mask), torch.Tensor):
                # Sized for the official img_size of the level (40, 80 or 160): only its last two sides are fixed.
                table[mask] = KeyEntry(None, (int(state_dict[mask].shape[0]), tokens, tokens), required=False)
    return table


@register_converter("datsr")
def convert_official_datsr(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official DATSR checkpoints onto :class:`DATSR`.

    Accepts, merged in one dict or alone: the restoration net (``restoration_mse.pth`` /
    ``restoration_gan.pth``: ``dyn_agg_restore.*`` and the unused ``content_extractor.*``, which is
    checked and dropped, as are the Swin blocks' ``relative_position_index`` and ``attn_mask`` buffers),
    ``feature_extraction.pth`` (C2-Matching's) and the texture VGG of ``net_map`` (``vgg.vgg_net.conv*``).
    ``load_state_dict(strict=True)`` needs all three: merge them (``refsr convert --from datsr A.pth B.pth
    C.pth``) or pass ``extractor_weights=`` / ``vgg_weights=`` to the builder. The configuration (width,
    groups, Swin depths, heads, window, MLP ratio) is read from the checkpoint.

    Raises:
        RefsrError: unknown keys, or a part with missing or misshapen keys (official names listed).
    """
    return convert_checkpoint_files(state_dict, _datsr_restoration_table, "DATSR")
