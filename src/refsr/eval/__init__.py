"""Evaluation: run a model on a benchmark under a published protocol and report it as the papers do.

- :func:`evaluate` (:mod:`refsr.eval.runner`): one model on one dataset, every image scored.
- :func:`run_suite` (:mod:`refsr.eval.suite`): the whole ``refsr eval``: methods x datasets (the papers'
  Table 1), baselines, breakdowns (CUFED5 levels, open-benchmark gap and kind), robustness runs, figures.
- :func:`make_dataset` (:mod:`refsr.eval.datasets`): ``cufed5``, ``sun80``, ``urban100``, ``manga109``,
  ``open``.
- :mod:`refsr.eval.robustness`: reference transforms (scale mismatch, luminance change, unrelated content).
- :mod:`refsr.eval.tables`, :mod:`refsr.eval.figures`: the printed tables and the PNG figures.
- :func:`add_eval_arguments`, :func:`main_eval` (:mod:`refsr.eval.cli`): the ``refsr eval`` command.
"""

from __future__ import annotations

from refsr.data.registry import EVAL_DATASETS
from refsr.eval.cli import add_eval_arguments, main_eval
from refsr.eval.datasets import EVAL_PROTOCOLS, EvalProtocol, get_eval_protocol, make_dataset
from refsr.eval.robustness import (
    RefTransform,
    change_luminance,
    cover_crop,
    luminance_change,
    parse_robustness,
    rescale_reference,
    scale_mismatch,
    unrelated_reference,
)
from refsr.eval.runner import ImageResult, RunResult, evaluate, prepare_inputs
from refsr.eval.suite import EvalReport, Method, run_suite, write_json
from refsr.eval.tables import Cell, Table, format_table

__all__ = [
    "EVAL_DATASETS",
    "EVAL_PROTOCOLS",
    "Cell",
    "EvalProtocol",
    "EvalReport",
    "ImageResult",
    "Method",
    "RefTransform",
    "RunResult",
    "Table",
    "add_eval_arguments",
    "change_luminance",
    "cover_crop",
    "evaluate",
    "format_table",
    "get_eval_protocol",
    "luminance_change",
    "main_eval",
    "make_dataset",
    "parse_robustness",
    "prepare_inputs",
    "rescale_reference",
    "run_suite",
    "scale_mismatch",
    "unrelated_reference",
    "write_json",
]
