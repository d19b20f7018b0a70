"""C2-Matching: contrastive correspondence and dynamic aggregation for reference-based super-resolution (x4).

Paper: Yuming Jiang, Kelvin C.K. Chan, Xintao Wang, Chen Change Loy, Ziwei Liu, "Robust Reference-based
Super-Resolution via C2-Matching", CVPR 2021.
Official code: https://github.com/yumingj/C2-Matching at commit 6d60149 (``mmsr/models/archs/
{ref_restoration_arch,corres_generation_arch,ref_map_util,contras_extractor_arch,vgg_arch}.py``,
``mmsr/models/ref_restoration_model.py``, ``mmsr/data/ref_cufed_dataset.py``, ``options/test/*.yml``).
Written from reading that code; the paper was not at hand, so where the two might differ this follows the
code. Its released checkpoints (``c2_matching_restoration_mse.pth`` / ``c2_matching_restoration.pth``,
``feature_extraction.pth``) load through :func:`convert_official_c2_matching`.

Pipeline (:class:`C2Matching`, one forward), as coded officially:

1. **One size.** The matching and the restoration need LR↑ and Ref of one size: the official test loader
   crops the HR and the Ref to multiples of 4 and zero-pads both (bottom/right) to their common size; the LR
   is made from the padded HR and the SR is cropped back. Here the LR and the Ref are zero-padded
   (bottom/right) to the working size (:meth:`C2Matching.working_size`) and the output is cropped back.
2. **Correspondence features** (:meth:`C2Matching.encode`): C2-Matching's contrastive extractor
   (:mod:`refsr.models.contrastive_extractor`, frozen): the LR enlarged x4 with PIL bicubic (8-bit) through
   the LR branch, the Ref through the Ref branch; 256 channels at 1/4 size.
3. **Matching** (:meth:`C2Matching.match`): both maps are L2-normalised per pixel, then every 3x3 patch of
   the LR map lying inside it is compared with every 3x3 patch lying inside the Ref map (``F.unfold``
   without padding), the Ref patches divided by their norm plus 1e-5; top-1
   (:func:`refsr.matching.dense.match_dense` with ``key_margin=1``). Per-pixel normalised features make
   every such patch's norm 3, so this argmax is the cosine's.
4. **Offsets** (:func:`refsr.models.amsa.match_offsets`): the match displacement as DCN offsets for the
   nine taps at relu3_1, and nearest x2 / x4 (magnitudes x2 / x4) at relu2_1 / relu1_1, with the official
   alignment (``index_to_flow`` pads the flow of the inside patches by 2 at the bottom/right and
   ``tensor_shift`` shifts one copy per tap).
5. **Textures** (:meth:`C2Matching.transfer`): frozen ImageNet VGG19 relu1_1, relu2_1, relu3_1 of the Ref
   (the official ``net_map.vgg``; weights from a file the user gives).
6. **Restoration** (C2's ``RestorationNet(ngf=64, n_blocks=16, groups=8)``, 8,865,547 parameters, which is
   :class:`refsr.models.amsa.RestorationNet` with ``prewarp=False``): content features (conv + LReLU(0.1) +
   16 ResBlocks); at relu3_1, relu2_1, relu1_1: two convs + LReLU on ``cat[x, texture]`` predict an offset
   residual and a mask for an 8-group DCN on the texture (offset = residual + match offsets, mask =
   sigmoid), LReLU, ``cat[x, aggregated]`` -> conv + LReLU -> 16 ResBlocks (+ x) -> conv, PixelShuffle x2,
   LReLU (relu3, relu2); then conv 64->32, LReLU, conv 32->3, plus the bilinear x4 LR (``align_corners=False``).
   Initialisation: every conv N(0, 0.02^2) with zero bias, DCN weights uniform in ±1/sqrt(9 C), the
   ``conv_offset_mask`` convs zero.

Evaluation (``refsr eval --protocol c2``): CUFED5 pairs with reference level 1, the size rule of step 1,
LR and Ref↓ with PIL bicubic; Y (BT.601, float) with a 4-pixel border crop. Images are RGB throughout
(``totensor(bgr2rgb=True)``), so nothing is flipped.

Where this differs from the official code (the outputs do not):

1. The matching runs in chunks of LR positions with the Ref patches normalised by ``max(norm, 1e-12)``
   (:func:`match_dense`) rather than ``norm + 1e-5``: the same argmax, as every patch norm is 3 (up to
   rounding; near-ties in float32 can go either way, as between any two implementations).
2. The LR is padded inside the model when the Ref is larger (the official loader pads the HR before making
   the LR); with the evaluation datasets (``protocol c2``) the two already have one size.

Training (official stage 3, ``stage3_restoration_mse.yml``): Adam lr 1e-4 with the ``offset`` convs at
1e-4 (relu1), 1e-5 (relu2, ``medium``) and 1e-6 (relu3, ``small``), batch 9, 160x160 crops, L1 (+ perceptual
and WGAN-GP for the GAN model); the extractor and the VGG stay frozen.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.matching.correspondence import Correspondence
from refsr.matching.dense import match_dense
from refsr.models._base import RefSRModel
from refsr.models._convert import check_keys, listing
from refsr.models._registry import build_variant, register_converter, register_model
from refsr.models._size import SizeRule
from refsr.models.amsa import (
    RestorationNet,
    load_frozen_parts,
    match_offsets,
    official_key,
    restoration_config,
)
from refsr.models.contrastive_extractor import (
    ContrastiveExtractor,
    WeightsArg,
    convert_official_contrastive_extractor,
)
from refsr.models.vgg import TEXTURE_LEVELS, VGG19Features

__all__ = [
    "C2Pipeline",
    "C2Matching",
    "c2_matching",
    "c2_matching_lite",
    "convert_official_c2_matching",
    "convert_checkpoint_files",
    "match_displacement",
    "KeyEntry",
    "KeyTable",
    "RESTORATION_PARAMETERS",
]

#: Parameters of the official ``RestorationNet(ngf=64, n_blocks=16, groups=8)``
#: (keys/C2Matching_RestorationNet.txt: 296 entries).
RESTORATION_PARAMETERS = 8_865_547

_SCALE = 4


def _pad_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad bottom/right to ``size`` (the official ``mmcv.impad``)."""
    return F.pad(image, (0, size[1] - image.shape[-1], 0, size[0] - image.shape[-2]))


def match_displacement(corr: Correspondence, dtype: torch.dtype) -> torch.Tensor:
    """``(N, 2, h, w)``: ``(dy, dx)`` from every query position to its match (query and key of one size), the
    form :func:`refsr.models.amsa.match_offsets` takes."""
    return corr.flow().flip(1).to(dtype)  # flow() is (dx, dy), whole numbers: exact in float32


class C2Pipeline(RefSRModel):
    """C2-Matching's pipeline without its restoration network: the sizes, the frozen contrastive and texture
    extractors and the matching (steps 1-5 of the module docstring). :class:`C2Matching` and
    :class:`refsr.models.datsr.DATSR` (built on C2-Matching's code) add their restoration networks through
    :meth:`match` (what the matching hands on) and :meth:`decode`.

    Args:
        match_max_bytes: working-memory budget of one chunk of the matching.
    """

    scale = _SCALE
    uses_ref = True
    #: The working size divides by this (relu3_1 is at 1/4).
    hr_multiple = _SCALE

    def __init__(self, *, match_max_bytes: int = 256 * 2**20) -> None:
        super().__init__()
        self.match_max_bytes = match_max_bytes
        self.correspondence_extractor = ContrastiveExtractor(trainable=False)
        self.texture_extractor = VGG19Features(tuple(name for name, _, _ in reversed(TEXTURE_LEVELS)))

    def train(self, mode: bool = True) -> "C2Pipeline":
        super().train(mode)
        # The frozen extractors stay in eval mode (no layer of theirs depends on it today; this keeps it so).
        self.correspondence_extractor.eval()
        self.texture_extractor.eval()
        return self

    # ------------------------------------------------------------------ sizes and inputs

    def working_size(self, lr_size: tuple[int, int], ref_size: tuple[int, int]) -> tuple[int, int]:
        """The HR size the pipeline runs at: 4x the LR, enlarged to hold the Ref, a multiple of
        :attr:`hr_multiple`."""
        def side(lr: int, ref: int) -> int:
            return -(-max(lr * _SCALE, ref) // self.hr_multiple) * self.hr_multiple

        return side(lr_size[0], ref_size[0]), side(lr_size[1], ref_size[1])

    def _check_inputs(self, lr: Any, ref: Any) -> None:
        name = type(self).__name__
        for role, x in (("lr", lr), ("ref", ref)):
            if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RefsrError(f"{name} needs {role} as a float (N, 3, H, W) RGB tensor; got {shape}")
        if ref.shape[0] != lr.shape[0]:
            raise RefsrError(f"lr and ref must hold the same number of images; got {lr.shape[0]} and {ref.shape[0]}")
        rule = self.size_rule
        h, w = lr.shape[-2:]
        if h % rule.lr_multiple or w % rule.lr_multiple or min(h, w) < rule.min_lr:
            raise RefsrError(f"{name} needs an LR of at least {rule.min_lr} pixels a side that divide by "
                             f"{rule.lr_multiple}; got {h}x{w}: pad it (refsr.upscale does)")
        if min(ref.shape[-2:]) < rule.min_ref:
            raise RefsrError(f"{name} needs a reference of at least {rule.min_ref} pixels a side; got "
                             f"{ref.shape[-2]}x{ref.shape[-1]}")

    # ------------------------------------------------------------------ stages

    def encode(self, lr: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive features of the PIL-bicubic LR↑ and of the Ref, both ``(N, 256, h, w)``.

        ``lr (N,3,h,w)`` and ``ref (N,3,4h,4w)`` at the working size."""
        h, w = lr.shape[-2:]
        lr8 = (lr.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        lr_up = imresize(lr8, size=(h * _SCALE, w * _SCALE), kernel="pil").to(lr.dtype) / 255
        with torch.no_grad():
            return self.correspondence_extractor(lr_up, ref)  # type: ignore[return-value]

    def correspond(self, feat_lr: torch.Tensor, feat_ref: torch.Tensor
                   ) -> tuple[Correspondence, torch.Tensor, torch.Tensor]:
        """The official matching (step 3): ``(correspondence, query, key)``, the last two the per-pixel
        L2-normalised maps it matched."""
        with torch.no_grad():
            query = F.normalize(feat_lr, dim=1)
            key = F.normalize(feat_ref, dim=1)
            corr = match_dense(query, key, patch_size=3, max_bytes=self.match_max_bytes, key_margin=1)
        return corr, query, key

    def match(self, feat_lr: torch.Tensor, feat_ref: torch.Tensor) -> Any:
        """What the restoration net needs of the matching; C2-Matching: the DCN offsets for relu3_1, relu2_1,
        relu1_1 (``(N,18,s*h,s*w)`` each)."""
        corr, _, _ = self.correspond(feat_lr, feat_ref)
        displacement = match_displacement(corr, feat_lr.dtype)
        return [match_offsets(displacement, s) for _, _, s in TEXTURE_LEVELS]

    def transfer(self, ref: torch.Tensor) -> list[torch.Tensor]:
        """VGG19 textures of the Ref: relu3_1 ``(N,256,h,w)``, relu2_1 ``(N,128,2h,2w)``, relu1_1 ``(N,64,4h,4w)``."""
        features = self.texture_extractor(ref)
        return [features[name] for name, _, _ in TEXTURE_LEVELS]

    def decode(self, lr: torch.Tensor, textures: Sequence[torch.Tensor], guidance: Any) -> torch.Tensor:
        """The restoration net: ``lr (N,3,h,w)``, the textures and :meth:`match`'s result -> ``(N,3,4h,4w)``."""
        raise NotImplementedError

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Super-resolve ``lr`` x4 with textures from ``ref``.

        Args:
            lr: ``(N,3,h,w)`` RGB float in [0, 1].
            ref: ``(N,3,H,W)`` RGB float in [0, 1], any size. Both are zero-padded (bottom/right) to
                :meth:`working_size` (LR to a quarter of it), as the official test loader pads its pairs.

        Returns:
            ``(N,3,4h,4w)`` RGB float (not clamped).
        """
        self._check_inputs(lr, ref)
        h, w = lr.shape[-2:]
        size = self.working_size((h, w), tuple(ref.shape[-2:]))
        lr_work = _pad_to(lr, (size[0] // _SCALE, size[1] // _SCALE))
        ref_work = _pad_to(ref.to(lr.dtype), size)
        guidance = self.match(*self.encode(lr_work, ref_work))
        sr = self.decode(lr_work, self.transfer(ref_work), guidance)
        return sr[..., : h * _SCALE, : w * _SCALE]

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in getattr(self, "config", {}).items())


class C2Matching(C2Pipeline):
    """C2-Matching (CVPR 2021), x4. See the module docstring for the pipeline.

    Args:
        ngf: restoration channels (64).
        n_blocks: ResBlocks in the content extractor and at each texture level (16).
        groups: deformable groups of the aggregation DCNs (8).
        match_max_bytes: working-memory budget of one chunk of the matching.

    The two extractors start random and frozen; :func:`c2_matching` loads ``feature_extraction.pth`` and
    ImageNet VGG19 weights into them when given.

    >>> C2Matching(ngf=4, n_blocks=0, groups=1).working_size((40, 48), (150, 100))
    (160, 192)
    """

    size_rule = SizeRule(lr_multiple=1, ref_multiple=_SCALE, min_lr=3, min_ref=3 * _SCALE, pad_mode="replicate")

    def __init__(self, *, ngf: int = 64, n_blocks: int = 16, groups: int = 8,
                 match_max_bytes: int = 256 * 2**20) -> None:
        super().__init__(match_max_bytes=match_max_bytes)
        self.config: dict[str, Any] = dict(ngf=ngf, n_blocks=n_blocks, groups=groups)
        self.restoration = RestorationNet(ngf, n_blocks, groups, prewarp=False)

    def decode(self, lr: torch.Tensor, textures: Sequence[torch.Tensor], guidance: Sequence[torch.Tensor]
               ) -> torch.Tensor:
        """The restoration net: ``lr (N,3,h,w)``, the textures and the offsets -> ``(N,3,4h,4w)``."""
        net = self.restoration
        return net.output(net.aggregate(net.content(lr), textures, guidance), lr)


# ---------------------------------------------------------------------------------------------------------
# Builders


@register_model("c2-matching", paper="C2-Matching (CVPR 2021)")
def c2_matching(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None, **kwargs: Any) -> C2Matching:
    """C2-Matching (CVPR 2021), x4: official architecture (restoration net 8,865,547 parameters).

    ``extractor_weights`` / ``vgg_weights`` load the frozen extractors (:func:`refsr.models.amsa.load_frozen_parts`).
    """
    return load_frozen_parts(build_variant(C2Matching, "c2-matching", {}, kwargs), extractor_weights, vgg_weights)


@register_model("c2-matching-lite", paper="C2-Matching (CVPR 2021)")
def c2_matching_lite(*, extractor_weights: WeightsArg = None, vgg_weights: WeightsArg = None,
                     **kwargs: Any) -> C2Matching:
    """C2-Matching (CVPR 2021) with 32 channels, 4 ResBlocks per stage and 4 DCN groups, for short training."""
    model_args = dict(ngf=32, n_blocks=4, groups=4)
    return load_frozen_parts(build_variant(C2Matching, "c2-matching-lite", model_args, kwargs), extractor_weights,
                             vgg_weights)


# ---------------------------------------------------------------------------------------------------------
# Official checkpoints

class KeyEntry(NamedTuple):
    """What converting does with one official key: rename it to ``ours`` (``None``: check it, then drop it)."""

    ours: str | None
    shape: tuple[int, ...]
    required: bool = True


#: ``{official key: entry}`` of one part of an official checkpoint.
KeyTable = dict[str, KeyEntry]


def _texture_table() -> KeyTable:
    """The official ``net_map.vgg`` (``VGGFeatureExtractor`` to relu3_1): convolutions and the ImageNet
    ``mean``/``std`` buffers."""
    with torch.device("meta"):
        vgg = VGG19Features(("relu3_1",))
    table = {f"vgg.vgg_net.{k}": KeyEntry(f"texture_extractor.{k}", tuple(v.shape))
             for k, v in vgg.state_dict().items()}
    table.update({f"vgg.{name}": KeyEntry(None, (1, 3, 1, 1), required=False) for name in ("mean", "std")})
    return table


def _c2_restoration_table(state_dict: Mapping[str, torch.Tensor]) -> KeyTable:
    with torch.device("meta"):
        net = RestorationNet(**restoration_config(state_dict), prewarp=False)
    return {official_key("restoration." + k): KeyEntry("restoration." + k, tuple(v.shape))
            for k, v in net.state_dict().items()}


def _convert_part(part: Mapping[str, torch.Tensor], table: KeyTable, what: str) -> dict[str, torch.Tensor]:
    required = {k: entry.shape for k, entry in table.items() if entry.required}
    optional = {k: entry.shape for k, entry in table.items() if not entry.required}
    check_keys(part, required, what=what, optional=optional)
    return {table[k].ours: v for k, v in part.items() if table[k].ours is not None}  # type: ignore[misc]


def convert_checkpoint_files(
    state_dict: Mapping[str, torch.Tensor],
    restoration_table: Callable[[Mapping[str, torch.Tensor]], KeyTable],
    method: str,
) -> dict[str, torch.Tensor]:
    """Convert the files of C2-Matching's code base (C2-Matching, DATSR), merged in one dict or alone.

    The parts: the restoration net (``content_extractor.*``, ``dyn_agg_restore.*``, mapped by
    ``restoration_table``), ``feature_extraction.pth`` (``feature_extraction_image{1,2}.*``,
    :func:`refsr.models.contrastive_extractor.convert_official_contrastive_extractor`) and the texture VGG
    of ``net_map`` (``vgg.*``). Each part present must be complete. ``module.`` prefixes are stripped.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    prefixes = {"restoration": ("content_extractor.", "dyn_agg_restore."),
                "extractor": ("feature_extraction_image",), "texture": ("vgg.",)}
    parts = {name: {k: v for k, v in state.items() if k.startswith(p)} for name, p in prefixes.items()}
    unknown = [k for k in state if not any(k in part for part in parts.values())]
    if unknown or not state:
        what = f"unexpected keys: {listing(unknown)}" if unknown else "the state_dict is empty"
        raise RefsrError(f"not an official {method} checkpoint (restoration net content_extractor.*/"
                         f"dyn_agg_restore.*, feature_extraction.pth feature_extraction_image*.*, or net_map "
                         f"vgg.*): {what}")
    converted: dict[str, torch.Tensor] = {}
    if parts["restoration"]:
        converted.update(_convert_part(parts["restoration"], restoration_table(parts["restoration"]),
                                       f"official {method} restoration net"))
    if parts["texture"]:
        converted.update(_convert_part(parts["texture"], _texture_table(),
                                       f"official {method} texture VGG (net_map.vgg)"))
    if parts["extractor"]:
        for key, value in convert_official_contrastive_extractor(parts["extractor"]).items():
            converted["correspondence_extractor." + key] = value
    return converted


@register_converter("c2-matching")
def convert_official_c2_matching(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official C2-Matching checkpoints onto :class:`C2Matching`.

    Accepts, merged in one dict or alone: the restoration net (``c2_matching_restoration_mse.pth`` /
    ``c2_matching_restoration.pth``: ``content_extractor.*``, ``dyn_agg_restore.*``), ``feature_extraction.pth``
    and the texture VGG of ``net_map`` (``vgg.vgg_net.conv*``; its ``vgg.mean``/``vgg.std`` buffers are
    dropped). The result holds the converted parts; ``load_state_dict(strict=True)`` needs all three, so
    merge the files (``refsr convert --from c2-matching A.pth B.pth C.pth``), or pass
    ``extractor_weights=`` / ``vgg_weights=`` to the builder and load the restoration part with
    ``strict=False``. Width, block count and groups are read from the checkpoint.

    Raises:
        RefsrError: unknown keys, or a part with missing or misshapen keys (official names listed).
    """
    return convert_checkpoint_files(state_dict, _c2_restoration_table, "C2-Matching")
