"""Training C2-Matching's contrastive feature extractor (the one AMSA reuses): ``task: contrastive_teacher``
(stage 1) and ``task: contrastive_student`` (stage 2).

C2-Matching (official ``yumingj/C2-Matching``: ``teacher_contras_model.py``, ``student_contras_distillation_
model.py``, ``data/contras_dataset.py``, ``options/train/stage{1,2}_*.yml``) trains a two-branch VGG16
extractor, cut at conv3_1, ``net(input, reference) -> (input features, reference features)`` at 1/4 of the
image size, on pairs with a known dense correspondence:

- **pairs**: each 160x160 CUFED input (flipped / rotated) and a random homography of itself, made by moving
  each corner of a square by up to 10 pixels (integers with a random sign); the correspondence of every
  input pixel is known. ``contrastive.pairs: warp`` does this to each HR training crop (the corners of the
  crop itself are moved, uniformly in ``[-perturb, perturb]``; bilinear resampling with zero fill, as
  ``cv2.warpPerspective``). ``pairs: synthetic`` uses the ``open-synthetic`` dataset's own reference (a
  rotated, zoomed, photometrically jittered second view) and derives the correspondence from its known warp
  (:meth:`refsr.data.synthetic.SyntheticRefPairs.params`).
- **stage 1, teacher**: both branches see HR images (``net(HR, Ref)``); loss: the hardest-negative triplet
  margin loss (:func:`refsr.losses.correspondence_contrastive_loss`, margin 1, safe radius 4); Adam lr 1e-3,
  batch 8, 5,000 iterations, ImageNet VGG16 initialisation.
- **stage 2, student**: the input branch sees the bicubic ×4 LR↑ (PIL ÷4 then ×4: ``lr_up``), the teacher
  (frozen, stage 1's weights) sees HR; loss: the triplet loss on the student's features ``+ 15 ×`` the
  distillation KL (:func:`refsr.losses.correspondence_distillation_loss`, temperature 0.15); Adam lr 1e-3,
  batch 8, 75,000 iterations with the lr ×0.1 at 72,545; the student also starts from ImageNet VGG16.

The extractor is ``model.name``: a registered model, or ``module:attribute`` of a class or builder
(``refsr.models.contrastive_extractor:ContrastiveExtractor``, C2's ``ContrasExtractorSep``); its
``forward(input, ref)`` returns the two feature maps (a pair, or C2's ``{"dense_features1",
"dense_features2"}``). ``model.init`` is torchvision's ``vgg16-397923af.pth`` (``features.N.weight``:
copied into both branches' convolutions in order, see :func:`load_vgg16_features`) or a whole extractor
state_dict (C2's ``feature_extraction.pth`` layout, or this module's checkpoints).

The one training loop (:mod:`refsr.train.loop`) runs it like any task: exact resume, lr schedule,
mixed precision, checkpoints, the time budget, the NaN stop, ``torchrun``. Not here: validation
(``data.val`` must be null; the official code reports the validation loss only), EMA.

The run's ``checkpoints/last/model.safetensors`` is the extractor: the student stage's
``contrastive.teacher`` is the teacher run's file, and AMSA's restoration stage loads the student's.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from refsr import losses as L
from refsr.data.standard import seeded_generator
from refsr.data.synthetic import SyntheticRefPairs
from refsr.errors import RefsrError
from refsr.hub import create_model
from refsr.imresize import imresize
from refsr.train import builders
from refsr.train.config import resolve_target
from refsr.train.distributed import DistContext
from refsr.train.schema import Config, ContrastiveLossConfig, DistillationLossConfig
from refsr.train.task import MicroBatchResult, Task
from refsr.weights_io import load_state_dict, read_checkpoint

__all__ = [
    "random_homography",
    "warp_with_homography",
    "synthetic_correspondence",
    "CorrespondencePairs",
    "load_vgg16_features",
    "build_extractor",
    "extractor_features",
    "ContrastiveTask",
]

# A stream number of its own for the warp of each sample (refsr.data.standard uses 1-3).
_STREAM_WARP = 11
_TORCHVISION_CONV = re.compile(r"^(?:module\.)?features\.(\d+)\.weight$")


# ---------------------------------------------------------------------------------------- geometry
def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography taking the four points ``src`` (4, 2) to ``dst`` (4, 2) (direct linear solve)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def random_homography(height: int, width: int, perturb: float, generator: torch.Generator) -> np.ndarray:
    """A homography that moves each corner of an ``height × width`` image by up to ``perturb`` pixels.

    Returns:
        ``(3, 3)`` float64 ``H`` taking *reference* pixel coordinates (x, y, 1) to *image* coordinates: the
        reference is ``ref(q) = image(H q)`` (pixel centres at integers).
    """
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    moves = (torch.rand(4, 2, generator=generator, dtype=torch.float64).numpy() * 2 - 1) * perturb
    return _homography(corners, corners + moves)


def _apply(h: np.ndarray | torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` (x, y) points through the homography ``h``."""
    hh = torch.as_tensor(h, dtype=torch.float64)
    p = points.to(torch.float64) @ hh[:, :2].t() + hh[:, 2]
    return p[..., :2] / p[..., 2:3]


def _pixel_grid(height: int, width: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def warp_with_homography(image: torch.Tensor, h: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference ``ref(q) = image(H q)`` and, for every image pixel, its position in the reference.

    Args:
        image: ``(C, H, W)`` float (RGB in [0, 1]).
        h: ``(3, 3)`` reference-to-image homography (:func:`random_homography`).

    Returns:
        ``ref`` ``(C, H, W)`` (bilinear, zeros outside the image, as ``cv2.warpPerspective``) and ``coords``
        ``(H, W, 2)`` float32: the (x, y) of image pixel ``p`` in the reference, ``H^-1 p``.
    """
    _, height, width = image.shape
    grid = _pixel_grid(height, width)
    source = _apply(h, grid)  # where each reference pixel samples the image
    norm = torch.tensor([max(width - 1, 1), max(height - 1, 1)], dtype=torch.float64)
    sample_at = (source / norm * 2 - 1).to(image.dtype)
    ref = torch.nn.functional.grid_sample(image[None], sample_at[None], mode="bilinear", padding_mode="zeros",
                                          align_corners=True)[0]
    coords = _apply(np.linalg.inv(h), grid).to(torch.float32)
    return ref, coords


def synthetic_correspondence(dataset: Any, index: int) -> torch.Tensor:
    """For a :class:`~refsr.data.synthetic.SyntheticRefPairs` sample, the (x, y) position in its reference of
    every HR pixel, ``(P, P, 2)`` float32 (from the sample's :class:`~refsr.data.synthetic.WarpParams`; the
    reference's flip included; positions outside the reference are returned as they are)."""
    p = dataset.params(index)
    side, patch = dataset.config.ref_side, dataset.config.patch
    photo_to_ref = np.linalg.inv(p.ref_to_photo(side))
    grid = _pixel_grid(patch, patch) + torch.tensor(p.target_xy, dtype=torch.float64)
    coords = _apply(photo_to_ref, grid)
    if p.flip:
        coords[..., 0] = side - 1 - coords[..., 0]
    return coords.to(torch.float32)


class CorrespondencePairs(Dataset):
    """Training samples with a known correspondence: ``hr``, ``lr``, ``lr_up`` (PIL-bicubic ×scale of ``lr``),
    ``ref`` and ``coords`` ``(H, W, 2)`` (each HR pixel's (x, y) in ``ref``); all images ``(3, ·, ·)`` float32
    RGB in [0, 1].

    Args:
        base: the training set (:class:`refsr.train.builders.TrainingSet`: sources, crop, augmentation).
        pairs: ``"warp"`` (the reference is a random homography of ``hr``, drawn from ``(seed, epoch, index)``)
            or ``"synthetic"`` (every source an ``open-synthetic`` dataset, no crop and no augmentation: its
            reference is kept and matched through its warp).
        perturb: ``warp``: the largest corner move, pixels.
        seed: the run's seed.
    """

    def __init__(self, base: builders.TrainingSet, *, pairs: str, perturb: float, seed: int) -> None:
        if pairs == "synthetic":
            if not all(isinstance(s, SyntheticRefPairs) for s in base.sources):
                raise RefsrError("contrastive.pairs: synthetic needs every data.train source to be open-synthetic")
            if base.transforms(0) is not None or base.transforms(10**9) is not None:
                raise RefsrError("contrastive.pairs: synthetic needs data.train.crop: null and augment: {name: none}"
                                 " (a crop or a flip would break the known correspondence)")
        self.base, self.pairs, self.perturb, self.seed = base, pairs, float(perturb), int(seed)
        self.sizes = base.sizes
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        hr = sample["hr"]
        if self.pairs == "warp":
            g = seeded_generator(self.seed, _STREAM_WARP, self.epoch, index)
            h = random_homography(hr.shape[-2], hr.shape[-1], self.perturb, g)
            ref, coords = warp_with_homography(hr, h)
        else:
            which = bisect.bisect_right(self.base.offsets, index) - 1
            coords = synthetic_correspondence(self.base.sources[which], index - self.base.offsets[which])
            ref = sample["ref"]
        # LR↑ as the official data makes it: PIL bicubic up of the 8-bit LR.
        lr8 = (sample["lr"] * 255).round().clamp(0, 255).to(torch.uint8)
        lr_up = imresize(lr8, size=tuple(hr.shape[-2:]), kernel="pil").to(torch.float32) / 255
        return {"hr": hr, "lr": sample["lr"], "lr_up": lr_up, "ref": ref, "coords": coords,
                "name": str(sample.get("name", ""))}


# ------------------------------------------------------------------------------------------- network
def load_vgg16_features(extractor: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "VGG16") -> None:
    """Copy torchvision VGG16 convolutions (``features.N.weight`` / ``.bias``) into ``extractor``.

    Every branch of the extractor (a run of ``nn.Conv2d`` modules that starts with one taking 3 channels)
    receives VGG16's first convolutions in order (conv1_1, conv1_2, conv2_1, ...). Shapes must match.
    """
    indices = sorted(int(m.group(1)) for key in state if (m := _TORCHVISION_CONV.match(key)))
    prefix = "module." if any(k.startswith("module.features.") for k in state) else ""
    vgg = [(state[f"{prefix}features.{i}.weight"], state.get(f"{prefix}features.{i}.bias")) for i in indices]
    convs = [m for m in extractor.modules() if isinstance(m, nn.Conv2d)]
    if not convs or convs[0].in_channels != 3:
        raise RefsrError(f"{source}: the extractor's first convolution does not take RGB images")
    position = 0
    with torch.no_grad():
        for conv in convs:
            position = 0 if conv.in_channels == 3 else position + 1
            if position >= len(vgg):
                raise RefsrError(f"{source}: holds {len(vgg)} convolutions; the extractor needs more")
            weight, bias = vgg[position]
            if weight.shape != conv.weight.shape or (conv.bias is not None and bias is None):
                raise RefsrError(f"{source}: VGG16 convolution {position} is {tuple(weight.shape)}, the "
                                 f"extractor's is {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
            if conv.bias is not None:
                conv.bias.copy_(bias)


def _load_init(extractor: nn.Module, path: str, what: str) -> None:
    state = read_checkpoint(Path(path).expanduser())
    if any(_TORCHVISION_CONV.match(k) for k in state):
        load_vgg16_features(extractor, state, source=path)
        return
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    loader = getattr(extractor, "load_weights", None)
    if callable(loader):  # refsr's ContrastiveExtractor also reads C2-Matching's feature_extraction.pth layout
        try:
            loader(state)
        except RefsrError as exc:
            raise RefsrError(f"{what} {path}: {exc}") from None
        return
    load_state_dict(extractor, state, source=f"{what} {path}")


def build_extractor(cfg: Config, *, init: str | None) -> nn.Module:
    """The extractor ``cfg.model`` names, initialised under ``cfg.seed``, with weights from ``init``."""
    torch.manual_seed(cfg.seed)
    name = cfg.model.name
    try:
        if ":" in name:
            net = resolve_target(name, "model.name")(**cfg.model.overrides)
        else:
            net = create_model(name, weights=None, **cfg.model.overrides)
    except RefsrError as exc:
        raise RefsrError(f"model: {exc}") from None
    if not isinstance(net, nn.Module):
        raise RefsrError(f"model.name: {name!r} did not build an nn.Module")
    if init is not None and init != "default":
        _load_init(net, init, "the weights")
    return net


def extractor_features(net: nn.Module, image: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``net(image, ref)`` as a pair of feature maps (accepts C2's ``dense_features1/2`` dict too)."""
    out = net(image, ref)
    if isinstance(out, Mapping):
        out = (out["dense_features1"], out["dense_features2"])
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise RefsrError("the extractor must return (input features, reference features)")
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- task
class ContrastiveTask(Task):
    """Stage 1 (``contrastive_teacher``: both branches see HR) or stage 2 (``contrastive_student``: the input
    branch sees LR↑, distilled from the frozen teacher on HR); see the module docstring."""

    def __init__(self, cfg: Config, ctx: DistContext) -> None:
        super().__init__(cfg, ctx)
        self.model = build_extractor(cfg, init=cfg.model.init).to(ctx.device).train()
        self.teacher = None
        if cfg.task == "contrastive_student":
            teacher = build_extractor(cfg, init=None)
            _load_init(teacher, str(cfg.contrastive.teacher), "the teacher's weights (contrastive.teacher)")
            self.teacher = teacher.to(ctx.device).requires_grad_(False).eval()
        self.optimizer = builders.build_optimizer(self.model, cfg.optimizer)
        # The extractor works at x4: C2-Matching's LR↑ is the x4 bicubic of the x4-down LR.
        base = builders.build_training_set(cfg, 4)
        self.dataset = CorrespondencePairs(base, pairs=cfg.contrastive.pairs, perturb=cfg.contrastive.perturb,
                                           seed=cfg.seed)
        self.collate = builders.collate_samples
        self.micro_batch = cfg.train.batch

    def losses(self, net: nn.Module, batch: Mapping[str, Any], *, iteration: int,
               want_images: bool) -> MicroBatchResult:
        cfg = self.cfg
        image = batch["hr"] if cfg.task == "contrastive_teacher" else batch["lr_up"]
        feat_a, feat_b = extractor_features(net, image, batch["ref"])
        border = cfg.contrastive.border
        terms = []
        for loss in cfg.losses:
            if iteration < loss.start_iteration:
                continue
            try:
                if isinstance(loss, ContrastiveLossConfig):
                    value = L.correspondence_contrastive_loss(
                        feat_a, feat_b, batch["coords"], margin=loss.margin, safe_radius=loss.safe_radius,
                        border=border, min_matches=loss.min_matches)
                else:
                    assert isinstance(loss, DistillationLossConfig) and self.teacher is not None
                    with torch.no_grad():
                        teacher_a, teacher_b = extractor_features(self.teacher, batch["hr"], batch["ref"])
                    value = L.correspondence_distillation_loss(
                        feat_a, feat_b, teacher_a, teacher_b, batch["coords"], temperature=loss.temperature,
                        border=border, min_matches=loss.min_matches)
            except RefsrError as exc:
                raise RefsrError(f"iteration {iteration + 1}: {loss.name} loss: {exc}") from None
            terms.append((loss.name, value * loss.weight))
        return MicroBatchResult(terms)
