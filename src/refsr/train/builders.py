"""From config names to objects: the training and validation sets (from :mod:`refsr.data.registry`, with
augmentation), the model, losses, optimisers and the lr schedule."""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from refsr import losses as L
from refsr.data import augment as aug
from refsr.data.clips import ClipFrames
from refsr.data.degrade import RealDegradation
from refsr.data.registry import build_dataset
from refsr.data.standard import seeded_generator
from refsr.errors import RefsrError
from refsr.hub import create_model
from refsr.metrics import get_protocol
from refsr.train.schema import (
    AdversarialLossConfig,
    CharbonnierLossConfig,
    Config,
    ContrastiveLossConfig,
    DistillationLossConfig,
    L1LossConfig,
    MSELossConfig,
    OptimizerConfig,
    PerceptualLossConfig,
    ScheduleConfig,
    TrainDataConfig,
    ValConfig,
)

__all__ = [
    "TrainingSet",
    "build_training_set",
    "build_val_set",
    "collate_samples",
    "build_model",
    "call_model",
    "LossTerm",
    "build_loss_terms",
    "build_discriminator",
    "build_adversarial_loss",
    "build_optimizer",
    "lr_factor",
    "apply_lr",
]

# The data module's stream number for training augmentation (refsr.data.standard.STREAM_TRANSFORM).
_STREAM_TRANSFORM = 3


def _augment_pipeline(cfg: TrainDataConfig, scale: int, geometric: bool) -> Callable | None:
    steps: list[nn.Module] = []
    # An aligned reference crop is taken first: the augmentation's independent quarter-turns would make a
    # non-square reference frame no longer line up with the input. The square crops are then augmented as
    # MASA augments its 160x160 patches.
    aligned_first = cfg.crop is not None and cfg.crop_ref == "aligned"
    if aligned_first:
        steps.append(aug.PairedRandomCrop(cfg.crop // scale, ref="aligned"))
    a = cfg.augment
    if a.name == "masa":
        steps.append(aug.masa_augment(swap_prob=a.swap_prob, jitter=a.jitter, geometric=geometric))
    elif a.name == "c2" and geometric:
        steps.append(aug.c2_augment())
    elif a.name == "ttsr" and geometric:
        steps.append(aug.ttsr_augment())
    # Crop after the augmentation: MASA's role swap exchanges input and reference first.
    if cfg.crop is not None and not aligned_first:
        steps.append(aug.PairedRandomCrop(cfg.crop // scale, ref=cfg.crop_ref))
    # The real-world LR is made last, from the final HR crop, so that LR and HR stay aligned.
    if cfg.degradation == "real":
        ref_jpeg = cfg.ref_jpeg_range if cfg.ref_degradation == "jpeg" else None
        steps.append(aug.RandomRealDegradation(RealDegradation.from_options(cfg.degradation_options),
                                               ref_jpeg=ref_jpeg))
    return aug.Compose(*steps) if steps else None


class TrainingSet(Dataset):
    """Training sources concatenated; each sample augmented and cropped with a generator seeded by
    ``(seed, stream, epoch, index)``, so the same seed gives the same samples in any worker, in any order.

    Args:
        sources: the datasets (each returns dicts of ``(3, H, W)`` float32 RGB tensors in [0, 1]).
        transforms: ``transforms(epoch)`` is the sample transform of that epoch (or None).
        seed: the run's seed.
    """

    def __init__(self, sources: Sequence[Dataset], transforms: Callable[[int], Callable | None], seed: int) -> None:
        self.sources = list(sources)
        self.sizes = [len(s) for s in self.sources]  # type: ignore[arg-type]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.transforms = transforms
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.offsets[-1]

    def preload(self) -> None:
        """Decode every source's images now, for the sources that keep them (``keep_decoded``)."""
        for source in self.sources:
            if hasattr(source, "preload"):
                source.preload()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        which = bisect.bisect_right(self.offsets, index) - 1
        sample = self.sources[which][index - self.offsets[which]]
        transform = self.transforms(self.epoch)
        if transform is not None:
            sample = transform(sample, generator=seeded_generator(self.seed, _STREAM_TRANSFORM, self.epoch, index))
        return sample


def build_training_set(cfg: Config, scale: int) -> TrainingSet:
    """The training set of ``cfg.data.train``; the model's ``scale`` sets the datasets' and the crop's."""
    data = cfg.data.train
    if data.crop is not None and data.crop % scale:
        raise RefsrError(f"data.train.crop: {data.crop} must divide by the model's scale {scale}")
    sources = [
        build_dataset(s.dataset, s.root, s.options, seed=cfg.seed, scale=scale, protocol=data.protocol,
                      path=f"data.train.sources[{i}]", keep_decoded=True)
        for i, s in enumerate(data.sources)
    ]
    for i, source in enumerate(sources):
        if len(source) == 0:  # type: ignore[arg-type]
            raise RefsrError(f"data.train.sources[{i}]: the dataset is empty")
        if isinstance(source, ClipFrames) and source.max_chain:
            _check_chain_augmentation(data, f"data.train.sources[{i}]")
    transforms = EpochTransforms(_augment_pipeline(data, scale, geometric=False),
                                 _augment_pipeline(data, scale, geometric=True), data.augment.geometric_from_epoch)
    return TrainingSet(sources, transforms, cfg.seed)


def _check_chain_augmentation(data: TrainDataConfig, path: str) -> None:
    """Chains of LR frames follow their input through crops and flips, not through what remakes or exchanges
    one frame alone: MASA's role swap and brightness jitter, or a real degradation."""
    a = data.augment
    if (a.name == "masa" and (a.swap_prob > 0 or a.jitter)) or data.degradation == "real":
        raise RefsrError(f"{path}: its samples carry chains of LR frames (max_chain > 0), which a role swap, "
                         "brightness jitter or real degradation would leave behind; set data.train.augment to "
                         "{name: masa, swap_prob: 0, jitter: false} or {name: none}, degradation: bicubic, or "
                         "max_chain: 0")


@dataclass
class EpochTransforms:
    """The sample transform of an epoch: flips and rotations only from ``geometric_from`` on (MASA's warm-up).
    A class rather than a closure, so that DataLoader workers started with ``spawn`` can unpickle it."""

    without_geometric: Callable | None
    with_geometric: Callable | None
    geometric_from: int | None

    def __call__(self, epoch: int) -> Callable | None:
        if self.geometric_from is not None and epoch >= self.geometric_from:
            return self.with_geometric
        return self.without_geometric


def build_val_set(val: ValConfig, *, seed: int, scale: int) -> Dataset:
    try:
        get_protocol(val.protocol)
    except RefsrError as exc:
        raise RefsrError(f"data.val.protocol: {exc}") from None
    dataset_protocol = val.protocol if val.protocol in ("masa", "c2", "amsa", "ttsr") else None
    ds = build_dataset(val.dataset, val.root, val.options, seed=seed, scale=scale, path="data.val",
                       protocol=dataset_protocol)
    if len(ds) == 0:  # type: ignore[arg-type]
        raise RefsrError("data.val: the validation set is empty")
    return ds


_IMAGE_KEYS = ("lr", "ref", "hr", "ref_down", "lr_up", "coords", "chain_lr", "chain_length")
# Stacked when every sample has them: Ref↓, the contrastive tasks' LR↑ and (H, W, 2) correspondences, and the
# chains of LR frames of open-clips (refsr.data.clips.ClipFrames) with their lengths.
_OPTIONAL_KEYS = ("ref_down", "lr_up", "coords", "chain_lr", "chain_length")


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack ``lr``, ``ref``, ``hr`` (and ``ref_down``, ``lr_up``, ``coords``, ``chain_lr``, ``chain_length``
    when every sample has them) into batches ``(B, ...)``."""
    out: dict[str, Any] = {}
    for key in _IMAGE_KEYS:
        if not all(key in s for s in samples):
            if key not in _OPTIONAL_KEYS:
                raise RefsrError(f"a training sample has no {key!r}")
            continue
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) > 1:
            raise RefsrError(
                f"training samples differ in size ({key}: {', '.join(map(str, sorted(shapes)))}); "
                "set data.train.crop to crop them to one size"
            )
        out[key] = torch.stack([s[key] for s in samples])
    out["name"] = [str(s.get("name", "")) for s in samples]
    return out


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: Config) -> nn.Module:
    """The model of ``cfg.model``, initialised under ``cfg.seed`` (same weights on every process)."""
    torch.manual_seed(cfg.seed)
    init = cfg.model.init
    if init is not None and init != "default":
        init = str(Path(init).expanduser())
    try:
        model = create_model(cfg.model.name, weights=init, **cfg.model.overrides)
    except RefsrError as exc:
        raise RefsrError(f"model: {exc}") from None
    return model.train()


def call_model(model: nn.Module, batch: Mapping[str, torch.Tensor], *, takes_ref_down: bool) -> torch.Tensor:
    """``model(lr, ref)``, with ``ref_down=`` when the model takes it and the batch has it."""
    if takes_ref_down and "ref_down" in batch:
        return model(batch["lr"], batch["ref"], ref_down=batch["ref_down"])
    return model(batch["lr"], batch["ref"])


# ----------------------------------------------------------------------------------------------- losses
@dataclass
class LossTerm:
    """One weighted term of the generator's loss: ``weight * fn(sr, hr)``, used from ``start`` on."""

    name: str
    weight: float
    start: int
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss_terms(cfg: Config, device: torch.device) -> list[LossTerm]:
    """The generator's loss terms except the adversarial one (see :func:`build_discriminator`)."""
    terms = []
    for i, loss in enumerate(cfg.losses):
        try:
            if isinstance(loss, L1LossConfig):
                fn: Callable = L.l1_loss
            elif isinstance(loss, CharbonnierLossConfig):
                fn = L.CharbonnierLoss(eps=loss.eps)
            elif isinstance(loss, MSELossConfig):
                fn = nn.functional.mse_loss
            elif isinstance(loss, PerceptualLossConfig):
                fn = L.PerceptualLoss(str(Path(loss.vgg_weights).expanduser()), layer=loss.layer,
                                      criterion=loss.criterion).to(device)
            elif isinstance(loss, (AdversarialLossConfig, ContrastiveLossConfig, DistillationLossConfig)):
                continue  # the adversarial term has its own parts; the contrastive ones their own task
            else:  # pragma: no cover - the config parser admits no other kind
                raise RefsrError(f"unknown loss {loss!r}")
        except RefsrError as exc:
            raise RefsrError(f"losses[{i}]: {exc}") from None
        terms.append(LossTerm(loss.name, loss.weight, loss.start_iteration, fn))
    return terms


def build_discriminator(cfg: AdversarialLossConfig, seed: int) -> nn.Module:
    """The discriminator ``cfg.discriminator`` names, initialised under ``seed + 1``."""
    d = cfg.discriminator
    torch.manual_seed(seed + 1)  # its own stream, so adding a GAN never changes the generator's init
    try:
        if d.name == "image":
            net: nn.Module = L.ImageDiscriminator(nf=d.width, sigmoid=d.sigmoid)
        elif d.name == "patchgan":
            net = L.PatchGANDiscriminator(nf=d.width, n_layers=d.n_layers, norm=d.norm)
        else:
            net = L.VGGStyleDiscriminator(nf=d.width, input_size=d.input_size)
    except RefsrError as exc:
        raise RefsrError(f"losses: adversarial: {exc}") from None
    return net.train()


def build_adversarial_loss(cfg: AdversarialLossConfig, discriminator: nn.Module) -> nn.Module:
    """The loss pair of ``cfg.kind`` around ``discriminator``: a module with ``generator_loss(sr, hr)`` and
    ``discriminator_loss(sr, hr)``."""
    if cfg.kind == "wgan_gp":
        return L.WGANGPLoss(discriminator, penalty_weight=cfg.gradient_penalty)
    if cfg.kind == "vanilla":
        return L.StandardAdversarialLoss(discriminator)
    return L.RelativisticAdversarialLoss(discriminator)


# -------------------------------------------------------------------------------------------- optimiser
def build_optimizer(model: nn.Module, cfg: OptimizerConfig, *, path: str = "optimizer") -> torch.optim.Optimizer:
    """Adam or AdamW over ``model``'s trainable parameters, split into the configured groups.

    Each parameter goes to the first group whose ``match`` it matches (``re.search`` on its name), the rest
    to the default group. Every group carries ``name`` and ``initial_lr`` (the lr before the schedule).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise RefsrError(f"{path}: the model has no trainable parameters")
    patterns = [re.compile(g.match) for g in cfg.param_groups]
    members: list[list[nn.Parameter]] = [[] for _ in cfg.param_groups]
    rest: list[nn.Parameter] = []
    for name, p in named:
        for i, pattern in enumerate(patterns):
            if pattern.search(name):
                members[i].append(p)
                break
        else:
            rest.append(p)
    groups = []
    for i, (group, params) in enumerate(zip(cfg.param_groups, members)):
        if not params:
            raise RefsrError(f"{path}.param_groups[{i}].match: {group.match!r} matches no trainable parameter")
        lr = cfg.lr if group.lr is None else group.lr
        wd = cfg.weight_decay if group.weight_decay is None else group.weight_decay
        groups.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd, "name": group.match})
    if rest:
        groups.append({"params": rest, "lr": cfg.lr, "initial_lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "name": "default"})
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------------------------- schedule
def lr_factor(
    cfg: ScheduleConfig, *, iteration: int, epoch: int, total_units: int | None, base_lr: float
) -> float:
    """The factor on every group's lr at ``iteration`` (optimiser steps done) in ``epoch``.

    - cosine: ``eta + (1 - eta) * (1 + cos(pi * u / t_max)) / 2`` with ``u = min(unit + offset, t_max)`` and
      ``eta = eta_min / base_lr`` (groups with their own lr scale ``eta_min`` in proportion), as
      ``CosineAnnealingLR`` within its first half-period;
    - multistep: ``gamma ** (number of milestones <= unit + offset)``, as ``MultiStepLR``;
    - warm-up: times ``(iteration + 1) / warmup_iterations`` during the first ``warmup_iterations``.
    """
    unit = (iteration if cfg.unit == "iteration" else epoch) + cfg.offset
    if cfg.name == "cosine":
        t_max = cfg.t_max if cfg.t_max is not None else total_units
        if not t_max:
            raise RefsrError("schedule.t_max: cannot tell the run's length; set it")
        eta = cfg.eta_min / base_lr if base_lr > 0 else 0.0
        u = min(unit, t_max)
        factor = eta + (1.0 - eta) * (1.0 + math.cos(math.pi * u / t_max)) / 2.0
    elif cfg.name == "multistep":
        factor = cfg.gamma ** bisect.bisect_right(cfg.milestones, unit)
    else:
        factor = 1.0
    if cfg.warmup_iterations and iteration < cfg.warmup_iterations:
        factor *= (iteration + 1) / cfg.warmup_iterations
    return factor


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to its ``initial_lr`` times ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
