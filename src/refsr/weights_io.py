"""Reading and writing weights files: no model code here, so anything (a model, a loss, the training loop)
can load or save weights without importing the model zoo.

- :func:`read_checkpoint` reads ``.safetensors``, or ``.pth``/``.pt`` with ``torch.load(...,
  weights_only=True, map_location="cpu")``: a checkpoint is data, and never runs code.
- :func:`save_safetensors` writes atomically (a temporary file in the destination folder, then a rename).
- :func:`load_state_dict` loads strictly, with one clear error listing what does not fit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping, Union

import torch

from refsr.errors import RefsrError

__all__ = ["read_checkpoint", "save_safetensors", "load_state_dict", "file_sha256", "PathLike"]

PathLike = Union[str, os.PathLike]

# Wrappers that training frameworks put around a state_dict (BasicSR: "params"/"params_ema").
_WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model", "net_g")


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
