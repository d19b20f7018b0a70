"""SSEN: Similarity Search and Extraction Network for reference-based and self-similarity SR (x4).

Paper: Gyumin Shim, Jinsun Park, In So Kweon, "Robust Reference-based Super-Resolution with
Similarity-Aware Deformable Convolution", CVPR 2020.
Official code: none published (searched; the only public code, ``Slime0519/CVPR_2020_SSEN``, is an unofficial
student reproduction and was not followed). Everything here is written from the paper, which leaves many
details open; every choice made is listed below. There is no official checkpoint, hence no converter.

Models registered here (all x4, inputs RGB float in [0, 1]):

- ``ssen``: the RefSR framework (paper Fig. 2, Sec. 3.4): an EDSR-style network with SSEN, ``model(lr, ref)``.
- ``ssen-baseline``: the same network without the reference branch (the paper's "Baseline", Tables 1, 3, 4).
- ``ssen-self``: the self-similarity framework (Fig. 4): RCAN with SSEN fed the LR's own features,
  ``model(lr)``; ``ref`` is accepted and ignored (``uses_ref = False``).
- ``rcan``: the RCAN baseline of ``ssen-self`` (Table 2, "Baseline").
- ``ssen-lite``, ``ssen-baseline-lite``, ``ssen-self-lite``, ``rcan-lite``: 32-channel, shallower versions for
  training on a CPU.

Choices the paper leaves open (numbered so that reports can cite them):

1. **Where the 1/4-size features come from.** Sec. 3.4: "All feature manipulations are conducted at
   one-quarter of the size of the input spatial dimensions", with "a global skip connection between the input
   and output layers". Features at 1/4 of an *LR* input would need x16 up-sampling for a x4 output, so the
   input is read as HR-sized: the LR is first up-sampled x4 (``F.interpolate``, bicubic,
   ``align_corners=False``, PyTorch's a = -0.75 kernel: differentiable and fast; PIL's kernel is not needed
   inside a network). Two 3x3 stride-2 convolutions (each followed by LeakyReLU(0.1)) then bring the
   HR-sized LR↑ *and* the HR-sized Ref down to the LR grid (h x w), where residual blocks extract features.
   The output is up-sampled back by two (conv nf->4nf, PixelShuffle(2)) stages, EDSR's up-sampler, plus a
   final 3x3 conv, and the global skip adds LR↑ (the input layer) to it.
2. **The Ref is brought to the HR size.** The paper's Ref is a high-resolution image of the HR's size (CUFED
   pairs are 160x160 both). The offset estimator concatenates LR and Ref features, and each deformable
   convolution samples the Ref features on the LR grid, so both feature maps must be ``h x w``: a Ref of any
   other size is resized to ``4h x 4w`` first (``F.interpolate``, bicubic, ``antialias=True``,
   differentiable); a Ref of exactly ``4h x 4w`` is used as it is. The deformable offsets do the actual
   search, so what matters is that all of the Ref is there, not where.
3. **Shared feature extractor.** LR↑ and Ref go through the *same* extractor (stride-2 convs + residual
   blocks, same weights), so that the features the offset estimator compares live in one space.
4. **Channels and depth.** ``nf = 64`` throughout (EDSR-baseline). 16 residual blocks in all, as
   EDSR-baseline: 8 in the extractor ("mid-level" fusion is after the 8th) and 8 in the reconstruction.
   Residual blocks are ``x + conv(ReLU(conv(x)))``, 3x3, no batch norm, no residual scaling
   (:class:`refsr.models._blocks.ResBlock`, MASA's).
5. **Fusion at the mid level.** ``fuse = conv3x3(cat[LR features, aligned Ref features])`` (2nf -> nf, no
   activation), then the reconstruction blocks and a 3x3 conv, plus EDSR's long skip from the mid-level LR
   features; then the up-sampler.
6. **Stacked deformable convolutions** (Sec. 3.2): ``num_dcn_layers`` (3) modulated 3x3 deformable
   convolutions, nf -> nf, padding 1, one deformable group, with bias, applied in sequence to the Ref
   features. One group is what Fig. 7's "9^3 sampling points per pixel" implies. LeakyReLU(0.1) *between*
   layers, none after the last (its output meets the linear residual-block features in the fusion conv). No
   skip connection around a layer (Sec. 4.4 argues against one).
7. **One offset estimator per layer, fed the current alignment.** Layer ``l``'s estimator sees
   ``cat[LR features, Ref features after layer l-1]`` ("SSEN gradually aligns reference features to input
   features in each layer"), and predicts ``2*9`` offsets (channel ``2k`` dy, ``2k+1`` dx, in LR-grid
   pixels, torchvision's layout) and 9 modulation logits (channels ``18..26``), squashed with a sigmoid.
8. **Dynamic offset estimator** (Sec. 3.3, Fig. 3): a 3x3 conv (2nf -> nf) + LReLU at full size; three
   3x3 stride-2 convs + LReLU, each followed by an embedded-Gaussian non-local block (so the three blocks sit
   at 1/2, 1/4 and 1/8 of the LR grid); back up three times by bilinear x2 (``align_corners=False``), a 3x3
   conv + LReLU, and an *additive* skip from the same scale on the way down (Fig. 3's "residuals with skip
   connections"); a final 3x3 conv to 27 channels. The estimator has ``nf`` channels at every scale.
9. **Non-local block** (Eqs. 2-3): ``z = x + W_y softmax_j(θ(x_i)ᵀ φ(x_j)) g(x_j)``: θ, φ, g are 1x1
   convs to ``max(1, C // 2)`` channels (the paper halves the embeddings), W_y a 1x1 conv back to C; no
   scaling of the dot product (Eq. 3 has none), no batch norm, no sub-sampling of φ/g. W_y starts at zero,
   as Wang et al. initialise it, so every block starts as the identity. Computed with
   ``F.scaled_dot_product_attention(scale=1)``, whose CPU kernel never forms the full attention matrix.
10. **Initialisation.** PyTorch's defaults (EDSR's), except: the last conv of every offset estimator is
    zero (weights and bias), so training starts from identity sampling (zero offsets) with every modulation
    scalar at sigmoid(0) = 0.5; and W_y of every non-local block is zero (item 9).
11. **Ablations** (Table 4): ``num_dcn_layers`` (0-4 in the table; 0 fuses the *unaligned* Ref features,
    the "No layers" row, which differs from the baseline) and ``use_non_local`` ("w/o NB": the three
    blocks are left out, the rest unchanged). ``use_reference=False`` is the baseline (no Ref at all).
12. **Self-similarity (ssen-self)**: RCAN (Zhang et al. 2018): mean shift (DIV2K RGB mean), head conv at
    the LR resolution, ``n_groups`` (10) residual groups of ``n_blocks`` (20) RCABs (channel attention with
    reduction 16), a conv and the long skip, EDSR's up-sampler and a tail conv. RCAN natively works at the LR
    resolution, i.e. at 1/4 of the output, so item 1's stride-2 convs are not needed here. SSEN is inserted
    at the mid level, after ``n_groups // 2`` groups: the features there are both the query and the
    reference (``SSEN(F, F)``), fused as in item 5, and the remaining groups follow.
13. **Size rule.** The estimator halves the LR grid three times, so the LR sides must divide by 8
    (``refsr.upscale`` pads, replicating borders); any Ref size works (item 2). The RCAN baseline takes any
    size.
14. **Losses** (Sec. 3.5) live in the training configs: Charbonnier (ε = 1e-6), and PatchGAN's adversarial
    loss for the GAN variant, fine-tuned from the reconstruction model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refsr.errors import RefsrError
from refsr.models._base import RefSRModel
from refsr.models._blocks import ResBlock, conv2d, lrelu
from refsr.models._registry import build_variant, register_model
from refsr.models._size import SizeRule
from refsr.ops import DeformConv2d

__all__ = [
    "embedded_gaussian_attention",
    "NonLocalBlock",
    "OffsetEstimator",
    "SSEN",
    "SSENNet",
    "SSENSelf",
    "RCAB",
    "ResidualGroup",
    "SamplingGeometry",
    "ssen",
    "ssen_lite",
    "ssen_baseline",
    "ssen_baseline_lite",
    "ssen_self",
    "ssen_self_lite",
    "rcan",
    "rcan_lite",
]

_SCALE = 4
_KERNEL = 3
_TAPS = _KERNEL * _KERNEL
_ESTIMATOR_LEVELS = 3  # "down-sampled three times" (Sec. 3.3)
# RCAN's MeanShift: the DIV2K training set's RGB mean, for images in [0, 1].
_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def _upsampler(nf: int) -> nn.Sequential:
    """EDSR's x4 up-sampler: twice (conv nf -> 4nf, PixelShuffle(2))."""
    return nn.Sequential(conv2d(nf, 4 * nf), nn.PixelShuffle(2), conv2d(nf, 4 * nf), nn.PixelShuffle(2))


def _check_positive(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RefsrError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- non-local


def embedded_gaussian_attention(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The non-local sum of Eq. 2 with the embedded Gaussian of Eq. 3, without the output projection.

    ``y_i = sum_j exp(θ_i·φ_j) g_j / sum_j exp(θ_i·φ_j)`` over every position ``j`` of the same image
    (no ``1/sqrt(d)`` scaling: Eq. 3 has none).

    Args:
        theta, phi, g: ``(N, C', h, w)`` embeddings of the same feature map, any float dtype.

    Returns:
        ``(N, C', h, w)``, ``y`` at every position ``i``.
    """
    n, channels, h, w = theta.shape
    # (N, 1 head, hw, C'): with a head dimension, scaled_dot_product_attention takes the CPU's flash kernel,
    # which computes softmax(q kᵀ) v (scale=1) block-wise without an (hw)^2 matrix in memory; that is what
    # lets the block run on whole test images. (3-D inputs fall back to the plain matrix product.)
    query, key, value = (t.reshape(n, 1, channels, h * w).transpose(2, 3) for t in (theta, phi, g))
    out = F.scaled_dot_product_attention(query, key, value, scale=1.0)
    return out.transpose(2, 3).reshape(n, channels, h, w)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018; SSEN Eqs. 2-3), residual, no normalisation.

    ``forward(x)``: ``(N, C, h, w)`` -> ``x + W_y(embedded_gaussian_attention(θ(x), φ(x), g(x)))``, same
    shape.

    Args:
        channels: ``C``.
        inner_channels: the embeddings' width; default ``max(1, C // 2)`` (the paper halves them).
    """

    def __init__(self, channels: int, inner_channels: int | None = None) -> None:
        super().__init__()
        inner = max(1, channels // 2) if inner_channels is None else inner_channels
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        # Wang et al. start every block as the identity: the projection back is zero.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = embedded_gaussian_attention(self.theta(x), self.phi(x), self.g(x))
        return x + self.out(y)


# ------------------------------------------------------------------------------------------------- SSEN


class OffsetEstimator(nn.Module):
    """The dynamic offset estimator of one deformable layer (Sec. 3.3, Fig. 3; choices 7-8 above).

    ``forward(lr_feat, ref_feat)``: two ``(N, C, h, w)`` maps, ``h`` and ``w`` multiples of 8 ->
    ``(offset, mask)``: ``offset (N, 18, h, w)`` in LR-grid pixels, channel ``2k`` dy and ``2k+1`` dx of tap
    ``k = 3*i + j`` (torchvision's layout), and ``mask (N, 9, h, w)`` in (0, 1).

    Args:
        channels: ``C`` of the LR and Ref features.
        hidden: the estimator's width at every scale (default ``C``).
        use_non_local: the three non-local blocks (Table 4, "w NB" / "w/o NB").
    """

    def __init__(self, channels: int, hidden: int | None = None, *, use_non_local: bool = True) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        self.use_non_local = use_non_local
        self.conv_in = conv2d(2 * channels, hidden)
        self.down = nn.ModuleList(conv2d(hidden, hidden, stride=2) for _ in range(_ESTIMATOR_LEVELS))
        self.non_local = (
            nn.ModuleList(NonLocalBlock(hidden) for _ in range(_ESTIMATOR_LEVELS)) if use_non_local else None
        )
        self.up = nn.ModuleList(conv2d(hidden, hidden) for _ in range(_ESTIMATOR_LEVELS))
        self.conv_out = conv2d(hidden, 3 * _TAPS)
        # Zero offsets and sigmoid(0) = 0.5 modulation at the start: each layer begins as a plain conv.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = lrelu(self.conv_in(torch.cat((lr_feat, ref_feat), dim=1)))
        skips = [x]
        for level, down in enumerate(self.down):
            x = lrelu(down(x))
            if self.non_local is not None:
                x = self.non_local[level](x)
            skips.append(x)
        # Up from 1/8: ``up[0]`` brings 1/8 to 1/4 and adds the 1/4 skip, and so on to full size.
        for level, up in enumerate(self.up):
            skip = skips[_ESTIMATOR_LEVELS - 1 - level]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = lrelu(up(x)) + skip
        out = self.conv_out(x)
        return out[:, : 2 * _TAPS], torch.sigmoid(out[:, 2 * _TAPS :])

    def extra_repr(self) -> str:
        return f"use_non_local={self.use_non_local}"


class SSEN(nn.Module):
    """Similarity Search and Extraction Network: stacked modulated deformable convolutions (Sec. 3.2).

    ``forward(lr_feat, ref_feat)``: ``(N, C, h, w)`` each (``h``, ``w`` multiples of 8) -> the Ref features
    aligned to the LR features, ``(N, C, h, w)``. With ``return_offsets=True`` also the list of
    ``(offset (N, 18, h, w), mask (N, 9, h, w))`` of each layer, in the order they are applied.

    Args:
        channels: ``C``.
        num_layers: deformable layers (Table 4: 3 is best; 0 passes the Ref features through).
        use_non_local: non-local blocks in the offset estimators.
        estimator_channels: the estimators' width (default ``C``).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_layers: int = 3,
        use_non_local: bool = True,
        estimator_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.num_layers = _check_positive(num_layers, "num_dcn_layers", 0)
        self.estimators = nn.ModuleList(
            OffsetEstimator(channels, estimator_channels, use_non_local=use_non_local)
            for _ in range(num_layers)
        )
        self.dcns = nn.ModuleList(
            DeformConv2d(channels, channels, _KERNEL, padding=_KERNEL // 2) for _ in range(num_layers)
        )

    def forward(
        self, lr_feat: torch.Tensor, ref_feat: torch.Tensor, *, return_offsets: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        aligned = ref_feat
        trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        for index, (estimator, dcn) in enumerate(zip(self.estimators, self.dcns)):
            offset, mask = estimator(lr_feat, aligned)
            # Passed positionally: the figure code reads them from a forward hook's ``args``.
            aligned = dcn(aligned, offset, mask)
            if index < self.num_layers - 1:
                aligned = lrelu(aligned)
            trace.append((offset, mask))
        return (aligned, trace) if return_offsets else aligned

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}"


@dataclass(frozen=True)
class SamplingGeometry:
    """Where the SSEN feature grid lies in the images, for drawing sampling points (Fig. 7).

    A feature-grid position ``(y, x)`` (the LR grid, ``h x w``) is at pixel
    ``(query_scale[0] * y + query_shift[0], query_scale[1] * x + query_shift[1])`` of the HR-sized query image
    (the LR↑ or the SR output), and its Ref features at pixel ``(ref_scale[0] * y + ref_shift[0], ...)`` of
    the reference image (``ref_is_lr``: the reference *is* the LR, drawn HR-sized, as in ``ssen-self``).
    """

    feature_size: tuple[int, int]
    query_scale: tuple[float, float]
    query_shift: tuple[float, float]
    ref_scale: tuple[float, float]
    ref_shift: tuple[float, float]
    ref_is_lr: bool


def _check_image(x: Any, name: str, model: str) -> None:
    good = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()
    if not good:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RefsrError(f"{model} needs {name} as a float (N, 3, H, W) RGB tensor; got {shape}")


def _check_lr_size(lr: torch.Tensor, multiple: int, model: str) -> None:
    h, w = lr.shape[-2:]
    if h % multiple or w % multiple:
        raise RefsrError(
            f"{model} needs an LR whose sides divide by {multiple}; got {h}x{w}: pad it (refsr.upscale does)"
        )


# ----------------------------------------------------------------------------------- RefSR framework


class SSENNet(RefSRModel):
    """The RefSR framework of SSEN (Fig. 2): an EDSR-style network with SSEN fused at the mid level, x4.

    See the module docstring (choices 1-11) for the architecture.

    Args:
        nf: channels (64).
        extractor_blocks: residual blocks of the shared feature extractor, before fusion (8).
        recon_blocks: residual blocks of the reconstruction, after fusion (8).
        num_dcn_layers: SSEN's deformable layers (3; Table 4).
        use_non_local: non-local blocks in the offset estimators (Table 4).
        estimator_channels: the offset estimators' width (default ``nf``).
        use_reference: False builds the baseline: no SSEN, no fusion, ``ref`` ignored.

    Attributes:
        size_rule: LR sides multiples of 8 (replicate-padded), any Ref size; without the reference any LR.
    """

    scale = _SCALE

    def __init__(
        self,
        *,
        nf: int = 64,
        extractor_blocks: int = 8,
        recon_blocks: int = 8,
        num_dcn_layers: int = 3,
        use_non_local: bool = True,
        estimator_channels: int | None = None,
        use_reference: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(nf, "nf")
        _check_positive(extractor_blocks, "extractor_blocks", 0)
        _check_positive(recon_blocks, "recon_blocks", 0)
        _check_positive(num_dcn_layers, "num_dcn_layers", 0)
        if estimator_channels is not None:
            _check_positive(estimator_channels, "estimator_channels")
        self.config: dict[str, Any] = dict(
            nf=nf, extractor_blocks=extractor_blocks, recon_blocks=recon_blocks,
            num_dcn_layers=num_dcn_layers, use_non_local=use_non_local, estimator_channels=estimator_channels,
            use_reference=use_reference,
        )
        self.uses_ref = bool(use_reference)
        multiple = 2**_ESTIMATOR_LEVELS if use_reference and num_dcn_layers > 0 else 1
        self.size_rule = SizeRule(lr_multiple=multiple, min_lr=multiple, pad_mode="replicate")

        self.down1 = conv2d(3, nf, stride=2)
        self.down2 = conv2d(nf, nf, stride=2)
        self.extractor = nn.Sequential(*(ResBlock(nf) for _ in range(extractor_blocks)))
        if use_reference:
            self.ssen = SSEN(nf, num_layers=num_dcn_layers, use_non_local=use_non_local,
                             estimator_channels=estimator_channels)
            self.fuse = conv2d(2 * nf, nf)
        else:
            self.ssen = None
            self.fuse = None
        self.reconstruction = nn.Sequential(*(ResBlock(nf) for _ in range(recon_blocks)))
        self.recon_conv = conv2d(nf, nf)
        self.upsample = _upsampler(nf)
        self.conv_out = conv2d(nf, 3)

    def extract(self, image_up: torch.Tensor) -> torch.Tensor:
        """Features on the LR grid: ``(N, 3, 4h, 4w)`` -> ``(N, nf, h, w)`` (two stride-2 convs + blocks)."""
        return self.extractor(lrelu(self.down2(lrelu(self.down1(image_up)))))

    @staticmethod
    def fit_reference(ref: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The Ref at the HR size ``size`` (choice 2): unchanged if it already is, else bicubic-resized
        (antialiased, differentiable). ``(N, 3, H, W)`` -> ``(N, 3, *size)``."""
        if tuple(ref.shape[-2:]) == tuple(size):
            return ref
        return F.interpolate(ref, size=size, mode="bicubic", align_corners=False, antialias=True)

    def sampling_geometry(self, lr_size: tuple[int, int], ref_size: tuple[int, int]) -> SamplingGeometry:
        """Where SSEN's feature grid lies in the LR↑/SR image and in the Ref (:mod:`refsr.eval.offsets`).

        Feature ``y`` is the output of two stride-2, padding-1 3x3 convs, centred on HR-sized pixel ``4y``;
        the Ref, resized to ``4h x 4w`` with ``align_corners=False``, maps back to its own pixels by
        ``(u + 0.5) * H / (4h) - 0.5``.
        """
        h, w = lr_size
        sy, sx = ref_size[0] / (_SCALE * h), ref_size[1] / (_SCALE * w)
        return SamplingGeometry(
            feature_size=(h, w),
            query_scale=(float(_SCALE), float(_SCALE)),
            query_shift=(0.0, 0.0),
            ref_scale=(_SCALE * sy, _SCALE * sx),
            ref_shift=(0.5 * sy - 0.5, 0.5 * sx - 0.5),
            ref_is_lr=False,
        )

    def forward(
        self, lr: torch.Tensor, ref: torch.Tensor | None = None, *, return_offsets: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Super-resolve ``lr`` x4 with features from ``ref``.

        Args:
            lr: ``(N, 3, h, w)`` RGB float in [0, 1]; ``h``, ``w`` multiples of ``size_rule.lr_multiple`` (8).
            ref: ``(N, 3, H, W)`` RGB float in [0, 1], any size (resized to ``4h x 4w`` unless it is that
                size). Required with the reference branch; ignored by the baseline.
            return_offsets: also return each deformable layer's ``(offset (N,18,h,w), mask (N,9,h,w))``.

        Returns:
            ``(N, 3, 4h, 4w)`` RGB float (not clamped), or ``(sr, offsets)``.
        """
        name = "ssen" if self.uses_ref else "ssen-baseline"
        _check_image(lr, "lr", name)
        _check_lr_size(lr, self.size_rule.lr_multiple, name)
        h, w = lr.shape[-2:]
        lr_up = F.interpolate(lr, scale_factor=_SCALE, mode="bicubic", align_corners=False)
        features = self.extract(lr_up)
        trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.ssen is not None:
            if ref is None:
                raise RefsrError(
                    "ssen needs a reference image; pass ref (refsr.upscale uses the LR upscaled when none is "
                    "given) or use the model 'ssen-self'"
                )
            _check_image(ref, "ref", name)
            if ref.shape[0] != lr.shape[0]:
                raise RefsrError(
                    f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}"
                )
            ref_features = self.extract(self.fit_reference(ref.to(lr.dtype), (_SCALE * h, _SCALE * w)))
            aligned, trace = self.ssen(features, ref_features, return_offsets=True)
            fused = self.fuse(torch.cat((features, aligned), dim=1))
        else:
            fused = features
        body = self.recon_conv(self.reconstruction(fused)) + features
        sr = self.conv_out(self.upsample(body)) + lr_up
        return (sr, trace) if return_offsets else sr

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


# ------------------------------------------------------------------------------- self-similarity (RCAN)


class RCAB(nn.Module):
    """RCAN's residual channel-attention block: ``x + CA(conv(ReLU(conv(x))))``, 3x3, no normalisation.

    CA: global average pool, 1x1 conv to ``C // reduction``, ReLU, 1x1 conv back, sigmoid; a per-channel
    scale of its input. ``forward``: ``(N, C, h, w)`` -> same shape.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        squeezed = max(1, channels // reduction)
        self.conv1 = conv2d(channels, channels)
        self.conv2 = conv2d(channels, channels)
        self.squeeze = nn.Conv2d(channels, squeezed, 1)
        self.excite = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean(dim=(2, 3), keepdim=True)))))
        return x + y * weights


class ResidualGroup(nn.Module):
    """RCAN's residual group: ``x + conv(RCAB^n(x))``."""

    def __init__(self, channels: int, blocks: int, reduction: int = 16) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(RCAB(channels, reduction) for _ in range(blocks)))
        self.conv = conv2d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.blocks(x))


class SSENSelf(RefSRModel):
    """The self-similarity framework (Fig. 4): RCAN with SSEN on the LR's own mid-level features, x4.

    ``forward(lr, ref=None)``: the reference is the LR itself; a ``ref`` passed in is ignored
    (``uses_ref = False``), so training and evaluation code that always passes one works unchanged.

    Args:
        nf: channels (64).
        n_groups: residual groups (10); SSEN sits after ``n_groups // 2`` of them (choice 12).
        n_blocks: RCABs per group (20).
        reduction: channel-attention reduction (16).
        num_dcn_layers, use_non_local, estimator_channels: as for :class:`SSENNet`.
        use_ssen: False builds plain RCAN (the baseline).

    Attributes:
        size_rule: LR sides multiples of 8 with SSEN (1 for plain RCAN), replicate-padded.
    """

    scale = _SCALE
    uses_ref = False

    def __init__(
        self,
        *,
        nf: int = 64,
        n_groups: int = 10,
        n_blocks: int = 20,
        reduction: int = 16,
        num_dcn_layers: int = 3,
        use_non_local: bool = True,
        estimator_channels: int | None = None,
        use_ssen: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(nf, "nf")
        _check_positive(n_groups, "n_groups", 0)
        _check_positive(n_blocks, "n_blocks", 0)
        _check_positive(reduction, "reduction")
        _check_positive(num_dcn_layers, "num_dcn_layers", 0)
        self.config: dict[str, Any] = dict(
            nf=nf, n_groups=n_groups, n_blocks=n_blocks, reduction=reduction, num_dcn_layers=num_dcn_layers,
            use_non_local=use_non_local, estimator_channels=estimator_channels, use_ssen=use_ssen,
        )
        multiple = 2**_ESTIMATOR_LEVELS if use_ssen and num_dcn_layers > 0 else 1
        self.size_rule = SizeRule(lr_multiple=multiple, min_lr=multiple, pad_mode="replicate")
        self.register_buffer("rgb_mean", torch.tensor(_DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.head = conv2d(3, nf)
        split = n_groups // 2
        self.groups_before = nn.Sequential(*(ResidualGroup(nf, n_blocks, reduction) for _ in range(split)))
        self.groups_after = nn.Sequential(
            *(ResidualGroup(nf, n_blocks, reduction) for _ in range(n_groups - split))
        )
        if use_ssen:
            self.ssen = SSEN(nf, num_layers=num_dcn_layers, use_non_local=use_non_local,
                             estimator_channels=estimator_channels)
            self.fuse = conv2d(2 * nf, nf)
        else:
            self.ssen = None
            self.fuse = None
        self.body_conv = conv2d(nf, nf)
        self.upsample = _upsampler(nf)
        self.tail = conv2d(nf, 3)

    def sampling_geometry(self, lr_size: tuple[int, int], ref_size: tuple[int, int] | None = None
                          ) -> SamplingGeometry:
        """Feature ``y`` is LR pixel ``y``, i.e. pixel ``4y + 1.5`` of the HR-sized LR↑; the reference is
        the LR, drawn HR-sized too. ``ref_size`` is ignored."""
        h, w = lr_size
        return SamplingGeometry(
            feature_size=(h, w), query_scale=(4.0, 4.0), query_shift=(1.5, 1.5), ref_scale=(4.0, 4.0),
            ref_shift=(1.5, 1.5), ref_is_lr=True,
        )

    def forward(
        self, lr: torch.Tensor, ref: torch.Tensor | None = None, *, return_offsets: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Super-resolve ``lr`` x4 from itself.

        Args:
            lr: ``(N, 3, h, w)`` RGB float in [0, 1]; ``h``, ``w`` multiples of ``size_rule.lr_multiple``.
            ref: ignored (the LR is its own reference).
            return_offsets: also return each deformable layer's ``(offset, mask)`` (empty for plain RCAN).

        Returns:
            ``(N, 3, 4h, 4w)`` RGB float (not clamped), or ``(sr, offsets)``.
        """
        name = "ssen-self" if self.ssen is not None else "rcan"
        _check_image(lr, "lr", name)
        _check_lr_size(lr, self.size_rule.lr_multiple, name)
        mean = self.rgb_mean.to(lr.dtype)
        head = self.head(lr - mean)
        features = self.groups_before(head)
        trace: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.ssen is not None:
            aligned, trace = self.ssen(features, features, return_offsets=True)
            features = self.fuse(torch.cat((features, aligned), dim=1))
        body = self.body_conv(self.groups_after(features)) + head
        sr = self.tail(self.upsample(body)) + mean
        return (sr, trace) if return_offsets else sr

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.config.items())


# ------------------------------------------------------------------------------------------- builders

# The lite sizes (each lite model and its baseline share them, so the pair compares like with like).
_SSEN_LITE = dict(nf=32, extractor_blocks=3, recon_blocks=5)
_SSEN_SELF_LITE = dict(nf=32, n_groups=4, n_blocks=4, reduction=8)


@register_model("ssen", paper="SSEN (CVPR 2020)")
def ssen(**kwargs: Any) -> SSENNet:
    """SSEN (CVPR 2020) RefSR framework, x4: EDSR-style net, 3 stacked DCNs, non-local offset estimators."""
    return build_variant(SSENNet, "ssen", {}, kwargs)


@register_model("ssen-lite", paper="SSEN (CVPR 2020)")
def ssen_lite(**kwargs: Any) -> SSENNet:
    """SSEN with 32 channels and 3 + 5 residual blocks, sized for training on a CPU."""
    return build_variant(SSENNet, "ssen-lite", _SSEN_LITE, kwargs)


@register_model("ssen-baseline", paper="SSEN (CVPR 2020), its baseline")
def ssen_baseline(**kwargs: Any) -> SSENNet:
    """The EDSR-style baseline of SSEN's RefSR framework, without reference (single-image), x4."""
    return build_variant(SSENNet, "ssen-baseline", dict(use_reference=False), kwargs)


@register_model("ssen-baseline-lite", paper="SSEN (CVPR 2020), its baseline")
def ssen_baseline_lite(**kwargs: Any) -> SSENNet:
    """ssen-lite without the reference branch: the single-image baseline to compare ssen-lite with."""
    return build_variant(SSENNet, "ssen-baseline-lite", dict(_SSEN_LITE, use_reference=False), kwargs)


@register_model("ssen-self", paper="SSEN (CVPR 2020)")
def ssen_self(**kwargs: Any) -> SSENSelf:
    """SSEN self-similarity SR (CVPR 2020), x4: RCAN with SSEN on the LR's own features; no reference."""
    return build_variant(SSENSelf, "ssen-self", {}, kwargs)


@register_model("ssen-self-lite", paper="SSEN (CVPR 2020)")
def ssen_self_lite(**kwargs: Any) -> SSENSelf:
    """ssen-self with 32 channels and 4 groups of 4 RCABs, sized for training on a CPU."""
    return build_variant(SSENSelf, "ssen-self-lite", _SSEN_SELF_LITE, kwargs)


@register_model("rcan", paper="RCAN (ECCV 2018)")
def rcan(**kwargs: Any) -> SSENSelf:
    """RCAN (ECCV 2018), x4, single-image: the baseline of ssen-self."""
    return build_variant(SSENSelf, "rcan", dict(use_ssen=False), kwargs)


@register_model("rcan-lite", paper="RCAN (ECCV 2018)")
def rcan_lite(**kwargs: Any) -> SSENSelf:
    """ssen-self-lite without SSEN: the RCAN baseline to compare ssen-self-lite with."""
    return build_variant(SSENSelf, "rcan-lite", dict(_SSEN_SELF_LITE, use_ssen=False), kwargs)
