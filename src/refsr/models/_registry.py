"""Explicit model registry with keyword-only builders.

Model files register their builders with ``@register_model`` when :mod:`refsr.models` imports them, by
name, in one visible list; nothing scans the file system. Each builder takes keyword arguments only
(``def masa(*, nf=64, ...)``), which are the overrides that :func:`refsr.create_model` passes on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from refsr.errors import RefsrError

__all__ = ["ModelEntry", "register_model", "register_converter", "get_entry", "list_models", "convert_official"]

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class ModelEntry:
    """What the registry knows of one model name."""

    name: str
    builder: Callable[..., torch.nn.Module]
    doc: str = ""
    # Filled in by ``register_converter``: maps an official state_dict onto this model's layout.
    converter: Converter | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, tags: tuple[str, ...] = ()) -> Callable:
    """Register a keyword-only builder under ``name``. Registering a name twice is an error."""

    def decorator(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name=name, builder=builder, doc=doc[0] if doc else "", tags=tags)
        return builder

    return decorator


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Register the official-checkpoint converter of the model ``name`` (registered before)."""

    def decorator(fn: Converter) -> Converter:
        get_entry(name).converter = fn
        return fn

    return decorator


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


def list_models(pattern: str | None = None) -> list[str]:
    """The registered model names, sorted; ``pattern`` is a shell-style filter such as ``"ssen*"``."""
    import fnmatch

    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


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
