"""The training configuration: the one authoritative schema, as dataclasses, with validation.

A config is a YAML file (``configs/*.yaml``); :func:`load_config` reads it, applies ``--set key.path=value``
overrides and turns it into a :class:`Config`. Every mistake is a :class:`~refsr.errors.RefsrError` whose
message starts with the field's path, e.g. ``train.bacth: unknown field; did you mean batch?``, so that a bad
config fails before any work starts (model options and dataset options are checked against the model's and
the dataset's signatures here too).

The schema (``describe_schema()`` prints it with each field's meaning; ``configs/README.md`` explains it):

.. code-block:: yaml

    name: masa-rec            # run name; outputs go to runs/<name>/ unless --out is given
    task: restoration         # restoration | contrastive_teacher | contrastive_student (refsr.train.contrastive)
    seed: 0
    imports: []               # modules to import first (they may register models with refsr)
    model: {name: masa, overrides: {}, init: null}
    data:
      train:
        sources: [{dataset: cufed-train, root: ~/data/CUFED, weight: null, <dataset options>}]
        protocol: masa
        crop: null            # HR crop side (pixels), or null for whole images
        crop_ref: none        # none | independent | aligned
        augment: {name: masa, swap_prob: 0.5, jitter: true, geometric_from_epoch: 30}
        samples_per_epoch: null
        num_workers: 4
        degradation: bicubic  # bicubic | real (Real-ESRGAN-style blur/noise/JPEG, refsr.data.degrade)
        degradation_options: {}   # real: RealDegradation fields to change
        ref_degradation: none     # real: none | jpeg (the reference's own JPEG, quality in ref_jpeg_range)
        ref_jpeg_range: [70, 95]
      val: {dataset: cufed5, root: ~/data/CUFED, protocol: masa, interval: {epochs: 1}, from_epoch: 21,
            select: psnr, limit: null, images: 1, <dataset options>}
    losses: [{name: l1, weight: 1.0}]
    contrastive: {pairs: warp, perturb: 10, border: 10, teacher: null}   # the contrastive tasks only
    optimizer: {name: adam, lr: 1.0e-4, betas: [0.9, 0.999], eps: 1.0e-8, weight_decay: 0.0,
                param_groups: [{match: offset, lr: 1.0e-6}]}
    schedule: {name: cosine, unit: epoch, t_max: 500, eta_min: 0.0, offset: 1, warmup_iterations: 0}
    train: {batch: 9, epochs: 250, iterations: null, time_budget: null, grad_accumulation: 1,
            ema_decay: null, clip_grad_norm: null, checkpoint_interval: {epochs: 10}, log_interval: 10}

Numbers written like ``1e-4`` are strings to YAML 1.1 (it wants ``1.0e-4``); float fields accept them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

from refsr.errors import RefsrError

__all__ = [
    "Config",
    "ModelConfig",
    "SourceConfig",
    "AugmentConfig",
    "TrainDataConfig",
    "ValConfig",
    "DataConfig",
    "Interval",
    "LossConfig",
    "L1LossConfig",
    "CharbonnierLossConfig",
    "MSELossConfig",
    "PerceptualLossConfig",
    "AdversarialLossConfig",
    "DiscriminatorConfig",
    "ContrastiveLossConfig",
    "DistillationLossConfig",
    "ContrastiveConfig",
    "TASKS",
    "OptimizerConfig",
    "ParamGroupConfig",
    "ScheduleConfig",
    "TrainConfig",
    "LOSS_TYPES",
    "load_config",
    "parse_config",
    "read_config_file",
    "config_to_dict",
    "apply_overrides",
    "parse_duration",
    "describe_schema",
    "schema_paths",
    "import_modules",
    "resolve_target",
]


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


def _f(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, **extra: Any) -> Any:
    """A dataclass field with its documentation (and constraints such as ``min``) in the metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata=_doc(doc, **extra))
    return field(default=default, metadata=_doc(doc, **extra))


# ----------------------------------------------------------------------------------------------- schema
@dataclass(kw_only=True)
class ModelConfig:
    """The network to train."""

    name: str = _f(doc="a name from refsr.list_models(); for the contrastive tasks also module:attribute of a "
                       "feature extractor class or builder")
    overrides: dict[str, Any] = _f(factory=dict, doc="keyword options of the model's builder")
    init: str | None = _f(None, "weights to start from: a .safetensors file, an official .pth, or 'default'")


@dataclass(kw_only=True)
class SourceConfig:
    """One training dataset; any other key is an option of the dataset (checked against its signature)."""

    dataset: str = _f(doc="a dataset name (see refsr.train.builders.DATASETS)")
    root: str | None = _f(None, "the dataset's folder; null: refsr's data cache where the dataset has one")
    weight: float | None = _f(None, "share of each epoch's samples drawn from this source; null: its size",
                              min=0.0)
    options: dict[str, Any] = _f(factory=dict, doc="the dataset's own options", extra=True)


@dataclass(kw_only=True)
class AugmentConfig:
    """Random augmentation of training samples (``refsr.data.augment``)."""

    name: Literal["none", "masa", "c2", "ttsr"] = _f("none", "masa | c2 | ttsr | none")
    swap_prob: float = _f(0.5, "masa: probability of swapping the input and reference roles", min=0.0, max=1.0)
    jitter: bool = _f(True, "masa: brightness/contrast jitter of the input or the reference")
    geometric_from_epoch: int | None = _f(
        0, "flips and quarter turns from this epoch on (null: never); MASA warms up without them", min=0
    )

    def _check(self, path: str) -> None:
        masa_only = {"swap_prob", "jitter"} & _given(self)
        if self.name != "masa" and masa_only:
            key = sorted(masa_only)[0]
            raise RefsrError(f"{path}.{key}: only used by the masa augmentation, not {self.name!r}")


@dataclass(kw_only=True)
class TrainDataConfig:
    """Where training samples come from and how they are prepared."""

    sources: list[SourceConfig] = _f(doc="one or more datasets, mixed by weight")
    protocol: str | None = _f(None, "masa | c2 | amsa | ttsr: the size rule of sources that have one")
    crop: int | None = _f(None, "HR crop side in pixels (must divide by the model's scale); null: whole images",
                          min=1)
    crop_ref: Literal["none", "independent", "aligned"] = _f(
        "none", "reference crop: none (whole), independent (own random position), aligned (same position)"
    )
    augment: AugmentConfig = _f(factory=AugmentConfig, doc="random augmentation")
    samples_per_epoch: int | None = _f(None, "samples per epoch over all sources; null: their total size",
                                       min=1)
    num_workers: int = _f(0, "DataLoader worker processes per training process", min=0)
    degradation: Literal["bicubic", "real"] = _f(
        "bicubic", "how the LR is made: bicubic (the sources' PIL-bicubic LR, as the official repos) | real "
                   "(remade from the final HR crop by blur, noise and JPEG, twice: "
                   "refsr.data.degrade.RealDegradation)")
    degradation_options: dict[str, Any] = _f(
        factory=dict, doc="real: RealDegradation options to change from Real-ESRGAN's, e.g. "
                          "{second: {jpeg_range: [50, 95]}}")
    ref_degradation: Literal["none", "jpeg"] = _f(
        "none", "real: the reference left clean (none) or given its own JPEG compression (jpeg)")
    ref_jpeg_range: tuple[int, int] = _f((70, 95), "ref_degradation jpeg: the JPEG quality range, drawn "
                                                   "uniformly")

    def _check(self, path: str) -> None:
        self._check_degradation(path)
        if not self.sources:
            raise RefsrError(f"{path}.sources: give at least one dataset")
        given = [s.weight is not None for s in self.sources]
        if any(given) and not all(given):
            raise RefsrError(f"{path}.sources: give a weight to every source or to none")
        if all(given) and sum(s.weight for s in self.sources) <= 0:  # type: ignore[misc]
            raise RefsrError(f"{path}.sources: the weights must not all be zero")
        if self.crop is None and self.crop_ref != "none":
            raise RefsrError(f"{path}.crop_ref: needs data.train.crop")

    def _check_degradation(self, path: str) -> None:
        if self.degradation != "real":
            for key in ("degradation_options", "ref_degradation", "ref_jpeg_range"):
                if key in _given(self):
                    raise RefsrError(f"{path}.{key}: only used with degradation: real")
            return
        from refsr.data.degrade import RealDegradation

        try:
            RealDegradation.from_options(self.degradation_options)
        except RefsrError as exc:
            raise RefsrError(f"{path}.degradation_options.{exc}") from None
        lo, hi = self.ref_jpeg_range
        if not 1 <= lo <= hi <= 100:
            raise RefsrError(f"{path}.ref_jpeg_range: JPEG qualities within 1..100, low <= high, "
                             f"got [{lo}, {hi}]")
        if self.ref_degradation != "jpeg" and "ref_jpeg_range" in _given(self):
            raise RefsrError(f"{path}.ref_jpeg_range: only used with ref_degradation: jpeg")


@dataclass(kw_only=True)
class Interval:
    """Every so many iterations or epochs; a bare number means iterations."""

    iterations: int | None = _f(None, "every this many iterations", min=1)
    epochs: int | None = _f(None, "every this many epochs", min=1)

    def _check(self, path: str) -> None:
        if (self.iterations is None) == (self.epochs is None):
            raise RefsrError(f"{path}: give exactly one of iterations or epochs, e.g. {{iterations: 1000}}")


@dataclass(kw_only=True)
class ValConfig:
    """The validation set; any other key is an option of the dataset."""

    dataset: str = _f(doc="a dataset name, e.g. cufed5")
    root: str | None = _f(None, "the dataset's folder")
    protocol: str = _f("masa", "metric protocol of refsr.metrics (masa, ttsr, c2, amsa, ...), also the "
                               "dataset's size rule when it has one")
    interval: Interval = _f(factory=lambda: Interval(epochs=1), doc="how often to validate")
    from_epoch: int = _f(0, "validate only once this many epochs are done", min=0)
    select: Literal["psnr", "ssim", "last"] = _f("psnr", "what makes the best checkpoint")
    limit: int | None = _f(None, "validate on the first N samples only", min=1)
    images: int = _f(1, "validation samples shown in TensorBoard", min=0)
    options: dict[str, Any] = _f(factory=dict, doc="the dataset's own options", extra=True)


@dataclass(kw_only=True)
class DataConfig:
    train: TrainDataConfig = _f(doc="the training data")
    val: ValConfig | None = _f(None, "the validation data (null: no validation, no best checkpoint)")


@dataclass(kw_only=True)
class ParamGroupConfig:
    """Parameters whose name matches ``match`` (a regular expression) get their own lr / weight decay."""

    match: str = _f(doc="regular expression searched in parameter names; the first matching group wins")
    lr: float | None = _f(None, "learning rate of the group (null: optimizer.lr)", min=0.0)
    weight_decay: float | None = _f(None, "weight decay of the group (null: optimizer.weight_decay)", min=0.0)

    def _check(self, path: str) -> None:
        try:
            re.compile(self.match)
        except re.error as exc:
            raise RefsrError(f"{path}.match: not a valid regular expression ({exc})") from None


@dataclass(kw_only=True)
class OptimizerConfig:
    name: Literal["adam", "adamw"] = _f("adam", "adam | adamw")
    lr: float = _f(1e-4, "learning rate", min=0.0)
    betas: tuple[float, float] = _f((0.9, 0.999), "Adam's betas")
    eps: float = _f(1e-8, "Adam's epsilon", min=0.0)
    weight_decay: float = _f(0.0, "weight decay (L2 for adam, decoupled for adamw)", min=0.0)
    param_groups: list[ParamGroupConfig] = _f(factory=list, doc="per-name learning rates, e.g. AMSA's offsets")

    def _check(self, path: str) -> None:
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise RefsrError(f"{path}.betas[{i}]: must be in [0, 1), got {beta}")


@dataclass(kw_only=True)
class L1LossConfig:
    name: Literal["l1"] = _f("l1", "mean absolute error")
    weight: float = _f(1.0, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)


@dataclass(kw_only=True)
class CharbonnierLossConfig:
    name: Literal["charbonnier"] = _f("charbonnier", "sqrt((sr - hr)^2 + eps^2), averaged")
    weight: float = _f(1.0, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)
    eps: float = _f(1e-6, "Charbonnier's epsilon", min=0.0)


@dataclass(kw_only=True)
class MSELossConfig:
    name: Literal["mse"] = _f("mse", "mean squared error")
    weight: float = _f(1.0, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)


@dataclass(kw_only=True)
class PerceptualLossConfig:
    name: Literal["perceptual"] = _f("perceptual", "distance of VGG19 features")
    weight: float = _f(1.0, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)
    layer: str = _f("conv5_4", "the VGG19 layer (MASA: conv5_4; AMSA and C2-Matching: relu5_1)")
    criterion: Literal["l1", "mse", "fro"] = _f(
        "l1", "l1 (the official MASA code) | mse | fro (Frobenius norm of the batch's difference: AMSA, C2)")
    vgg_weights: str = _f(doc="torchvision's vgg19-dcbb9e9d.pth, or a VGG19 file in refsr's layout")


@dataclass(kw_only=True)
class DiscriminatorConfig:
    name: Literal["vgg_style", "image", "patchgan"] = _f(
        "vgg_style", "vgg_style (SRGAN/ESRGAN, MASA) | image (SRNTT's, the C2-Matching/AMSA WGAN-GP critic) | "
                     "patchgan (pix2pix 70x70, SSEN)")
    nf: int | None = _f(None, "channels of its first layer; null: the official width (vgg_style 64, image 32, "
                              "patchgan 64)", min=1)
    input_size: int = _f(160, "vgg_style: its input side; must equal the HR training size and divide by 32",
                         min=32)
    sigmoid: bool = _f(True, "image: end with a sigmoid, as the official C2/AMSA critic")
    n_layers: int = _f(3, "patchgan: stride-2 convolutions (3: 70x70 patches)", min=1)
    norm: Literal["batch", "instance", "none"] = _f("batch", "patchgan: batch (pix2pix's default) | instance | none")

    def _check(self, path: str) -> None:
        if self.input_size % 32:
            raise RefsrError(f"{path}.input_size: must divide by 32, got {self.input_size}")
        owners = {"input_size": "vgg_style", "sigmoid": "image", "n_layers": "patchgan", "norm": "patchgan"}
        for key in sorted(_given(self)):
            if key in owners and owners[key] != self.name:
                raise RefsrError(f"{path}.{key}: only used by the {owners[key]} discriminator, not {self.name!r}")

    @property
    def width(self) -> int:
        """``nf``, or the named network's official first-layer width."""
        return self.nf if self.nf is not None else {"vgg_style": 64, "image": 32, "patchgan": 64}[self.name]


def _d_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=1e-4, betas=(0.0, 0.9))


@dataclass(kw_only=True)
class AdversarialLossConfig:
    name: Literal["adversarial"] = _f("adversarial", "GAN loss with its own discriminator")
    weight: float = _f(5e-3, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss (and the discriminator's training) starts at this iteration", min=0)
    kind: Literal["relativistic_average", "wgan_gp", "vanilla"] = _f(
        "relativistic_average", "relativistic_average (ESRGAN's, MASA) | wgan_gp (C2-Matching, AMSA) | vanilla "
                                "(the standard GAN, BCE on logits; SSEN)")
    gradient_penalty: float = _f(10.0, "wgan_gp: the weight of the gradient penalty (official 10)", min=0.0)
    discriminator: DiscriminatorConfig = _f(factory=DiscriminatorConfig, doc="the discriminator")
    optimizer: OptimizerConfig = _f(factory=_d_optimizer, doc="the discriminator's optimiser")
    steps_per_generator_step: int = _f(1, "discriminator steps per iteration (official gan_k)", min=1)
    follow_schedule: bool = _f(False, "apply the learning-rate schedule to the discriminator too")

    def _check(self, path: str) -> None:
        if self.optimizer.param_groups:
            raise RefsrError(f"{path}.optimizer.param_groups: not supported for the discriminator")
        if self.kind != "wgan_gp" and "gradient_penalty" in _given(self):
            raise RefsrError(f"{path}.gradient_penalty: only used by kind wgan_gp, not {self.kind!r}")


@dataclass(kw_only=True)
class ContrastiveLossConfig:
    name: Literal["contrastive"] = _f("contrastive", "C2-Matching's hardest-negative triplet loss on "
                                                     "correspondences (contrastive tasks)")
    weight: float = _f(1.0, "weight in the sum", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)
    margin: float = _f(1.0, "the triplet margin (official 1.0)", min=0.0)
    safe_radius: float = _f(4.0, "negatives within this Chebyshev distance (feature pixels) of the true match "
                                 "are skipped (official 4)", min=0.0)
    min_matches: int = _f(128, "samples with fewer valid correspondences are skipped (official 128)", min=1)


@dataclass(kw_only=True)
class DistillationLossConfig:
    name: Literal["distillation"] = _f("distillation", "KL(teacher || student) of the correspondence "
                                                       "distributions (contrastive_student)")
    weight: float = _f(15.0, "weight in the sum (official 15)", min=0.0)
    start_iteration: int = _f(0, "the loss is used from this iteration on", min=0)
    temperature: float = _f(0.15, "the softmax temperature (official 0.15)", min=1e-6)
    min_matches: int = _f(128, "samples with fewer valid correspondences are skipped (official 128)", min=1)


LossConfig = Union[L1LossConfig, CharbonnierLossConfig, MSELossConfig, PerceptualLossConfig, AdversarialLossConfig,
                   ContrastiveLossConfig, DistillationLossConfig]
LOSS_TYPES: dict[str, type] = {
    "l1": L1LossConfig,
    "charbonnier": CharbonnierLossConfig,
    "mse": MSELossConfig,
    "perceptual": PerceptualLossConfig,
    "adversarial": AdversarialLossConfig,
    "contrastive": ContrastiveLossConfig,
    "distillation": DistillationLossConfig,
}
_CONTRASTIVE_LOSSES = ("contrastive", "distillation")
TASKS = ("restoration", "contrastive_teacher", "contrastive_student")


@dataclass(kw_only=True)
class ContrastiveConfig:
    """Training pairs for C2-Matching's contrastive extractor (``task: contrastive_*``; see
    :mod:`refsr.train.contrastive`)."""

    pairs: Literal["warp", "synthetic"] = _f(
        "warp", "warp: the reference is a random homography of each HR crop (C2-Matching) | synthetic: "
                "open-synthetic's own reference, matched through its known warp")
    perturb: float = _f(10.0, "warp: each corner of the HR crop moves by up to this many pixels in x and y "
                              "(official 10)", min=0.0)
    border: float = _f(10.0, "matches within this many pixels of the reference's edge are not used (official 10)",
                       min=0.0)
    teacher: str | None = _f(None, "contrastive_student: the teacher's weights (stage 1's "
                                   "checkpoints/last/model.safetensors)")

    def _check(self, path: str) -> None:
        if self.pairs != "warp" and "perturb" in _given(self):
            raise RefsrError(f"{path}.perturb: only used with pairs: warp")


@dataclass(kw_only=True)
class ScheduleConfig:
    """The learning-rate schedule, a factor on every group's lr (the discriminator's if it follows it)."""

    name: Literal["constant", "cosine", "multistep"] = _f("constant", "constant | cosine | multistep")
    unit: Literal["iteration", "epoch"] = _f("iteration", "what the schedule counts: iterations or epochs")
    t_max: int | None = _f(None, "cosine: its length in units (null: the whole run)", min=1)
    eta_min: float = _f(0.0, "cosine: the final lr of optimizer.lr (groups scale it in proportion)", min=0.0)
    milestones: list[int] = _f(factory=list, doc="multistep: units at which the lr is multiplied by gamma")
    gamma: float = _f(0.1, "multistep: the factor", min=0.0)
    warmup_iterations: int = _f(0, "linear warm-up from 0 over this many iterations", min=0)
    offset: int = _f(0, "evaluate the schedule at unit + offset (MASA steps before each epoch: 1)", min=0)

    def _check(self, path: str) -> None:
        if self.name != "cosine":
            for key in ("t_max", "eta_min"):
                if key in _given(self):
                    raise RefsrError(f"{path}.{key}: only used by the cosine schedule, not {self.name!r}")
        if self.name != "multistep":
            for key in ("milestones", "gamma"):
                if key in _given(self):
                    raise RefsrError(f"{path}.{key}: only used by the multistep schedule, not {self.name!r}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])) or any(m < 0 for m in self.milestones):
            raise RefsrError(f"{path}.milestones: must be increasing non-negative numbers, got {self.milestones}")


@dataclass(kw_only=True)
class TrainConfig:
    """How long and how to train; every count of iterations counts optimiser steps."""

    batch: int = _f(1, "samples per micro-batch per process (global batch: batch x accumulation x processes)",
                    min=1)
    iterations: int | None = _f(None, "optimiser steps to train for", min=1)
    epochs: int | None = _f(None, "epochs to train for (instead of iterations)", min=1)
    time_budget: float | str | None = _f(None, "wall-clock budget over all resumes: 2h, 90m, 1h30m, 45s or "
                                               "seconds; stops at the first limit reached")
    grad_accumulation: int = _f(1, "micro-batches per optimiser step", min=1)
    ema_decay: float | None = _f(None, "keep an exponential moving average of the weights (e.g. 0.999); "
                                       "validation and the best checkpoint use it", min=0.0, max=1.0)
    clip_grad_norm: float | None = _f(None, "clip the generator's gradient norm to this", min=0.0)
    checkpoint_interval: Interval = _f(factory=lambda: Interval(iterations=1000),
                                       doc="how often to write the last checkpoint (also at the end)")
    log_interval: int = _f(10, "iterations between TensorBoard scalars and progress-bar updates", min=1)
    image_interval: int | None = _f(None, "iterations between training image grids (null: none)", min=1)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps (under torchrun: cuda:LOCAL_RANK)")
    find_unused_parameters: bool = _f(False, "DDP: let parameters go unused in a step")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (GPU runs; CPU runs already are)")
    tensorboard: bool = _f(True, "write TensorBoard events to OUT/tb")

    def _check(self, path: str) -> None:
        if self.iterations is not None and self.epochs is not None:
            raise RefsrError(f"{path}: give iterations or epochs, not both")
        if self.iterations is None and self.epochs is None and self.time_budget is None:
            raise RefsrError(f"{path}: say how long to train: iterations, epochs or time_budget")
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget, f"{path}.time_budget")


@dataclass(kw_only=True)
class Config:
    """A whole training run."""

    name: str | None = _f(None, "run name; the default output folder is runs/<name>")
    task: Literal["restoration", "contrastive_teacher", "contrastive_student"] = _f(
        "restoration", "restoration (a RefSR network) | contrastive_teacher | contrastive_student (C2-Matching's "
                       "feature extractor, stages 1 and 2)")
    seed: int = _f(0, "seeds initialisation, data order and augmentation", min=0)
    imports: list[str] = _f(factory=list, doc="modules imported before anything is built (custom models)")
    model: ModelConfig = _f(doc="the network")
    data: DataConfig = _f(doc="training and validation data")
    losses: list[LossConfig] = _f(doc="loss terms, summed with their weights")  # type: ignore[valid-type]
    contrastive: ContrastiveConfig = _f(factory=ContrastiveConfig, doc="the contrastive tasks' training pairs")
    optimizer: OptimizerConfig = _f(factory=OptimizerConfig, doc="the generator's optimiser")
    schedule: ScheduleConfig = _f(factory=ScheduleConfig, doc="the learning-rate schedule")
    train: TrainConfig = _f(factory=TrainConfig, doc="run length, batch, checkpoints")

    def _check(self, path: str) -> None:
        if not self.losses:
            raise RefsrError("losses: give at least one loss, e.g. [{name: l1, weight: 1.0}]")
        names = [loss.name for loss in self.losses]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise RefsrError(f"losses[{i}].name: {name!r} is listed twice")
        self._check_task()
        if self.schedule.name == "cosine" and self.schedule.t_max is None and self.train.iterations is None \
                and self.train.epochs is None:
            raise RefsrError("schedule.t_max: required for a cosine schedule when only train.time_budget "
                             "bounds the run")
        for i, loss in enumerate(self.losses):
            if not isinstance(loss, AdversarialLossConfig) or loss.discriminator.name != "vgg_style":
                continue  # the checks below concern the fixed-size VGG-style discriminator
            if self.train.batch * (loss.discriminator.input_size // 32) ** 2 < 2:
                # Its last batch norm sees (input_size / 32)^2 values per channel and sample.
                raise RefsrError("train.batch: the discriminator's batch norm needs at least 2 values per channel; "
                                 f"with input_size {loss.discriminator.input_size} use a batch of 2 or more")
            if self.data.train.crop is not None and self.data.train.crop != loss.discriminator.input_size:
                raise RefsrError(
                    f"losses[{i}].discriminator.input_size: {loss.discriminator.input_size} differs from the "
                    f"HR crop data.train.crop = {self.data.train.crop}; make them equal"
                )

    def _check_task(self) -> None:
        names = [loss.name for loss in self.losses]
        if self.task == "restoration":
            for i, name in enumerate(names):
                if name in _CONTRASTIVE_LOSSES:
                    raise RefsrError(f"losses[{i}].name: {name!r} trains a feature extractor; it needs task: "
                                     "contrastive_teacher or contrastive_student")
            if "contrastive" in _given(self):
                raise RefsrError("contrastive: only used by the contrastive tasks; remove it or set task")
            return
        allowed = ("contrastive",) if self.task == "contrastive_teacher" else _CONTRASTIVE_LOSSES
        for i, name in enumerate(names):
            if name not in allowed:
                raise RefsrError(f"losses[{i}].name: task {self.task} takes only {' and '.join(allowed)} losses, "
                                 f"not {name!r}")
        if self.task == "contrastive_student":
            if "distillation" not in names:
                raise RefsrError("losses: task contrastive_student needs a {name: distillation} loss")
            if self.contrastive.teacher is None:
                raise RefsrError("contrastive.teacher: task contrastive_student needs the teacher's weights")
        elif self.contrastive.teacher is not None:
            raise RefsrError("contrastive.teacher: only used by task contrastive_student")
        if self.data.val is not None:
            raise RefsrError("data.val: the contrastive tasks do not validate; set data.val: null")
        if self.train.ema_decay is not None:
            raise RefsrError("train.ema_decay: not supported by the contrastive tasks")

    @property
    def adversarial(self) -> AdversarialLossConfig | None:
        """The adversarial loss entry, if any."""
        return next((loss for loss in self.losses if isinstance(loss, AdversarialLossConfig)), None)


# ---------------------------------------------------------------------------------------------- parsing
def _given(obj: Any) -> frozenset[str]:
    """The keys the user wrote for this section with a value other than the default.

    (A resolved config lists every field with its default, so writing a default is not a choice.)
    """
    given = getattr(obj, "_given_keys", frozenset())
    out = set()
    for f in dataclasses.fields(obj):
        if f.name not in given:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if getattr(obj, f.name) != default:
            out.add(f.name)
    return frozenset(out)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in get_args(tp))
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(tp))
    if origin in (list, Sequence):
        return "a list"
    if origin is tuple:
        return f"a list of {len(get_args(tp))} numbers"
    if origin is dict or tp is dict:
        return "a mapping"
    if tp is Interval:
        return "N (iterations) or {iterations: N} or {epochs: N}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _parse_value(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (YAML gives lists, dicts, scalars)."""
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise RefsrError(f"{path}: expected null, got {_describe(value)}")
    if _is_union(tp):
        arms = get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise RefsrError(f"{path}: a value is required (expected {_type_name(tp)})")
        if tp == LossConfig:
            return _parse_loss(value, path)
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _parse_value(arm, value, path)
            except RefsrError as exc:
                errors.append(exc)
        # One arm besides null: its own message is the clearest.
        if len(errors) == 1:
            raise errors[0]
        raise RefsrError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    origin = get_origin(tp)
    if origin is Literal:
        choices = [str(c) for c in get_args(tp)]
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(str(value), choices)
            raise RefsrError(f"{path}: unknown value {_describe(value)}{hint} (choose one of {', '.join(choices)})")
        return value
    if dataclasses.is_dataclass(tp):
        if tp is Interval and isinstance(value, int) and not isinstance(value, bool):
            value = {"iterations": value}
        return _parse_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RefsrError(f"{path}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RefsrError(f"{path}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; accept what is plainly a number.
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise RefsrError(f"{path}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RefsrError(f"{path}: expected a string, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RefsrError(f"{path}: expected a list, got {_describe(value)}")
        (item,) = get_args(tp)
        return [_parse_value(item, v, _join(path, i)) for i, v in enumerate(value)]
    if origin is tuple:
        items = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise RefsrError(f"{path}: expected a list of {len(items)} values, got {_describe(value)}")
        return tuple(_parse_value(t, v, _join(path, i)) for i, (t, v) in enumerate(zip(items, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise RefsrError(f"{path}: expected a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise RefsrError(f"{_join(path, str(key))}: keys must be strings")
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug in the schema, not user input


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls, globals())
    return hints


_HINTS: dict[type, dict[str, Any]] = {}


def _parse_dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, Mapping):
        where = path or "the config"
        raise RefsrError(f"{where}: expected a mapping, got {_describe(value)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra_field = next((f.name for f in fields.values() if f.metadata.get("extra")), None)
    known = [name for name in fields if name != extra_field]
    kwargs: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, raw in value.items():
        if not isinstance(key, str):
            raise RefsrError(f"{_join(path, str(key))}: field names must be strings")
        if key in known:
            sub = _join(path, key)
            parsed = _parse_value(hints[key], raw, sub)
            _check_bounds(fields[key], parsed, sub)
            kwargs[key] = parsed
        elif extra_field is not None:
            extras[key] = raw
        else:
            raise RefsrError(f"{_join(path, key)}: unknown field{_suggest(key, known)}")
    for name in known:
        f = fields[name]
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RefsrError(f"{_join(path, name)}: required field is missing ({f.metadata.get('doc', '')})")
    if extra_field is not None:
        kwargs[extra_field] = extras
    obj = cls(**kwargs)
    object.__setattr__(obj, "_given_keys", frozenset(value))
    check = getattr(obj, "_check", None)
    if check is not None:
        check(path)
    return obj


def _check_bounds(f: dataclasses.Field, value: Any, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if low is not None and value < low:
        raise RefsrError(f"{path}: must be >= {low}, got {value}")
    if high is not None and value > high:
        raise RefsrError(f"{path}: must be <= {high}, got {value}")


def _parse_loss(value: Any, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise RefsrError(f"{path}: expected a mapping such as {{name: l1, weight: 1.0}}, got {_describe(value)}")
    name = value.get("name")
    if name is None:
        raise RefsrError(f"{path}.name: required field is missing (one of {', '.join(LOSS_TYPES)})")
    if name not in LOSS_TYPES:
        hint = _suggest(str(name), list(LOSS_TYPES))
        raise RefsrError(f"{path}.name: unknown loss {_describe(name)}{hint} (choose from {', '.join(LOSS_TYPES)})")
    return _parse_dataclass(LOSS_TYPES[name], value, path)


_DURATION = re.compile(r"^\s*(?:(?P<d>\d+(?:\.\d+)?)\s*d)?\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*"
                       r"(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: float | int | str, path: str = "time_budget") -> float:
    """Seconds from ``7200``, ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"`` or ``"1.5h"``; must be positive."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or match is None or not any(match.groupdict().values()):
                raise RefsrError(
                    f"{path}: cannot read {value!r} as a duration; write e.g. 2h, 90m, 1h30m, 45s or seconds"
                ) from None
            parts = {k: float(v) for k, v in match.groupdict().items() if v}
            seconds = (parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
                       + parts.get("s", 0))
    else:
        raise RefsrError(f"{path}: expected a duration such as 2h or 90m, got {_describe(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise RefsrError(f"{path}: must be a positive duration, got {value!r}")
    return seconds


# ---------------------------------------------------------------------- checks that need the registries
def _check_model(cfg: Config) -> None:
    from refsr.models import _registry

    if ":" in cfg.model.name:
        if cfg.task == "restoration":
            raise RefsrError(f"model.name: {cfg.model.name!r}: module:attribute names are for the contrastive "
                             "tasks; register a restoration model with refsr.models.register_model")
        builder = resolve_target(cfg.model.name, "model.name")
        _check_options(builder, cfg.model.overrides, cfg.model.name)
        return
    try:
        entry = _registry.get_entry(cfg.model.name)
    except RefsrError as exc:
        raise RefsrError(f"model.name: {exc}") from None
    _check_options(entry.builder, cfg.model.overrides, cfg.model.name)


def _check_options(builder: Any, overrides: Mapping[str, Any], name: str) -> None:
    try:
        params = dict(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        return
    params.pop("self", None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in overrides:
        if key not in params:
            raise RefsrError(
                f"model.overrides.{key}: model {name!r} has no such option{_suggest(key, list(params))} "
                f"(its options: {', '.join(params) or 'none'})"
            )


def resolve_target(target: str, path: str) -> Any:
    """The object named ``module:attribute`` (dotted attributes allowed); errors name ``path``."""
    import importlib

    module, _, attr = target.partition(":")
    if not module or not attr:
        raise RefsrError(f"{path}: {target!r} is not of the form module:attribute")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise RefsrError(f"{path}: cannot import {module!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RefsrError(f"{path}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RefsrError(f"{path}: {target!r} is not a class or function")
    return obj


def _check_datasets(cfg: Config) -> None:
    from refsr.train import builders

    for i, source in enumerate(cfg.data.train.sources):
        builders.check_dataset_options(source.dataset, source.options, f"data.train.sources[{i}]")
    if cfg.data.val is not None:
        builders.check_dataset_options(cfg.data.val.dataset, cfg.data.val.options, "data.val")


def parse_config(data: Mapping[str, Any], *, check_registries: bool = True) -> Config:
    """A :class:`Config` from a mapping (the parsed YAML); raises :class:`RefsrError` naming the bad field.

    With ``check_registries`` the model options and dataset options are checked against the registered
    model's and dataset's signatures (after importing ``imports``).
    """
    cfg = _parse_dataclass(Config, data, "")
    if check_registries:
        import_modules(cfg.imports)
        _check_model(cfg)
        _check_datasets(cfg)
    return cfg


def import_modules(names: Sequence[str]) -> None:
    """Import the config's ``imports`` (custom models and datasets register themselves on import)."""
    import importlib

    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise RefsrError(f"imports[{i}]: cannot import {name!r} ({exc}); is it on PYTHONPATH?") from None


# ------------------------------------------------------------------------------------------- overrides
def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to the raw config (value parsed as YAML); returns ``data``.

    List items are addressed by index: ``losses.0.weight=0.5``. Missing mappings on the way are created;
    whether the field exists is checked afterwards, with the rest of the config.
    """
    import yaml

    for item in overrides:
        if "=" not in item:
            raise RefsrError(f"--set {item!r}: expected key.path=value, e.g. train.batch=4")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not key.strip() or any(not p for p in parts):
            raise RefsrError(f"--set {item!r}: expected key.path=value, e.g. train.batch=4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise RefsrError(f"--set {item!r}: the value is not valid YAML ({_first_line(exc)})") from None
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where, item)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise RefsrError(f"--set {item!r}: {'.'.join(parts[:depth]) or 'the config'} is not a mapping")
            if not isinstance(node, (dict, list)):
                raise RefsrError(f"--set {item!r}: {where} is {_describe(node)}, not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, key, item)] = value
        else:
            node[last] = value
    return data


def _list_index(part: str, node: list, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RefsrError(f"--set {item!r}: {where}: a list of {len(node)} items needs an index 0..{len(node) - 1}")
    return int(part)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def load_config(path: str | Path, overrides: Sequence[str] = (), *, check_registries: bool = True) -> Config:
    """Read a YAML config file, apply ``--set`` overrides, and validate it.

    Raises:
        RefsrError: ``<file>: <field.path>: <what is wrong>``.
    """
    p, data = read_config_file(path)
    try:
        apply_overrides(data, overrides)
        cfg = parse_config(data, check_registries=check_registries)
    except RefsrError as exc:
        raise RefsrError(f"{p}: {exc}") from None
    if cfg.name is None:
        cfg.name = p.stem
    return cfg


def read_config_file(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The expanded path and the YAML mapping of a config file (any ``task``), before overrides.

    Raises:
        RefsrError: a missing, unreadable, empty or invalid file, or one that is not a mapping.
    """
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise RefsrError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RefsrError(f"{p}: not valid YAML ({_first_line(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RefsrError(f"{p}: cannot read the config ({exc})") from None
    if data is None:
        raise RefsrError(f"{p}: the config is empty")
    if not isinstance(data, dict):
        raise RefsrError(f"{p}: the config must be a mapping of sections (model, data, losses, ...)")
    return p, data


# ---------------------------------------------------------------------------------------------- output
def config_to_dict(obj: Any) -> Any:
    """The plain (YAML-able) form of a config or any part of it; :func:`parse_config` reads it back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("extra"):
                out.update({k: config_to_dict(v) for k, v in value.items()})
            else:
                out[f.name] = config_to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj


def describe_schema() -> str:
    """Every field with its type, default and meaning, one line each (``section.field: ...``)."""
    lines: list[str] = []

    def walk(cls: type, prefix: str, defaults: Any = None) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if f.metadata.get("extra"):
                lines.append(f"{prefix}.<option>: any -- {f.metadata.get('doc', '')}")
                continue
            path = _join(prefix, f.name)
            value: Any = dataclasses.MISSING
            if defaults is not None:
                value = getattr(defaults, f.name)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            nested = dataclasses.is_dataclass(value) and not isinstance(value, Interval)
            if value is dataclasses.MISSING:
                default = " (required)"
                nested = dataclasses.is_dataclass(tp)
            elif nested:
                default = ""
            elif isinstance(value, Interval):
                default = f" = {{{', '.join(f'{k}: {v}' for k, v in config_to_dict(value).items() if v is not None)}}}"
            else:
                default = f" = {config_to_dict(value)!r}"
            lines.append(f"{path}: {_type_name(tp)}{default} -- {f.metadata.get('doc', '')}")
            if f.name == "losses" and cls is Config:
                for name, loss_cls in LOSS_TYPES.items():
                    walk(loss_cls, f"losses[name={name}]")
                continue
            if nested:
                if value is dataclasses.MISSING:
                    walk(tp, path)
                else:
                    walk(type(value), path, value)
                continue
            inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)] if _is_union(tp) else []
            if get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
                walk(get_args(tp)[0], path + "[]")
            for sub in inner:
                if sub is not Interval:
                    walk(sub, path)

    walk(Config, "")
    return "\n".join(lines)


def schema_paths() -> list[str]:
    """Every field path of the schema (losses as ``losses[name=<loss>].field``)."""
    return [line.split(":", 1)[0] for line in describe_schema().splitlines()]
