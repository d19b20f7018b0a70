"""Building models and loading their weights.

:func:`create_model` builds a registered model and loads weights from one of three places:

- ``None``: random initialisation, as the model's own ``__init__`` does it;
- ``"default"``: the safetensors file shipped inside the package (``refsr/weights/<name>.safetensors``);
- a path: a ``.safetensors`` file in refsr's own layout, or an official ``.pth``/``.pt`` checkpoint, which is
  converted on the fly with :func:`refsr.convert_official`.

Checkpoints are always read with ``torch.load(..., weights_only=True, map_location="cpu")``: a checkpoint is
data, and never runs code.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Union

import torch

from refsr.errors import RefsrError
from refsr.models import _registry

__all__ = ["create_model", "load_state_dict", "read_checkpoint", "save_safetensors", "default_weights_path",
           "file_sha256"]

PathLike = Union[str, os.PathLike]

# Wrappers that training frameworks put around a state_dict (BasicSR: "params"/"params_ema").
_WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model", "net_g")


def default_weights_path(name: str) -> Path | None:
    """The weights file shipped in the package for model ``name`` (its :class:`~refsr.models.WeightsInfo`),
    or ``None`` if none ships."""
    info = _registry.get_entry(name).weights
    if info is None:
        return None
    return Path(str(resources.files("refsr") / "weights" / info.file))


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` file as a flat ``{name: tensor}`` dict (on the CPU)."""
    p = Path(path)
    if not p.is_file():
        raise RefsrError(f"{p}: no such weights file")
    if p.stat().st_size == 0:
        raise RefsrError(f"{p}: the weights file is empty")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise RefsrError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefsrError(f"{p}: not a readable PyTorch checkpoint ({first})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RefsrError(f"{p}: the checkpoint does not hold a state_dict of tensors")
    return obj


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: PathLike, metadata: dict | None = None) -> Path:
    """Write ``state_dict`` as safetensors atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    if not p.parent.is_dir():
        raise RefsrError(f"{p}: the output folder {p.parent} does not exist")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise RefsrError(f"{p}: cannot write ({exc.strerror or exc})") from None
        raise
    return p


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "weights") -> None:
    """Load ``state_dict`` strictly, with one clear error that lists missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    misshapen = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_key_list(unexpected)}")
        if misshapen:
            parts.append(f"wrong shapes: {_key_list(misshapen)}")
        raise RefsrError(f"{source} do not fit model {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


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
    params = inspect.signature(entry.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in overrides if k not in params and not takes_any]
    if unknown:
        options = ", ".join(params) or "none"
        raise RefsrError(f"model {name!r} has no option {', '.join(map(repr, unknown))} (its options: {options})")
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
