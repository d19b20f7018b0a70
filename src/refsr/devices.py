"""Choosing the device to run on, in one place: :func:`resolve_device`.

``refsr upscale --device``, ``refsr eval --device``, ``refsr.upscale(device=)`` and the training config's
``train.device`` all go through it, so every device name means the same everywhere and an unusable one is
one clear error.
"""

from __future__ import annotations

import torch

from refsr.errors import RefsrError

__all__ = ["resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(spec: str | torch.device, *, local_rank: int | None = None, field: str = "device",
                   auto_mps: bool = True) -> torch.device:
    """A usable torch device from ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``.

    Args:
        spec: the name (or a ``torch.device``).
        local_rank: for training (also without ``torchrun``: 0), the process's GPU: ``"auto"`` and a bare
            ``"cuda"`` then mean ``cuda:<local_rank>``, an indexed device as DDP needs.
        field: what the errors call the setting (``"--device"``, ``"train.device"``).
        auto_mps: ``"auto"`` may pick Apple's MPS when there is no CUDA GPU (training keeps the CPU).

    Raises:
        RefsrError: an unknown name, or a device this machine does not have.
    """
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
        return torch.device("mps" if auto_mps and _mps_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise RefsrError(f"{field}: unknown device {spec!r} ({exc}); use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RefsrError(f"{field}: {str(spec)!r} was asked for, but no CUDA GPU is available; use cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RefsrError(f"{field}: {str(spec)!r} does not exist ({torch.cuda.device_count()} GPUs); use cuda:0")
    elif device.type == "mps":
        if not _mps_available():
            raise RefsrError(f"{field}: 'mps' was asked for, but Apple's MPS is not available; use cpu")
    elif device.type != "cpu":
        raise RefsrError(f"{field}: unsupported device {str(spec)!r}; use cpu, cuda, mps or auto")
    return device
