"""Choosing the device to run on, in one place: :func:`resolve_device`, and the number format to run in
there: :func:`resolve_precision`.

``refsr upscale --device``, ``refsr eval --device``, ``refsr.upscale(device=)`` and the training config's
``train.device`` all go through it, so every device name means the same everywhere and an unusable one is
one clear error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from refsr.errors import RefsrError

__all__ = ["resolve_device", "resolve_precision", "precision_of", "cpu_has_fast_bf16", "PRECISIONS"]

#: What ``precision=`` accepts; ``"auto"`` is resolved per device by :func:`resolve_precision`.
PRECISIONS = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: CPU flags (``/proc/cpuinfo``) of bfloat16 arithmetic in hardware: AVX-512 BF16 and AMX.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), where bfloat16 convolutions
    run about twice as fast as float32 ones. Elsewhere PyTorch emulates bfloat16, which is slower than
    float32. Read from ``/proc/cpuinfo`` (Linux), else from PyTorch's dispatch level (``AMX``)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    return any(flag in flags for flag in _BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device, supported: Sequence[str] = ("fp32",)) -> torch.dtype:
    """The dtype to run a model in: ``"fp32"``, ``"bf16"``, or ``"auto"``.

    ``"auto"`` is bfloat16 for a model that runs in it (``supported``) on a CPU with bfloat16 hardware
    (:func:`cpu_has_fast_bf16`), float32 otherwise. On CUDA it stays float32: bfloat16 is allowed there only
    where its cost is measured at 0.02 dB or less, which has not been done on a GPU yet
    (``benchmarks/upscale.py --gpu-checks`` measures it).

    Raises:
        RefsrError: an unknown name, or ``"bf16"`` for a model that does not list it.
    """
    if precision not in PRECISIONS:
        raise RefsrError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        fast = device.type == "cpu" and cpu_has_fast_bf16()
        precision = "bf16" if fast and "bf16" in supported else "fp32"
    if precision not in supported:
        raise RefsrError(f"this model runs in {', '.join(supported)} only; got precision {precision!r}")
    return _DTYPES[precision]


def precision_of(module: torch.nn.Module) -> str | None:
    """The precision name (``"fp32"``, ``"bf16"``, or the dtype's name) of ``module``'s floating-point
    parameters; ``None`` for a module without any."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return None
    return next((name for name, known in _DTYPES.items() if known == dtype), str(dtype).removeprefix("torch."))


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
