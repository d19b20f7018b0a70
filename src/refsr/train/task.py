"""What a training task is to the loop: :class:`Task`, and :class:`Precision` (mixed precision), which both use.

A task says *what* is trained (BasicSR's model classes play this part): the network, its data, its
optimiser, the loss of one micro-batch, what a checkpoint holds and, optionally, what happens after each
optimiser step (an EMA, a discriminator) and how it is validated. :func:`refsr.train.loop.run_training` owns
everything else, the same for every task: devices and DDP, the data order across epochs, gradient
accumulation, the learning-rate schedule, mixed precision, the NaN stop, checkpoints and exact resume, the
time budget, validation cadence, metrics and TensorBoard.

The tasks are in :mod:`refsr.train.tasks` (``TASKS``: ``restoration``, ``contrastive_teacher`` /
``contrastive_student`` and ``ccnet``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from refsr.errors import RefsrError
from refsr.train.builders import apply_lr
from refsr.train.distributed import DistContext
from refsr.train.schema import Config

__all__ = ["Task", "MicroBatchResult", "Precision", "PRECISIONS"]

#: ``train.precision`` values and the autocast dtype of each (``None``: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class MicroBatchResult:
    """What :meth:`Task.losses` computed on one micro-batch.

    Attributes:
        terms: ``(name, weighted loss)`` pairs; the loop sums them and backpropagates the sum.
        metrics: other numbers to log (``{"accuracy": ...}``), averaged over micro-batches and processes.
        grid: an image grid for TensorBoard (when asked for), ``(3, H, W)`` in [0, 1].
    """

    terms: list[tuple[str, torch.Tensor]]
    metrics: dict[str, float] = field(default_factory=dict)
    grid: torch.Tensor | None = None


class Task:
    """One kind of training run, plugged into the one loop.

    A subclass builds its parts in ``__init__(cfg, ctx)`` and sets:

    Attributes:
        model: the trained network (raw, not DDP-wrapped): what ``checkpoints/*/model.safetensors`` holds.
        dataset: the training samples; ``dataset.sizes`` lists the size of each source (the sampler mixes
            them by ``data.train.sources[*].weight``), and ``set_epoch(epoch)`` is called when it exists.
        collate: turns a list of samples into a micro-batch (a dict of tensors).
        micro_batch: samples the data loader puts in one micro-batch.
        optimizer: the network's optimiser (the learning-rate schedule drives it).

    and implements :meth:`losses`. The rest has defaults.
    """

    #: A weights file a checkpoint may lack, and the one to load instead (a run without EMA has no EMA file).
    weights_fallback: ClassVar[Mapping[str, str]] = {}

    model: nn.Module
    dataset: Dataset
    collate: Callable[[list], dict[str, Any]]
    micro_batch: int
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg: Config, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx

    # -- what a checkpoint holds
    def modules(self) -> dict[str, nn.Module]:
        """The networks a ``last`` checkpoint saves and a resume restores, by file stem (``model`` first)."""
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers whose state a checkpoint saves, by name (``optimizer``: the network's)."""
        return {"optimizer": self.optimizer}

    # -- one iteration
    def set_lr(self, factor: float) -> None:
        """Apply the schedule's factor (each group's lr is its initial lr times ``factor``)."""
        apply_lr(self.optimizer, factor)

    def losses(self, net: nn.Module, batch: Mapping[str, Any], *, iteration: int,
               want_images: bool) -> MicroBatchResult:
        """The weighted loss terms of one micro-batch (called under autocast; ``net`` is the model, or its DDP
        wrapper). ``iteration`` counts the optimiser steps done before this one."""
        raise NotImplementedError

    def after_step(self, iteration: int, precision: Precision,
                   check_finite: Callable[[str, float], None]) -> dict[str, float]:
        """Called after the network's optimiser stepped (``iteration`` is the step just done): an EMA update, a
        discriminator's steps. Returns values to log with the losses; ``check_finite(name, value)`` stops
        the run on a NaN or inf."""
        return {}

    def after_resume(self) -> None:
        """Called once a checkpoint has been restored (e.g. to refresh a frozen copy)."""

    # -- validation (optional)
    @property
    def validates(self) -> bool:
        """Whether :meth:`validate` has data to run on."""
        return False

    def validate(self) -> dict[str, Any]:
        """``{"psnr", "ssim", "count", "grids"}`` over the validation set (shared out among processes)."""
        raise NotImplementedError

    def validated_model(self) -> nn.Module:
        """The network :meth:`validate` scores, which a ``best`` checkpoint saves."""
        return self.model


class Precision:
    """``train.precision``: float32, or autocast to bfloat16 / float16 around the forward passes and losses.

    fp16 scales each loss before its backward pass and unscales the gradients before clipping and stepping
    (:class:`torch.amp.GradScaler`, one per optimiser, so that a discriminator stepping several times per
    iteration keeps its own scale); bf16 has float32's range and needs no scaling. Weights, optimiser states
    and validation stay in float32.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise RefsrError(f"train.precision: unknown {name!r}; use one of {', '.join(PRECISIONS)}")
        self.name, self.device, self.dtype = name, device, PRECISIONS[name]
        self._scalers: dict[str, torch.amp.GradScaler] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _scaler(self, name: str) -> torch.amp.GradScaler | None:
        if self.name != "fp16":
            return None
        if name not in self._scalers:
            self._scalers[name] = torch.amp.GradScaler(self.device.type)
        return self._scalers[name]

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """``loss.backward()``, scaled for fp16 (``optimizer`` names whose scale)."""
        scaler = self._scaler(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, name: str, *, clip_norm: float | None = None,
             parameters: Iterable[torch.Tensor] = ()) -> None:
        """Clip (optionally) and step; with fp16 the gradients are unscaled first, and a step whose gradients
        overflowed is skipped (the scale then shrinks), as :class:`torch.amp.GradScaler` does."""
        scaler = self._scaler(name)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(parameters), clip_norm)
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {name: scaler.state_dict() for name, scaler in self._scalers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, scaler_state in state.items():
            scaler = self._scaler(name)
            if scaler is not None:
                scaler.load_state_dict(scaler_state)
