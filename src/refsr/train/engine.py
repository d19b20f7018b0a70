"""The training loop, as small functions over a :class:`Run` (the parts) and a :class:`TrainState` (the
counters that a checkpoint saves).

One *iteration* is one optimiser step: ``train.grad_accumulation`` micro-batches of ``train.batch`` samples
per process, forward and backward each (DDP synchronises the gradients on the last one; each micro-batch's
loss is divided by the number of micro-batches, so the gradient is that of the mean: AMSA's official code
sums three micro-batches instead, a factor Adam ignores up to its epsilon), then

1. the loss terms are averaged over micro-batches and processes, and a NaN or inf stops the run with a
   :class:`~refsr.errors.RefsrError` naming the iteration and the term (nothing is written, so the last
   checkpoint stays the last good one);
2. the generator steps (after optional gradient clipping), the EMA follows;
3. with an adversarial loss, the discriminator steps on the same (detached) outputs, as ESRGAN/BasicSR
   order it (MASA's, C2-Matching's and AMSA's own code step the discriminator first; the difference is one
   step of lag), its loss averaged over the iteration's micro-batches (WGAN-GP: the penalty is computed
   per micro-batch, on that micro-batch's interpolates);
4. validation, the checkpoint and the callbacks run when due; then the stop conditions are checked (all
   processes agree on a time-budget stop, so they stop at the same iteration).

``task: contrastive_teacher | contrastive_student`` configs are handed to :mod:`refsr.train.contrastive`.

Determinism: the data order comes from :class:`~refsr.train.distributed.ResumableDistributedSampler` and
each sample's augmentation from a generator seeded by ``(seed, epoch, index)``; the global RNGs are seeded
and saved in every checkpoint. On the CPU a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from refsr.errors import RefsrError
from refsr.models import run_padded
from refsr.train import builders, checkpoint
from refsr.train.config import config_to_dict, load_config
from refsr.train.distributed import (
    DistContext,
    ResumableDistributedSampler,
    all_reduce_mean,
    any_true,
    average_gradients,
    broadcast_buffers,
    gather_objects,
    setup,
)
from refsr.train.monitor import Monitor, image_grid, truncate_metrics
from refsr.train.schema import AdversarialLossConfig, Config, Interval

__all__ = [
    "TrainState",
    "IterationRecord",
    "TrainingSummary",
    "Run",
    "BatchStream",
    "run_training",
    "train_step",
    "validate",
    "update_ema",
]

Callback = Callable[["IterationRecord"], None]


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
    """What one iteration did (the same on every process: losses are averaged over processes)."""

    iteration: int
    epoch: int
    lr: dict[str, float]
    losses: dict[str, float]
    total: float

    def as_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "epoch": self.epoch, "lr": self.lr, "losses": self.losses,
                "total": self.total}


@dataclass
class TrainingSummary:
    """The result of :func:`run_training`.

    Attributes:
        out_dir: the run's folder.
        iteration, epoch: where training stopped.
        stopped_by: ``"iterations"``, ``"epochs"`` or ``"time_budget"``.
        last_checkpoint, best_checkpoint: checkpoint folders (best: None without validation).
        best_score: the best validation score (PSNR in dB, or SSIM with ``select: ssim``).
        model: the trained network (raw weights, on the training device); ema_model: its EMA, if any;
            discriminator: the GAN's discriminator, if any.
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
    ema_model: nn.Module | None
    discriminator: nn.Module | None = None
    records: list[IterationRecord] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data
class BatchStream:
    """Endless micro-batches for this process, epoch after epoch, tracking ``(epoch, position)``.

    The DataLoader is rebuilt at each epoch (and on resume, at the saved position), after the dataset and
    the sampler are told the epoch; worker processes therefore always see the current epoch.
    """

    def __init__(self, dataset: Dataset, sampler: ResumableDistributedSampler, *, batch: int, num_workers: int,
                 seed: int, device: torch.device, state: TrainState) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.batch, self.num_workers, self.seed, self.device = batch, num_workers, seed, device
        self.state = state
        self._it: Iterator | None = None
        self._remaining = 0

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
            collate_fn=builders.collate_samples, drop_last=True, pin_memory=self.device.type == "cuda",
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
        return {k: (v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    def _advance_epoch(self) -> None:
        self._it = None  # drops the loader's workers
        self.state.epoch += 1
        self.state.position = 0

    def close(self) -> None:
        self._it = None


# ----------------------------------------------------------------------------------------------- run
@dataclass
class GanParts:
    """The discriminator, its optimiser and the loss that couples it to the generator."""

    cfg: AdversarialLossConfig
    discriminator: nn.Module
    loss: nn.Module  # generator_loss(sr, hr) / discriminator_loss(sr, hr): builders.build_adversarial_loss
    optimizer: torch.optim.Optimizer


@dataclass
class Run:
    """Everything the loop works with (built once by :func:`build_run`)."""

    cfg: Config
    ctx: DistContext
    out_dir: Path
    model: nn.Module  # the raw network (what is saved)
    net: nn.Module  # what is called in training: DDP(model) under torchrun, else model
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    terms: list[builders.LossTerm]
    gan: GanParts | None
    stream: BatchStream
    val_set: Dataset | None
    takes_ref_down: bool
    total_iterations: int | None
    total_units: int | None
    state: TrainState
    monitor: Monitor | None = None
    records: list[IterationRecord] = field(default_factory=list)
    last_checkpoint: Path | None = None

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def build_run(cfg: Config, ctx: DistContext, out_dir: Path) -> Run:
    """Build the model, EMA, losses, optimisers and data of ``cfg`` on ``ctx.device``."""
    _seed_everything(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model = builders.build_model(cfg).to(ctx.device)
    scale = model.scale
    ema = None
    if cfg.train.ema_decay is not None:
        ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = builders.build_optimizer(model, cfg.optimizer)
    terms = builders.build_loss_terms(cfg, ctx.device)
    gan = None
    adv = cfg.adversarial
    if adv is not None:
        d = builders.build_discriminator(adv, cfg.seed).to(ctx.device)
        gan = GanParts(adv, d, builders.build_adversarial_loss(adv, d),
                       builders.build_optimizer(d, adv.optimizer, path="losses.adversarial.optimizer"))

    train_set = builders.build_training_set(cfg, scale)
    sizes = train_set.sizes
    weights = [s.weight for s in cfg.data.train.sources] if cfg.data.train.sources[0].weight is not None else None
    sampler = ResumableDistributedSampler(sizes, seed=cfg.seed, rank=ctx.rank, world=ctx.world, weights=weights,
                                          samples_per_epoch=cfg.data.train.samples_per_epoch)
    state = TrainState()
    stream = BatchStream(train_set, sampler, batch=cfg.train.batch, num_workers=cfg.data.train.num_workers,
                         seed=cfg.seed, device=ctx.device, state=state)
    per_epoch = stream.micro_batches_per_epoch
    if per_epoch == 0:
        raise RefsrError(
            f"data.train: an epoch holds {sampler.epoch_size} samples, fewer than train.batch ({cfg.train.batch}) "
            f"x processes ({ctx.world}); use a smaller batch or more data"
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

    val_set = None
    if cfg.data.val is not None:
        val_set = builders.build_val_set(cfg.data.val, seed=cfg.seed, scale=scale)

    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters,
        )
    return Run(cfg=cfg, ctx=ctx, out_dir=out_dir, model=model, net=net, ema=ema, optimizer=optimizer, terms=terms,
               gan=gan, stream=stream, val_set=val_set, takes_ref_down=model.takes_ref_down,
               total_iterations=total_iterations, total_units=total_units, state=state)


# ---------------------------------------------------------------------------------------------- step
@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


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
    factor = builders.lr_factor(cfg.schedule, iteration=s.iteration, epoch=s.epoch, total_units=run.total_units,
                                base_lr=cfg.optimizer.lr)
    builders.apply_lr(run.optimizer, factor)
    if run.gan is not None:
        builders.apply_lr(run.gan.optimizer, factor if run.gan.cfg.follow_schedule else 1.0)
    return {g["name"]: float(g["lr"]) for g in run.optimizer.param_groups}


def train_step(run: Run, *, want_images: bool = False) -> tuple[IterationRecord, torch.Tensor | None]:
    """One optimiser step (see the module docstring); returns its record and, if asked, an image grid."""
    cfg, s, ctx = run.cfg, run.state, run.ctx
    accum = cfg.train.grad_accumulation
    iteration = s.iteration + 1  # the number this step gets once done
    epoch = s.epoch
    lrs = _set_lrs(run)
    active = [t for t in run.terms if s.iteration >= t.start]
    gan_on = run.gan is not None and s.iteration >= run.gan.cfg.start_iteration
    names = [t.name for t in active] + (["adversarial"] if gan_on else [])
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    grid = None
    run.net.train()
    run.optimizer.zero_grad(set_to_none=True)
    for k in range(accum):
        batch = run.stream.next()
        last = k == accum - 1
        # DDP all-reduces gradients on every backward unless told not to: only the last micro-batch syncs.
        sync = contextlib.nullcontext() if last or not ctx.distributed else run.net.no_sync()  # type: ignore[operator]
        with sync:
            sr = builders.call_model(run.net, batch, takes_ref_down=run.takes_ref_down)
            hr = batch["hr"]
            if sr.shape != hr.shape:
                raise RefsrError(f"the model returned {tuple(sr.shape)} for HR {tuple(hr.shape)}; check the "
                                 "model's scale and the dataset's")
            values = [t.fn(sr, hr) * t.weight for t in active]
            if gan_on:
                values.append(run.gan.loss.generator_loss(sr, hr) * run.gan.cfg.weight)  # type: ignore[union-attr]
            total = torch.stack(values).sum() if values else sr.sum() * 0
            (total / accum).backward()
        sums += torch.tensor([v.item() for v in values] + [total.item()], dtype=torch.float64)
        if gan_on:
            kept.append((sr.detach(), hr))
        if want_images and k == 0:
            grid = image_grid(batch["lr"][0], sr[0].detach(), hr[0], batch["ref"][0])
    sums = all_reduce_mean((sums / accum).to(ctx.device), ctx).cpu()
    for name, value in zip(names + ["total"], sums.tolist()):
        if not math.isfinite(value):
            raise _nonfinite_error(run, iteration, name, value)
    if cfg.train.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.train.clip_grad_norm)
    run.optimizer.step()
    if run.ema is not None:
        update_ema(run.ema, run.model, cfg.train.ema_decay)  # type: ignore[arg-type]
    losses = dict(zip(names, sums[:-1].tolist()))
    if gan_on:
        losses["discriminator"] = _discriminator_steps(run, kept, iteration)
    s.iteration = iteration
    record = IterationRecord(iteration=iteration, epoch=epoch, lr=lrs, losses=losses, total=float(sums[-1]))
    return record, grid


def _discriminator_steps(run: Run, kept: list[tuple[torch.Tensor, torch.Tensor]], iteration: int) -> float:
    gan = run.gan
    assert gan is not None
    params = [p for p in gan.discriminator.parameters() if p.requires_grad]
    value = 0.0
    for _ in range(gan.cfg.steps_per_generator_step):
        gan.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        for sr, hr in kept:
            loss = gan.loss.discriminator_loss(sr, hr)
            (loss / len(kept)).backward()
            total += loss.item()
        # The discriminator is not wrapped in DDP (see distributed.average_gradients): average by hand.
        average_gradients(params, run.ctx)
        value = float(all_reduce_mean((total / len(kept)).reshape(1).to(run.ctx.device), run.ctx).item())
        if not math.isfinite(value):
            raise _nonfinite_error(run, iteration, "discriminator", value)
        gan.optimizer.step()
    broadcast_buffers(gan.discriminator, run.ctx)
    return value


# ------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validate(run: Run) -> dict[str, Any]:
    """PSNR (and SSIM with ``select: ssim``) over the validation set, shared out among the processes.

    Uses the EMA weights when EMA is on. Returns ``{"psnr", "ssim", "count", "grids"}``.
    """
    from refsr import metrics

    val = run.cfg.data.val
    assert val is not None and run.val_set is not None
    model = run.ema if run.ema is not None else run.model
    was_training = model.training
    model.eval()
    n = len(run.val_set)  # type: ignore[arg-type]
    if val.limit is not None:
        n = min(n, val.limit)
    totals = torch.zeros(3, dtype=torch.float64)  # psnr sum, ssim sum, count
    grids = []
    for i in range(run.ctx.rank, n, run.ctx.world):
        sample = run.val_set[i]
        dev = run.ctx.device
        ref_down = sample["ref_down"][None].to(dev) if "ref_down" in sample else None
        sr = run_padded(model, sample["lr"][None].to(dev), sample["ref"][None].to(dev), ref_down=ref_down)
        sr = sr.float().cpu()
        if "pad" in sample and "hr_size" in sample:
            (top, left), (h, w) = sample["pad"], sample["hr_size"]
            sr = sr[..., int(top) : int(top) + int(h), int(left) : int(left) + int(w)]
        hr = sample["hr"][None]
        if sr.shape != hr.shape:
            raise RefsrError(f"data.val: sample {i}: the output {tuple(sr.shape)} does not match HR {tuple(hr.shape)}")
        totals[0] += metrics.psnr(sr, hr, protocol=val.protocol)
        if val.select == "ssim":
            totals[1] += metrics.ssim(sr, hr, protocol=val.protocol)
        totals[2] += 1
        if run.ctx.is_main and len(grids) < val.images:
            grids.append(image_grid(sample["lr"], sr[0], hr[0], sample["ref"]))
    if was_training:
        model.train()
    if run.ctx.distributed:
        totals = all_reduce_mean(totals.to(run.ctx.device), run.ctx).cpu() * run.ctx.world
    count = max(int(totals[2].item()), 1)
    return {"psnr": float(totals[0] / count), "ssim": float(totals[1] / count) if val.select == "ssim" else None,
            "count": int(totals[2].item()), "grids": grids}


# ----------------------------------------------------------------------------------------- checkpoints
def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _training_state(run: Run, rng_states: list) -> dict[str, Any]:
    s = run.state
    return {
        "format": checkpoint.FORMAT_VERSION,
        "iteration": s.iteration,
        "epoch": s.epoch,
        "position": s.position,
        "elapsed": s.elapsed,
        "best_score": s.best_score,
        "best_iteration": s.best_iteration,
        "world_size": run.ctx.world,
        "optimizer": run.optimizer.state_dict(),
        "d_optimizer": run.gan.optimizer.state_dict() if run.gan is not None else None,
        "rng": rng_states,
        "config": config_to_dict(run.cfg),
    }


def gather_rng_for_checkpoint(run: Any) -> list[Any] | None:
    """Every process's RNG state, on rank 0 (``None`` elsewhere), once the weights are known to be finite.

    Shared by every training loop that writes ``checkpoints/last`` (``run`` needs ``ctx``, ``model``,
    ``state.iteration`` and ``last_checkpoint``). Every rank must call it: the gather is collective.
    """
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
    rng_states = gather_rng_for_checkpoint(run)
    if rng_states is None:
        return None
    weights = {"model": _state_dict_cpu(run.model)}
    if run.ema is not None:
        weights["model_ema"] = _state_dict_cpu(run.ema)
    if run.gan is not None:
        weights["discriminator"] = _state_dict_cpu(run.gan.discriminator)
    run.last_checkpoint = checkpoint.write_checkpoint(run.checkpoints, "last", weights,
                                                      state=_training_state(run, rng_states))
    return run.last_checkpoint


def save_best(run: Run, result: dict[str, Any]) -> Path | None:
    if not run.ctx.is_main:
        return None
    evaluated = run.ema if run.ema is not None else run.model
    info = {"iteration": run.state.iteration, "epoch": run.state.epoch, "psnr": result["psnr"],
            "ssim": result["ssim"], "select": run.cfg.data.val.select, "model": run.cfg.model.name,  # type: ignore[union-attr]
            "overrides": run.cfg.model.overrides, "ema": run.ema is not None}
    return checkpoint.write_checkpoint(run.checkpoints, "best", {"model": _state_dict_cpu(evaluated)}, info=info)


def restore(run: Run, folder: Path) -> None:
    """Load a ``last`` checkpoint into the run: weights, optimisers, RNG states, counters."""
    from refsr.hub import load_state_dict

    state = checkpoint.read_state(folder)
    load_state_dict(run.model, checkpoint.read_weights(folder, "model"), source=f"the weights in {folder}")
    if run.ema is not None:
        ema_file = folder / "model_ema.safetensors"
        source = checkpoint.read_weights(folder, "model_ema" if ema_file.is_file() else "model")
        load_state_dict(run.ema, source, source=f"the EMA weights in {folder}")
    if run.gan is not None:
        if not (folder / "discriminator.safetensors").is_file():
            raise RefsrError(f"{folder}: the checkpoint has no discriminator; it was not trained with a GAN loss")
        load_state_dict(run.gan.discriminator, checkpoint.read_weights(folder, "discriminator"),
                        source=f"the discriminator weights in {folder}")
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        if run.gan is not None and state.get("d_optimizer") is not None:
            run.gan.optimizer.load_state_dict(state["d_optimizer"])
    except (ValueError, KeyError) as exc:
        raise RefsrError(f"{folder}: the optimiser state does not fit this config ({exc}); did "
                         "optimizer.param_groups change?") from None
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


# ------------------------------------------------------------------------------------------------ loop
def _due(interval: Interval, iteration: int, epoch_done: bool, epoch: int) -> bool:
    if interval.iterations is not None:
        return iteration % interval.iterations == 0
    return epoch_done and epoch % interval.epochs == 0  # type: ignore[operator]


def _better(score: float, best: float | None) -> bool:
    return best is None or score > best


def _validate_and_keep_best(run: Run) -> None:
    val = run.cfg.data.val
    assert val is not None
    result = validate(run)
    score = result["ssim"] if val.select == "ssim" else result["psnr"]
    is_best = val.select == "last" or _better(score, run.state.best_score)
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
    import os
    import tempfile

    import yaml

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
    fd, tmp = tempfile.mkstemp(prefix=".config.yaml.", dir=run.out_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(current, fh, sort_keys=False)
    os.replace(tmp, path)


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
    reason = _stop_reason(run, started, elapsed_before)
    while reason is None:
        epoch_before = s.epoch
        images = cfg.train.image_interval is not None and (s.iteration + 1) % cfg.train.image_interval == 0
        record, grid = train_step(run, want_images=images and run.ctx.is_main)
        run.records.append(record)
        s.elapsed = elapsed_before + (time.monotonic() - started)
        if run.monitor is not None:
            log_now = s.iteration % cfg.train.log_interval == 0
            run.monitor.iteration(record.as_dict(), scalars=log_now)
            if grid is not None:
                run.monitor.images("train/images", grid, s.iteration)
        epoch_done = s.epoch > epoch_before
        val = cfg.data.val
        if val is not None and s.epoch >= val.from_epoch and _due(val.interval, s.iteration, epoch_done, s.epoch):
            _validate_and_keep_best(run)
            validated_at = s.iteration
        reason = _stop_reason(run, started, elapsed_before)
        if reason is None and _due(cfg.train.checkpoint_interval, s.iteration, epoch_done, s.epoch):
            save_last(run)
            checkpointed_at = s.iteration
        for callback in callbacks:
            callback(record)
    if cfg.data.val is not None and validated_at != s.iteration:
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
    """Train as ``config`` says; the same call works in one process and under ``torchrun``.

    Args:
        config: a :class:`~refsr.train.schema.Config`, or the path of a YAML config.
        out_dir: the run's folder (default ``runs/<config name>``): ``config.yaml``, ``metrics.jsonl``,
            ``tb/``, ``checkpoints/{last,best}/``.
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
    if cfg.task != "restoration":
        from refsr.train.contrastive import run_contrastive_training

        return run_contrastive_training(cfg, out_dir, resume=resume, callbacks=callbacks, progress=progress)
    out = Path(out_dir).expanduser() if out_dir is not None else Path("runs") / (cfg.name or "run")
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
                              progress=progress, tensorboard=cfg.train.tensorboard, desc=cfg.name or "train")
        if found is not None:
            restore(run, found)
        _write_config(run, resuming=found is not None)
        reason = _loop(run, callbacks)
        best = checkpoint.find_checkpoint(run.checkpoints, "best") if ctx.is_main else None
        return TrainingSummary(out_dir=out, iteration=run.state.iteration, epoch=run.state.epoch, stopped_by=reason,
                               last_checkpoint=run.last_checkpoint, best_checkpoint=best,
                               best_score=run.state.best_score, model=run.model, ema_model=run.ema,
                               discriminator=run.gan.discriminator if run.gan is not None else None,
                               records=run.records)
    finally:
        if run is not None:
            run.stream.close()
            if run.monitor is not None:
                run.monitor.close()
        ctx.close()
