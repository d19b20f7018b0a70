"""The training configuration's schema: pydantic models, each field with its meaning and bounds.

A config is a YAML file (``configs/*.yaml``); :mod:`refsr.train.config` reads it, applies ``--set``
overrides, validates it against :class:`Config` and turns pydantic's errors into one line that names the
field (``train.bacth: unknown field; did you mean batch?``). This module holds the schema only:

- every section forbids unknown keys and keeps YAML's types (strict: ``"4"`` is not an integer, ``1`` is
  not ``true``); only the two datasets' sections (:class:`SourceConfig`, :class:`ValConfig`) collect their
  other keys into ``options``, which :mod:`refsr.train.config` checks against the dataset's signature;
- a float field also takes what YAML 1.1 reads as a string (``1e-4``, without a dot), an integer field a
  float that is a whole number (``1.0e+5``), and an :class:`Interval` a bare number (iterations);
- the losses are a union told apart by ``name`` (:data:`LOSS_TYPES`);
- the checks that span fields raise :func:`_error` with the path of the field at fault, relative to the
  section checked; :mod:`refsr.train.config` prefixes the section's path.

The layout (``refsr.train.config.describe_schema()`` prints every field with its meaning):

.. code-block:: yaml

    name: masa-rec            # run name; outputs go to runs/<name>/ unless --out is given
    task: restoration         # restoration | contrastive_teacher | contrastive_student | ccnet
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
      val: {dataset: cufed5, root: ~/data/CUFED, protocol: masa, interval: {epochs: 1}, from_epoch: 21,
            select: psnr, limit: null, images: 1, <dataset options>}
    losses: [{name: l1, weight: 1.0}]
    contrastive: {pairs: warp, perturb: 10, border: 10, teacher: null}   # the contrastive tasks only
    ccnet: {window: 129, scale: 8, grid: 8, crops_per_sample: 4, rotate: true}   # task ccnet only
    optimizer: {name: adam, lr: 1.0e-4, betas: [0.9, 0.999], eps: 1.0e-8, weight_decay: 0.0,
                param_groups: [{match: offset, lr: 1.0e-6}]}
    schedule: {name: cosine, unit: epoch, t_max: 500, eta_min: 0.0, offset: 1, warmup_iterations: 0}
    train: {batch: 9, epochs: 250, iterations: null, time_budget: null, grad_accumulation: 1,
            ema_decay: null, clip_grad_norm: null, checkpoint_interval: {epochs: 10}, log_interval: 10}
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Mapping, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from refsr.data.degrade import RealDegradation
from refsr.errors import RefsrError

__all__ = [
    "Config",
    "ModelConfig",
    "DatasetSection",
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
    "CCNetConfig",
    "TASKS",
    "OptimizerConfig",
    "ParamGroupConfig",
    "ScheduleConfig",
    "TrainConfig",
    "LOSS_TYPES",
    "Duration",
    "parse_duration",
]


# ------------------------------------------------------------------------------------------ the parts
def _error(message: str, *at: str | int) -> PydanticCustomError:
    """A failed check of a section: ``message`` about its field ``at`` (a path below the section; none: the
    section itself). :mod:`refsr.train.config` prints ``<section path>.<at>: <message>``."""
    return PydanticCustomError("refsr", message, {"at": at})


def _given(section: BaseModel) -> set[str]:
    """The fields the user wrote with a value other than the default (a resolved config lists every field
    with its default, so writing a default is not a choice)."""
    fields = type(section).model_fields
    return {name for name in section.model_fields_set
            if getattr(section, name) != fields[name].get_default(call_default_factory=True)}


def _whole_float_to_int(value: Any) -> Any:
    # YAML writes large counts as 1.0e+5, a float.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _number_from_string(value: Any) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string; take what is plainly a finite number.
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number):
            return number
    return value


_DURATION = re.compile(r"^\s*(?:(?P<d>\d+(?:\.\d+)?)\s*d)?\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*"
                       r"(?:(?P<m>\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$")


def _seconds(value: Any) -> float:
    """Seconds from a number or a duration string; raises ValueError with what is wrong."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or match is None or not any(match.groupdict().values()):
                raise ValueError(
                    f"cannot read {value!r} as a duration; write e.g. 2h, 90m, 1h30m, 45s or seconds") from None
            parts = {k: float(v) for k, v in match.groupdict().items() if v}
            seconds = (parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
                       + parts.get("s", 0))
    else:
        raise ValueError(f"expected a duration such as 2h or 90m, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def parse_duration(value: float | int | str, path: str = "time_budget") -> float:
    """Seconds from ``7200``, ``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"`` or ``"1.5h"``; must be positive.

    Raises:
        RefsrError: ``<path>: <what is wrong>``.
    """
    try:
        return _seconds(value)
    except ValueError as exc:
        raise RefsrError(f"{path}: {exc}") from None


def _duration(value: Any) -> float:
    try:
        return _seconds(value)
    except ValueError as exc:
        raise _error(str(exc)) from None


#: An integer; a whole float (``1.0e+5``) is taken.
Int = Annotated[int, BeforeValidator(_whole_float_to_int)]
#: A number; YAML 1.1's ``1e-4`` string is taken.
Float = Annotated[float, BeforeValidator(_number_from_string)]
#: A wall-clock duration in seconds, from seconds or ``2h``, ``90m``, ``1h30m``, ``45s``, ``1.5h``.
Duration = Annotated[float, BeforeValidator(_duration)]


class _Section(BaseModel):
    """A config section: unknown keys are errors, and values keep their YAML types."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------------------------------- sections
class ModelConfig(_Section):
    """The network to train."""

    name: str = Field(description="a name from refsr.list_models(); for the contrastive tasks and ccnet also "
                                  "module:attribute of a network class or builder")
    overrides: dict[str, Any] = Field(default_factory=dict, description="keyword options of the model's builder")
    init: str | None = Field(None, description="weights to start from: a .safetensors file, an official .pth, "
                                               "or 'default'")


class DatasetSection(_Section):
    """A section that names a dataset: its keys that are not fields are the dataset's own options, collected
    into ``options`` (which :mod:`refsr.train.config` checks against the dataset's signature)."""

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        loose = {key: value for key, value in data.items() if key not in cls.model_fields}
        options = data.get("options", {})
        if not loose or not isinstance(options, Mapping):
            return data
        fields = {key: value for key, value in data.items() if key in cls.model_fields}
        return {**fields, "options": {**options, **loose}}


class SourceConfig(DatasetSection):
    """One training dataset; any other key is an option of the dataset (checked against its signature)."""

    dataset: str = Field(description="a dataset name (see refsr.data.registry.DATASETS)")
    root: str | None = Field(None, description="the dataset's folder; null: refsr's data cache where the "
                                               "dataset has one")
    weight: Float | None = Field(None, ge=0.0, description="share of each epoch's samples drawn from this "
                                                           "source; null: its size")
    options: dict[str, Any] = Field(default_factory=dict, description="the dataset's own options")


class AugmentConfig(_Section):
    """Random augmentation of training samples (``refsr.data.augment``)."""

    name: Literal["none", "masa", "c2", "ttsr"] = Field("none", description="masa | c2 | ttsr | none")
    swap_prob: Float = Field(0.5, ge=0.0, le=1.0,
                             description="masa: probability of swapping the input and reference roles")
    jitter: bool = Field(True, description="masa: brightness/contrast jitter of the input or the reference")
    geometric_from_epoch: Int | None = Field(
        0, ge=0, description="flips and quarter turns from this epoch on (null: never); MASA warms up without them")

    @model_validator(mode="after")
    def _masa_options_need_masa(self) -> AugmentConfig:
        masa_only = {"swap_prob", "jitter"} & _given(self)
        if self.name != "masa" and masa_only:
            key = sorted(masa_only)[0]
            raise _error(f"only used by the masa augmentation, not {self.name!r}", key)
        return self


class TrainDataConfig(_Section):
    """Where training samples come from and how they are prepared."""

    sources: list[SourceConfig] = Field(description="one or more datasets, mixed by weight")
    protocol: str | None = Field(None, description="masa | c2 | amsa | ttsr: the size rule of sources that "
                                                   "have one")
    crop: Int | None = Field(None, ge=1, description="HR crop side in pixels (must divide by the model's scale); "
                                                     "null: whole images")
    crop_ref: Literal["none", "independent", "aligned"] = Field(
        "none", description="reference crop: none (whole), independent (own random position), aligned (same "
                            "position)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="random augmentation")
    samples_per_epoch: Int | None = Field(None, ge=1, description="samples per epoch over all sources; null: "
                                                                  "their total size")
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes per training process")
    degradation: Literal["bicubic", "real"] = Field(
        "bicubic", description="how the LR is made: bicubic (the sources' PIL-bicubic LR, as the official repos) | "
                               "real (remade from the final HR crop by blur, noise and JPEG, twice: "
                               "refsr.data.degrade.RealDegradation)")
    degradation_options: dict[str, Any] = Field(
        default_factory=dict, description="real: RealDegradation options to change from Real-ESRGAN's, e.g. "
                                          "{second: {jpeg_range: [50, 95]}}")
    ref_degradation: Literal["none", "jpeg"] = Field(
        "none", description="real: the reference left clean (none) or given its own JPEG compression (jpeg)")
    ref_jpeg_range: tuple[Int, Int] = Field((70, 95), strict=False,
                                            description="ref_degradation jpeg: the JPEG quality range, drawn "
                                                        "uniformly")

    @model_validator(mode="after")
    def _degradation(self) -> TrainDataConfig:
        given = _given(self)
        if self.degradation != "real":
            for key in ("degradation_options", "ref_degradation", "ref_jpeg_range"):
                if key in given:
                    raise _error("only used with degradation: real", key)
            return self
        try:
            RealDegradation.from_options(self.degradation_options)
        except RefsrError as exc:  # "second.jpeg_range: what is wrong"
            where, _, what = str(exc).partition(": ")
            raise _error(what, "degradation_options", *where.split(".")) from None
        lo, hi = self.ref_jpeg_range
        if not 1 <= lo <= hi <= 100:
            raise _error(f"JPEG qualities within 1..100, low <= high, got [{lo}, {hi}]", "ref_jpeg_range")
        if self.ref_degradation != "jpeg" and "ref_jpeg_range" in given:
            raise _error("only used with ref_degradation: jpeg", "ref_jpeg_range")
        return self

    @model_validator(mode="after")
    def _sources_and_crop(self) -> TrainDataConfig:
        if not self.sources:
            raise _error("give at least one dataset", "sources")
        given = [s.weight is not None for s in self.sources]
        if any(given) and not all(given):
            raise _error("give a weight to every source or to none", "sources")
        if all(given) and sum(s.weight for s in self.sources) <= 0:  # type: ignore[misc]
            raise _error("the weights must not all be zero", "sources")
        if self.crop is None and self.crop_ref != "none":
            raise _error("needs data.train.crop", "crop_ref")
        return self


class Interval(_Section):
    """Every so many iterations or epochs; a bare number means iterations."""

    iterations: Int | None = Field(None, ge=1, description="every this many iterations")
    epochs: Int | None = Field(None, ge=1, description="every this many epochs")

    @model_validator(mode="before")
    @classmethod
    def _bare_number_is_iterations(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"iterations": data}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Interval:
        if (self.iterations is None) == (self.epochs is None):
            raise _error("give exactly one of iterations or epochs, e.g. {iterations: 1000}")
        return self


class ValConfig(DatasetSection):
    """The validation set; any other key is an option of the dataset."""

    dataset: str = Field(description="a dataset name, e.g. cufed5")
    root: str | None = Field(None, description="the dataset's folder")
    protocol: str = Field("masa", description="metric protocol of refsr.metrics (masa, ttsr, c2, amsa, ...), also "
                                              "the dataset's size rule when it has one")
    interval: Interval = Field(default_factory=lambda: Interval(epochs=1), description="how often to validate")
    from_epoch: Int = Field(0, ge=0, description="validate only once this many epochs are done")
    select: Literal["psnr", "ssim", "last"] = Field("psnr", description="what makes the best checkpoint")
    limit: Int | None = Field(None, ge=1, description="validate on the first N samples only")
    images: Int = Field(1, ge=0, description="validation samples shown in TensorBoard")
    options: dict[str, Any] = Field(default_factory=dict, description="the dataset's own options")


class DataConfig(_Section):
    train: TrainDataConfig = Field(description="the training data")
    val: ValConfig | None = Field(None, description="the validation data (null: no validation, no best "
                                                    "checkpoint)")


class ParamGroupConfig(_Section):
    """Parameters whose name matches ``match`` (a regular expression) get their own lr / weight decay."""

    match: str = Field(description="regular expression searched in parameter names; the first matching group "
                                   "wins")
    lr: Float | None = Field(None, ge=0.0, description="learning rate of the group (null: optimizer.lr)")
    weight_decay: Float | None = Field(None, ge=0.0, description="weight decay of the group (null: "
                                                                 "optimizer.weight_decay)")

    @field_validator("match")
    @classmethod
    def _a_regular_expression(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise _error(f"not a valid regular expression ({exc})") from None
        return value


class OptimizerConfig(_Section):
    name: Literal["adam", "adamw"] = Field("adam", description="adam | adamw")
    lr: Float = Field(1e-4, ge=0.0, description="learning rate")
    # Not strict: YAML gives the pair as a list.
    betas: tuple[Float, Float] = Field((0.9, 0.999), strict=False, description="Adam's betas")
    eps: Float = Field(1e-8, ge=0.0, description="Adam's epsilon")
    weight_decay: Float = Field(0.0, ge=0.0, description="weight decay (L2 for adam, decoupled for adamw)")
    param_groups: list[ParamGroupConfig] = Field(default_factory=list,
                                                 description="per-name learning rates, e.g. AMSA's offsets")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise _error(f"must be in [0, 1), got {beta}", i)
        return betas


# --------------------------------------------------------------------------------------------- losses
class _Loss(_Section):
    name: str
    weight: Float = Field(1.0, ge=0.0, description="weight in the sum")
    start_iteration: Int = Field(0, ge=0, description="the loss is used from this iteration on")


class L1LossConfig(_Loss):
    name: Literal["l1"] = Field("l1", description="mean absolute error")


class CharbonnierLossConfig(_Loss):
    name: Literal["charbonnier"] = Field("charbonnier", description="sqrt((sr - hr)^2 + eps^2), averaged")
    eps: Float = Field(1e-6, ge=0.0, description="Charbonnier's epsilon")


class MSELossConfig(_Loss):
    name: Literal["mse"] = Field("mse", description="mean squared error")


class PerceptualLossConfig(_Loss):
    name: Literal["perceptual"] = Field("perceptual", description="distance of VGG19 features")
    layer: str = Field("conv5_4", description="the VGG19 layer (MASA: conv5_4; AMSA and C2-Matching: relu5_1)")
    criterion: Literal["l1", "mse", "fro"] = Field(
        "l1", description="l1 (the official MASA code) | mse | fro (Frobenius norm of the batch's difference: "
                          "AMSA, C2)")
    vgg_weights: str = Field(description="torchvision's vgg19-dcbb9e9d.pth, or a VGG19 file in refsr's layout")


_DISCRIMINATOR_WIDTHS = {"vgg_style": 64, "image": 32, "patchgan": 64}


class DiscriminatorConfig(_Section):
    name: Literal["vgg_style", "image", "patchgan"] = Field(
        "vgg_style", description="vgg_style (SRGAN/ESRGAN, MASA) | image (SRNTT's, the C2-Matching/AMSA WGAN-GP "
                                 "critic) | patchgan (pix2pix 70x70, SSEN)")
    nf: Int | None = Field(None, ge=1, description="channels of its first layer; null: the official width "
                                                   "(vgg_style 64, image 32, patchgan 64)")
    input_size: Int = Field(160, ge=32, description="vgg_style: its input side; must equal the HR training size "
                                                    "and divide by 32")
    sigmoid: bool = Field(True, description="image: end with a sigmoid, as the official C2/AMSA critic")
    n_layers: Int = Field(3, ge=1, description="patchgan: stride-2 convolutions (3: 70x70 patches)")
    norm: Literal["batch", "instance", "none"] = Field(
        "batch", description="patchgan: batch (pix2pix's default) | instance | none")

    @model_validator(mode="after")
    def _options_of_the_named_network(self) -> DiscriminatorConfig:
        if self.input_size % 32:
            raise _error(f"must divide by 32, got {self.input_size}", "input_size")
        owners = {"input_size": "vgg_style", "sigmoid": "image", "n_layers": "patchgan", "norm": "patchgan"}
        for key in sorted(_given(self)):
            if key in owners and owners[key] != self.name:
                raise _error(f"only used by the {owners[key]} discriminator, not {self.name!r}", key)
        return self

    @property
    def width(self) -> int:
        """``nf``, or the named network's official first-layer width."""
        return self.nf if self.nf is not None else _DISCRIMINATOR_WIDTHS[self.name]


class AdversarialLossConfig(_Loss):
    name: Literal["adversarial"] = Field("adversarial", description="GAN loss with its own discriminator")
    weight: Float = Field(5e-3, ge=0.0, description="weight in the sum")
    start_iteration: Int = Field(0, ge=0, description="the loss (and the discriminator's training) starts at this "
                                                      "iteration")
    kind: Literal["relativistic_average", "wgan_gp", "vanilla"] = Field(
        "relativistic_average", description="relativistic_average (ESRGAN's, MASA) | wgan_gp (C2-Matching, AMSA) | "
                                            "vanilla (the standard GAN, BCE on logits; SSEN)")
    gradient_penalty: Float = Field(10.0, ge=0.0, description="wgan_gp: the weight of the gradient penalty "
                                                              "(official 10)")
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig, description="the discriminator")
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-4, betas=(0.0, 0.9)),
                                       description="the discriminator's optimiser")
    steps_per_generator_step: Int = Field(1, ge=1, description="discriminator steps per iteration (official gan_k)")
    follow_schedule: bool = Field(False, description="apply the learning-rate schedule to the discriminator too")

    @model_validator(mode="after")
    def _discriminator_options(self) -> AdversarialLossConfig:
        if self.optimizer.param_groups:
            raise _error("not supported for the discriminator", "optimizer", "param_groups")
        if self.kind != "wgan_gp" and "gradient_penalty" in _given(self):
            raise _error(f"only used by kind wgan_gp, not {self.kind!r}", "gradient_penalty")
        return self


class ContrastiveLossConfig(_Loss):
    name: Literal["contrastive"] = Field("contrastive", description="C2-Matching's hardest-negative triplet loss "
                                                                    "on correspondences (contrastive tasks)")
    margin: Float = Field(1.0, ge=0.0, description="the triplet margin (official 1.0)")
    safe_radius: Float = Field(4.0, ge=0.0, description="negatives within this Chebyshev distance (feature "
                                                        "pixels) of the true match are skipped (official 4)")
    min_matches: Int = Field(128, ge=1, description="samples with fewer valid correspondences are skipped "
                                                    "(official 128)")


class DistillationLossConfig(_Loss):
    name: Literal["distillation"] = Field("distillation", description="KL(teacher || student) of the "
                                                                      "correspondence distributions "
                                                                      "(contrastive_student)")
    weight: Float = Field(15.0, ge=0.0, description="weight in the sum (official 15)")
    temperature: Float = Field(0.15, ge=1e-6, description="the softmax temperature (official 0.15)")
    min_matches: Int = Field(128, ge=1, description="samples with fewer valid correspondences are skipped "
                                                    "(official 128)")


_LOSS_CLASSES = (L1LossConfig, CharbonnierLossConfig, MSELossConfig, PerceptualLossConfig, AdversarialLossConfig,
                 ContrastiveLossConfig, DistillationLossConfig)
#: A loss entry, told apart by its ``name``.
LossConfig = Annotated[Union[_LOSS_CLASSES], Field(discriminator="name")]  # type: ignore[valid-type]
LOSS_TYPES: dict[str, type[BaseModel]] = {cls.model_fields["name"].default: cls for cls in _LOSS_CLASSES}
_CONTRASTIVE_LOSSES = ("contrastive", "distillation")

Task = Literal["restoration", "contrastive_teacher", "contrastive_student", "ccnet"]
TASKS: tuple[str, ...] = get_args(Task)


# ------------------------------------------------------------------------------------ task sections
class ContrastiveConfig(_Section):
    """Training pairs for C2-Matching's contrastive extractor (``task: contrastive_*``; see
    :mod:`refsr.train.tasks.contrastive`)."""

    pairs: Literal["warp", "synthetic"] = Field(
        "warp", description="warp: the reference is a random homography of each HR crop (C2-Matching) | "
                            "synthetic: open-synthetic's own reference, matched through its known warp")
    perturb: Float = Field(10.0, ge=0.0, description="warp: each corner of the HR crop moves by up to this many "
                                                     "pixels in x and y (official 10)")
    border: Float = Field(10.0, ge=0.0, description="matches within this many pixels of the reference's edge are "
                                                    "not used (official 10)")
    teacher: str | None = Field(None, description="contrastive_student: the teacher's weights (stage 1's "
                                                  "checkpoints/last/model.safetensors)")

    @model_validator(mode="after")
    def _perturb_needs_warp(self) -> ContrastiveConfig:
        if self.pairs != "warp" and "perturb" in _given(self):
            raise _error("only used with pairs: warp", "perturb")
        return self


class CCNetConfig(_Section):
    """RefSR-Net's CC-Net trained as a classification over a search window (``task: ccnet``; see
    :mod:`refsr.train.tasks.ccnet`): 65x65 patches of the upsampled LR against reference windows."""

    window: Int = Field(129, ge=1, description="candidate positions per side of the search window (paper: 129, "
                                               "a 193x193 reference patch)")
    scale: Int = Field(8, ge=1, description="the LR is this many times smaller and is upsampled back "
                                            "bilinearly (paper: 8); also the datasets' scale")
    grid: Int = Field(8, ge=1, description="LR-patch centres on multiples of this (upsampled-LR pixels)")
    crops_per_sample: Int = Field(4, ge=1, description="LR patches cut from each loaded image pair")
    rotate: bool = Field(True, description="turn both crops by a random quarter turn (paper Sec. 5)")


class ScheduleConfig(_Section):
    """The learning-rate schedule, a factor on every group's lr (the discriminator's if it follows it)."""

    name: Literal["constant", "cosine", "multistep"] = Field("constant", description="constant | cosine | "
                                                                                     "multistep")
    unit: Literal["iteration", "epoch"] = Field("iteration", description="what the schedule counts: iterations "
                                                                         "or epochs")
    t_max: Int | None = Field(None, ge=1, description="cosine: its length in units (null: the whole run)")
    eta_min: Float = Field(0.0, ge=0.0, description="cosine: the final lr of optimizer.lr (groups scale it in "
                                                    "proportion)")
    milestones: list[Int] = Field(default_factory=list, description="multistep: units at which the lr is "
                                                                    "multiplied by gamma")
    gamma: Float = Field(0.1, ge=0.0, description="multistep: the factor")
    warmup_iterations: Int = Field(0, ge=0, description="linear warm-up from 0 over this many iterations")
    offset: Int = Field(0, ge=0, description="evaluate the schedule at unit + offset (MASA steps before each "
                                             "epoch: 1)")

    @model_validator(mode="after")
    def _options_of_the_named_schedule(self) -> ScheduleConfig:
        given = _given(self)
        owners = {"t_max": "cosine", "eta_min": "cosine", "milestones": "multistep", "gamma": "multistep"}
        for key, owner in owners.items():
            if key in given and self.name != owner:
                raise _error(f"only used by the {owner} schedule, not {self.name!r}", key)
        steps = self.milestones
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(m < 0 for m in steps):
            raise _error(f"must be increasing non-negative numbers, got {steps}", "milestones")
        return self


class TrainConfig(_Section):
    """How long and how to train; every count of iterations counts optimiser steps."""

    batch: Int = Field(1, ge=1, description="samples per micro-batch per process (global batch: batch x "
                                            "accumulation x processes)")
    iterations: Int | None = Field(None, ge=1, description="optimiser steps to train for")
    epochs: Int | None = Field(None, ge=1, description="epochs to train for (instead of iterations)")
    time_budget: Duration | None = Field(None, description="wall-clock budget over all resumes: 2h, 90m, 1h30m, "
                                                           "45s or seconds; stops at the first limit reached")
    grad_accumulation: Int = Field(1, ge=1, description="micro-batches per optimiser step")
    ema_decay: Float | None = Field(None, ge=0.0, le=1.0,
                                    description="keep an exponential moving average of the weights (e.g. 0.999); "
                                                "validation and the best checkpoint use it")
    clip_grad_norm: Float | None = Field(None, ge=0.0, description="clip the generator's gradient norm to this")
    checkpoint_interval: Interval = Field(default_factory=lambda: Interval(iterations=1000),
                                          description="how often to write the last checkpoint (also at the end)")
    log_interval: Int = Field(10, ge=1, description="iterations between TensorBoard scalars and progress-bar "
                                                    "updates")
    image_interval: Int | None = Field(None, ge=1, description="iterations between training image grids (null: "
                                                               "none)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps (under torchrun: cuda:LOCAL_RANK)")
    find_unused_parameters: bool = Field(False, description="DDP: let parameters go unused in a step")
    deterministic: bool = Field(False, description="deterministic algorithms and cuBLAS workspace, so that a "
                                                   "resumed GPU run repeats an uninterrupted one bit for bit (CPU "
                                                   "runs already do)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 | bf16 | fp16: autocast of the forward passes and losses (fp16 with a grad "
                            "scaler); weights, optimiser states and validation stay float32")
    channels_last: bool = Field(False, description="channels-last memory format for the network and its inputs "
                                                   "(faster 2-D convolutions on CPUs and GPUs)")
    compile: bool = Field(False, description="torch.compile the network for the training steps (first steps "
                                             "are slow while it compiles)")
    tensorboard: bool = Field(True, description="write TensorBoard events to OUT/tb")

    @model_validator(mode="after")
    def _run_length(self) -> TrainConfig:
        if self.iterations is not None and self.epochs is not None:
            raise _error("give iterations or epochs, not both")
        if self.iterations is None and self.epochs is None and self.time_budget is None:
            raise _error("say how long to train: iterations, epochs or time_budget")
        return self


# ------------------------------------------------------------------------------------------ the run
class Config(_Section):
    """A whole training run."""

    name: str | None = Field(None, description="run name; the default output folder is runs/<name>")
    task: Task = Field("restoration", description="restoration (a RefSR network) | contrastive_teacher | "
                                                  "contrastive_student (C2-Matching's feature extractor, stages 1 "
                                                  "and 2) | ccnet (RefSR-Net's CC-Net)")
    seed: Int = Field(0, ge=0, description="seeds initialisation, data order and augmentation")
    imports: list[str] = Field(default_factory=list, description="modules imported before anything is built "
                                                                 "(custom models)")
    model: ModelConfig = Field(description="the network")
    data: DataConfig = Field(description="training and validation data")
    losses: list[LossConfig] = Field(default_factory=list,  # type: ignore[valid-type]
                                     description="loss terms, summed with their weights (task ccnet: none, it "
                                                 "has its own)")
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig,
                                           description="the contrastive tasks' training pairs")
    ccnet: CCNetConfig = Field(default_factory=CCNetConfig, description="task ccnet's training crops")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="the generator's optimiser")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="the learning-rate schedule")
    train: TrainConfig = Field(description="run length, batch, checkpoints")

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        names = [loss.name for loss in self.losses]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _error(f"{name!r} is listed twice", "losses", i, "name")
        if self.task == "ccnet":
            self._check_ccnet()
        elif not self.losses:
            raise _error("give at least one loss, e.g. [{name: l1, weight: 1.0}]", "losses")
        elif self.task == "restoration":
            for i, name in enumerate(names):
                if name in _CONTRASTIVE_LOSSES:
                    raise _error(f"{name!r} trains a feature extractor; it needs task: contrastive_teacher or "
                                 "contrastive_student", "losses", i, "name")
        else:
            self._check_contrastive()
        for section, users in (("contrastive", "the contrastive tasks"), ("ccnet", "task ccnet")):
            uses = self.task.startswith(section) if section == "contrastive" else self.task == section
            if section in _given(self) and not uses:
                raise _error(f"only used by {users}; remove it or set task", section)
        if self.schedule.name == "cosine" and self.schedule.t_max is None and self.train.iterations is None \
                and self.train.epochs is None:
            raise _error("required for a cosine schedule when only train.time_budget bounds the run",
                         "schedule", "t_max")
        self._check_vgg_style_discriminator()
        return self

    def _check_contrastive(self) -> None:
        names = [loss.name for loss in self.losses]
        allowed = ("contrastive",) if self.task == "contrastive_teacher" else _CONTRASTIVE_LOSSES
        for i, name in enumerate(names):
            if name not in allowed:
                raise _error(f"task {self.task} takes only {' and '.join(allowed)} losses, not {name!r}",
                             "losses", i, "name")
        if self.task == "contrastive_student":
            if "distillation" not in names:
                raise _error("task contrastive_student needs a {name: distillation} loss", "losses")
            if self.contrastive.teacher is None:
                raise _error("task contrastive_student needs the teacher's weights", "contrastive", "teacher")
        elif self.contrastive.teacher is not None:
            raise _error("only used by task contrastive_student", "contrastive", "teacher")
        if self.data.val is not None:
            raise _error("the contrastive tasks do not validate; set data.val: null", "data", "val")
        if self.train.ema_decay is not None:
            raise _error("not supported by the contrastive tasks", "train", "ema_decay")

    def _check_ccnet(self) -> None:
        if self.losses:
            raise _error("task ccnet trains with CC-Net's own classification loss (Eq. 1); remove losses",
                         "losses")
        for key in sorted({"protocol", "crop", "crop_ref", "augment"} & _given(self.data.train)):
            raise _error("not used by task ccnet, which cuts its own crops (see the ccnet section)",
                         "data", "train", key)
        if self.data.val is not None:
            raise _error("task ccnet does not validate; set data.val: null", "data", "val")
        if self.train.ema_decay is not None:
            raise _error("not supported by task ccnet", "train", "ema_decay")

    def _check_vgg_style_discriminator(self) -> None:
        for i, loss in enumerate(self.losses):
            if not isinstance(loss, AdversarialLossConfig) or loss.discriminator.name != "vgg_style":
                continue  # the checks below concern the fixed-size VGG-style discriminator
            if self.train.batch * (loss.discriminator.input_size // 32) ** 2 < 2:
                # Its last batch norm sees (input_size / 32)^2 values per channel and sample.
                raise _error("the discriminator's batch norm needs at least 2 values per channel; with "
                             f"input_size {loss.discriminator.input_size} use a batch of 2 or more",
                             "train", "batch")
            if self.data.train.crop is not None and self.data.train.crop != loss.discriminator.input_size:
                raise _error(f"{loss.discriminator.input_size} differs from the HR crop data.train.crop = "
                             f"{self.data.train.crop}; make them equal",
                             "losses", i, "discriminator", "input_size")

    @property
    def adversarial(self) -> AdversarialLossConfig | None:
        """The adversarial loss entry, if any."""
        return next((loss for loss in self.losses if isinstance(loss, AdversarialLossConfig)), None)
