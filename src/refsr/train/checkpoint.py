"""Checkpoints: weights as safetensors, the rest of the training state as a small ``torch.save`` file.

A checkpoint is a folder under ``OUT/checkpoints/``:

- ``last/``: ``model.safetensors`` (the trained weights), ``model_ema.safetensors`` (with EMA),
  ``discriminator.safetensors`` (with a GAN) and ``state.pt`` (optimisers, RNG states, iteration, epoch,
  sampler position, elapsed time, best score); enough to continue exactly.
- ``best/``: ``model.safetensors`` (the weights that were validated: the EMA ones when EMA is on) and
  ``info.json`` (iteration, epoch, metric); load it with ``refsr.create_model(name, weights=...)``.

``state.pt`` holds only tensors, dicts, lists, tuples, strings and numbers, so it is read with
``torch.load(weights_only=True)``: a checkpoint is data and never runs code.

Writes are atomic per folder: everything goes to ``.last.new/`` first; then ``last/`` is renamed to
``.last.old/``, ``.last.new/`` to ``last/``, and ``.last.old/`` removed. A crash at any point leaves either
the old or the new checkpoint readable (:func:`find_checkpoint` also looks at ``.last.old/``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from refsr.errors import RefsrError
from refsr.weights_io import read_checkpoint, save_safetensors

__all__ = [
    "STATE_FILE",
    "capture_rng",
    "restore_rng",
    "write_checkpoint",
    "find_checkpoint",
    "read_state",
    "read_weights",
]

STATE_FILE = "state.pt"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------ RNG states
def capture_rng() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and CUDA) global RNG states, as weights_only-loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- writing
def _write_folder(folder: Path, weights: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any] | None,
                  info: Mapping[str, Any] | None) -> None:
    folder.mkdir(parents=True)
    for name, tensors in weights.items():
        save_safetensors(tensors, folder / f"{name}.safetensors")
    if state is not None:
        with open(folder / STATE_FILE, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
    if info is not None:
        (folder / "info.json").write_text(json.dumps(dict(info), indent=2) + "\n", encoding="utf-8")


def write_checkpoint(
    root: Path,
    name: str,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    state: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``root/name/`` atomically (see the module docstring); returns its folder.

    Args:
        weights: ``{file stem: state_dict}``, e.g. ``{"model": model.state_dict()}``.
        state: the training state (saved as ``state.pt``).
        info: a small JSON-able summary (saved as ``info.json``).
    """
    final, new, old = root / name, root / f".{name}.new", root / f".{name}.old"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if new.exists():
            shutil.rmtree(new)
        _write_folder(new, weights, state, info)
    except (OSError, RefsrError) as exc:  # save_safetensors reports its own failures as RefsrError
        shutil.rmtree(new, ignore_errors=True)
        reason = exc.strerror or exc if isinstance(exc, OSError) else exc
        raise RefsrError(f"{final}: cannot write the checkpoint ({reason})") from None
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(new, final)
    if old.exists():
        shutil.rmtree(old)
    return final


# ---------------------------------------------------------------------------------------------- reading
def find_checkpoint(root: Path, name: str = "last") -> Path | None:
    """The folder of checkpoint ``name`` under ``root``, or None; recovers from a crash mid-replace."""
    final, old = root / name, root / f".{name}.old"
    if final.is_dir():
        return final
    if old.is_dir():
        return old
    return None


def read_state(folder: Path) -> dict[str, Any]:
    """The training state of a checkpoint folder, read with ``weights_only=True``."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise RefsrError(f"{folder}: no {STATE_FILE} in the checkpoint; it cannot be resumed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefsrError(f"{path}: not a readable training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise RefsrError(f"{path}: not a refsr training state (format {FORMAT_VERSION})")
    return state


def read_weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(folder / f"{stem}.safetensors")
