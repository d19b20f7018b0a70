"""A whole evaluation as ``refsr eval`` runs it: methods x datasets, breakdowns, robustness, report.

:func:`run_suite` evaluates

- the **main table** (the papers' Table 1): one row per method, one column per dataset. Methods are the
  model and, with ``baselines=True``, *Bicubic* (PIL bicubic, the papers' baseline row) and *the same model
  with LR↑ as Ref* (the reference replaced by the PIL-bicubic upscaled LR: whatever the model gains over this
  row is what the real reference adds);
- **breakdowns**: ``"levels"`` re-runs CUFED5 with each reference level L1-L5 and with the LR as its own
  reference (``CUFED5(level="lr")``: AMSA Table 3, SSEN Table 3); ``"gap"`` and ``"kind"`` split the open
  benchmark's per-image scores by the video frame gap (1, 4, 8, 16) and by the kind of pair;
- the **LR degradation**: ``degradation="real"`` scores the open benchmark under the real-degradation protocol
  (every LR remade by one fixed, per-pair seeded Real-ESRGAN-style degradation; see
  :mod:`refsr.eval.datasets`); every table then holds those scores, the Bicubic and LR↑-as-Ref rows included;
- **robustness** runs: the model with a transformed reference (:mod:`refsr.eval.robustness`), one table per
  dataset and study, columns being the conditions (a method that ignores the reference keeps its main score
  in every column: nothing it sees changes).

It returns an :class:`EvalReport` that prints the tables and writes the JSON report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

import refsr
from refsr.data.registry import EVAL_DATASETS
from refsr.errors import RefsrError
from refsr.eval.datasets import (
    REAL_DEGRADATION_SEED,
    EvalProtocol,
    Level,
    check_degradation,
    dataset_label,
    get_eval_protocol,
    make_dataset,
    parse_level,
)
from refsr.eval.figures import FigureWriter
from refsr.eval.offsets import SamplingFigureWriter, has_sampling_offsets
from refsr.eval.robustness import RefTransform, parse_robustness
from refsr.eval.runner import RunResult, evaluate, safe_name
from refsr.eval.tables import Table
from refsr.hub import create_model
from refsr.io import atomic_output, check_output_folder
from refsr.models import RefSRModel
from refsr.models.bicubic import BicubicUpsampler

__all__ = ["BREAKDOWNS", "CUFED5_BREAKDOWN_LEVELS", "EvalReport", "Method", "run_suite", "write_json"]

PathLike = Union[str, os.PathLike]

BREAKDOWNS = ("levels", "gap", "kind")
_BREAKDOWN_ALIASES = {
    "levels": "levels",
    "level": "levels",
    "gap": "gap",
    "gaps": "gap",
    "kind": "kind",
    "kinds": "kind",
}
#: The CUFED5 columns of the "levels" breakdown: references L1 (most similar) ... L5, and the LR itself.
CUFED5_BREAKDOWN_LEVELS: tuple[Level, ...] = (1, 2, 3, 4, 5, "lr")


@dataclass
class Method:
    """One row of the tables: a model and where its reference comes from.

    Attributes:
        label: the row title; model: the network; ref_source: ``"dataset"`` or ``"lr_up"``;
        primary: the model under test (figures and robustness runs use it).
    """

    label: str
    model: RefSRModel
    ref_source: str = "dataset"
    primary: bool = False

    @property
    def uses_ref(self) -> bool:
        return self.model.uses_ref


@dataclass
class EvalReport:
    """Everything one evaluation produced.

    Attributes:
        protocol: the evaluation protocol; scale: the SR factor.
        runs: every (method, dataset, variant) run with its per-image scores.
        tables: by key (``"main"``, ``"levels:CUFED5"``, ``"gap:Open"``, ``"robustness:ref-scale:CUFED5"``,
            ...).
        settings: the options the evaluation ran with (for the JSON).
        figures: the figure files written.
        datasets: the dataset objects of the main table, by column label (not written to the JSON).
    """

    protocol: EvalProtocol
    scale: int
    runs: list[RunResult] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    def render(self) -> str:
        """All tables, separated by blank lines."""
        return "\n\n".join(table.render() for table in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "refsr_version": refsr.__version__,
            "protocol": self.protocol.describe(),
            "scale": self.scale,
            "settings": self.settings,
            "tables": {key: table.to_dict() for key, table in self.tables.items()},
            "runs": [run.to_dict() for run in self.runs],
            "figures": list(self.figures),
        }


def write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    _check_json_path(target)
    with atomic_output(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, allow_nan=False)
            fh.write("\n")
    return target


def _check_json_path(target: Path) -> None:
    if target.is_dir():
        raise RefsrError(f"{target}: is a folder; give a file name for the JSON report")
    check_output_folder(target.parent if str(target.parent) else Path("."), for_file=target)


def _check_output_folder(folder: Path, option: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise RefsrError(f"{folder}: exists and is not a folder; give {option} a folder")


def _pair_roots(
    names: Sequence[str], roots: Sequence[PathLike | None] | PathLike | None
) -> list[PathLike | None]:
    """One root per dataset: as many roots as datasets pair up in order; a single root serves every dataset
    except ``open`` (which defaults to the data cache)."""
    if roots is None or isinstance(roots, (str, os.PathLike)):
        roots = [] if roots is None else [roots]
    roots = list(roots)
    if len(roots) == len(names):
        return roots
    if len(roots) <= 1:
        shared = roots[0] if roots else None
        return [None if name == "open" else shared for name in names]
    raise RefsrError(
        f"{len(roots)} --root folders for {len(names)} datasets; give one --root per --dataset, in order, "
        "or a single --root that holds them all"
    )


def _parse_breakdowns(breakdowns: Sequence[str], names: Sequence[str]) -> list[str]:
    parsed: list[str] = []
    for item in breakdowns:
        for part in str(item).split(","):
            if not part.strip():
                continue
            kind = _BREAKDOWN_ALIASES.get(part.strip().lower())
            if kind is None:
                raise RefsrError(f"unknown breakdown {part.strip()!r}; use one of {', '.join(BREAKDOWNS)}")
            if kind == "levels" and "cufed5" not in names:
                raise RefsrError("the 'levels' breakdown needs --dataset cufed5 (its reference levels L1-L5)")
            if kind in ("gap", "kind") and "open" not in names:
                raise RefsrError(f"the {kind!r} breakdown needs --dataset open (the open benchmark)")
            if kind not in parsed:
                parsed.append(kind)
    return parsed


def _level_label(level: Level) -> str:
    return f"L{level}" if isinstance(level, int) else "LR"


def _chain(hooks: Sequence[Any]) -> Any:
    """One ``on_image`` hook that calls each of ``hooks`` in turn."""
    def call(*args: Any, **kwargs: Any) -> None:
        for h in hooks:
            h(*args, **kwargs)
    return call


def run_suite(
    model: RefSRModel,
    datasets: Sequence[str],
    roots: Sequence[PathLike | None] | PathLike | None = None,
    *,
    protocol: str | EvalProtocol = "masa",
    model_label: str | None = None,
    baselines: bool = False,
    breakdowns: Sequence[str] = (),
    robustness: Sequence[str | tuple[str, list[RefTransform]]] = (),
    level: Level = 1,
    kinds: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    seed: int = 0,
    degradation: str = "bicubic",
    limit: int | None = None,
    every: int = 1,
    device: str | torch.device = "cpu",
    save_sr: PathLike | None = None,
    figures: PathLike | None = None,
    figure_count: int = 4,
    figure_side: int = 128,
    progress: bool | None = False,
) -> EvalReport:
    """Evaluate ``model`` as ``refsr eval`` does (see the module docstring).

    Args:
        model: the model under test (its ``scale`` sets the datasets' scale).
        datasets: names from :data:`refsr.data.registry.EVAL_DATASETS`; each becomes a column.
        roots: one folder per dataset, or one folder for all (``open`` then uses the data cache).
        protocol: ``"masa"``, ``"ttsr"``, ``"c2"``, ``"amsa"`` or ``"datsr"``.
        model_label: the model's row title (default: its class name).
        baselines: add the Bicubic and LR↑-as-Ref rows.
        breakdowns: any of ``"levels"`` (CUFED5), ``"gap"``, ``"kind"`` (open benchmark).
        robustness: specs such as ``"ref-scale=0.5,1,2"`` or ``"luminance=0.8,1.2+10"``.
        level: CUFED5's reference level for the main table (1-5, ``"stacked"``, ``"lr"``).
        kinds, sources: filters of the open benchmark's pairs.
        seed: picks Sun80's and Manga109's references.
        degradation: ``"bicubic"`` (the datasets' LR) or ``"real"`` (the open benchmark's real-degradation
            protocol; ``--dataset open`` only).
        limit: score only the first ``limit`` images of every dataset.
        every: score only every ``every``-th image (``0, every, ...``) of every dataset, then ``limit``.
        device: where the models run.
        save_sr: a folder for the SR images: ``<save_sr>/<dataset>/<method>[/<variant>]/<name>.png``.
        figures: a folder for ``<figures>/<dataset>/<name>_{crops,matches}.png`` of the first
            ``figure_count`` images (main runs of the model under test); ``figure_side``: crop side.
        progress: tqdm bars (``None``: on a terminal only).

    Raises:
        RefsrError: bad names, missing roots, breakdowns that do not fit the datasets, unwritable outputs;
            all checked before the first image is processed.
    """
    eval_protocol = get_eval_protocol(protocol)
    names = [str(n).strip().lower() for n in datasets]
    if not names:
        raise RefsrError("no dataset given; use --dataset NAME (one of " + ", ".join(EVAL_DATASETS) + ")")
    for name in names:
        if name not in EVAL_DATASETS:
            raise RefsrError(f"unknown dataset {name!r}; use one of {', '.join(EVAL_DATASETS)}")
    if len(set(names)) != len(names):
        raise RefsrError("a dataset is named twice; give each --dataset once")
    paired_roots = _pair_roots(names, roots)
    level = parse_level(level)
    if kinds and "open" not in names:
        raise RefsrError("--kinds applies to the open benchmark only; add --dataset open or drop --kinds")
    if sources and "open" not in names:
        raise RefsrError("--sources applies to the open benchmark only; add --dataset open or drop --sources")
    if level != 1 and "cufed5" not in names:
        raise RefsrError("--level applies to CUFED5 only; add --dataset cufed5 or drop --level")
    degradation = check_degradation(degradation)
    if degradation == "real" and names != ["open"]:
        others = ", ".join(n for n in names if n != "open")
        raise RefsrError(f"--degradation real applies to the open benchmark only; drop {others} or the option")
    breakdown_kinds = _parse_breakdowns(breakdowns, names)
    studies = [parse_robustness(spec) if isinstance(spec, str) else spec for spec in robustness]
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise RefsrError(f"--limit must be a positive number of images, got {limit!r}")
    if isinstance(every, bool) or int(every) < 1:
        raise RefsrError(f"--every must be a positive step between images, got {every!r}")
    for folder, option in ((save_sr, "--save-sr"), (figures, "--figures")):
        if folder is not None:
            _check_output_folder(Path(folder), option)

    scale = model.scale
    label = model_label or type(model).__name__
    methods = [Method(label, model, primary=True)]
    if baselines:
        # The bicubic row would repeat the model's own when the model under test is bicubic.
        if not isinstance(model, BicubicUpsampler):
            methods.insert(0, Method("Bicubic", create_model("bicubic", scale=scale)))
        if methods[-1].uses_ref:
            methods.insert(1, Method(f"{label}, LR↑ as Ref", model, ref_source="lr_up"))

    # Every dataset is opened (and so checked) before any model runs.
    columns: list[tuple[str, str, Any]] = []  # (name, column label, dataset)
    for name, root in zip(names, paired_roots):
        ds_level = level if name == "cufed5" else 1
        ds_kinds = kinds if name == "open" else None
        dataset = make_dataset(
            name,
            root,
            protocol=eval_protocol,
            scale=scale,
            level=ds_level,
            kinds=ds_kinds,
            sources=sources if name == "open" else None,
            seed=seed,
            degradation=degradation,
        )
        columns.append((name, dataset_label(name, level=ds_level, kinds=ds_kinds), dataset))
    level_sets: dict[Level, Any] = {}
    if "levels" in breakdown_kinds:
        cufed_root = paired_roots[names.index("cufed5")]
        for lv in CUFED5_BREAKDOWN_LEVELS:
            if lv != level:
                level_sets[lv] = make_dataset(
                    "cufed5", cufed_root, protocol=eval_protocol, scale=scale, level=lv, seed=seed
                )

    report = EvalReport(
        eval_protocol,
        scale,
        settings={
            "model": label,
            "datasets": names,
            "roots": [str(r) if r is not None else None for r in paired_roots],
            "level": level,
            "kinds": list(kinds) if kinds else None,
            "sources": list(sources) if sources else None,
            "seed": seed,
            "degradation": degradation,
            "degradation_seed": REAL_DEGRADATION_SEED if degradation == "real" else None,
            "limit": limit,
            "every": every,
            "device": str(device),
            "baselines": baselines,
            "breakdowns": breakdown_kinds,
            "robustness": [{"kind": kind, "conditions": [t.params for t in ts]} for kind, ts in studies],
            "methods": [{"label": m.label, "ref_source": m.ref_source} for m in methods],
        },
    )
    report.datasets = {column: dataset for _, column, dataset in columns}
    common = {"protocol": eval_protocol.metric, "limit": limit, "every": every, "device": device, "progress": progress}

    def sr_folder(column: str, method: Method, variant: str | None = None) -> Path | None:
        if save_sr is None:
            return None
        folder = Path(save_sr) / safe_name(column) / safe_name(method.label)
        return folder / safe_name(variant) if variant else folder

    # ---- main table ----------------------------------------------------------------------------------
    notes = [f"protocol {eval_protocol.metric}; data size rule {eval_protocol.data!r}; x{scale}"]
    if degradation == "real":
        notes.append(f"real-degraded LR: one Real-ESRGAN-style draw per pair, seed ({REAL_DEGRADATION_SEED}, "
                     "crc32(pair name)); references clean")
    lr_note = ", real-degraded LR" if degradation == "real" else ""
    main = Table(
        f"PSNR/SSIM, protocol {eval_protocol.name}, x{scale}{lr_note}",
        [m.label for m in methods],
        [c[1] for c in columns],
        notes=notes,
    )
    report.tables["main"] = main
    main_runs: dict[tuple[str, str], RunResult] = {}
    for name, column, dataset in columns:
        writer = None
        hooks: list[Any] = []
        if figures is not None:
            writer = FigureWriter(Path(figures) / safe_name(column), side=figure_side)
            hooks.append(writer)
            primary_model = next(m.model for m in methods if m.primary)
            if has_sampling_offsets(primary_model):
                # SSEN's Fig. 7: where the stacked deformable convolutions sample the reference.
                hooks.append(SamplingFigureWriter(Path(figures) / safe_name(column), primary_model))
        for method in methods:
            hook = _chain(hooks) if (hooks and method.primary) else None
            run = evaluate(
                method.model,
                dataset,
                ref_source=method.ref_source,
                save_sr=sr_folder(column, method),
                dataset_label=column,
                method_label=method.label,
                variant={"ref_source": method.ref_source},
                on_image=hook,
                hook_count=figure_count,
                **common,
            )
            report.runs.append(run)
            main_runs[(method.label, name)] = run
            main.set(method.label, column, run.psnr, run.ssim, run.count)
        if writer is not None:
            for h in hooks:
                report.figures += [str(p) for p in h.written]
            if writer.sources:
                how = sorted(set(writer.sources.values()))
                main.notes.append(f"figures for {column}: correspondence from {' and '.join(how)} matching")
    main.notes.append(
        "n: " + ", ".join(f"{c}={main_runs[(methods[0].label, n)].count}" for n, c, _ in columns)
    )
    if baselines and any(m.ref_source == "lr_up" for m in methods):
        main.notes.append("LR↑ as Ref: the reference replaced by the PIL-bicubic upscaled LR")

    # ---- breakdowns ----------------------------------------------------------------------------------
    if "levels" in breakdown_kinds:
        cufed_column = columns[names.index("cufed5")][1]
        table = Table(
            f"CUFED5 by reference level, protocol {eval_protocol.name}, x{scale}",
            notes=["L1 (most similar) ... L5: CUFED5 references; LR: the LR image as its own reference"],
        )
        for method in methods:
            for lv in CUFED5_BREAKDOWN_LEVELS:
                if lv == level:
                    run = main_runs[(method.label, "cufed5")]
                else:
                    run = evaluate(
                        method.model,
                        level_sets[lv],
                        ref_source=method.ref_source,
                        save_sr=sr_folder(cufed_column, method, _level_label(lv)),
                        dataset_label=f"CUFED5 {_level_label(lv)}",
                        method_label=method.label,
                        variant={"ref_source": method.ref_source, "level": lv},
                        **common,
                    )
                    report.runs.append(run)
                table.set(method.label, _level_label(lv), run.psnr, run.ssim, run.count)
        report.tables["levels:CUFED5"] = table

    open_column = columns[names.index("open")][1] if "open" in names else None
    for kind in ("gap", "kind"):
        if kind not in breakdown_kinds:
            continue
        title = "video pairs by frame gap" if kind == "gap" else "pairs by kind"
        table = Table(f"{open_column}: {title}, protocol {eval_protocol.name}, x{scale}")
        groups = {m.label: main_runs[(m.label, "open")].group(kind) for m in methods}
        values = sorted({v for g in groups.values() for v in g}, key=lambda v: (str(type(v)), v))
        for method in methods:
            for value in values:
                if value in groups[method.label]:
                    p, s, n = groups[method.label][value]
                    table.set(method.label, f"gap {value}" if kind == "gap" else str(value), p, s, n)
        if not values:
            table.notes.append("no images with this information were evaluated")
        table.rows = [m.label for m in methods]
        table.notes.append(
            "n: "
            + ", ".join(
                f"{c}={cell.count}"
                for c in table.columns
                if (cell := table.get(methods[0].label, c)) is not None
            )
        )
        report.tables[f"{kind}:{open_column}"] = table

    # ---- robustness ----------------------------------------------------------------------------------
    robust_methods = [m for m in methods if m.ref_source == "dataset"]
    for study, transforms in studies:
        for name, column, dataset in columns:
            what = {"ref-scale": "reference scale changed", "luminance": "reference luminance changed",
                    "unrelated": "reference replaced by unrelated content"}[study]
            table = Table(f"{column}: {what}, protocol {eval_protocol.name}, x{scale}", corner="Method / Ref")
            # per pair kind too, when the open benchmark is broken down by kind: a reference may help on
            # video and hurt on landmarks, which one average would hide
            by_kind = None
            if name == "open" and "kind" in breakdown_kinds:
                by_kind = Table(f"{column}: {what}, by pair kind, protocol {eval_protocol.name}, x{scale}",
                                corner="Method / Ref, kind")
            for method in robust_methods:
                for transform in transforms:
                    if not method.uses_ref:
                        run = main_runs[(method.label, name)]  # it never looks at the reference
                    else:
                        run = evaluate(
                            method.model,
                            dataset,
                            ref_source=method.ref_source,
                            ref_transform=transform,
                            save_sr=sr_folder(column, method, f"{study}{transform.label}"),
                            dataset_label=column,
                            method_label=method.label,
                            variant={
                                "ref_source": method.ref_source,
                                "ref_transform": {"kind": study, **transform.params},
                            },
                            **common,
                        )
                        report.runs.append(run)
                    table.set(method.label, transform.label, run.psnr, run.ssim, run.count)
                    if by_kind is not None:
                        for kind_value, (p, s, n) in sorted(run.group("kind").items(), key=lambda kv: str(kv[0])):
                            by_kind.set(f"{method.label}, {transform.label}", str(kind_value), p, s, n)
            table.notes.append(
                {
                    "ref-scale": "×f: the reference resized by f with PIL bicubic before the model's padding",
                    "luminance": "×g+s: every reference level v becomes clip(round(g*v + s), 0, 255)",
                    "unrelated": "each column's image (PIL bicubic, aspect kept) covers and is centre-cropped "
                    "to every reference's size; grey: a flat level-128 reference",
                }[study]
            )
            report.tables[f"robustness:{study}:{column}"] = table
            if by_kind is not None:
                report.tables[f"robustness:{study}:{column}:kind"] = by_kind
    return report
