"""Reading and writing weights files: no model code here, so anything (a model, a loss, the training loop)
can load or save weights without importing the model zoo.

- :func:`read_checkpoint` reads ``.safetensors``, or ``.pth``/``.pt`` with ``torch.load(...,
  weights_only=True, map_location="cpu")``: a checkpoint is data, and never runs code. torch's warnings and its
  coloured advice to load with ``weights_only=False`` never reach the user: the error says what the file holds.
- :func:`save_safetensors` writes atomically (:func:`refsr.io.atomic_output`): any failure, the temporary
  file's creation included, is one error naming the path and the reason, and leaves nothing behind.
- :func:`load_state_dict` loads strictly, with one clear error listing what does not fit.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Union

import torch

from refsr.errors import RefsrError
from refsr.io import atomic_output, check_output_folder

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
        with warnings.catch_warnings():
            # torch warns (UserWarning) before refusing e.g. a TorchScript archive; the error says it all.
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        raise RefsrError(f"{p}: {_torch_load_problem(exc)}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RefsrError(f"{p}: the checkpoint does not hold a state_dict of tensors")
    return obj


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _torch_load_problem(exc: Exception) -> str:
    """What is wrong with a checkpoint ``torch.load(weights_only=True)`` refused, in one line without colours.

    torch's own message is several lines of advice (in terminal colours) to load with ``weights_only=False``,
    which would run the file's code: refsr never does, so the advice is left out.
    """
    text = _ANSI_ESCAPE.sub("", str(exc))
    pickled = _UNSUPPORTED_GLOBAL.search(text)
    if pickled:
        return (f"the checkpoint holds pickled Python objects ({pickled.group(1)}), which refsr does not load "
                "(it never runs a checkpoint's code); save only the model's state_dict, or a .safetensors file")
    if "TorchScript" in text:
        return "a TorchScript archive, not a checkpoint of weights; save the model's state_dict instead"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return f"not a readable PyTorch checkpoint ({first})"


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: PathLike, metadata: dict | None = None) -> Path:
    """Write ``state_dict`` as safetensors atomically (temporary file in the same folder, then rename).

    Raises:
        RefsrError: the folder is missing or cannot be written, or the write failed (path and reason).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    p = Path(path)
    check_output_folder(p.parent if str(p.parent) else Path("."), for_file=p)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_output(p) as tmp:
        try:
            save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) as its own error
            raise RefsrError(f"{p}: cannot write ({exc})") from None
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
