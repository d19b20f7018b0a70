"""MASA-SR: Matching Acceleration and Spatial Adaptation for reference-based super-resolution (x4).

Paper: Liying Lu, Wenbo Li, Xin Tao, Jiangbo Lu, Jiaya Jia, "MASA-SR: Matching Acceleration and Spatial
Adaptation for Reference-Based Image Super-Resolution", CVPR 2021.
Official code: https://github.com/dvlab-research/MASA-SR at commit 80d1bd8 (``models/archs/MASA_arch.py``,
``models/losses.py``, ``models/trainer.py``, ``dataloader/dataset.py``). Written from the paper and from
reading that code; its released checkpoints load through :func:`convert_official_masa`.

Pipeline (``MASA.forward``): a shared encoder turns LR, Ref↓ and Ref into features; MEM
(:func:`refsr.matching.mem.match_mem`) matches LR against Ref↓ features block by block;
:func:`refsr.matching.transfer.masa_transfer` pastes the matched Ref features at x1, x2 and x4; the decoder
fuses them with the LR features through SAM and DRAM; a bicubic-upsampled LR is added at the end.

Where this code follows the official implementation rather than the paper (the official behaviour is what
the released weights need, so it wins every time):

1. **LR path.** The paper sends LR and Ref↓ through the first encoder block only. The official code sends
   the LR through all three blocks and starts the decoder with a small U-Net over them (per level: a conv,
   ReLU and 2 ResBlocks; bilinear x2 up-sampling, ``align_corners=False``; concatenation with the skip,
   up-sampled features first) to make the LR features of the x1 fusion. It also encodes Ref↓ with all
   three blocks but only uses the first level; we compute only that level (same output, less work).
2. **SAM** is one module shared by the three scales (one set of weights in the checkpoint). Its Ref input
   is instance-normalised (``eps = 1e-5``, biased variance, no affine); γ and β come from a conv + ReLU on
   ``cat[LR, Ref]`` (LR first), then one conv each, and are *added* to the LR's per-channel std and mean.
   The std is ``torch.std``, i.e. **unbiased** (divides by ``h*w - 1``), with no epsilon. The γ and β
   convolutions start at zero.
3. **Fusion at x1** has no DRAM: ``ReLU(conv(cat[SAM(Ref), LR]))`` then 12 ResBlocks. At x2 and x4 the SAM
   gets the bilinear-upsampled LR features, while the DRAM gets the LR features at their own (half)
   resolution.
4. **DRAM** puts a ReLU after every convolution, which the paper's Eqs. 12-13 do not show:
   ``Ref' = ReLU(Deconv_a(ReLU(Conv_a(Ref)) - LR)) + Ref``,
   ``LR' = ReLU(Deconv_b((LR - ReLU(Conv_b(Ref))) + LR))``, ``out = ReLU(Conv(cat[Ref', LR']))``; the two
   stride-2 convs are separate (3x3, padding 1), the deconvs are ``ConvTranspose2d(3, stride 2, padding 1,
   output_padding 1)``.
5. **MEM and transfer** details (dilations ``(1, 2, 3)`` with summed cosines, the Ref↓ block size
   ``2 * int(W↓ // (2 * blocks_x) * 1.5) + 1`` with the floor before the factor, windows shifted to stay
   inside Ref↓, replicate-padded LR blocks, the raw top-1 cosine as soft attention, averaging of
   overlapping patches within a block) are documented in :mod:`refsr.matching.mem` and
   :mod:`refsr.matching.transfer`.
6. **Output** adds ``F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)`` (PyTorch's
   a = -0.75 kernel, not PIL's).
7. **Initialisation**: every conv and deconv ``N(0, (0.5 * sqrt(2 / (k*k*C_out)))^2)``, zero biases, then
   the ResBlock weights scaled by 0.1 and SAM's γ/β convolutions zeroed.
8. **Channel order.** The official network takes BGR (OpenCV) images. :func:`convert_official_masa` folds
   the flip into the first convolution (input channels) and the last one (output channels and bias), so
   the converted model takes RGB and returns exactly the official output, flipped to RGB.
9. **Losses** (:mod:`refsr.losses`): the "perceptual" term is the *L1* distance between VGG19 ``conv5_4``
   features (the paper writes a 2-norm), and the adversarial term is the relativistic *average* GAN of
   ESRGAN with binary cross-entropy on logits, each of its two terms weighted 0.5. The official code feeds
   its BGR tensors to the RGB-trained VGG; ours feeds RGB, which is what that VGG expects.
10. **Ref↓ when omitted** is made as the official data loader makes it: the Ref as 8-bit values, PIL
   bicubic ÷4 (:func:`refsr.imresize`, ``kernel="pil"``). A float Ref is therefore rounded to 8 bits for
   this step (no gradient flows through Ref↓).
11. **Size rules** (from the official test loader): the LR is padded, centred, with replicated borders, to a
   multiple of 8 (MEM's block size; also a multiple of 4 for the encoder's two stride-2 levels), the Ref
   bottom/right to a multiple of 16. Ours also asks for a Ref of at least 32 pixels a side, so that MEM's
   Ref↓ window fits even for a one-block LR (the official code fails there).

Ablation switches (paper Fig. 5, Tables 3 and 4): ``lr_block_size``, ``ref_block_factor``, ``dilations``;
``use_sam`` (off: the transferred textures go in as they are, Table 3 "baseline") and ``sam_learnable``
(off: plain AdaIN, γ = std and β = mean of the LR, the official ``learnable=False``); ``dram_ref_branch`` and
``dram_lr_branch`` (Table 4). A branch that is off passes its input through (the Ref features, or the
bilinear-upsampled LR features), so that the final conv still sees ``cat[Ref side, LR side]``; with both off
this is Table 4's "Model 1" (concatenate and convolve), and the parameter counts match the table
(4.03 M / 3.88 M / 3.73 M).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.matching.correspondence import Correspondence
from refsr.matching.block_search import BlockIndex, build_block_index, index_saves_work
from refsr.matching.mem import COARSE_SEARCHES, MEMGeometry, crop_mem_correspondence, match_mem, mem_geometry
from refsr.matching.transfer import masa_transfer
from refsr.models._base import RefSRModel
from refsr.models._blocks import ResBlock, conv2d, conv_relu
from refsr.models._convert import KeyRenames, listing
from refsr.models._memory import MemoryCost
from refsr.models._registry import WeightsInfo, build_variant, register_converter, register_model
from refsr.models._size import SizeRule

__all__ = [
    "MASA",
    "MASAReferenceCache",
    "MASA_MEMORY_COST",
    "SAMStatistics",
    "channel_var_mean",
    "ResBlock",
    "SAM",
    "DRAM",
    "adapt_statistics",
    "masa",
    "masa_lite",
    "convert_official_masa",
    "official_key",
    "OFFICIAL_PARAMETERS",
]

#: Parameters of the official network (``keys/MASA.txt``: 210 state_dict entries).
OFFICIAL_PARAMETERS = 4_028_291

# MASA's x4 pipeline: Ref = 4 x Ref↓, and the encoder's levels are at 1, 1/2 and 1/4 of their input.
_SCALE = 4
_INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm2d's default, which the official SAM uses


class _Level(nn.Module):
    """A conv (optionally strided) + ReLU, then ``blocks`` ResBlocks: one encoder or U-Net level."""

    def __init__(self, in_channels: int, nf: int, blocks: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = conv2d(in_channels, nf, stride=stride)
        self.blocks = nn.Sequential(*(ResBlock(nf) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(conv_relu(self.conv, x))


class _Encoder(nn.Module):
    """Three levels; the second and third halve the size (stride 2). Shared by LR, Ref↓ and Ref."""

    def __init__(self, nf: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.level1 = _Level(3, nf, blocks[0])
        self.level2 = _Level(nf, nf, blocks[1], stride=2)
        self.level3 = _Level(nf, nf, blocks[2], stride=2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N,3,H,W)`` -> ``[(N,nf,H,W), (N,nf,H/2,W/2), (N,nf,H/4,W/4)]`` (sizes rounded up)."""
        first = self.level1(x)
        second = self.level2(first)
        return [first, second, self.level3(second)]


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class _LRDecoder(nn.Module):
    """The official decoder's U-Net over the LR encoder levels, producing the LR features at x1."""

    def __init__(self, nf: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.level3 = _Level(nf, nf, blocks[0])
        self.level2 = _Level(2 * nf, nf, blocks[1])
        self.level1 = _Level(2 * nf, nf, blocks[2])

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.level3(feats[2])
        x = self.level2(torch.cat((_upsample2(x), feats[1]), dim=1))
        return self.level1(torch.cat((_upsample2(x), feats[0]), dim=1))


def adapt_statistics(
    ref: torch.Tensor,
    lr: torch.Tensor,
    gamma_offset: torch.Tensor | None = None,
    beta_offset: torch.Tensor | None = None,
    *,
    eps: float = _INSTANCE_NORM_EPS,
) -> torch.Tensor:
    """SAM's remapping of Ref feature statistics onto those of the LR features.

    ``instance_norm(ref) * (gamma_offset + std(lr)) + (beta_offset + mean(lr))``, where the Ref is
    normalised per sample and channel over its pixels (biased variance, ``eps`` inside the square root) and
    ``mean``/``std`` are per sample and channel over the LR pixels, the std **unbiased** and without epsilon
    (``torch.std``), as in the official code. With no offsets this is AdaIN.

    Args:
        ref: ``(N, C, H, W)`` Ref (transferred texture) features.
        lr: ``(N, C, h, w)`` LR features; ``h * w >= 2``.
        gamma_offset, beta_offset: ``(N, C, H, W)`` learned, spatially varying offsets, or ``None``.
        eps: the instance norm's epsilon.

    Returns:
        ``(N, C, H, W)``.
    """
    # Written out rather than F.instance_norm, which returns a contiguous (NCHW) tensor whatever it is
    # given: elementwise ops keep the channels-last layout the convolutions run fastest in.
    ref_var, ref_mean = torch.var_mean(ref, dim=(2, 3), correction=0, keepdim=True)
    normalised = (ref - ref_mean) * torch.rsqrt(ref_var + eps)
    std, mean = torch.std_mean(lr, dim=(2, 3), correction=1, keepdim=True)
    gamma = std if gamma_offset is None else gamma_offset + std
    beta = mean if beta_offset is None else beta_offset + mean
    return torch.addcmul(beta, normalised, gamma)


def channel_var_mean(x: torch.Tensor, correction: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.var_mean(x, dim=(2, 3), correction=correction, keepdim=True)``, fast for channels-last maps.

    A reduction over H and W of a channels-last tensor strides over memory; reducing the ``(N, H, W, C)``
    view over its middle dimensions runs along contiguous channels instead (about 10x faster on the large
    maps of MASA's x4 fusion). Same values up to the summation order.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        var, mean = torch.var_mean(x.permute(0, 2, 3, 1), dim=(1, 2), correction=correction)
        return var[:, :, None, None], mean[:, :, None, None]
    return torch.var_mean(x, dim=(2, 3), correction=correction, keepdim=True)


@dataclass(frozen=True)
class SAMStatistics:
    """The per-sample, per-channel statistics one SAM normalises with, each ``(N, C, 1, 1)``.

    A SAM computes them from its inputs; a tiled run (:meth:`MASA.forward_tiled`) computes them once over
    the whole image and passes them to every tile, so that tiles equal the whole image.

    Attributes:
        lr_std: the LR features' standard deviation, unbiased (``torch.std``, as the official code).
        lr_mean: the LR features' mean.
        ref_var: the Ref (texture) features' variance, biased (instance norm).
        ref_mean: the Ref features' mean.
    """

    lr_std: torch.Tensor
    lr_mean: torch.Tensor
    ref_var: torch.Tensor
    ref_mean: torch.Tensor

    @classmethod
    def of(cls, lr: torch.Tensor, ref: torch.Tensor) -> SAMStatistics:
        """The statistics of one LR and one Ref feature map, ``(N, C, H, W)`` each."""
        lr_var, lr_mean = channel_var_mean(lr, correction=1)
        ref_var, ref_mean = channel_var_mean(ref, correction=0)
        return cls(lr_var.sqrt(), lr_mean, ref_var, ref_mean)


class SAM(nn.Module):
    """Spatial Adaptation Module: remaps Ref features to the LR features' statistics.

    Args:
        nf: channels.
        learnable: predict spatially varying offsets of γ and β from ``cat[LR, Ref]`` (MASA); ``False`` is
            plain AdaIN (no parameters).
    """

    def __init__(self, nf: int, *, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            self.shared = conv2d(2 * nf, nf)
            self.gamma = conv2d(nf, nf)
            self.beta = conv2d(nf, nf)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, statistics: SAMStatistics | None = None) -> torch.Tensor:
        """``lr (N,C,H,W)`` LR features at the Ref's resolution, ``ref (N,C,H,W)`` -> ``(N,C,H,W)``.

        ``statistics``: the normalisation statistics to use instead of those of ``lr`` and ``ref`` (e.g. a
        whole image's, for a tile of it).
        """
        if statistics is None:
            statistics = SAMStatistics.of(lr, ref)
        std, mean = statistics.lr_std.to(lr.dtype), statistics.lr_mean.to(lr.dtype)
        if not self.learnable:
            gamma, beta = std, mean
        else:
            style = conv_relu(self.shared, torch.cat((lr, ref), dim=1))
            # adapt_statistics(ref, lr, gamma(style), beta(style)) with fewer passes over the (large) maps:
            # the offsets are fresh conv outputs, so the LR statistics can be added to them in place, and
            # the instance norm is one multiply-add with per-channel coefficients.
            gamma = self.gamma(style).add_(std)
            beta = self.beta(style).add_(mean)
            del style
        inv_std = torch.rsqrt(statistics.ref_var + _INSTANCE_NORM_EPS).to(ref.dtype)
        normalised = torch.addcmul(-statistics.ref_mean.to(ref.dtype) * inv_std, ref, inv_std)
        return torch.addcmul(beta, normalised, gamma)

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}"


class DRAM(nn.Module):
    """Dual Residual Aggregation Module: fuses LR features at ``h x w`` with Ref features at ``2h x 2w``.

    Args:
        nf: channels.
        ref_branch: refine the Ref features with the LR residual (paper Eq. 12); off: pass them through.
        lr_branch: refine and up-sample the LR features with the Ref residual (Eq. 13); off: use the
            bilinear-upsampled LR features instead.
    """

    def __init__(self, nf: int, *, ref_branch: bool = True, lr_branch: bool = True) -> None:
        super().__init__()
        self.ref_branch = ref_branch
        self.lr_branch = lr_branch
        if ref_branch:
            self.ref_branch_down = conv2d(nf, nf, stride=2)
            self.ref_branch_up = nn.ConvTranspose2d(nf, nf, 3, stride=2, padding=1, output_padding=1)
        if lr_branch:
            self.lr_branch_down = conv2d(nf, nf, stride=2)
            self.lr_branch_up = nn.ConvTranspose2d(nf, nf, 3, stride=2, padding=1, output_padding=1)
        self.merge = conv2d(2 * nf, nf)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: torch.Tensor | None = None) -> torch.Tensor:
        """``lr (N,C,h,w)``, ``ref (N,C,2h,2w)`` -> ``(N,C,2h,2w)``.

        ``lr_up`` (the bilinear x2 of ``lr``) is only read when the LR branch is off; it is computed here
        if not given.
        """
        if self.ref_branch:
            residual = conv_relu(self.ref_branch_down, ref) - lr
            # Not in place: ReLU's backward reads its output.
            ref_side = F.relu(self.ref_branch_up(residual)) + ref
        else:
            ref_side = ref
        if self.lr_branch:
            residual = lr - conv_relu(self.lr_branch_down, ref)
            lr_side = F.relu(self.lr_branch_up(residual + lr), inplace=True)
        else:
            lr_side = _upsample2(lr) if lr_up is None else lr_up
        return conv_relu(self.merge, torch.cat((ref_side, lr_side), dim=1))

    def extra_repr(self) -> str:
        return f"ref_branch={self.ref_branch}, lr_branch={self.lr_branch}"


class _Fusion(nn.Module):
    """One scale of the decoder: DRAM (x2, x4) or a merge conv (x1), then ResBlocks."""

    def __init__(self, nf: int, blocks: int, *, dram: DRAM | None = None) -> None:
        super().__init__()
        if dram is None:
            self.merge = conv2d(2 * nf, nf)
        else:
            self.dram = dram
        self.blocks = nn.Sequential(*(ResBlock(nf) for _ in range(blocks)))


def _in_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in ``layout`` with that layout's dense strides, whatever the strides of its size-1 axes were.

    ``contiguous(memory_format=...)`` keeps a tensor whose only odd strides are on size-1 axes (a permuted
    image has a batch stride of 3), but oneDNN chooses its kernels by strides: in bfloat16 such an input moved
    about 1 % of the output pixels by one level against the same values laid out densely.
    """
    x = x.contiguous(memory_format=layout)
    dense = torch.empty(x.shape, device="meta", memory_format=layout).stride()
    return x if x.stride() == dense else x.clone(memory_format=layout)


def _as_triple(value: Sequence[int], what: str) -> tuple[int, int, int]:
    values = tuple(value)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise RefsrError(f"{what} must be three non-negative integers; got {value!r}")
    return values  # type: ignore[return-value]


@dataclass
class MASAReferenceCache:
    """The reference side of MASA, computed once and reused for any number of LR inputs (e.g. tiles).

    Everything in it depends on the reference alone, so a tiled run encodes a large Ref once and each tile
    pays only for its LR side, the matching and the decoder. On the CPU the maps are channels-last, which
    is also the layout the texture transfer reads (it then needs no copy of them).

    Attributes:
        ref_size: ``(H, W)`` of the Ref the cache was made from.
        ref_down_feat: ``(N, nf, H/4, W/4)``, the encoder's first level on Ref↓ (what MEM matches against).
        ref_feats: the encoder's three levels on the Ref, ``(N, nf, H, W)``, ``(N, nf, H/2, W/2)``,
            ``(N, nf, H/4, W/4)``.
        block_index: for ``matching="fast"``, the index of ``ref_down_feat`` that MEM's coarse search
            probes (:mod:`refsr.matching.block_search`), one per sample; ``None`` when the search is
            exhaustive (exact matching, or a Ref↓ too small for an index to save work).
    """

    ref_size: tuple[int, int]
    ref_down_feat: torch.Tensor
    ref_feats: list[torch.Tensor]
    block_index: list[BlockIndex] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.ref_down_feat.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached maps and the index."""
        maps = [self.ref_down_feat, *self.ref_feats]
        index = sum(i.nbytes for i in self.block_index) if self.block_index else 0
        return sum(m.numel() * m.element_size() for m in maps) + index


Box = tuple[int, int, int, int]

#: The x4 fusion's largest tile in :meth:`MASA.forward_tiled`, in LR pixels: its maps then stay near the
#: CPU's caches. Measured on 2 cores (masa-lite, per LR megapixel, halo included): 8 s at 128 against 12.5 s
#: at 256 in bfloat16, 21-27 s against 24.5 s in float32; and 23.6 s against 32.9 s for a whole 1024² LR
#: with a 2048² reference in bfloat16.
_CACHE_FRIENDLY_TILE = 128


def _tile_boxes(height: int, width: int, side: int, halo: int) -> list[tuple[Box, Box]]:
    """``(core, outer)`` boxes ``(top, bottom, left, right)`` of tiles of ``side`` covering a map, each core
    grown by ``halo`` on every side within the map."""
    boxes = []
    for top in range(0, height, side):
        for left in range(0, width, side):
            core = (top, min(top + side, height), left, min(left + side, width))
            boxes.append((core, _grow(core, halo, height, width)))
    return boxes


def _grow(box: Box, margin: int, height: int, width: int) -> Box:
    top, bottom, left, right = box
    return max(0, top - margin), min(height, bottom + margin), max(0, left - margin), min(width, right + margin)


def _box(box: Box, scale: int = 1) -> tuple[slice, ...]:
    """Index of a box (in LR pixels) of a map at ``scale`` times the LR size."""
    top, bottom, left, right = box
    return (..., slice(top * scale, bottom * scale), slice(left * scale, right * scale))


def _inner(core: Box, outer: Box, scale: int = 1) -> tuple[slice, ...]:
    """Index of ``core`` within a map computed for ``outer`` (both in LR pixels), at ``scale``."""
    top, bottom, left, right = core
    return _box((top - outer[0], bottom - outer[0], left - outer[2], right - outer[2]), scale)


class _Moments:
    """Per-sample, per-channel mean and variance of a map seen region by region (float64, the pairwise
    update of Chan, Golub & LeVeque): the statistics of the whole map without holding it."""

    def __init__(self) -> None:
        self.count = 0
        self.total_mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add the pixels of ``x (N, C, h, w)``."""
        count = x.shape[-2] * x.shape[-1]
        if x.dtype == torch.float64:
            var, mean = (t.double() for t in channel_var_mean(x, correction=0))
        else:
            # The sums and sums of squares as matrix products (the squares on the diagonal of a Gram
            # matrix): ten times faster than var_mean on large maps, with float32 accumulation (relative
            # error about 1e-6 on masa-lite's x4 maps, far below what the tiles' 50 dB bound allows).
            n, c = x.shape[:2]
            rows = x.permute(0, 2, 3, 1).reshape(n, count, c).float()
            ones = rows.new_ones(1, count)
            sums = torch.stack([(ones @ rows[i])[0] for i in range(n)]).double()
            squares = torch.stack([torch.diagonal(rows[i].T @ rows[i]) for i in range(n)]).double()
            mean = (sums / count)[:, :, None, None]
            var = (squares / count)[:, :, None, None] - mean.square()
        if self.total_mean is None or self.m2 is None:
            self.count, self.total_mean, self.m2 = count, mean, var * count
            return
        total = self.count + count
        delta = mean - self.total_mean
        self.total_mean = self.total_mean + delta * (count / total)
        self.m2 = self.m2 + var * count + delta.square() * (self.count * count / total)
        self.count = total

    def mean(self) -> torch.Tensor:
        assert self.total_mean is not None
        return self.total_mean

    def var(self, correction: int) -> torch.Tensor:
        assert self.m2 is not None
        return self.m2 / (self.count - correction)


#: MASA's memory cost at nf = 32 (``masa-lite``) in float32, calibrated with ``benchmarks/upscale.py --calibrate``
#: on the CPU (torch 2.13, 2 threads); :attr:`MASA.memory_cost` scales the feature-map terms with ``nf / 32`` and
#: the compute dtype's size, since every large map has nf channels.
MASA_MEMORY_COST = MemoryCost(
    fixed=300 * 2**20,
    # The output canvas of cross-faded tiles (3 float channels at scale^2 pixels per LR pixel), the uint8
    # result, the PNG.
    per_image_pixel=320,
    # Instead, in tiles (forward_tiled): the whole-image maps, at most the x1 fusion (LR size) and the x2
    # fusion (4 pixels per LR pixel), nf channels each: 640 B; MEM's correspondence: 30 B; the uint8 result.
    per_image_pixel_tiled=720,
    # The whole LR at once: the decoder's maps at x4 dominate (24.8 kB from LR 128^2 -> 192^2). In tiles of
    # forward_tiled (at most 128 LR pixels), per pixel of the x4 tile.
    per_tile_pixel=26_000,
    # The cached features (nf * (1 + 1/4 + 1/16 + 1/16) floats = 176 B at nf = 32), the float input image
    # (12 B) and the fast search's index (about 12 B). Checked against benchmarks/upscale.py --large: with
    # LR 1024^2 / Ref 2048^2 and 2048^2 / 4096^2 (x4 tiles of 128) the predictions exceed the measured peak
    # RSS by 20-25 % (float32: 2.98 against 2.42 GB, 8.48 against 6.81 GB; bfloat16: 4.99 against 4.02 GB).
    per_ref_pixel=200,
    # Measured 400-680 B per pixel of a strip (Ref 512^2 whole, 1024^2 in two strips).
    per_ref_pixel_encoding=700,
    matching_workspace=256 * 2**20,
    context=16,
    ramp=16,
)
#: The parts of MASA_MEMORY_COST's per-pixel terms that are nf-channel feature maps (they scale with nf and
#: the dtype; the rest, images and index, do not).
_TILED_IMAGE_MAPS = 640
_REF_FEATURES = 176


class MASA(RefSRModel):
    """MASA-SR, x4. See the module docstring for the architecture and where it follows the official code.

    Args:
        nf: channels of every intermediate feature map (64).
        encoder_blocks: ResBlocks per encoder level (4, 4, 4).
        unet_blocks: ResBlocks per level of the decoder's LR U-Net, levels 3, 2, 1 (2, 2, 2).
        fusion_blocks: ResBlocks after fusion at x1, x2, x4 (12, 8, 4).
        lr_block_size: MEM's LR block side (8).
        ref_block_factor: MEM's Ref↓ block factor (1.5).
        dilations: MEM's coarse-matching dilations ((1, 2, 3)).
        use_sam: use the Spatial Adaptation Module (Table 3).
        sam_learnable: learned γ/β offsets (True) or plain AdaIN (False); only with ``use_sam``.
        dram_ref_branch, dram_lr_branch: DRAM's two branches (Table 4).
        match_max_bytes: working-memory budget of one chunk of MEM's matching.
        matching: MEM's coarse search, ``"exact"`` (the official rule, every Ref↓ position) or ``"fast"``
            (an index of the Ref↓ positions, :mod:`refsr.matching.block_search`: the cost no longer grows
            with LR x Ref pixels); each call may override it (``matching=``).

    Attributes:
        size_rule: LR a multiple of ``lcm(lr_block_size, 4)`` (8), padded centred; Ref a multiple of 16,
            at least 32; replicated borders.
    """

    scale = _SCALE
    uses_ref = True
    takes_ref_down = True
    caches_reference = True
    exposes_correspondence = True
    matching_modes = COARSE_SEARCHES
    precisions = ("fp32", "bf16")
    tiles_exactly = True
    max_tile = _CACHE_FRIENDLY_TILE

    def __init__(
        self,
        *,
        nf: int = 64,
        encoder_blocks: Sequence[int] = (4, 4, 4),
        unet_blocks: Sequence[int] = (2, 2, 2),
        fusion_blocks: Sequence[int] = (12, 8, 4),
        lr_block_size: int = 8,
        ref_block_factor: float = 1.5,
        dilations: Sequence[int] = (1, 2, 3),
        use_sam: bool = True,
        sam_learnable: bool = True,
        dram_ref_branch: bool = True,
        dram_lr_branch: bool = True,
        match_max_bytes: int = 256 * 2**20,
        matching: str = "exact",
    ) -> None:
        super().__init__()
        if isinstance(nf, bool) or not isinstance(nf, int) or nf < 1:
            raise RefsrError(f"nf must be a positive integer; got {nf!r}")
        encoder_blocks = _as_triple(encoder_blocks, "encoder_blocks")
        unet_blocks = _as_triple(unet_blocks, "unet_blocks")
        fusion_blocks = _as_triple(fusion_blocks, "fusion_blocks")
        if isinstance(lr_block_size, bool) or not isinstance(lr_block_size, int) or lr_block_size < 1:
            raise RefsrError(f"lr_block_size must be a positive integer; got {lr_block_size!r}")
        if isinstance(ref_block_factor, bool) or not isinstance(ref_block_factor, (int, float)) \
                or not ref_block_factor > 0:
            raise RefsrError(f"ref_block_factor must be a positive number; got {ref_block_factor!r}")
        # The same rule as MEM's: the dilated taps of the block's centre patch stay inside the padded block.
        dilations = tuple(dilations)
        centre = (lr_block_size + 2) // 2
        max_dilation = min(centre, lr_block_size + 1 - centre)
        if not dilations or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= max_dilation
                                for d in dilations):
            raise RefsrError(
                f"dilations must be integers in 1..{max_dilation} for lr_block_size={lr_block_size}; "
                f"got {dilations!r}"
            )
        self.config: dict[str, Any] = dict(
            nf=nf, encoder_blocks=encoder_blocks, unet_blocks=unet_blocks, fusion_blocks=fusion_blocks,
            lr_block_size=lr_block_size, ref_block_factor=ref_block_factor, dilations=dilations,
            use_sam=use_sam, sam_learnable=sam_learnable, dram_ref_branch=dram_ref_branch,
            dram_lr_branch=dram_lr_branch,
        )
        if matching not in COARSE_SEARCHES:
            raise RefsrError(f"matching must be one of {', '.join(COARSE_SEARCHES)}; got {matching!r}")
        self.matching = matching
        self.lr_block_size = lr_block_size
        self.ref_block_factor = float(ref_block_factor)
        self.dilations = dilations
        self.match_max_bytes = match_max_bytes
        self.size_rule = SizeRule(
            lr_multiple=math.lcm(lr_block_size, 4),
            ref_multiple=16,
            min_lr=lr_block_size,
            min_ref=32,
            pad_mode="replicate",
            centre_lr=True,
        )

        self.encoder = _Encoder(nf, encoder_blocks)
        self.lr_decoder = _LRDecoder(nf, unet_blocks)
        self.sam = SAM(nf, learnable=sam_learnable) if use_sam else None
        self.fuse_x1 = _Fusion(nf, fusion_blocks[0])
        self.fuse_x2 = _Fusion(nf, fusion_blocks[1], dram=DRAM(nf, ref_branch=dram_ref_branch,
                                                               lr_branch=dram_lr_branch))
        self.fuse_x4 = _Fusion(nf, fusion_blocks[2], dram=DRAM(nf, ref_branch=dram_ref_branch,
                                                               lr_branch=dram_lr_branch))
        self.conv_out = conv2d(nf, 3)
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def reset_parameters(self) -> None:
        """The official initialisation (module docstring, item 7)."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                    module.weight.normal_(0.0, 0.5 * math.sqrt(2.0 / fan))
                    module.bias.zero_()
            for module in self.modules():
                if isinstance(module, ResBlock):
                    module.conv1.weight.mul_(0.1)
                    module.conv2.weight.mul_(0.1)
            if self.sam is not None and self.sam.learnable:
                for conv in (self.sam.gamma, self.sam.beta):
                    conv.weight.zero_()
                    conv.bias.zero_()

    def geometry(self, lr_size: tuple[int, int], ref_size: tuple[int, int]) -> MEMGeometry:
        """MEM's block layout for an LR of ``lr_size`` and a Ref of ``ref_size`` (Ref↓ = Ref / 4).

        >>> MASA(nf=4).geometry((88, 128), (2560, 512)).diameter  # CUFED5, 5 references stacked
        (87, 13)
        """
        return mem_geometry(
            tuple(lr_size), (ref_size[0] // _SCALE, ref_size[1] // _SCALE),
            lr_block_size=self.lr_block_size, ref_block_factor=self.ref_block_factor,
        )

    # ------------------------------------------------------------------ stages

    @staticmethod
    def make_ref_down(ref: torch.Tensor) -> torch.Tensor:
        """Ref↓ as the official loader makes it: ``ref`` rounded to 8 bits, PIL bicubic ÷4, back to float.

        ``ref (N,3,H,W)`` float in [0, 1], ``H`` and ``W`` multiples of 4 -> ``(N,3,H/4,W/4)``, same dtype,
        no gradient.
        """
        ref8 = (ref.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        size = (ref.shape[-2] // _SCALE, ref.shape[-1] // _SCALE)
        return imresize(ref8, size=size, kernel="pil").to(ref.dtype) / 255

    def encode(self, lr: torch.Tensor, ref_down: torch.Tensor, ref: torch.Tensor
               ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """The shared encoder: LR (all levels), Ref↓ (first level only: the others are never used), Ref."""
        return self.encoder(lr), self.encoder.level1(ref_down), self.encoder(ref)

    def _matching(self, matching: str | None) -> str:
        matching = self.matching if matching is None else matching
        if matching not in COARSE_SEARCHES:
            raise RefsrError(f"matching must be one of {', '.join(COARSE_SEARCHES)}; got {matching!r}")
        return matching

    def match(self, lr_feat: torch.Tensor, ref_down_feat: torch.Tensor, *, matching: str | None = None,
              key_index: Sequence[BlockIndex] | None = None) -> Correspondence:
        """MEM between the first-level LR and Ref↓ features (:func:`refsr.matching.mem.match_mem`).

        Runs in the features' dtype when it is float32 or float64, in float32 for lower precisions (an
        argmax over near-equal cosines needs the mantissa); the score then comes back in float32.
        ``matching`` overrides :attr:`matching`; ``key_index`` (fast matching) is the reference cache's.
        """
        coarse = self._matching(matching)
        return match_mem(
            lr_feat, ref_down_feat, lr_block_size=self.lr_block_size, ref_block_factor=self.ref_block_factor,
            dilations=self.dilations, max_bytes=self.match_max_bytes, coarse=coarse,
            key_index=key_index if coarse == "fast" else None,
        )

    def transfer(self, corr: Correspondence, ref_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Matched Ref textures at x1, x2, x4 from the Ref encoder's levels 3, 2, 1 (Ref↓ size x1, x2, x4)."""
        return masa_transfer(corr, [ref_feats[2], ref_feats[1], ref_feats[0]], scales=(1, 2, 4))

    def _adapt(self, lr: torch.Tensor, texture: torch.Tensor, statistics: SAMStatistics | None) -> torch.Tensor:
        return texture if self.sam is None else self.sam(lr, texture, statistics)

    def _fuse_x1(self, lr_features: torch.Tensor, texture: torch.Tensor,
                 statistics: SAMStatistics | None = None) -> torch.Tensor:
        """The x1 fusion: the LR U-Net's features ``(N,nf,h,w)`` with the x1 texture -> ``(N,nf,h,w)``."""
        merged = torch.cat((self._adapt(lr_features, texture, statistics), lr_features), dim=1)
        return self.fuse_x1.blocks(conv_relu(self.fuse_x1.merge, merged))

    def _needs_upsampled(self, fusion: _Fusion) -> bool:
        return self.sam is not None or not fusion.dram.lr_branch

    def _fuse_up(self, fusion: _Fusion, features: torch.Tensor, texture: torch.Tensor,
                 statistics: SAMStatistics | None = None) -> torch.Tensor:
        """The x2 or x4 fusion: coarser features ``(N,nf,h,w)`` with a texture at ``2h x 2w``."""
        # The bilinear x2 of the coarser features feeds the SAM (and stands in for a switched-off LR
        # branch); the DRAM itself takes the coarser features as they are.
        lr_up = _upsample2(features) if self._needs_upsampled(fusion) else None
        adapted = self._adapt(lr_up, texture, statistics)
        return fusion.blocks(fusion.dram(features, adapted, lr_up))

    def decode(self, lr_feats: Sequence[torch.Tensor], textures: Sequence[torch.Tensor],
               statistics: Sequence[SAMStatistics | None] = (None, None, None)) -> torch.Tensor:
        """LR features (3 levels) and textures (x1, x2, x4) -> the residual image ``(N,3,4h,4w)``.

        ``statistics``: per scale, the SAM's normalisation statistics, or ``None`` for those of its inputs.
        """
        features = self._fuse_x1(self.lr_decoder(lr_feats), textures[0], statistics[0])
        features = self._fuse_up(self.fuse_x2, features, textures[1], statistics[1])
        features = self._fuse_up(self.fuse_x4, features, textures[2], statistics[2])
        return self.conv_out(features)

    # ------------------------------------------------------------------ forward

    def _check_inputs(self, lr: torch.Tensor, ref: torch.Tensor | None, ref_down: torch.Tensor | None) -> None:
        named = [("lr", lr)] + ([("ref", ref)] if ref is not None else [])
        named += [("ref_down", ref_down)] if ref_down is not None else []
        for name, x in named:
            good = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()
            if not good:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(f"MASA needs {name} as a float (N, 3, H, W) RGB tensor; got {shape}")
        if ref is not None and ref.shape[0] != lr.shape[0]:
            raise RefsrError(
                f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}"
            )
        h, w = lr.shape[-2:]
        multiple = self.size_rule.lr_multiple
        if h % multiple or w % multiple:
            raise RefsrError(
                f"MASA needs an LR whose sides divide by {multiple}; got {h}x{w}: pad it (refsr.upscale does)"
            )
        if ref is None:
            return
        height, width = ref.shape[-2:]
        if height % _SCALE or width % _SCALE:
            raise RefsrError(
                f"MASA needs a Ref whose sides divide by {_SCALE}; got {height}x{width}: pad it to a "
                f"multiple of {self.size_rule.ref_multiple} (refsr.upscale does)"
            )
        expected = (ref.shape[0], 3, height // _SCALE, width // _SCALE)
        if ref_down is not None and tuple(ref_down.shape) != expected:
            raise RefsrError(f"ref_down must be the Ref at 1/4 size, {expected}; got {tuple(ref_down.shape)}")

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the network computes in: its parameters'. Inputs of another float dtype are cast to it;
        the output has the LR's dtype (the bicubic skip is added in it)."""
        return self.conv_out.weight.dtype

    @staticmethod
    def _layout(device: torch.device) -> torch.memory_format:
        # On the CPU, oneDNN's convolutions are markedly faster on channels-last tensors (measured 1.4x
        # for the 3x3 convs, 3x for the transposed ones). The weights may stay NCHW (no measurable cost);
        # the elementwise ops keep the layout they are given, and the transfer's outputs are converted.
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format

    def encoder_halo(self) -> int:
        """Rows of context that make a horizontal strip of the Ref encode exactly as the whole Ref does.

        The receptive-field radius of the encoder's third level, in input pixels (each level is a conv and
        its ResBlocks' two convs, all 3x3; levels 2 and 3 run at 1/2 and 1/4 size), rounded up to a
        multiple of 4 so that strips stay aligned with the two stride-2 levels.
        """
        blocks = [len(level.blocks) for level in (self.encoder.level1, self.encoder.level2, self.encoder.level3)]
        radius = sum((1 + 2 * b) * 2**i for i, b in enumerate(blocks))
        return -(-radius // 4) * 4

    def _encode_in_strips(self, ref: torch.Tensor, strip_rows: int | None) -> list[torch.Tensor]:
        """``self.encoder(ref)``, computed over horizontal strips of ``strip_rows`` rows (plus a halo).

        Peak memory is then the three output maps plus one strip's working set, instead of about four
        full-resolution maps more. Each strip's outputs are exact (the halo covers the receptive field);
        only the convolutions' summation order may differ with the input size, i.e. the result equals the
        whole-image encoding to float rounding.
        """
        height = ref.shape[-2]
        halo = self.encoder_halo()
        if strip_rows is None or height <= strip_rows + 2 * halo:
            return self.encoder(ref)
        rows = max(4, -(-int(strip_rows) // 4) * 4)
        n, _, _, width = ref.shape
        layout = self._layout(ref.device)
        outputs: list[torch.Tensor] | None = None
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            first, last = max(0, start - halo), min(height, stop + halo)
            feats = self.encoder(ref[..., first:last, :])
            if outputs is None:
                outputs = [f.new_empty(n, f.shape[1], height // 2**i, width // 2**i).contiguous(memory_format=layout)
                           for i, f in enumerate(feats)]
            for i, (out, f) in enumerate(zip(outputs, feats)):
                s = 2**i
                out[..., start // s : stop // s, :] = f[..., (start - first) // s : (stop - first) // s, :]
            del feats
        assert outputs is not None
        return outputs

    def encode_reference(
        self, ref: torch.Tensor, ref_down: torch.Tensor | None = None, *, strip_rows: int | None = None,
        matching: str | None = None,
    ) -> MASAReferenceCache:
        """Encode the reference once, for :meth:`forward` ``(reference_cache=...)``.

        Args:
            ref: ``(N,3,H,W)`` RGB float in [0, 1]; ``H``, ``W`` multiples of 4.
            ref_down: ``(N,3,H/4,W/4)``, or ``None`` to make it with :meth:`make_ref_down`.
            strip_rows: encode the Ref in horizontal strips of this many rows (see :meth:`encoder_halo`),
                to bound the peak memory of a large Ref; ``None`` encodes it at once.
            matching: the matching the cache is for (default :attr:`matching`): ``"fast"`` also indexes
                Ref↓ for the coarse search, when the index saves work.

        Returns:
            A :class:`MASAReferenceCache`. With ``strip_rows=None`` (or a Ref no taller than a strip),
            ``forward(lr, reference_cache=cache)`` equals ``forward(lr, ref, ref_down=ref_down)`` exactly;
            with strips, to float rounding.
        """
        if not isinstance(ref, torch.Tensor):
            raise RefsrError(f"MASA needs ref as a float (N, 3, H, W) RGB tensor; got {type(ref).__name__}")
        # The LR is not known yet: check the Ref against a stand-in LR of the right batch size.
        stand_in = ref.new_zeros(ref.shape[0] if ref.dim() == 4 else 1, 3, self.size_rule.lr_multiple,
                                 self.size_rule.lr_multiple)
        self._check_inputs(stand_in, ref, ref_down)
        if ref_down is None:
            ref_down = self.make_ref_down(ref)
        layout = self._layout(ref.device)
        ref, ref_down = (_in_layout(x.to(self.compute_dtype), layout) for x in (ref, ref_down))
        ref_down_feat = self.encoder.level1(ref_down)
        block_index = None
        if self._matching(matching) == "fast" and index_saves_work(ref_down_feat.shape[-2] * ref_down_feat.shape[-1]):
            block_index = [build_block_index(ref_down_feat[i : i + 1], self.dilations)
                           for i in range(ref_down_feat.shape[0])]
        return MASAReferenceCache(
            ref_size=(int(ref.shape[-2]), int(ref.shape[-1])),
            ref_down_feat=ref_down_feat,
            ref_feats=self._encode_in_strips(ref, strip_rows),
            block_index=block_index,
        )

    def match_reference(self, lr: torch.Tensor, reference_cache: MASAReferenceCache, *,
                        matching: str | None = None) -> Correspondence:
        """MEM of ``lr (N,3,h,w)`` against a cached reference, without decoding.

        Cheap next to :meth:`forward` (the first encoder level and the matching only): enough to tell which
        of several references suits an LR best (``corr.score``, cosines in [-1, 1], higher is better).
        """
        self._check_inputs(lr, None, None)
        lr_feat = self.encoder.level1(_in_layout(lr.to(self.compute_dtype), self._layout(lr.device)))
        return self.match(lr_feat, reference_cache.ref_down_feat, matching=matching,
                          key_index=reference_cache.block_index)

    def forward(
        self,
        lr: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        ref_down: torch.Tensor | None = None,
        reference_cache: MASAReferenceCache | None = None,
        return_correspondence: bool = False,
        matching: str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Correspondence]:
        """Super-resolve ``lr`` x4 with textures from ``ref``.

        Args:
            lr: ``(N,3,h,w)`` RGB float in [0, 1]; ``h``, ``w`` multiples of ``size_rule.lr_multiple`` (8).
            ref: ``(N,3,H,W)`` RGB float in [0, 1]; ``H``, ``W`` multiples of 4 (the official loader pads
                to 16; :func:`refsr.upscale` does the same). May be ``None`` when ``reference_cache`` is given.
            ref_down: ``(N,3,H/4,W/4)``, the Ref↓ exactly as an evaluation pipeline made it; when omitted it
                is made from ``ref`` with :meth:`make_ref_down` (8-bit, PIL bicubic).
            reference_cache: the result of :meth:`encode_reference`, to reuse one encoded Ref for many
                LR inputs (``ref`` and ``ref_down`` are then ignored). The output is the same.
            return_correspondence: also return MEM's :class:`~refsr.matching.Correspondence` (LR pixel to
                Ref↓ position), e.g. to draw the matches.
            matching: MEM's coarse search for this call, ``"exact"`` or ``"fast"`` (default
                :attr:`matching`).

        Returns:
            ``(N,3,4h,4w)`` RGB float (not clamped), or ``(sr, correspondence)``.
        """
        if reference_cache is None:
            if ref is None:
                raise RefsrError("MASA needs a reference: pass ref, or reference_cache from encode_reference()")
            self._check_inputs(lr, ref, ref_down)
        else:
            self._check_inputs(lr, None, None)
            if reference_cache.batch_size != lr.shape[0]:
                raise RefsrError(
                    f"lr and the reference cache must hold the same number of images; got {lr.shape[0]} "
                    f"and {reference_cache.batch_size}"
                )
        layout = self._layout(lr.device)
        dtype = self.compute_dtype
        lr = _in_layout(lr, layout)
        lr_feats = self.encoder(lr.to(dtype))
        key_index = None
        if reference_cache is None:
            if ref_down is None:
                ref_down = self.make_ref_down(ref)
            ref, ref_down = (_in_layout(x.to(dtype), layout) for x in (ref, ref_down))
            ref_down_feat, ref_feats = self.encoder.level1(ref_down), self.encoder(ref)
        else:
            ref_down_feat, ref_feats = reference_cache.ref_down_feat, reference_cache.ref_feats
            key_index = reference_cache.block_index
        corr = self.match(lr_feats[0], ref_down_feat, matching=matching, key_index=key_index)
        del ref_down_feat
        textures = [t.contiguous(memory_format=layout) for t in self.transfer(corr, ref_feats)]
        del ref_feats  # the largest tensors of the forward pass; the decoder does not need them
        sr = self.decode(lr_feats, textures)
        del textures
        # The residual in the network's dtype, the skip and the sum in the input's (a float32 LR keeps its
        # 8-bit values exactly; bfloat16 would round them).
        sr = sr.to(lr.dtype) + F.interpolate(lr, scale_factor=_SCALE, mode="bicubic", align_corners=False)
        return (sr.contiguous(), corr) if return_correspondence else sr.contiguous()

    # ------------------------------------------------------------------ whole images in tiles

    def stage_halos(self) -> tuple[int, int, int, int]:
        """LR pixels of context that make a tile of each stage of :meth:`forward_tiled` exact.

        The receptive-field radius of the stage's output in its inputs, in LR pixels (3x3 convolutions at
        1/4, 1/2, 1, 2 or 4 times the LR size count 4, 2, 1, 1/2 or 1/4 each; a stride-2 one counts at its
        input; bilinear x2 and the bicubic skip count 1 and 2 pixels of their input), plus a margin of 2,
        rounded up to the LR multiple so that tiles stay on MEM's block grid. Stages: the LR encoder and
        U-Net; the x1 fusion; the x2 fusion; the x4 fusion with the output conv and the bicubic skip.
        """
        enc = [len(level.blocks) for level in (self.encoder.level1, self.encoder.level2, self.encoder.level3)]
        unet = [len(level.blocks) for level in (self.lr_decoder.level1, self.lr_decoder.level2, self.lr_decoder.level3)]
        fusion = [len(self.fuse_x1.blocks), len(self.fuse_x2.blocks), len(self.fuse_x4.blocks)]
        encoder = (1 + 2 * enc[0]) + (1 + 4 * enc[1]) + (2 + 8 * enc[2])
        decoder = 4 * (1 + 2 * unet[2]) + 4 + 2 * (1 + 2 * unet[1]) + 2 + (1 + 2 * unet[0])
        # SAM (2 convs), then merge (x1) or DRAM (down, deconv, merge: 1 + 2 + 1 at the fine scale).
        radii = (
            encoder + decoder,
            2 + 1 + 2 * fusion[0],
            1 + math.ceil((2 + 4 + 2 * fusion[1]) / 2),
            max(2, 1 + math.ceil((2 + 4 + 2 * fusion[2] + 1) / 4)),
        )
        multiple = self.size_rule.lr_multiple
        return tuple(-(-(r + 2) // multiple) * multiple for r in radii)  # type: ignore[return-value]

    @torch.no_grad()
    def forward_tiled(
        self,
        lr: torch.Tensor,
        reference_cache: MASAReferenceCache,
        *,
        tile: int,
        write: Callable[[int, int, torch.Tensor], None],
        matching: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """:meth:`forward` of a whole image with the memory of a tile, and the same result.

        The network runs stage by stage over the whole image, each stage in tiles with the context
        (:meth:`stage_halos`) that makes a tile's output equal to the whole image's: the LR encoder and
        U-Net, MEM (once, on the whole image: its window size depends on the number of blocks, so a tile
        matched on its own would get other windows), the x1, x2 and x4 fusions. Between the fusions the
        SAM statistics are computed over the whole image (:class:`SAMStatistics`) and every tile uses
        them. Whole-image maps are kept between stages: the first-level LR features (until MEM), the U-Net
        output and the x1 fusion (LR size), the x2 fusion (twice the LR size), ``nf`` channels each; only
        the x4 fusion, the largest, runs in tiles of ``tile`` LR pixels (the x2 fusion in tiles of
        ``2 * tile``, the earlier stages of ``4 * tile``). The output equals :meth:`forward`'s up to float
        rounding (the convolutions sum in another order on other sizes); there is no cross-fade.

        Args:
            lr: ``(N,3,h,w)``, ``h``, ``w`` multiples of ``size_rule.lr_multiple``.
            reference_cache: from :meth:`encode_reference`.
            tile: the x4 fusion's tile side in LR pixels (rounded up to the LR multiple; at most
                :data:`_CACHE_FRIENDLY_TILE`, where it runs fastest).
            write: called once per output tile with ``(top, left, sr)``: ``sr (N,3,H',W')`` is the output at
                rows ``top:top+H'`` and columns ``left:left+W'`` of the ``(N,3,4h,4w)`` result (not clamped).
            matching: MEM's coarse search (default :attr:`matching`).
            progress: called with ``(done, total)`` after every tile of every stage.
        """
        self._check_inputs(lr, None, None)
        if reference_cache.batch_size != lr.shape[0]:
            raise RefsrError(f"lr and the reference cache must hold the same number of images; got "
                             f"{lr.shape[0]} and {reference_cache.batch_size}")
        multiple = self.size_rule.lr_multiple
        if isinstance(tile, bool) or int(tile) < 1:
            raise RefsrError(f"tile must be a positive number of LR pixels; got {tile!r}")
        tile = -(-min(int(tile), _CACHE_FRIENDLY_TILE) // multiple) * multiple
        layout = self._layout(lr.device)
        lr = _in_layout(lr, layout)
        n, _, h, w = lr.shape
        nf = int(self.config["nf"])
        halos = self.stage_halos()
        sides = (4 * tile, 4 * tile, 2 * tile, tile)
        plans = [list(_tile_boxes(h, w, side, halo)) for side, halo in zip(sides, halos)]
        total, done = sum(len(p) for p in plans), 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        def new_map(scale: int) -> torch.Tensor:
            return lr.new_empty(n, nf, h * scale, w * scale, dtype=self.compute_dtype).contiguous(memory_format=layout)

        # 1. The LR encoder and U-Net: first-level features for MEM, the U-Net output for the x1 fusion.
        level1, unet = new_map(1), new_map(1)
        dtype = self.compute_dtype
        for core, outer in plans[0]:
            feats = self.encoder(lr[_box(outer)].to(dtype))
            level1[_box(core)] = feats[0][_inner(core, outer)]
            unet[_box(core)] = self.lr_decoder(feats)[_inner(core, outer)]
            del feats
            step()

        # 2. MEM on the whole image; each tile's textures come from its blocks of it.
        corr = self.match(level1, reference_cache.ref_down_feat, matching=matching,
                          key_index=reference_cache.block_index)
        del level1
        sources = {1: reference_cache.ref_feats[2], 2: reference_cache.ref_feats[1], 4: reference_cache.ref_feats[0]}

        def texture(scale: int, box: tuple[int, int, int, int]) -> torch.Tensor:
            top, bottom, left, right = box
            region = crop_mem_correspondence(corr, top, left, bottom - top, right - left)
            return masa_transfer(region, [sources[scale]], scales=(scale,))[0].contiguous(memory_format=layout)

        def statistics(lr_side: torch.Tensor, scale: int, boxes: list) -> SAMStatistics | None:
            """The SAM statistics over the whole image: the (upsampled) LR side and the texture."""
            if self.sam is None:
                return None
            lr_moments, ref_moments = _Moments(), _Moments()
            for core, _ in boxes:
                ref_moments.add(texture(scale, core))
                if scale == 1:
                    lr_moments.add(lr_side[_box(core)])
                else:  # bilinear x2 of the coarser map, with one LR pixel of context (rounded to the grid)
                    outer = _grow(core, multiple, h, w)
                    lr_moments.add(_upsample2(lr_side[_box(outer, scale // 2)])[_inner(core, outer, scale)])
            return SAMStatistics(lr_moments.var(correction=1).sqrt(), lr_moments.mean(), ref_moments.var(correction=0),
                                 ref_moments.mean())

        # 3. The x1 fusion.
        stats = statistics(unet, 1, plans[1])
        fused1 = new_map(1)
        for core, outer in plans[1]:
            fused1[_box(core)] = self._fuse_x1(unet[_box(outer)], texture(1, outer), stats)[_inner(core, outer)]
            step()
        del unet

        # 4. The x2 fusion.
        stats = statistics(fused1, 2, plans[2])
        fused2 = new_map(2)
        for core, outer in plans[2]:
            out = self._fuse_up(self.fuse_x2, fused1[_box(outer)], texture(2, outer), stats)
            fused2[_box(core, 2)] = out[_inner(core, outer, 2)]
            del out
            step()
        del fused1

        # 5. The x4 fusion, the output conv and the bicubic skip, written out tile by tile.
        stats = statistics(fused2, 4, plans[3])
        for core, outer in plans[3]:
            out = self.conv_out(self._fuse_up(self.fuse_x4, fused2[_box(outer, 2)], texture(4, outer), stats))
            out = out.to(lr.dtype) + F.interpolate(lr[_box(outer)], scale_factor=_SCALE, mode="bicubic",
                                                   align_corners=False)
            write(core[0] * _SCALE, core[2] * _SCALE, out[_inner(core, outer, _SCALE)].contiguous())
            del out
            step()

    @property
    def memory_cost(self) -> MemoryCost:  # type: ignore[override]
        """:data:`MASA_MEMORY_COST` with the feature-map terms scaled by ``nf / 32`` and by the compute dtype's
        size (bfloat16 maps take half the bytes of float32 ones), and this model's MEM chunk budget as the
        matching workspace. The images, the output and the fast search's index do not scale, nor does a
        tile's working set with the dtype: measured, a bfloat16 run keeps about as much per tile pixel
        (matching, SAM statistics and the transfer's gathers work in float32)."""
        width = self.config["nf"] / 32
        scale = width * torch.finfo(self.compute_dtype).bits / 32
        cost = MASA_MEMORY_COST
        return replace(
            cost,
            per_parameter=cost.per_parameter * torch.finfo(self.compute_dtype).bits / 32,
            per_tile_pixel=cost.per_tile_pixel * width,
            per_image_pixel_tiled=_TILED_IMAGE_MAPS * scale + (cost.per_image_pixel_tiled - _TILED_IMAGE_MAPS),
            per_ref_pixel=_REF_FEATURES * scale + (cost.per_ref_pixel - _REF_FEATURES),
            per_ref_pixel_encoding=cost.per_ref_pixel_encoding * scale,
            matching_workspace=int(self.match_max_bytes),
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


@register_model("masa", paper="MASA-SR (CVPR 2021)")
def masa(**kwargs: Any) -> MASA:
    """MASA-SR (CVPR 2021), x4; official architecture and initialisation (4,028,291 parameters)."""
    return build_variant(MASA, "masa", {}, kwargs)


#: The default model's weights (``refsr/weights/masa-lite.safetensors``); MODEL_CARD.md tells the whole story.
MASA_LITE_WEIGHTS = WeightsInfo(
    file="masa-lite.safetensors",
    sha256="eed1c19fb70cf38fd11c8b657c616ba3787a9ee392cbf69747ef90934bbb6d81",
    parameters=621_187,
    scale=4,
    degradation="bicubic",
    recipe=("configs/default.yaml", "configs/default-gpu.yaml"),
    hardware="stage 1: one CPU thread of a 2-core machine; stage 2: one NVIDIA H200",
    training_time="stage 1: 93 min (2,400 iterations of 4); stage 2: 463 s (3,774 iterations of 16)",
    training_data="open benchmark, training split only: stage 1, 153 photos with synthetic references (weight "
                  "0.7) and 68 CGI video frame pairs (0.3); stage 2, the photos with synthetic references alone",
    protocol="masa",
    eval_command="refsr eval --dataset open --baselines --breakdown kind,gap",
    scores={
        "all": (31.59, 0.887), "video": (32.03, 0.893), "stereo_calib": (27.13, 0.898),
        "landmark": (27.25, 0.787), "multiview": (28.04, 0.790), "stereo": (28.51, 0.788),
        "thumbnail": (24.76, 0.730), "flow": (36.46, 0.921),
        "gap 1": (32.20, 0.895), "gap 4": (32.06, 0.894), "gap 8": (32.05, 0.894), "gap 16": (31.79, 0.891),
    },
    pairs=356,
)


_MASA_LITE_ARGS = dict(nf=32, encoder_blocks=(2, 2, 2), unet_blocks=(1, 1, 1), fusion_blocks=(6, 4, 2))


@register_model("masa-lite", paper="MASA-SR (CVPR 2021)", weights=MASA_LITE_WEIGHTS)
def masa_lite(**kwargs: Any) -> MASA:
    """MASA-SR with 32 channels and about half the ResBlocks, sized for training on a CPU."""
    return build_variant(MASA, "masa-lite", _MASA_LITE_ARGS, kwargs)


#: The video model's weights (``refsr/weights/masa-lite-video.safetensors``): the default weights fine-tuned on
#: whole clips with stills and chains of its own outputs; MODEL_CARD.md, "The video model".
MASA_LITE_VIDEO_WEIGHTS = WeightsInfo(
    file="masa-lite-video.safetensors",
    sha256="e7231e72bc64e63e04949bb30e53f5ac546b5d0286e1d19b2f4175397204fc9d",
    parameters=621_187,
    scale=4,
    degradation="bicubic",
    recipe=("configs/default.yaml", "configs/default-gpu.yaml", "configs/masa-lite-video.yaml"),
    hardware="stages 1 and 3: a 2-core CPU; stage 2: one NVIDIA H200",
    training_time="stages 1 and 2: as masa-lite; stage 3: 40 min (2,515 iterations of 8, bf16)",
    training_data="stages 1 and 2: as masa-lite; stage 3: every frame of the two CGI training clips (401 frames), "
                  "each with an HR still 1-8 frames away or, half the time, a chain of 1-3 of its own outputs "
                  "from that still",
    protocol="masa",
    eval_command="refsr eval --dataset open --model masa-lite-video --breakdown kind,gap",
    scores={
        "all": (33.09, 0.927), "video": (33.72, 0.939), "stereo_calib": (26.67, 0.888),
        "landmark": (27.04, 0.779), "multiview": (27.77, 0.780), "stereo": (28.96, 0.823),
        "thumbnail": (24.53, 0.721), "flow": (37.42, 0.937),
        "gap 1": (34.39, 0.949), "gap 4": (33.78, 0.939), "gap 8": (33.52, 0.935), "gap 16": (33.12, 0.930),
    },
    pairs=356,
)


@register_model("masa-lite-video", paper="MASA-SR (CVPR 2021)", weights=MASA_LITE_VIDEO_WEIGHTS)
def masa_lite_video(**kwargs: Any) -> MASA:
    """masa-lite trained for video with high-resolution stills: the default for ``refsr upscale clip --ref``."""
    return build_variant(MASA, "masa-lite-video", _MASA_LITE_ARGS, kwargs)


# ---------------------------------------------------------------------- official checkpoints

# (official prefix, our prefix) of every parameter; ``{a}``, ``{b}`` and ``{c}`` stand for a level, scale,
# block or conv number carried over from one name to the other.
_RENAMES = KeyRenames((
    ("enc.conv_L{a}.", "encoder.level{a}.conv."),
    ("enc.blk_L{a}.{b}.conv{c}.", "encoder.level{a}.blocks.{b}.conv{c}."),
    ("decoder.conv_L{a}.", "lr_decoder.level{a}.conv."),
    ("decoder.blk_L{a}.{b}.conv{c}.", "lr_decoder.level{a}.blocks.{b}.conv{c}."),
    ("decoder.merge_warp_x1.", "fuse_x1.merge."),
    ("decoder.blk_x{a}.{b}.conv{c}.", "fuse_x{a}.blocks.{b}.conv{c}."),
    ("decoder.dram_x{a}.conv_down_a.", "fuse_x{a}.dram.ref_branch_down."),
    ("decoder.dram_x{a}.conv_up_a.", "fuse_x{a}.dram.ref_branch_up."),
    ("decoder.dram_x{a}.conv_down_b.", "fuse_x{a}.dram.lr_branch_down."),
    ("decoder.dram_x{a}.conv_up_b.", "fuse_x{a}.dram.lr_branch_up."),
    ("decoder.dram_x{a}.conv_cat.", "fuse_x{a}.dram.merge."),
    ("decoder.conv_out.", "conv_out."),
    ("decoder.pAda.conv_shared.0.", "sam.shared."),
    ("decoder.pAda.conv_gamma.", "sam.gamma."),
    ("decoder.pAda.conv_beta.", "sam.beta."),
))


def official_key(our_key: str) -> str:
    """The official MASA state_dict key of one of our keys (``encoder.level1.conv.weight`` ->
    ``enc.conv_L1.weight``). Raises ``KeyError`` for keys with no official counterpart."""
    return _RENAMES.official_key(our_key)


_BGR_TO_RGB = [2, 1, 0]
_FIRST_CONV = "encoder.level1.conv.weight"
_LAST_CONV = ("conv_out.weight", "conv_out.bias")


def _expected_official_keys(state_dict: dict[str, Any]) -> set[str]:
    """The keys a complete official checkpoint with the same block counts as ``state_dict`` would have.

    Block counts are read from the highest block index present; a group with no block at all is assumed
    to have the official count, so that a truncated file reports the blocks it lacks.
    """
    def count(prefix: str, default: int) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = [int(m.group(1)) for m in map(pattern.match, state_dict) if m]
        return max(found) + 1 if found else default

    config = dict(
        encoder_blocks=tuple(count(f"enc.blk_L{i}.", 4) for i in (1, 2, 3)),
        unet_blocks=tuple(count(f"decoder.blk_L{i}.", 2) for i in (3, 2, 1)),
        fusion_blocks=tuple(count(f"decoder.blk_x{s}.", d) for s, d in ((1, 12), (2, 8), (4, 4))),
    )
    with torch.device("meta"):
        skeleton = MASA(nf=1, **config)
    return {official_key(key) for key in skeleton.state_dict()}


@register_converter("masa")
def convert_official_masa(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official MASA-SR state_dict (``models/archs/MASA_arch.py``) onto :class:`MASA`, for RGB input.

    Every key is renamed (``enc.blk_L1.0.conv1.weight`` -> ``encoder.level1.blocks.0.conv1.weight``, see
    ``_RENAMES``). The official network reads BGR; the flip is folded into the weights: the first conv's
    input channels are reversed (LR, Ref↓ and Ref all go through it, and the bicubic skip is per channel)
    and so are the last conv's output channels and bias. The converted model on an RGB image returns the
    official output on the BGR image, reversed to RGB.

    ``module.`` prefixes are stripped by :func:`refsr.convert_official` before this is called.

    Raises:
        RefsrError: keys that are not MASA's, or missing ones; the message lists both (official names).
    """
    expected = _expected_official_keys(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        ours = _RENAMES.to_ours(key)
        if ours is None or key not in expected or not isinstance(value, torch.Tensor):
            unexpected.append(key)
        else:
            converted[ours] = value
    missing = sorted(expected - set(state_dict))
    if missing or unexpected:
        if len(converted) == 0:
            parts = [f"none of its {len(expected)} keys (enc.*, decoder.*) are there"]
        else:
            parts = [f"missing keys: {listing(missing)}"] if missing else []
        if unexpected:
            parts.append(f"unexpected keys: {listing(sorted(unexpected))}")
        raise RefsrError("not an official MASA-SR checkpoint (MASA_arch.py): " + "; ".join(parts))
    converted[_FIRST_CONV] = converted[_FIRST_CONV][:, _BGR_TO_RGB].contiguous()
    for key in _LAST_CONV:
        converted[key] = converted[key][_BGR_TO_RGB].contiguous()
    return converted
