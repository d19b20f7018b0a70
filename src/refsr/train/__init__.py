"""Training: ``refsr train CONFIG.yaml`` and :func:`run_training`.

- :mod:`refsr.train.schema`: the config schema (pydantic models);
- :mod:`refsr.train.config`: YAML loading, ``--set`` overrides, validation with one-line errors;
- :mod:`refsr.train.builders`: config names to datasets, losses, optimisers and the lr schedule;
- :mod:`refsr.train.loop`: the one training loop (gradient accumulation, mixed precision, checkpoints,
  exact resume, DDP, time budget, validation cadence, metrics) for every task;
- :mod:`refsr.train.task` and :mod:`refsr.train.tasks`: what a task is, and the tasks (``TASKS``:
  restoration, contrastive_teacher/student, ccnet);
- :mod:`refsr.train.checkpoint`: atomic safetensors + training-state checkpoints;
- :mod:`refsr.train.distributed`: ``torchrun``/DDP support and the resumable distributed sampler;
- :mod:`refsr.train.monitor`: progress bar, ``metrics.jsonl`` and TensorBoard;
- :mod:`refsr.train.cli`: :func:`add_train_arguments` and :func:`main_train` for ``refsr train``.

``torchrun --nproc_per_node=N -m refsr.train CONFIG.yaml`` runs the same command on N processes.
"""

from __future__ import annotations

from refsr.train.cli import add_train_arguments, main_train
from refsr.train.config import describe_schema, load_config, parse_config
from refsr.train.loop import IterationRecord, TrainingSummary, run_training
from refsr.train.schema import Config

__all__ = [
    "Config",
    "load_config",
    "parse_config",
    "describe_schema",
    "run_training",
    "TrainingSummary",
    "IterationRecord",
    "add_train_arguments",
    "main_train",
]
