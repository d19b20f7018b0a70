"""``refsr train CONFIG.yaml [--out DIR] [--resume] [--set key.path=value ...]``.

Wiring into ``refsr.cli``: ``add_train_arguments(subparser)`` then ``subparser.set_defaults(run=main_train)``.
Under ``torchrun`` every process runs the same command; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from refsr.errors import RefsrError
from refsr.train.config import load_config
from refsr.train.loop import run_training

__all__ = ["add_train_arguments", "main_train", "main"]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``refsr train`` arguments to ``parser`` (a subparser of ``refsr``, or a standalone one)."""
    parser.add_argument("config", metavar="CONFIG.yaml", help="the training config (see configs/README.md)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="the run's folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from DIR/checkpoints/last")
    parser.add_argument("--set", action="append", default=[], metavar="key.path=value", dest="set",
                        help="override a config field, e.g. --set train.batch=4 (repeatable; values are YAML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main_train(args: argparse.Namespace) -> int:
    """Run ``refsr train`` with parsed ``args``; returns the exit status. Raises ``RefsrError`` on bad input."""
    cfg = load_config(args.config, args.set)
    rank = int(os.environ.get("RANK", "0") or 0)
    try:
        summary = run_training(cfg, args.out, resume=args.resume, progress=not getattr(args, "no_progress", False))
    except KeyboardInterrupt:
        if rank == 0:
            sys.stderr.write("refsr: error: training interrupted; continue it with --resume (from its last "
                             "checkpoint)\n")
        return 130
    if rank == 0:
        line = f"trained {summary.iteration} iterations ({summary.stopped_by} reached); last checkpoint: " \
               f"{summary.last_checkpoint}"
        if summary.best_checkpoint is not None and summary.best_score is not None:
            line += f"; best: {summary.best_checkpoint} ({summary.best_score:.4f})"
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refsr.train CONFIG.yaml ...`` (e.g. under ``torchrun``), with refsr's error contract."""
    parser = argparse.ArgumentParser(prog="refsr train", description="Train a model from a YAML config.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main_train(args)
    except RefsrError as exc:
        sys.stderr.write(f"refsr: error: {exc}\n")
        return 2
