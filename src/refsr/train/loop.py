"""The one training loop: :func:`run_training` runs every task of :data:`refsr.train.tasks.TASKS`.

One *iteration* is one optimiser step: ``train.grad_accumulation`` micro-batches of the task's size per
process, forward and backward each under ``train.precision`` (DDP synchronises the gradients on the last
one; each micro-batch's loss is divided by the number of micro-batches, so the gradient is that of the mean:
AMSA's official code sums three micro-batches instead, a factor Adam ignores up to its epsilon), then

1. the loss terms are averaged over micro-batches and processes, and a NaN or inf stops the run with a
   :class:`~refsr.errors.RefsrError` naming the iteration and the term (nothing is written, so the last
   checkpoint stays the last good one);
2. the network's optimiser steps (after optional gradient clipping), then the task's :meth:`~refsr.train.
   task.Task.after_step` (the restoration task's EMA and discriminator);
3. validation, the checkpoint and the callbacks run when due; then the stop conditions are checked (all
   processes agree on a time-budget stop, so they stop at the same iteration).

Determinism: the data order comes from :class:`~refsr.train.distributed.ResumableDistributedSampler` and
each sample's random choices from a generator seeded by ``(seed, epoch, index)``; the global RNGs are seeded
and saved in every checkpoint, with the optimisers' and grad scalers' states. On the CPU a resumed run
repeats an uninterrupted one bit for bit; on CUDA too with ``train.deterministic: true`` (deterministic
algorithms and cuBLAS's fixed workspace).

A run's folder: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (every iteration: losses, learning
rates, samples per second and, on CUDA, the peak GPU memory), ``tb/`` (TensorBoard),
``checkpoints/last/`` (every network of :meth:`~refsr.train.task.Task.modules` and ``state.pt``) and, with
validation, ``checkpoints/best/``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from refsr.errors import RefsrError
from refsr.io import atomic_output
from refsr.train import checkpoint
from refsr.train.builders import lr_factor
from refsr.train.config import config_to_dict, load_config
from refsr.train.distributed import (
    DistContext,
    ResumableDistributedSampler,
    all_reduce_mean,
    any_true,
    gather_objects,
    setup,
)
from refsr.train.monitor import Monitor, truncate_metrics
from refsr.train.schema import Config, Interval
from refsr.train.task import Precision, Task
from refsr.train.tasks import TASKS
from refsr.weights_io import load_state_dict

__all__ = [
    "TrainState",
    "IterationRecord",
    "TrainingSummary",
    "BatchStream",
    "Run",
    "run_training",
    "train_step",
]

Callback = Callable[["IterationRecord"], None]

# cuBLAS is deterministic only with a fixed workspace (CUDA's "Reproducibility" notes); it must be set before
# cuBLAS starts, so train.deterministic sets it before the task builds anything on the GPU.
_CUBLAS_WORKSPACE = ":4096:8"


# -------------------------------------------------------------------------------------------- records
@dataclass
class TrainState:
    """The counters a checkpoint saves. ``position`` is the global number of samples of the current epoch
    already read (over all processes)."""

    iteration: int = 0
    epoch: int = 0
    position: int = 0
    elapsed: float = 0.0
    best_score: float | None = None
    best_iteration: int | None = None


@dataclass
class IterationRecord:
    """What one iteration did (the same on every process: losses are averaged over processes).

    ``throughput`` holds ``iteration_seconds`` (this iteration's wall time on this process, data loading
    included), ``samples_per_second`` (its samples over all processes, per second of it) and, on CUDA,
    ``peak_gpu_memory_mb`` (this process, since the start).
    """

    iteration: int
    epoch: int
    lr: dict[str, float]
    losses: dict[str, float]
    total: float
    metrics: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"iteration": self.iteration, "epoch": self.epoch, "lr": self.lr, "losses": self.losses,
               "total": self.total}
        if self.metrics:
            out["metrics"] = self.metrics
        out.update(self.throughput)
        return out


@dataclass
class TrainingSummary:
    """The result of :func:`run_training`.

    Attributes:
        out_dir: the run's folder.
        iteration, epoch: where training stopped.
        stopped_by: ``"iterations"``, ``"epochs"`` or ``"time_budget"``.
        last_checkpoint, best_checkpoint: checkpoint folders (best: None without validation).
        best_score: the best validation score (PSNR in dB, or SSIM with ``select: ssim``).
        model: the trained network (raw weights, on the training device).
        modules: every network the checkpoints hold, by file stem (``model``, ``model_ema``,
            ``discriminator``...).
        records: this process's iteration records of this invocation.
    """

    out_dir: Path
    iteration: int
    epoch: int
    stopped_by: str
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_score: float | None
    model: nn.Module
    modules: dict[str, nn.Module]
    records: list[IterationRecord] = field(default_factory=list)

    @property
    def ema_model(self) -> nn.Module | None:
        return self.modules.get("model_ema")

    @property
    def discriminator(self) -> nn.Module | None:
        return self.modules.get("discriminator")


# ---------------------------------------------------------------------------------------------- data
class BatchStream:
    """Endless micro-batches for this process, epoch after epoch, tracking ``(epoch, position)``.

    The DataLoader is rebuilt at each epoch (and on resume, at the saved position), after the dataset and
    the sampler are told the epoch; worker processes therefore always see the current epoch.
    """

    def __init__(self, task: Task, sampler: ResumableDistributedSampler, *, num_workers: int, seed: int,
                 device: torch.device, state: TrainState, channels_last: bool = False) -> None:
        self.dataset, self.collate, self.sampler = task.dataset, task.collate, sampler
        self.batch, self.num_workers, self.seed, self.device = task.micro_batch, num_workers, seed, device
        self.state, self.channels_last = state, channels_last
        self._it: Iterator | None = None
        self._remaining = 0
        if num_workers > 0 and hasattr(self.dataset, "preload"):
            # Workers are forked anew at every epoch: images decoded here first are shared with all of them
            # (copy-on-write) instead of being decoded again by each worker in each epoch.
            self.dataset.preload()

    @property
    def micro_batches_per_epoch(self) -> int:
        return (self.sampler.epoch_size // self.sampler.world) // self.batch

    def _open(self) -> None:
        s = self.state
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(s.epoch)
        self.sampler.set_epoch(s.epoch, s.position)
        self._remaining = len(self.sampler) // self.batch
        # An explicit generator keeps the DataLoader from drawing its worker seed from the global RNG.
        loader = DataLoader(
            self.dataset, batch_size=self.batch, sampler=self.sampler, num_workers=self.num_workers,
            collate_fn=self.collate, drop_last=True, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + s.epoch),
        )
        self._it = iter(loader)

    def next(self) -> dict[str, Any]:
        """The next micro-batch, on the device; rolls over to the next epoch after the epoch's last one."""
        if self._it is None:
            self._open()
            if self._remaining == 0:  # a checkpoint taken exactly at an epoch's end
                self._advance_epoch()
                self._open()
        assert self._it is not None
        batch = next(self._it)
        self._remaining -= 1
        self.state.position += self.batch * self.sampler.world
        if self._remaining == 0:
            self._advance_epoch()
        non_blocking = self.device.type == "cuda"
        return {k: self._to_device(v, non_blocking) for k, v in batch.items()}

    def _to_device(self, value: Any, non_blocking: bool) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(self.device, non_blocking=non_blocking)
        if self.channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        return value

    def _advance_epoch(self) -> None:
        self._it = None  # drops the loader's workers
        self.state.epoch += 1
        self.state.position = 0

    def close(self) -> None:
        self._it = None


# ----------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """Everything the loop works with (built once by :func:`build_run`)."""

    cfg: Config
    ctx: DistContext
    out_dir: Path
    task: Task
    net: nn.Module  # what is called in training: the model, compiled and/or DDP-wrapped as configured
    precision: Precision
    stream: BatchStream
    total_iterations: int | None
    total_units: int | None
    state: TrainState
    monitor: Monitor | None = None
    records: list[IterationRecord] = field(default_factory=list)
    last_checkpoint: Path | None = None

    @property
    def model(self) -> nn.Module:
        return self.task.model

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (and cuBLAS's fixed workspace) for the run, when ``enabled``; the process's
    previous settings are put back afterwards, so a run inside a larger program leaves it as it was."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def build_run(cfg: Config, ctx: DistContext, out_dir: Path) -> Run:
    """Build the task of ``cfg`` on ``ctx.device``, its data stream and what the loop needs around it."""
    _seed_everything(cfg.seed)
    task = TASKS[cfg.task](cfg, ctx)
    model = task.model
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    sources = cfg.data.train.sources
    weights = [s.weight for s in sources] if sources[0].weight is not None else None
    sampler = ResumableDistributedSampler(task.dataset.sizes, seed=cfg.seed, rank=ctx.rank, world=ctx.world,
                                          weights=weights, samples_per_epoch=cfg.data.train.samples_per_epoch)
    state = TrainState()
    stream = BatchStream(task, sampler, num_workers=cfg.data.train.num_workers, seed=cfg.seed,
                         device=ctx.device, state=state, channels_last=cfg.train.channels_last)
    per_epoch = stream.micro_batches_per_epoch
    if per_epoch == 0:
        raise RefsrError(
            f"data.train: an epoch holds {sampler.epoch_size} samples, fewer than a micro-batch "
            f"({task.micro_batch}) x processes ({ctx.world}); use a smaller batch or more data"
        )
    accum = cfg.train.grad_accumulation
    if cfg.train.iterations is not None:
        total_iterations: int | None = cfg.train.iterations
    elif cfg.train.epochs is not None:
        total_iterations = math.ceil(cfg.train.epochs * per_epoch / accum)
    else:
        total_iterations = None
    if cfg.schedule.unit == "iteration":
        total_units = total_iterations
    elif cfg.train.epochs is not None:
        total_units = cfg.train.epochs
    else:
        total_units = None if total_iterations is None else math.ceil(total_iterations * accum / per_epoch)
    if cfg.schedule.name == "cosine" and cfg.schedule.t_max is None and not total_units:
        raise RefsrError("schedule.t_max: required when the run's length is not known in advance")

    net: nn.Module = model
    if cfg.train.compile:
        net = torch.compile(net)
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters,
        )
    return Run(cfg=cfg, ctx=ctx, out_dir=out_dir, task=task, net=net,
               precision=Precision(cfg.train.precision, ctx.device), stream=stream,
               total_iterations=total_iterations, total_units=total_units, state=state)


# ---------------------------------------------------------------------------------------------- step
def _nonfinite_error(run: Run, iteration: int, name: str, value: float) -> RefsrError:
    # Looked up on disk, so that every process (not only rank 0, which writes) names the same checkpoint.
    folder = checkpoint.find_checkpoint(run.checkpoints, "last")
    where = (f"the last good checkpoint is {folder} (iteration {_checkpoint_iteration(folder)})"
             if folder is not None else "no checkpoint had been written yet")
    return RefsrError(
        f"iteration {iteration}: the {name} loss is {value}; training stopped and {where}; lower optimizer.lr "
        "or check the data, then continue with --resume"
    )


def _checkpoint_iteration(folder: Path) -> int | str:
    try:
        return int(checkpoint.read_state(folder)["iteration"])
    except RefsrError:
        return "?"


def _set_lrs(run: Run) -> dict[str, float]:
    cfg, s = run.cfg, run.state
    factor = lr_factor(cfg.schedule, iteration=s.iteration, epoch=s.epoch, total_units=run.total_units,
                       base_lr=cfg.optimizer.lr)
    run.task.set_lr(factor)
    return {g["name"]: float(g["lr"]) for g in run.task.optimizer.param_groups}


def _zero_loss(model: nn.Module) -> torch.Tensor:
    """A zero that depends on every parameter, so that a step with no active term still has gradients."""
    return sum((p.sum() * 0 for p in model.parameters() if p.requires_grad), torch.zeros(()))


def train_step(run: Run, *, want_images: bool = False) -> tuple[IterationRecord, torch.Tensor | None]:
    """One optimiser step (see the module docstring); returns its record and, if asked, an image grid."""
    cfg, s, ctx, task = run.cfg, run.state, run.ctx, run.task
    accum = cfg.train.grad_accumulation
    iteration = s.iteration + 1  # the number this step gets once done
    epoch = s.epoch
    lrs = _set_lrs(run)
    started = time.perf_counter()
    names: list[str] = []
    metric_names: list[str] = []
    sums: torch.Tensor | None = None
    grid = None
    samples = 0
    run.net.train()
    task.optimizer.zero_grad(set_to_none=True)
    for k in range(accum):
        batch = run.stream.next()
        samples += run.stream.batch
        last = k == accum - 1
        # DDP all-reduces gradients on every backward unless told not to: only the last micro-batch syncs.
        sync = contextlib.nullcontext() if last or not ctx.distributed else run.net.no_sync()  # type: ignore[operator]
        with sync:
            with run.precision.autocast():
                result = task.losses(run.net, batch, iteration=s.iteration, want_images=want_images and k == 0)
            values = [v.float() for _, v in result.terms]
            total = torch.stack(values).sum() if values else _zero_loss(task.model).to(ctx.device)
            run.precision.backward(total / accum, "optimizer")
        if sums is None:
            names, metric_names = [n for n, _ in result.terms], sorted(result.metrics)
            sums = torch.zeros(len(names) + 1 + len(metric_names), dtype=torch.float64)
        sums += torch.tensor([v.item() for v in values] + [total.item()]
                             + [float(result.metrics[m]) for m in metric_names], dtype=torch.float64)
        if result.grid is not None:
            grid = result.grid
    assert sums is not None
    sums = all_reduce_mean((sums / accum).to(ctx.device), ctx).cpu()
    for name, value in zip(names + ["total"], sums.tolist()):
        if not math.isfinite(value):
            raise _nonfinite_error(run, iteration, name, value)
    run.precision.step(task.optimizer, "optimizer", clip_norm=cfg.train.clip_grad_norm,
                       parameters=task.model.parameters())

    def check_finite(name: str, value: float) -> None:
        if not math.isfinite(value):
            raise _nonfinite_error(run, iteration, name, value)

    losses = dict(zip(names, sums[: len(names)].tolist()))
    losses.update(task.after_step(iteration, run.precision, check_finite))
    s.iteration = iteration
    seconds = time.perf_counter() - started
    throughput = {"samples_per_second": samples * ctx.world / max(seconds, 1e-9), "iteration_seconds": seconds}
    if ctx.device.type == "cuda":
        throughput["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    metrics = dict(zip(metric_names, sums[len(names) + 1:].tolist()))
    record = IterationRecord(iteration=iteration, epoch=epoch, lr=lrs, losses=losses,
                             total=float(sums[len(names)]), metrics=metrics, throughput=throughput)
    return record, grid


# ----------------------------------------------------------------------------------------- checkpoints
def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _training_state(run: Run, rng_states: list) -> dict[str, Any]:
    s = run.state
    state: dict[str, Any] = {
        "format": checkpoint.FORMAT_VERSION,
        "task": run.cfg.task,
        "iteration": s.iteration,
        "epoch": s.epoch,
        "position": s.position,
        "elapsed": s.elapsed,
        "best_score": s.best_score,
        "best_iteration": s.best_iteration,
        "world_size": run.ctx.world,
        "grad_scalers": run.precision.state_dict(),
        "rng": rng_states,
        "config": config_to_dict(run.cfg),
    }
    for name, optimizer in run.task.optimizers().items():
        state[name] = optimizer.state_dict()
    return state


def _gather_rng_for_checkpoint(run: Run) -> list[Any] | None:
    """Every process's RNG state, on rank 0 (``None`` elsewhere), once the weights are known to be finite.
    Every rank must call it: the gather is collective."""
    rng_states = gather_objects(checkpoint.capture_rng(), run.ctx)
    if not run.ctx.is_main:
        return None
    bad = [name for name, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RefsrError(
            f"iteration {run.state.iteration}: the weights hold NaN or inf ({bad[0]}); training stopped and the "
            f"last good checkpoint ({run.last_checkpoint}) is kept; lower optimizer.lr, then --resume"
        )
    return rng_states


def save_last(run: Run) -> Path | None:
    """Write ``checkpoints/last`` (rank 0; every process hands in its RNG state)."""
    rng_states = _gather_rng_for_checkpoint(run)
    if rng_states is None:
        return None
    weights = {name: _state_dict_cpu(module) for name, module in run.task.modules().items()}
    run.last_checkpoint = checkpoint.write_checkpoint(run.checkpoints, "last", weights,
                                                      state=_training_state(run, rng_states))
    return run.last_checkpoint


def save_best(run: Run, result: dict[str, Any]) -> Path | None:
    if not run.ctx.is_main:
        return None
    cfg = run.cfg
    info = {"iteration": run.state.iteration, "epoch": run.state.epoch, "psnr": result["psnr"],
            "ssim": result["ssim"], "select": cfg.data.val.select, "model": cfg.model.name,  # type: ignore[union-attr]
            "overrides": cfg.model.overrides, "ema": run.task.validated_model() is not run.model}
    return checkpoint.write_checkpoint(run.checkpoints, "best",
                                       {"model": _state_dict_cpu(run.task.validated_model())}, info=info)


def restore(run: Run, folder: Path) -> None:
    """Load a ``last`` checkpoint into the run: weights, optimisers, grad scalers, RNG states, counters."""
    state = checkpoint.read_state(folder)
    if state.get("task", run.cfg.task) != run.cfg.task:
        raise RefsrError(f"{folder}: the checkpoint is of task {state['task']!r}, the config's is "
                         f"{run.cfg.task!r}; resume with the config the run was started with")
    for name, module in run.task.modules().items():
        stem = name
        if not (folder / f"{name}.safetensors").is_file():
            stem = run.task.weights_fallback.get(name, "")
            if not stem:
                raise RefsrError(f"{folder}: the checkpoint has no {name} weights; it was not made by this config "
                                 f"(task {run.cfg.task}, losses {[loss.name for loss in run.cfg.losses]})")
        load_state_dict(module, checkpoint.read_weights(folder, stem), source=f"the {name} weights in {folder}")
    try:
        for name, optimizer in run.task.optimizers().items():
            if state.get(name) is not None:
                optimizer.load_state_dict(state[name])
    except (ValueError, KeyError) as exc:
        raise RefsrError(f"{folder}: the optimiser state does not fit this config ({exc}); did "
                         "optimizer.param_groups change?") from None
    run.precision.load_state_dict(state.get("grad_scalers", {}))
    rng = state["rng"]
    if len(rng) == run.ctx.world:
        checkpoint.restore_rng(rng[run.ctx.rank])
    else:
        checkpoint.restore_rng(rng[0])
        if run.monitor is not None:
            run.monitor.message(f"resuming with {run.ctx.world} processes instead of {len(rng)}: the data order "
                                "continues exactly, the processes' random states restart from rank 0's")
    s = run.state
    s.iteration, s.epoch, s.position = int(state["iteration"]), int(state["epoch"]), int(state["position"])
    s.elapsed = float(state["elapsed"])
    s.best_score = state["best_score"]
    s.best_iteration = state["best_iteration"]
    if s.position > run.stream.sampler.epoch_size:
        raise RefsrError(f"{folder}: the checkpoint is at sample {s.position} of an epoch that now has "
                         f"{run.stream.sampler.epoch_size}; the training data changed")
    run.last_checkpoint = folder
    run.task.after_resume()


# ------------------------------------------------------------------------------------------------ loop
def _due(interval: Interval, iteration: int, epoch_done: bool, epoch: int) -> bool:
    if interval.iterations is not None:
        return iteration % interval.iterations == 0
    return epoch_done and epoch % interval.epochs == 0  # type: ignore[operator]


def _validate_and_keep_best(run: Run) -> None:
    val = run.cfg.data.val
    assert val is not None
    result = run.task.validate()
    score = result["ssim"] if val.select == "ssim" else result["psnr"]
    is_best = val.select == "last" or run.state.best_score is None or score > run.state.best_score
    if is_best:
        run.state.best_score, run.state.best_iteration = score, run.state.iteration
        save_best(run, result)
    if run.monitor is not None:
        run.monitor.validation({"iteration": run.state.iteration, "epoch": run.state.epoch, "psnr": result["psnr"],
                                "ssim": result["ssim"], "count": result["count"], "best": is_best}, result["grids"])


def _prepare_out_dir(out_dir: Path, resume: bool, ctx: DistContext) -> Path | None:
    """Check the output folder against ``resume``; returns the checkpoint to resume from."""
    found = checkpoint.find_checkpoint(out_dir / "checkpoints", "last")
    if resume and found is None:
        raise RefsrError(f"{out_dir}: there is no checkpoint to resume from; run without --resume")
    if not resume and found is not None:
        raise RefsrError(f"{out_dir}: the folder already holds a run; pass --resume to continue it, or choose "
                         "another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise RefsrError(f"{out_dir}: exists and is not a folder")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    return found


def _write_config(run: Run, resuming: bool) -> None:
    """Save the resolved config as OUT/config.yaml; on resume, say which fields changed."""
    if not run.ctx.is_main:
        return
    path = run.out_dir / "config.yaml"
    current = config_to_dict(run.cfg)
    if resuming and path.is_file() and run.monitor is not None:
        try:
            previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            previous = None
        changed = _diff_paths(previous, current)
        if changed:
            run.monitor.message(f"resuming with a changed config: {', '.join(changed[:8])}"
                                + (" ..." if len(changed) > 8 else ""))
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(current, fh, sort_keys=False)


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _diff_paths(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff_paths(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix or "(whole config)"]


def _stop_reason(run: Run, started: float, elapsed_before: float) -> str | None:
    cfg, s = run.cfg, run.state
    if run.total_iterations is not None and s.iteration >= run.total_iterations:
        return "iterations" if cfg.train.iterations is not None else "epochs"
    if cfg.train.time_budget is not None:
        out_of_time = elapsed_before + (time.monotonic() - started) >= float(cfg.train.time_budget)
        if any_true(out_of_time, run.ctx):
            return "time_budget"
    return None


def _loop(run: Run, callbacks: Sequence[Callback]) -> str:
    cfg, s = run.cfg, run.state
    started, elapsed_before = time.monotonic(), s.elapsed
    validated_at = checkpointed_at = s.iteration
    validates = run.task.validates
    reason = _stop_reason(run, started, elapsed_before)
    while reason is None:
        epoch_before = s.epoch
        images = cfg.train.image_interval is not None and (s.iteration + 1) % cfg.train.image_interval == 0
        record, grid = train_step(run, want_images=images and run.ctx.is_main)
        run.records.append(record)
        s.elapsed = elapsed_before + (time.monotonic() - started)
        if run.monitor is not None:
            run.monitor.iteration(record.as_dict(), scalars=s.iteration % cfg.train.log_interval == 0)
            if grid is not None:
                run.monitor.images("train/images", grid, s.iteration)
        epoch_done = s.epoch > epoch_before
        val = cfg.data.val
        if validates and s.epoch >= val.from_epoch and _due(val.interval, s.iteration, epoch_done, s.epoch):  # type: ignore[union-attr]
            _validate_and_keep_best(run)
            validated_at = s.iteration
        reason = _stop_reason(run, started, elapsed_before)
        if reason is None and _due(cfg.train.checkpoint_interval, s.iteration, epoch_done, s.epoch):
            save_last(run)
            checkpointed_at = s.iteration
        for callback in callbacks:
            callback(record)
    if validates and validated_at != s.iteration:
        _validate_and_keep_best(run)
    if checkpointed_at != s.iteration or run.last_checkpoint is None:
        save_last(run)
    return reason


def run_training(
    config: Config | str | Path,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainingSummary:
    """Train as ``config`` says (any task); the same call works in one process and under ``torchrun``.

    Args:
        config: a :class:`~refsr.train.schema.Config`, or the path of a YAML config.
        out_dir: the run's folder (default ``runs/<config name>``; see the module docstring).
        resume: continue from ``OUT/checkpoints/last`` (exactly: the same samples, augmentations and
            random states as an uninterrupted run). Without it, a folder that holds a run is an error.
        overrides: ``key.path=value`` strings, when ``config`` is a path.
        callbacks: called with each :class:`IterationRecord`, on every process, after the iteration's
            validation and checkpoint; an exception from one stops training (nothing more is written).
        progress: show a progress bar (rank 0).

    Returns:
        A :class:`TrainingSummary`.

    Raises:
        RefsrError: a bad config or data, a non-finite loss (naming the iteration and the term).
    """
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    out = Path(out_dir).expanduser() if out_dir is not None else Path("runs") / (cfg.name or "run")
    with _determinism(cfg.train.deterministic):  # before anything touches the GPU
        return _train(cfg, out, resume, callbacks, progress)


def _train(cfg: Config, out: Path, resume: bool, callbacks: Sequence[Callback], progress: bool) -> TrainingSummary:
    ctx = setup(cfg.train.device)
    run: Run | None = None
    try:
        found = _prepare_out_dir(out, resume, ctx)
        run = build_run(cfg, ctx, out)
        initial = int(checkpoint.read_state(found)["iteration"]) if found is not None else 0
        if found is not None and ctx.is_main:
            truncate_metrics(out, initial)
        ctx.barrier()
        run.monitor = Monitor(out, enabled=ctx.is_main, total=run.total_iterations, initial=initial,
                              progress=progress, tensorboard=cfg.train.tensorboard, desc=cfg.name or cfg.task)
        if found is not None:
            restore(run, found)
        _write_config(run, resuming=found is not None)
        reason = _loop(run, callbacks)
        best = checkpoint.find_checkpoint(run.checkpoints, "best") if ctx.is_main else None
        return TrainingSummary(out_dir=out, iteration=run.state.iteration, epoch=run.state.epoch, stopped_by=reason,
                               last_checkpoint=run.last_checkpoint, best_checkpoint=best,
                               best_score=run.state.best_score, model=run.model, modules=run.task.modules(),
                               records=run.records)
    finally:
        if run is not None:
            run.stream.close()
            if run.monitor is not None:
                run.monitor.close()
        ctx.close()
