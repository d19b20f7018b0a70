"""RefSR-Net: CC-Net correspondence + SS-Net patch synthesis, reference-based super-resolution at x8.

Paper: Haitian Zheng, Mengqi Ji, Haoqian Wang, Yebin Liu, Lu Fang, "Learning Cross-scale Correspondence and
Patch-based Synthesis for Reference-based Super-Resolution", BMVC 2017.
**No official code** exists (``htzheng/ECCV2018_CrossNet_RefSR`` is the later CrossNet, a different
network). Everything here is written from the paper's text; where the text leaves a choice open, the choice
made is listed below, numbered, so that it can be cited and changed.

Pipeline (:class:`RefSRNet`, ``sr = model(lr, ref)``):

1. **CC-Net** (:class:`CCNet`, paper Sec. 3, Table 1): six 3x3 dilated conv + BN layers (16, 32, 64, 64,
   64, 128 channels; dilations 1, 1, 2, 4, 8, 16; receptive field 65x65) and a 1x1 "fc" layer to 256
   channels, one set of weights for both inputs (Siamese). It turns the bilinearly upsampled LR and the HR
   reference into dense descriptors; :func:`refsr.matching.ccnet.match_ccnet` matches them by the largest
   inner product within a search range of 100 pixels (the paper's test setting).
2. **SS-Net** (:class:`SSNet`, Sec. 4, Fig. 1, Eq. 2): for every overlapping 8x8 LR patch, the LR features
   of a frozen SRResNet + NN trunk (:class:`SRResNetTrunk`) and the matched 64x64 reference patch, encoded at
   scales 1, 1/2, 1/4, 1/8 (:class:`HRFeatureModule`), are fused from scale 3 to scale 0 with sigmoid masks
   (:class:`PredictionModule`) into a 64x64 HR patch.
3. **Sliding-window fusion** (:func:`refsr.ops.sliding_window.sliding_window_fuse`): the overlapping patches
   are averaged per pixel, weighted by the scale-0 masks smoothed with a Gaussian of sigma 3
   (``O_i = M_i^(0) * G(3)``), or plainly averaged (the paper's comparison).

Eq. 2 of the paper, as implemented (``[a, b]`` is channel concatenation, ``*`` convolution, ``.`` the
elementwise product broadcast over channels, ``sig`` = ``delta`` = the logistic sigmoid, as the paper
defines both, ``SP`` a x2 sub-pixel upsampling with its own conv, ``up`` x2 nearest-neighbour)::

    M_L(3)    = relu([F_LR, F_HR(3)] * W_mask(3)),                       M(3) = sig(M_L(3))
    F_fuse(3) = delta([F_LR, F_HR(3) . M(3)] * W_fuse(3))
    M_L(i)    = relu([SP(F_fuse(i+1)), F_HR(i), up(M_L(i+1))] * W_mask(i)), M(i) = sig(M_L(i))   i = 2, 1, 0
    F_fuse(i) = delta([up(F_fuse(i+1)), F_HR(i) . M(i)] * W_fuse(i))

Choices the paper leaves open (each one is a constructor option where it is a number or a switch):

1. **LR upsampling for CC-Net**: bilinear x8 with PyTorch's ``align_corners=False`` (half-pixel centres, the
   same geometry as the PIL bicubic downscaling that makes the LR), :func:`refsr.matching.ccnet.upsample_lr`.
   The paper says only "bi-linearly up-sampled".
2. **CC-Net layers**: each of the six layers is conv (no bias, BN follows) + BN + **ReLU**; the paper lists
   "conv + BN" only and names no nonlinearity, but without one the six layers would collapse into one
   linear filter. The 1x1 "fc" layer has a bias and no BN or ReLU. The input is the RGB image in [0, 1] as
   it is (the first BN absorbs any offset and scale).
3. **CC-Net padding**: at test time each dilated conv zero-pads by its dilation ("same" size), so the
   descriptor map has the image's size; descriptors within 32 pixels of a border see zeros. Training uses
   no padding ("valid"): a 65x65 LR patch gives one descriptor and a 193x193 reference patch a 129x129 map,
   exactly as Sec. 3 describes (:meth:`CCNet.forward` ``padding="valid"``).
4. **BN at inference**: running statistics (``eval()``); the frozen CC-Net and SRResNet trunk stay in eval
   mode even while RefSR-Net trains (:meth:`RefSRNet.train`), so SS-Net training never updates their BN.
5. **Matching position of an LR patch**: one match per LR patch, for the pixel at offset (32, 32) of its
   64x64 HR footprint (the 65x65 receptive field centred there covers the whole patch plus one pixel). The
   window centre in the reference is that pixel scaled to reference coordinates (the identity when the
   reference has the HR size, as in the paper's Sintel and light-field pairs).
6. **Reference patch**: the 64x64 reference crop placed at the same offset around the matched pixel, i.e.
   the reference translated by the match (not a per-pixel warp: the paper feeds SS-Net "the reference patch
   selected via CC-Net"). The reference is padded by replication where the crop leaves it.
7. **Search range**: 100 reference pixels either side of the window centre (paper, testing stage), clipped
   to the reference; training CC-Net uses a 129x129 window (±64), :mod:`refsr.train.tasks.ccnet`.
8. **SRResNet + NN** (Sec. 4, 5.2): SRResNet [Ledig et al.] with 64 channels, a 9x9 first conv + PReLU, 16
   residual blocks (conv-BN-PReLU-conv-BN + identity), conv-BN and the long skip; the sub-pixel upsampling
   blocks replaced by x2 nearest-neighbour + 3x3 conv + PReLU; a 9x9 last conv. PReLU has one slope per
   layer (PyTorch's default). Pre-trained as an SISR model (registered as ``srresnet-x8``: three x2 blocks;
   the paper pre-trains at x4 on ImageNet, but only the trunk is kept, and it sees the same LR either way),
   then frozen; SS-Net uses the trunk's LR-resolution output (64 channels). The trunk runs on the whole LR
   image and its 8x8 windows are cut out (the paper's "+ sliding" variant, which re-runs SRResNet on 24x24
   patches with stride 2, is not reproduced).
9. **HR feature module channels**: 64 at every scale; every conv is 3x3 + ReLU; the three blocks are conv +
   ReLU + 2x2 max-pool (stride 2), giving ``F_HR(0..3)`` at 64, 32, 16, 8 pixels.
10. **Prediction module**: ``W_mask`` outputs one channel (the paper's "2-D mask confidence", broadcast over
    the feature channels); ``W_fuse`` outputs 64 channels; ``SP`` is a 3x3 conv to 4x64 channels + pixel
    shuffle; all these convs are 3x3. The image is read out of ``F_fuse(0)`` by one more 3x3 conv to RGB (the
    paper does not show it), with no residual connection by default (``residual="none"``).
    ``residual="bicubic"`` adds the LR upscaled x8 (PyTorch bicubic, ``align_corners=False``) to the fused
    output, so SS-Net predicts only the detail; because the fusion weights of every pixel sum to one, this
    equals adding it to every patch. ``refsrnet-lite`` uses it: a whole image predicted from scratch does
    not get near bicubic quality in a CPU budget of tens of minutes (measured: MSE 0.055, about 12.6 dB,
    after 120 iterations, flat from iteration 50).
11. **Mask range**: Eq. 2 as written, ``sig(relu(.))``, keeps every mask in [0.5, 1), although the text says
    values near 0 mark occlusion; ``mask_relu=False`` drops the ReLU before the sigmoid (masks in (0, 1)).
    The default follows the equation. ``fuse_activation="sigmoid"`` follows the paper's ``delta``;
    ``"relu"`` is offered as an alternative.
12. **Sliding windows**: LR patches every ``patch_stride`` = 4 LR pixels (32 HR pixels; each pixel is covered
    by four patches), the last row/column flush with the border
    (:func:`refsr.ops.sliding_window.sliding_window_positions`). The Gaussian is truncated at 3 sigma (19x19
    taps for sigma 3), normalised, applied to each patch's mask with zeros outside the patch.
13. **Sizes** (``size_rule``): the LR must be at least 8x8 and is padded (replicate, bottom/right) to a
    multiple of 8 by :func:`refsr.upscale`; the model itself accepts any LR of at least 8x8 and any
    reference size.
14. **Initialisation**: PyTorch's defaults (Kaiming-uniform convs, BN weight 1, bias 0).

Training (paper Sec. 5): CC-Net by ``refsr train`` with ``task: ccnet`` (configs ``ccnet.yaml``,
``ccnet-lite.yaml``); the SRResNet + NN by the same loop's restoration task on ``srresnet-x8``; SS-Net by it
on ``refsrnet`` with ``ccnet_weights`` / ``sisr_weights`` (configs ``ssnet.yaml``, ``refsrnet.yaml``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.matching.ccnet import DEFAULT_SEARCH_RANGE, match_ccnet, upsample_lr
from refsr.matching.correspondence import Correspondence
from refsr.models._base import RefSRModel
from refsr.models._registry import build_variant, register_model
from refsr.models._size import SizeRule
from refsr.ops.sliding_window import (
    DEFAULT_SIGMA,
    WEIGHT_MODES,
    sliding_window_fuse,
    sliding_window_positions,
)
from refsr.weights_io import read_checkpoint

__all__ = [
    "CCNet",
    "SRResNetTrunk",
    "SRResNetNN",
    "HRFeatureModule",
    "PredictionModule",
    "SSNet",
    "RefSRNet",
    "refsrnet",
    "refsrnet_lite",
    "srresnet_x8",
    "CCNET_CHANNELS",
    "CCNET_DILATIONS",
    "SCALE",
    "LR_PATCH",
    "HR_PATCH",
]

SCALE = 8  # RefSR-Net's upscaling factor
LR_PATCH = 8  # SS-Net's LR patch side ...
HR_PATCH = LR_PATCH * SCALE  # ... and the HR patch it predicts
#: What is added to the fused SS-Net output (choice 10).
RESIDUAL_MODES = ("none", "bicubic")
CCNET_CHANNELS = (16, 32, 64, 64, 64, 128)  # Table 1
CCNET_DILATIONS = (1, 1, 2, 4, 8, 16)  # Table 1
CCNET_OUT_CHANNELS = 256  # Table 1, "fc"


def _positive_ints(value: Sequence[int], what: str, length: int | None = None) -> tuple[int, ...]:
    values = tuple(value)
    if (length is not None and len(values) != length) or not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        count = f"{length} " if length is not None else ""
        raise RefsrError(f"{what} must be {count}positive integers; got {value!r}")
    return values


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RefsrError(f"{what} must be a positive integer; got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ CC-Net
class CCNet(nn.Module):
    """Cross-scale Correspondence Network: dense descriptors with a 65x65 receptive field (Table 1).

    Args:
        channels: output channels of the six dilated layers (16, 32, 64, 64, 64, 128).
        dilations: their dilations (1, 1, 2, 4, 8, 16); the receptive field is ``1 + 2 * sum(dilations)``.
        out_channels: channels of the final 1x1 layer (256).

    ``forward(x, padding="same")``: ``x (N,3,H,W)`` RGB in [0, 1] -> ``(N,out_channels,H,W)`` descriptors
    (zero padding, choice 3 of the module docstring); with ``padding="valid"`` no padding,
    ``(N,out_channels,H-rf+1,W-rf+1)`` (CC-Net training, e.g. 65x65 -> 1x1 and 193x193 -> 129x129).
    """

    def __init__(self, *, channels: Sequence[int] = CCNET_CHANNELS, dilations: Sequence[int] = CCNET_DILATIONS,
                 out_channels: int = CCNET_OUT_CHANNELS) -> None:
        super().__init__()
        channels = _positive_ints(channels, "ccnet channels")
        dilations = _positive_ints(dilations, "ccnet dilations", len(channels))
        self.dilations = dilations
        layers = []
        previous = 3
        for width, dilation in zip(channels, dilations):
            # No bias: the BN right after it has its own shift.
            layers.append(nn.ModuleDict({
                "conv": nn.Conv2d(previous, width, 3, dilation=dilation, bias=False),
                "bn": nn.BatchNorm2d(width),
            }))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Conv2d(previous, _positive_int(out_channels, "ccnet out_channels"), 1)

    @property
    def receptive_field(self) -> int:
        """Side of the square input window one descriptor sees (65 for Table 1)."""
        return 1 + 2 * sum(self.dilations)

    @property
    def out_channels(self) -> int:
        return self.fc.out_channels

    def forward(self, x: torch.Tensor, padding: str = "same") -> torch.Tensor:
        if padding not in ("same", "valid"):
            raise RefsrError(f"padding must be 'same' or 'valid'; got {padding!r}")
        for layer, dilation in zip(self.layers, self.dilations):
            if padding == "same":
                x = F.pad(x, (dilation,) * 4)
            x = F.relu(layer["bn"](layer["conv"](x)), inplace=True)
        return self.fc(x)


# ------------------------------------------------------------------------------------------ SRResNet + NN
class _SRResBlock(nn.Module):
    """SRResNet's residual block: conv-BN-PReLU-conv-BN + identity."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(nf)
        self.act = nn.PReLU()
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class SRResNetTrunk(nn.Module):
    """SRResNet without its upsampling: ``(N,3,h,w)`` RGB in [0, 1] -> ``(N,nf,h,w)`` LR features.

    9x9 conv + PReLU, ``blocks`` residual blocks, 3x3 conv + BN, plus the long skip from the first conv.
    """

    def __init__(self, *, nf: int = 64, blocks: int = 16) -> None:
        super().__init__()
        self.nf = _positive_int(nf, "sisr_channels")
        self.conv_first = nn.Conv2d(3, nf, 9, padding=4)
        self.act_first = nn.PReLU()
        self.blocks = nn.Sequential(*(_SRResBlock(nf) for _ in range(int(blocks))))
        self.conv_body = nn.Conv2d(nf, nf, 3, padding=1)
        self.bn_body = nn.BatchNorm2d(nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.act_first(self.conv_first(x))
        return head + self.bn_body(self.conv_body(self.blocks(head)))


class SRResNetNN(RefSRModel):
    """SRResNet + NN (paper Sec. 5.2), the single-image model whose trunk SS-Net uses: the trunk, then
    ``log2(scale)`` blocks of x2 nearest-neighbour upsampling + 3x3 conv + PReLU, then a 9x9 conv to RGB.

    ``forward(lr, ref=None)``: ``lr (N,3,h,w)`` RGB in [0, 1] -> ``(N,3,scale*h,scale*w)``; ``ref`` is ignored.
    """

    uses_ref = False

    def __init__(self, *, nf: int = 64, blocks: int = 16, scale: int = SCALE) -> None:
        super().__init__()
        if scale not in (2, 4, 8, 16):
            raise RefsrError(f"scale must be a power of two from 2 to 16; got {scale!r}")
        self.scale = scale
        self.size_rule = SizeRule()
        self.trunk = SRResNetTrunk(nf=nf, blocks=blocks)
        ups = []
        for _ in range(int(math.log2(scale))):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, padding=1), nn.PReLU()]
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(nf, 3, 9, padding=4)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        return self.conv_last(self.upsample(self.trunk(lr)))


# ------------------------------------------------------------------------------------------------ SS-Net
class HRFeatureModule(nn.Module):
    """The HR feature extraction module: a conv, then three conv + max-pool blocks.

    ``(M,3,64,64)`` -> ``[F_HR(0) (M,c0,64,64), F_HR(1) (M,c1,32,32), F_HR(2) (M,c2,16,16), F_HR(3) (M,c3,8,8)]``.
    """

    def __init__(self, channels: Sequence[int] = (64, 64, 64, 64)) -> None:
        super().__init__()
        channels = _positive_ints(channels, "hr_channels", 4)
        self.channels = channels
        self.conv0 = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(channels[k], channels[k + 1], 3, padding=1) for k in range(3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [F.relu(self.conv0(x), inplace=True)]
        for conv in self.blocks:
            feats.append(F.max_pool2d(F.relu(conv(feats[-1]), inplace=True), 2))
        return feats


class PredictionModule(nn.Module):
    """SS-Net's prediction module: Eq. 2, from scale 3 (8x8) to scale 0 (64x64), then a conv to RGB.

    Args:
        lr_channels: channels of ``F_LR``.
        hr_channels: channels of ``F_HR(0..3)``.
        fuse_channels: channels of ``F_fuse(i)``.
        fuse_activation: ``"sigmoid"`` (the paper's delta) or ``"relu"``.
        mask_relu: the ReLU of ``M_L`` before the mask's sigmoid (Eq. 2 as written).

    ``forward(lr_feat (M,lr_channels,8,8), hr_feats)`` -> ``(image (M,3,64,64), masks [M(3), M(2), M(1), M(0)])``,
    each mask ``(M,1,s,s)``.
    """

    def __init__(self, *, lr_channels: int, hr_channels: Sequence[int], fuse_channels: int = 64,
                 fuse_activation: str = "sigmoid", mask_relu: bool = True) -> None:
        super().__init__()
        if fuse_activation not in ("sigmoid", "relu"):
            raise RefsrError(f"fuse_activation must be 'sigmoid' or 'relu'; got {fuse_activation!r}")
        f = _positive_int(fuse_channels, "fuse_channels")
        c = _positive_ints(hr_channels, "hr_channels", 4)
        self.fuse_activation = fuse_activation
        self.mask_relu = bool(mask_relu)
        self.mask3 = nn.Conv2d(lr_channels + c[3], 1, 3, padding=1)
        self.fuse3 = nn.Conv2d(lr_channels + c[3], f, 3, padding=1)
        # Index k of these lists is scale 2 - k (2, 1, 0).
        self.subpixel = nn.ModuleList(nn.Sequential(nn.Conv2d(f, 4 * f, 3, padding=1), nn.PixelShuffle(2))
                                      for _ in range(3))
        self.mask = nn.ModuleList(nn.Conv2d(f + c[i] + 1, 1, 3, padding=1) for i in (2, 1, 0))
        self.fuse = nn.ModuleList(nn.Conv2d(f + c[i], f, 3, padding=1) for i in (2, 1, 0))
        self.conv_out = nn.Conv2d(f, 3, 3, padding=1)

    def _delta(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) if self.fuse_activation == "sigmoid" else F.relu(x)

    def _mask_logit(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.mask_relu else x

    def forward(self, lr_feat: torch.Tensor, hr_feats: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        both = torch.cat((lr_feat, hr_feats[3]), dim=1)
        logit = self._mask_logit(self.mask3(both))  # M_L(3)
        mask = torch.sigmoid(logit)  # M(3)
        fused = self._delta(self.fuse3(torch.cat((lr_feat, hr_feats[3] * mask), dim=1)))  # F_fuse(3)
        masks = [mask]
        for k, scale in enumerate((2, 1, 0)):
            up_logit = F.interpolate(logit, scale_factor=2, mode="nearest")
            mask_in = torch.cat((self.subpixel[k](fused), hr_feats[scale], up_logit), dim=1)
            logit = self._mask_logit(self.mask[k](mask_in))  # M_L(i)
            mask = torch.sigmoid(logit)  # M(i)
            up_fused = F.interpolate(fused, scale_factor=2, mode="nearest")
            fused = self._delta(self.fuse[k](torch.cat((up_fused, hr_feats[scale] * mask), dim=1)))  # F_fuse(i)
            masks.append(mask)
        return self.conv_out(fused), masks


class SSNet(nn.Module):
    """Super-resolution Synthesis Network without its (frozen, shared) LR feature module.

    ``forward(lr_feat (M,C,8,8), ref_patch (M,3,64,64))`` -> ``(hr_patch (M,3,64,64), mask0 (M,1,64,64))``.
    """

    def __init__(self, *, lr_channels: int = 64, hr_channels: Sequence[int] = (64, 64, 64, 64),
                 fuse_channels: int = 64, fuse_activation: str = "sigmoid", mask_relu: bool = True) -> None:
        super().__init__()
        self.hr_features = HRFeatureModule(hr_channels)
        self.prediction = PredictionModule(lr_channels=lr_channels, hr_channels=hr_channels,
                                           fuse_channels=fuse_channels, fuse_activation=fuse_activation,
                                           mask_relu=mask_relu)

    def forward(self, lr_feat: torch.Tensor, ref_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, masks = self.prediction(lr_feat, self.hr_features(ref_patch))
        return image, masks[-1]


# ------------------------------------------------------------------------------------------------ the model
def _gather_patches(image: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """``size``-sided crops of ``image (N,C,H,W)`` at top-left ``corners (N,P,2)`` (inside the image) ->
    ``(N,P,C,size,size)``, by one gather (no loop over patches)."""
    n, c, height, width = image.shape
    p = corners.shape[1]
    offsets = (torch.arange(size, device=image.device).view(size, 1) * width
               + torch.arange(size, device=image.device).view(1, size)).view(1, 1, size * size)
    index = (corners[..., 0] * width + corners[..., 1]).unsqueeze(-1) + offsets  # (N, P, size*size)
    flat = image.reshape(n, c, 1, height * width).expand(n, c, p, height * width)
    picked = torch.gather(flat, 3, index.view(n, 1, p, size * size).expand(n, c, p, size * size))
    return picked.view(n, c, p, size, size).transpose(1, 2)


class RefSRNet(RefSRModel):
    """RefSR-Net, x8. See the module docstring for the pipeline and every choice the paper leaves open.

    Args:
        ccnet_channels, ccnet_dilations, ccnet_out_channels: CC-Net (Table 1).
        sisr_channels, sisr_blocks: the SRResNet + NN trunk (64, 16).
        hr_channels: channels of ``F_HR(0..3)`` (64 each).
        fuse_channels: channels of ``F_fuse`` (64).
        fuse_activation, mask_relu: Eq. 2's delta and the ReLU before the masks' sigmoid (choice 11).
        patch_stride: LR pixels between neighbouring 8x8 patches (4; choice 12).
        search_range: CC-Net's test-time search range in reference pixels (100).
        fusion: ``"mask-gaussian"`` (the paper's weighted fusion) or ``"average"``.
        sigma: the Gaussian's sigma for ``"mask-gaussian"`` (3).
        freeze_ccnet, freeze_lr_features: keep CC-Net / the SRResNet trunk fixed (no gradient, BN in eval
            mode) when the model trains (the paper trains SS-Net with both fixed).
        residual: ``"none"`` (the image read out of ``F_fuse(0)`` alone) or ``"bicubic"`` (plus the LR
            upscaled x8; choice 10).
        patch_batch: SS-Net runs on at most this many patches at once (memory).
        match_max_bytes: working-memory budget of one tile of the CC-Net search.
    """

    scale = SCALE
    uses_ref = True
    exposes_correspondence = True

    def __init__(
        self,
        *,
        ccnet_channels: Sequence[int] = CCNET_CHANNELS,
        ccnet_dilations: Sequence[int] = CCNET_DILATIONS,
        ccnet_out_channels: int = CCNET_OUT_CHANNELS,
        sisr_channels: int = 64,
        sisr_blocks: int = 16,
        hr_channels: Sequence[int] = (64, 64, 64, 64),
        fuse_channels: int = 64,
        fuse_activation: str = "sigmoid",
        mask_relu: bool = True,
        patch_stride: int = 4,
        search_range: int = DEFAULT_SEARCH_RANGE,
        fusion: str = "mask-gaussian",
        sigma: float = DEFAULT_SIGMA,
        freeze_ccnet: bool = True,
        freeze_lr_features: bool = True,
        residual: str = "none",
        patch_batch: int = 256,
        match_max_bytes: int = 128 * 2**20,
    ) -> None:
        super().__init__()
        if residual not in RESIDUAL_MODES:
            raise RefsrError(f"residual must be one of {', '.join(RESIDUAL_MODES)}; got {residual!r}")
        self.residual = residual
        if fusion not in WEIGHT_MODES:
            raise RefsrError(f"fusion must be one of {', '.join(WEIGHT_MODES)}; got {fusion!r}")
        if isinstance(search_range, bool) or not isinstance(search_range, int) or search_range < 0:
            raise RefsrError(f"search_range must be a non-negative integer; got {search_range!r}")
        if not sigma > 0:
            raise RefsrError(f"sigma must be positive; got {sigma!r}")
        self.patch_stride = _positive_int(patch_stride, "patch_stride")
        self.patch_batch = _positive_int(patch_batch, "patch_batch")
        self.search_range = search_range
        self.fusion = fusion
        self.sigma = float(sigma)
        self.freeze_ccnet = bool(freeze_ccnet)
        self.freeze_lr_features = bool(freeze_lr_features)
        self.match_max_bytes = int(match_max_bytes)
        self.config: dict[str, Any] = dict(
            ccnet_channels=tuple(ccnet_channels), ccnet_dilations=tuple(ccnet_dilations),
            ccnet_out_channels=ccnet_out_channels, sisr_channels=sisr_channels, sisr_blocks=sisr_blocks,
            hr_channels=tuple(hr_channels), fuse_channels=fuse_channels, fuse_activation=fuse_activation,
            mask_relu=mask_relu, patch_stride=patch_stride, search_range=search_range, fusion=fusion,
            sigma=self.sigma, residual=residual,
        )
        self.size_rule = SizeRule(lr_multiple=LR_PATCH, min_lr=LR_PATCH, pad_mode="replicate")

        self.ccnet = CCNet(channels=ccnet_channels, dilations=ccnet_dilations, out_channels=ccnet_out_channels)
        self.lr_features = SRResNetTrunk(nf=sisr_channels, blocks=sisr_blocks)
        self.ssnet = SSNet(lr_channels=sisr_channels, hr_channels=hr_channels, fuse_channels=fuse_channels,
                           fuse_activation=fuse_activation, mask_relu=mask_relu)
        self._apply_freezing()

    # ------------------------------------------------------------------ set-up

    def _apply_freezing(self) -> None:
        for module, frozen in ((self.ccnet, self.freeze_ccnet), (self.lr_features, self.freeze_lr_features)):
            for p in module.parameters():
                p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> RefSRNet:
        """Like ``nn.Module.train``, but frozen parts stay in eval mode (their BN uses running statistics)."""
        super().train(mode)
        if self.freeze_ccnet:
            self.ccnet.eval()
        if self.freeze_lr_features:
            self.lr_features.eval()
        return self

    def load_ccnet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load trained CC-Net weights (a :class:`CCNet` state_dict, or one with a ``ccnet.`` prefix)."""
        self.ccnet.load_state_dict(_strip_prefix(state_dict, "ccnet."))

    def load_sisr(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the pre-trained SRResNet + NN trunk from an ``srresnet-x8`` state_dict (``trunk.*`` keys; the
        upsampling layers are dropped) or a trunk's own state_dict."""
        trunk = {k[len("trunk."):]: v for k, v in state_dict.items() if k.startswith("trunk.")}
        self.lr_features.load_state_dict(trunk if trunk else _strip_prefix(state_dict, "lr_features."))

    # ------------------------------------------------------------------ stages

    def patch_corners(self, lr_size: tuple[int, int]) -> torch.Tensor:
        """``LongTensor (P, 2)``: top-left ``(y, x)`` LR corners of the 8x8 patches (row-major)."""
        return sliding_window_positions(lr_size, LR_PATCH, self.patch_stride)

    def match(self, lr: torch.Tensor, ref: torch.Tensor, corners: torch.Tensor) -> Correspondence:
        """CC-Net match of every LR patch (choice 5): a ``(N, rows, cols)`` :class:`Correspondence` from the
        patch grid to reference pixels."""
        rows = corners[:, 0].unique().numel()
        cols = corners.shape[0] // rows
        height, width = ref.shape[-2:]
        hr_h, hr_w = lr.shape[-2] * SCALE, lr.shape[-1] * SCALE
        centre = corners * SCALE + HR_PATCH // 2  # (P, 2) pixel of the upsampled LR
        grad = torch.enable_grad() if not self.freeze_ccnet and torch.is_grad_enabled() else torch.no_grad()
        with grad:
            query_map = self.ccnet(upsample_lr(lr, SCALE))
            key = self.ccnet(ref)
        query = query_map[:, :, centre[:, 0], centre[:, 1]].view(lr.shape[0], -1, rows, cols)
        # Window centres in reference pixels: the identity when the reference has the HR size.
        scaled = torch.stack((((centre[:, 0] + 0.5) * height / hr_h).floor(),
                              ((centre[:, 1] + 0.5) * width / hr_w).floor()), dim=-1).long()
        return match_ccnet(query, key, patch_size=1, search_range=self.search_range,
                           centres=scaled.view(rows, cols, 2), max_bytes=self.match_max_bytes)

    def reference_patches(self, ref: torch.Tensor, corr: Correspondence) -> torch.Tensor:
        """The 64x64 reference patch of every LR patch (choice 6): ``(N, P, 3, 64, 64)``."""
        half = HR_PATCH // 2
        padded = F.pad(ref, (half,) * 4, mode="replicate")
        coords = corr.coords.view(ref.shape[0], -1, 2)  # matched pixel; in the padded ref it is the top-left
        return _gather_patches(padded, coords, HR_PATCH)

    def synthesise(self, lr_feats: torch.Tensor, ref_patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SS-Net on every patch, ``patch_batch`` at a time: ``(N,P,C,8,8)``, ``(N,P,3,64,64)`` ->
        ``(N,P,3,64,64)`` predictions and ``(N,P,1,64,64)`` scale-0 masks."""
        n, p = ref_patches.shape[:2]
        lr_flat = lr_feats.reshape(n * p, *lr_feats.shape[2:])
        ref_flat = ref_patches.reshape(n * p, *ref_patches.shape[2:])
        images, masks = [], []
        for start in range(0, n * p, self.patch_batch):
            image, mask = self.ssnet(lr_flat[start : start + self.patch_batch],
                                     ref_flat[start : start + self.patch_batch])
            images.append(image)
            masks.append(mask)
        return (torch.cat(images).view(n, p, 3, HR_PATCH, HR_PATCH),
                torch.cat(masks).view(n, p, 1, HR_PATCH, HR_PATCH))

    # ------------------------------------------------------------------ forward

    def _check_inputs(self, lr: torch.Tensor, ref: torch.Tensor) -> None:
        for name, x in (("lr", lr), ("ref", ref)):
            good = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()
            if not good:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(f"RefSR-Net needs {name} as a float (N, 3, H, W) RGB tensor; got {shape}")
        if ref.shape[0] != lr.shape[0]:
            raise RefsrError(f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}")
        if min(lr.shape[-2:]) < LR_PATCH:
            raise RefsrError(f"RefSR-Net needs an LR of at least {LR_PATCH}x{LR_PATCH}; got "
                             f"{lr.shape[-2]}x{lr.shape[-1]}: pad it (refsr.upscale does)")

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, *, return_correspondence: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Correspondence]:
        """Super-resolve ``lr`` x8 with patches of ``ref``.

        Args:
            lr: ``(N,3,h,w)`` RGB float in [0, 1], ``h, w >= 8`` (:func:`refsr.upscale` pads to a multiple of 8).
            ref: ``(N,3,H,W)`` RGB float in [0, 1], any size.
            return_correspondence: also return the CC-Net match of every LR patch (``(N, rows, cols)`` grid
                of reference pixels matched by the patches' centre pixels).

        Returns:
            ``(N,3,8h,8w)`` RGB float (not clamped), or ``(sr, correspondence)``.
        """
        self._check_inputs(lr, ref)
        n, _, h, w = lr.shape
        corners = self.patch_corners((h, w)).to(lr.device)
        corr = self.match(lr, ref, corners)
        ref_patches = self.reference_patches(ref, corr)
        grad = torch.enable_grad() if not self.freeze_lr_features and torch.is_grad_enabled() else torch.no_grad()
        with grad:
            lr_map = self.lr_features(lr)
        lr_feats = _gather_patches(lr_map, corners.unsqueeze(0).expand(n, -1, -1), LR_PATCH)
        patches, masks = self.synthesise(lr_feats, ref_patches)
        sr = sliding_window_fuse(patches, corners * SCALE, (h * SCALE, w * SCALE), self.fusion, masks=masks,
                                 sigma=self.sigma)
        if self.residual == "bicubic":
            sr = sr + F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False)
        return (sr, corr) if return_correspondence else sr

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    picked = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return picked if picked else state_dict


def _load_parts(model: RefSRNet, ccnet_weights: str | None, sisr_weights: str | None) -> RefSRNet:
    try:
        if ccnet_weights is not None:
            model.load_ccnet(read_checkpoint(ccnet_weights))
        if sisr_weights is not None:
            model.load_sisr(read_checkpoint(sisr_weights))
    except RuntimeError as exc:  # load_state_dict's key or shape mismatch
        first = str(exc).strip().splitlines()[0]
        raise RefsrError(f"the CC-Net or SRResNet weights do not fit this RefSR-Net ({first})") from None
    return model


@register_model("refsrnet", paper="RefSR-Net (BMVC 2017)")
def refsrnet(*, ccnet_weights: str | None = None, sisr_weights: str | None = None, **kwargs: Any) -> RefSRNet:
    """RefSR-Net (BMVC 2017), x8: CC-Net matching + SS-Net patch synthesis + mask-weighted sliding windows.

    ``ccnet_weights`` / ``sisr_weights``: files with a trained CC-Net (a ``task: ccnet`` run's
    ``checkpoints/last/model.safetensors``) and a pre-trained ``srresnet-x8``, loaded into the frozen parts.
    """
    return _load_parts(build_variant(RefSRNet, "refsrnet", {}, kwargs), ccnet_weights, sisr_weights)


@register_model("refsrnet-lite", paper="RefSR-Net (BMVC 2017)")
def refsrnet_lite(*, ccnet_weights: str | None = None, sisr_weights: str | None = None,
                  **kwargs: Any) -> RefSRNet:
    """RefSR-Net with half-width CC-Net, a 4-block 32-channel SRResNet trunk and 32-channel SS-Net (CPU),
    predicting the detail over bicubic (``residual="bicubic"``, choice 10) so that it trains in minutes."""
    model_args = dict(ccnet_channels=(8, 16, 32, 32, 32, 64), ccnet_out_channels=128, sisr_channels=32,
                      sisr_blocks=4, hr_channels=(32, 32, 32, 32), fuse_channels=32, search_range=48,
                      residual="bicubic")
    return _load_parts(build_variant(RefSRNet, "refsrnet-lite", model_args, kwargs), ccnet_weights, sisr_weights)


@register_model("srresnet-x8", paper="SRResNet (CVPR 2017), RefSR-Net's trunk")
def srresnet_x8(**kwargs: Any) -> SRResNetNN:
    """SRResNet + NN (nearest-neighbour upsampling), x8: RefSR-Net's LR feature module, pre-trained as SISR."""
    return build_variant(SRResNetNN, "srresnet-x8", {}, kwargs)
