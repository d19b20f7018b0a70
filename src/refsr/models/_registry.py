"""Explicit model registry with keyword-only builders, and the record of every shipped weights file.

Model files register their builders with ``@register_model`` when :mod:`refsr.models` imports them, by
name, in one visible list; nothing scans the file system. Each builder takes keyword arguments only
(``def masa(*, nf=64, ...)``), which are the overrides that :func:`refsr.create_model` passes on.

Shipped weights are data, as torchvision's ``Weights.meta`` and timm's ``pretrained_cfg`` are: a model name
that ships weights registers a :class:`WeightsInfo` (file, sha256, parameter count, how it was trained and
what it scored), declared in its model file next to the variant. ``list_models(pretrained=True)``, ``refsr
models`` and the model card read these records; a test checks them against the files and the docs.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from refsr.errors import RefsrError

__all__ = ["ModelEntry", "WeightsInfo", "register_model", "register_converter", "get_entry", "list_models",
           "describe_models", "model_options", "model_scale", "check_options", "build_variant", "convert_official"]

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class WeightsInfo:
    """One shipped weights file and what is known of it, measured.

    Attributes:
        file: the file name under ``refsr/weights/`` (package data).
        sha256: the file's SHA-256, checked when the weights are loaded.
        parameters: the model's parameter count (the file holds exactly these).
        scale: the upscaling factor the weights were trained for.
        degradation: how the training LR was made from HR: ``"bicubic"`` (PIL bicubic, as the official
            repositories and the open benchmark do).
        recipe: the training configs, in order (a later one starts from the earlier one's weights).
        hardware: what each stage ran on.
        training_time: wall time of each stage.
        training_data: what the model saw (never the eval split).
        protocol: the metric protocol of ``scores`` (:mod:`refsr.metrics`).
        eval_command: the command that measured ``scores``.
        scores: ``{group: (PSNR dB, SSIM)}`` on the open benchmark's eval split, ×``scale``: ``"all"``, each
            pair kind (``"video"``, ``"stereo"``...) and each video frame gap (``"gap 1"``...), rounded as the
            eval table prints them (2 and 3 decimals).
        pairs: the number of eval pairs behind ``scores["all"]``.
    """

    file: str
    sha256: str
    parameters: int
    scale: int
    degradation: str
    recipe: tuple[str, ...]
    hardware: str
    training_time: str
    training_data: str
    protocol: str
    eval_command: str
    scores: Mapping[str, tuple[float, float]]
    pairs: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able copy (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["recipe"] = list(self.recipe)
        out["scores"] = {k: list(v) for k, v in self.scores.items()}
        return out


@dataclass
class ModelEntry:
    """What the registry knows of one model name."""

    name: str
    builder: Callable[..., torch.nn.Module]
    doc: str = ""
    # The paper the architecture comes from, short: "MASA-SR (CVPR 2021)".
    paper: str = ""
    # The weights that ship in the package for this name (``weights="default"``), if any.
    weights: WeightsInfo | None = None
    # Filled in by ``register_converter``: maps an official state_dict onto this model's layout.
    converter: Converter | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, paper: str = "", weights: WeightsInfo | None = None,
                   tags: tuple[str, ...] = ()) -> Callable:
    """Register a keyword-only builder under ``name``. Registering a name twice is an error.

    Args:
        name: the model name users pass to :func:`refsr.create_model`.
        paper: the paper of the architecture, short (``"MASA-SR (CVPR 2021)"``).
        weights: the record of the weights shipped for this name, if any.
        tags: free-form labels.
    """

    def decorator(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name=name, builder=builder, doc=doc[0] if doc else "", paper=paper,
                                     weights=weights, tags=tags)
        return builder

    return decorator


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Register the official-checkpoint converter of the model ``name`` (registered before)."""

    def decorator(fn: Converter) -> Converter:
        get_entry(name).converter = fn
        return fn

    return decorator


def model_options(name: str) -> list[str]:
    """The keyword options :func:`refsr.create_model` accepts for ``name``.

    A builder's own keyword-only parameters, plus, for a timm-style ``def variant(*, ..., **kwargs) -> Cls``
    builder (see :func:`build_variant`), the keyword parameters of the class its return annotation names.
    """
    builder = get_entry(name).builder
    params = inspect.signature(builder).parameters
    own = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return own
    cls = typing.get_type_hints(builder).get("return")
    if not isinstance(cls, type):
        raise TypeError(f"the builder of {name!r} takes **kwargs, so its return annotation must name the class")
    return own + [n for n in _class_options(cls) if n not in own]


def _class_options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items()
            if n != "self" and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def model_scale(name: str, overrides: Mapping[str, Any] | None = None) -> int:
    """The upscaling factor of model ``name`` built with ``overrides``, found without loading anything: the
    class is built on the meta device, and a timm-style builder's own options (weight files) are left out."""
    builder = get_entry(name).builder
    params = inspect.signature(builder).parameters
    kwargs = dict(overrides or {})
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items()
                  if k not in params or params[k].kind is inspect.Parameter.VAR_KEYWORD}
    with torch.device("meta"):
        return int(builder(**kwargs).scale)


def check_options(name: str, overrides: Mapping[str, Any]) -> None:
    """Raise :class:`RefsrError` for an override that model ``name`` has no option for, listing its options."""
    options = model_options(name)
    unknown = [k for k in overrides if k not in options]
    if unknown:
        close = difflib.get_close_matches(unknown[0], options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RefsrError(f"model {name!r} has no option {', '.join(map(repr, unknown))}{hint} (its options: "
                         f"{', '.join(options) or 'none'})")


M = typing.TypeVar("M", bound=torch.nn.Module)


def build_variant(cls: type[M], name: str, model_args: Mapping[str, Any], overrides: Mapping[str, Any]) -> M:
    """timm's ``_create(variant, **dict(model_args, **kwargs))``: build ``cls`` with the variant's arguments,
    each overridable, after checking every override against the class's options (a misspelt option is an
    error naming the options, never silently ignored)."""
    unknown = [k for k in overrides if k not in _class_options(cls)]
    if unknown:
        check_options(name, {k: overrides[k] for k in unknown})
    return cls(**dict(model_args, **overrides))


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, or a :class:`RefsrError` that names the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RefsrError(
            f"unknown model {name!r}{hint} (known models: {', '.join(sorted(_REGISTRY))})"
        ) from None


def list_models(pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
    """The registered model names, sorted.

    Args:
        pattern: a shell-style filter such as ``"ssen*"``.
        pretrained: only the names that ship trained weights (``weights="default"``).
    """
    names = sorted(_REGISTRY)
    return [n for n in names if (pattern is None or fnmatch.fnmatchcase(n, pattern))
            and (not pretrained or _REGISTRY[n].weights is not None)]


def describe_models(pattern: str | None = None) -> list[dict[str, Any]]:
    """One summary per registered model (``refsr models``): name, paper, parameters, scale, whether weights
    ship, and those weights' record (open-eval scores included).

    Models are built with their default options on the meta device, which allocates and initialises nothing.
    """
    rows = []
    for name in list_models(pattern):
        entry = _REGISTRY[name]
        with torch.device("meta"):
            model = entry.builder()
        rows.append({
            "name": name,
            "paper": entry.paper,
            "parameters": sum(p.numel() for p in model.parameters()),
            "scale": int(model.scale),
            "uses_ref": bool(getattr(model, "uses_ref", True)),
            "pretrained": entry.weights is not None,
            "weights": entry.weights.as_dict() if entry.weights is not None else None,
            "summary": entry.doc,
        })
    return rows


def convert_official(name: str, state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map an official checkpoint's ``state_dict`` onto the layout of ``refsr``'s model ``name``.

    ``module.`` prefixes (DataParallel) are stripped first. The result loads with ``strict=True``.
    """
    entry = get_entry(name)
    if entry.converter is None:
        raise RefsrError(f"model {name!r} has no official checkpoint format to convert from")
    if not isinstance(state_dict, dict):
        raise RefsrError(f"expected a state_dict (a dict of tensors) to convert, got {type(state_dict).__name__}")
    stripped = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    return entry.converter(stripped)
