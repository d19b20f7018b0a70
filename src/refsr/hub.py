"""Building registered models with their weights: :func:`create_model`.

Weights come from one of three places:

- ``None``: random initialisation, as the model's own ``__init__`` does it;
- ``"default"``: the file shipped inside the package for that name (its
  :class:`~refsr.models.WeightsInfo`), checked against its recorded SHA-256;
- a path: a ``.safetensors`` file in refsr's own layout, or an official ``.pth``/``.pt`` checkpoint, which is
  converted on the fly with :func:`refsr.convert_official`.

Reading and writing weights files lives in :mod:`refsr.weights_io`, which needs no model code; its
functions are re-exported here for convenience.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from refsr.errors import RefsrError
from refsr.models import _registry
from refsr.weights_io import file_sha256, load_state_dict, read_checkpoint, save_safetensors

__all__ = ["create_model", "load_state_dict", "read_checkpoint", "save_safetensors", "default_weights_path",
           "file_sha256", "fitting_variants"]


def default_weights_path(name: str) -> Path | None:
    """The weights file shipped in the package for model ``name`` (its :class:`~refsr.models.WeightsInfo`),
    or ``None`` if none ships."""
    info = _registry.get_entry(name).weights
    if info is None:
        return None
    return Path(str(resources.files("refsr") / "weights" / info.file))


def _read_shipped_weights(name: str) -> dict[str, torch.Tensor]:
    """The shipped weights of ``name``, checked against their recorded SHA-256."""
    info = _registry.get_entry(name).weights
    path = default_weights_path(name)
    assert info is not None and path is not None
    if not path.is_file():
        raise RefsrError(f"the shipped weights of {name!r} ({path}) are missing; reinstall refsr")
    if file_sha256(path) != info.sha256:
        raise RefsrError(f"the shipped weights of {name!r} ({path}) do not match their recorded sha256; the file "
                         "is damaged or was replaced: reinstall refsr")
    return read_checkpoint(path)


def create_model(name: str, *, weights: str | os.PathLike | None = None, **overrides: Any) -> torch.nn.Module:
    """Build the registered model ``name`` and load its weights.

    As in timm, a model is **randomly initialised unless weights are asked for**: ``create_model("masa-lite")``
    is an untrained network. ``weights="default"`` loads the weights shipped in the package, which only some
    names have (``refsr.list_models(pretrained=True)``; ``refsr models`` lists them with their scores).
    :func:`refsr.upscale` and ``refsr upscale``/``refsr eval`` load a name's shipped weights on their own and
    refuse a name without any.

    Args:
        name: a name from :func:`refsr.list_models`.
        weights: ``None`` (random init), ``"default"`` (the weights shipped in the package), or a path to a
            ``.safetensors`` file (refsr layout) or an official ``.pth`` checkpoint (converted on the fly).
        **overrides: keyword arguments for the model's builder (its configuration options).

    Returns:
        The model, in eval mode when weights were loaded, on the CPU.

    Raises:
        RefsrError: an unknown name or option, ``"default"`` for a name that ships no weights, weights that
            do not fit (naming the variant they fit, if another one does).
    """
    entry = _registry.get_entry(name)
    _registry.check_options(name, overrides)
    model = entry.builder(**overrides)
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "default":
        if entry.weights is None:
            if not any(True for _ in model.parameters()):
                return model.eval()  # nothing to load: the model has no weights (bicubic)
            shipped = ", ".join(_registry.list_models(pretrained=True)) or "none"
            raise RefsrError(f"no trained weights ship for model {name!r} (models that do: {shipped}; see "
                             "'refsr models')")
        _load_fitting(model, name, _read_shipped_weights(name), f"the shipped weights of {name!r}")
        return model.eval()
    path = Path(weights)
    state = read_checkpoint(path)
    if path.suffix != ".safetensors":
        state = _registry.convert_official(name, state)
    _load_fitting(model, name, state, f"the weights in {path}")
    return model.eval()


def _load_fitting(model: torch.nn.Module, name: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """:func:`load_state_dict`; when the weights do not fit, name the registered variant they do fit."""
    try:
        load_state_dict(model, state, source=source)
    except RefsrError:
        fits = fitting_variants(state, like=name)
        if not fits:
            raise
        others = " or ".join(repr(n) for n in fits)
        raise RefsrError(f"{source} are for model {others}, not {name!r} (another variant of "
                         f"{type(model).__name__}); use --model {fits[0]} (model={fits[0]!r})") from None


def fitting_variants(state: Mapping[str, torch.Tensor], *, like: str) -> list[str]:
    """Registered names, defined in the same model file as ``like``, whose default build has exactly the keys
    and shapes of ``state``. Built on the meta device: no memory, no initialisation."""
    module = _registry.get_entry(like).builder.__module__
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for other in _registry.list_models():
        entry = _registry.get_entry(other)
        if other == like or entry.builder.__module__ != module:
            continue
        with torch.device("meta"):
            candidate = entry.builder()
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            found.append(other)
    return found
