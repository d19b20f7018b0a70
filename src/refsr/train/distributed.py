"""Running under ``torchrun``: process groups, collective helpers and the resumable distributed sampler.

``torchrun --nproc_per_node=N`` starts N processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. :func:`setup` reads them and joins the process
group (gloo on the CPU, nccl on CUDA); a plain ``python`` run is a world of one and needs no group.

Every process draws the same per-epoch order of samples (seeded by ``(seed, epoch)``) and takes every
N-th one, like :class:`torch.utils.data.DistributedSampler`; unlike it, the sampler can start part-way
through an epoch, so a resumed run reads exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from refsr.devices import resolve_device
from refsr.errors import RefsrError

__all__ = [
    "DistContext",
    "setup",
    "resolve_device",
    "all_reduce_mean",
    "any_true",
    "average_gradients",
    "broadcast_buffers",
    "broadcast_object",
    "gather_objects",
    "epoch_order",
    "ResumableDistributedSampler",
]

# Random streams of the training engine, apart from the data module's (1-3), so that they never collide.
STREAM_ORDER = 11
STREAM_SOURCE = 12


@dataclass
class DistContext:
    """Who this process is. ``created`` says whether :func:`setup` started the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup` made it."""
        if self.created and dist.is_initialized():
            dist.destroy_process_group()
            self.created = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RefsrError(f"the environment variable {name}={value!r} is not an integer") from None


def setup(device_spec: str = "auto", *, timeout_minutes: float = 30.0) -> DistContext:
    """Join the ``torchrun`` process group if there is one, and choose this process's device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_spec, local_rank=local_rank, field="train.device", auto_mps=False)
    if world <= 1:
        return DistContext(0, 1, 0, device, created=False)
    if not dist.is_available():
        raise RefsrError("this PyTorch build has no torch.distributed; run without torchrun")
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, created)


# ----------------------------------------------------------------------------------------- collectives
def all_reduce_mean(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``t`` over all processes (in place, also returned); a no-op in a world of one."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= ctx.world
    return t


def any_true(flag: bool, ctx: DistContext) -> bool:
    """True on every process if ``flag`` is true on any (so that all stop at the same iteration)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_gradients(params: Sequence[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of ``params`` over all processes, in one flat all-reduce.

    Used for the discriminator, which is not wrapped in DDP: it is called twice per step (on HR and on SR),
    and DDP's once-per-backward bookkeeping does not fit that.
    """
    if not ctx.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics), as DDP does for the modules it
    wraps; each process's statistics come from its own samples otherwise."""
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------- sampler
def _generator(*entropy: int) -> torch.Generator:
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares``."""
    s = sum(shares)
    exact = [total * w / s for w in shares]
    counts = [int(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def epoch_order(
    sizes: Sequence[int],
    *,
    seed: int,
    epoch: int,
    weights: Sequence[float] | None = None,
    samples_per_epoch: int | None = None,
    shuffle: bool = True,
) -> torch.Tensor:
    """The global sample order of one epoch over concatenated sources: int64 indices into the concatenation.

    Without weights or ``samples_per_epoch`` this is a permutation of every sample. Otherwise source ``i``
    contributes its share of ``samples_per_epoch`` (default: all sources' total), drawn without
    replacement from its own per-epoch permutations (repeated when it is asked for more than it has), and
    the contributions are shuffled together. Everything is seeded by ``(seed, epoch)``.
    """
    total_size = int(sum(sizes))
    if not shuffle:
        return torch.arange(total_size, dtype=torch.int64)
    if weights is None and samples_per_epoch is None:
        return torch.randperm(total_size, generator=_generator(seed, STREAM_ORDER, epoch))
    n = samples_per_epoch if samples_per_epoch is not None else total_size
    shares = list(weights) if weights is not None else [float(s) for s in sizes]
    counts = _largest_remainder(shares, n)
    parts = []
    offset = 0
    for i, (size, count) in enumerate(zip(sizes, counts)):
        if count:
            g = _generator(seed, STREAM_SOURCE, epoch, i)
            rounds = -(-count // size)
            picks = torch.cat([torch.randperm(size, generator=g) for _ in range(rounds)])[:count]
            parts.append(picks + offset)
        offset += size
    order = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return order[torch.randperm(len(order), generator=_generator(seed, STREAM_ORDER, epoch))]


class ResumableDistributedSampler(Sampler[int]):
    """This process's share of each epoch's order, from any position on.

    Process ``r`` of ``w`` takes ``order[start + r :: w]`` (as many as every process gets the same number
    of; the remainder is dropped, like ``DistributedSampler(drop_last=True)``). ``start`` is a *global*
    position: after ``k`` micro-batches of ``b`` samples on each of ``w`` processes it is ``k * b * w``, and
    those are exactly the first ``k * b * w`` samples of the order whatever ``w`` was.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        weights: Sequence[float] | None = None,
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
    ) -> None:
        self.sizes = [int(s) for s in sizes]
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.weights = list(weights) if weights is not None else None
        self.samples_per_epoch = samples_per_epoch
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch, over all processes."""
        if self.shuffle and (self.weights is not None or self.samples_per_epoch is not None):
            return int(self.samples_per_epoch if self.samples_per_epoch is not None else sum(self.sizes))
        return int(sum(self.sizes))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch and the global position to start from."""
        if not 0 <= start <= self.epoch_size:
            raise ValueError(f"start {start} outside the epoch of {self.epoch_size} samples")
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return (self.epoch_size - self.start) // self.world

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.sizes, seed=self.seed, epoch=self.epoch, weights=self.weights,
                            samples_per_epoch=self.samples_per_epoch, shuffle=self.shuffle)[self.start :]
        per_rank = len(order) // self.world
        return iter(order[self.rank : per_rank * self.world : self.world].tolist())
