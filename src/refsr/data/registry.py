"""The one dataset registry: every dataset a training config (``data.train.sources[*].dataset``,
``data.val.dataset``) or ``refsr eval --dataset`` can name, one name per dataset.

====================  ==========================================================  ======  =============
name                  what                                                        root    refsr eval
====================  ==========================================================  ======  =============
``cufed-train``       CUFED training pairs (:class:`~refsr.data.cufed.CUFEDTrain`)  yes
``cufed5``            CUFED5, 5 reference levels (:class:`~refsr.data.cufed.CUFED5`)  yes     ``CUFED5``
``sun80``             Sun80 with scene matches                                    yes     ``Sun80``
``urban100``          Urban100, LR as reference                                   yes     ``Urban100``
``manga109``          Manga109, another page as reference                         yes     ``Manga109``
``sintel``            MPI Sintel frame pairs with flow                            yes
``lightfield``        light-field view pairs                                      yes
``open``              the open benchmark's real pairs (``refsr data fetch``)      cache   ``Open``
``open-synthetic``    photos with synthetic references (or ``paths``)             cache
``open-clips``        every frame of the open clips, a still 1..8 frames away     cache
====================  ==========================================================  ======  =============

A dataset's options are its class's keyword parameters (``open-synthetic`` adds the fields of
:class:`~refsr.data.synthetic.SyntheticRefConfig` and ``paths``); :func:`check_dataset_options` checks a
config's against them, with a suggestion for a misspelt one, before anything is built. ``root``, ``seed``,
``transform`` are filled in by the caller, ``scale`` defaults to the model's and ``with_ref_down`` to true.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import Dataset

from refsr.data.benchmarks import Manga109, Sun80, Urban100
from refsr.data.clips import ClipFrames
from refsr.data.cufed import CUFED5, CUFEDTrain
from refsr.data.lightfield import LightFieldGrid
from refsr.data.open_pairs import OpenPairs
from refsr.data.sintel import SintelPairs
from refsr.data.synthetic import SyntheticRefConfig, SyntheticRefPairs
from refsr.errors import RefsrError

__all__ = ["DatasetSpec", "DATASETS", "EVAL_DATASETS", "get_dataset_spec", "dataset_options",
           "check_dataset_options", "build_dataset"]

# Keys the caller fills in; a config may not set them.
_RESERVED = ("self", "root", "seed", "transform")
# Names a dataset had before it got its one name; a config that still says them gets pointed to the new one.
_RENAMED = {"open-pairs": "open"}


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`.

    Attributes:
        name: the name configs and ``refsr eval --dataset`` use.
        cls: the dataset class.
        doc: one line on what it is.
        root_required: whether it needs the folder it is in (otherwise: refsr's data cache).
        root_hint: what that folder holds, for error messages.
        eval_label: the column title in ``refsr eval`` tables, for the test sets that ``refsr eval`` scores
            (``None``: a training set only).
    """

    name: str
    cls: type
    doc: str
    root_required: bool = True
    root_hint: str = ""
    eval_label: str | None = None


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("cufed-train", CUFEDTrain, "CUFED training pairs (11,871)",
                root_hint="the CUFED training folder (input/ and ref/)"),
    DatasetSpec("cufed5", CUFED5, "CUFED5 test set (126 images, 5 reference levels)",
                root_hint="the CUFED5 folder (XXX_0.png ... XXX_5.png) or a parent", eval_label="CUFED5"),
    DatasetSpec("sun80", Sun80, "Sun80 with scene-match references",
                root_hint="the folder with Sun_Hays_SR_groundtruth/ and Sun_Hays_SR_scenematches/",
                eval_label="Sun80"),
    DatasetSpec("urban100", Urban100, "Urban100, LR as reference",
                root_hint="a folder of Urban100 HR images (or its HR/)", eval_label="Urban100"),
    DatasetSpec("manga109", Manga109, "Manga109, another page as reference",
                root_hint="a folder of Manga109 HR images (or its HR/)", eval_label="Manga109"),
    DatasetSpec("sintel", SintelPairs, "MPI Sintel frame pairs", root_hint="the MPI-Sintel folder"),
    DatasetSpec("lightfield", LightFieldGrid, "light-field view pairs", root_hint="a folder of view grids"),
    DatasetSpec("open", OpenPairs, "the open benchmark's real pairs (refsr data fetch)", root_required=False,
                root_hint="the open-benchmark data cache ('refsr data fetch')", eval_label="Open"),
    DatasetSpec("open-synthetic", SyntheticRefPairs, "photos with synthetic references (manifest photos, or "
                "'paths')", root_required=False, root_hint="the open-benchmark data cache, or the photos' folder"),
    DatasetSpec("open-clips", ClipFrames, "every frame of the open benchmark's clips with a still a few frames "
                "away (and chains of frames for the model's own outputs)", root_required=False,
                root_hint="the open-benchmark data cache ('refsr data fetch')"),
)}

#: The test sets ``refsr eval --dataset`` scores.
EVAL_DATASETS: tuple[str, ...] = tuple(name for name, spec in DATASETS.items() if spec.eval_label is not None)


def get_dataset_spec(name: str, path: str = "dataset") -> DatasetSpec:
    """The entry of ``name`` (case-insensitive); errors name ``path`` and suggest a close name."""
    key = str(name).strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    if key in _RENAMED:
        raise RefsrError(f"{path}: dataset {name!r} is now called {_RENAMED[key]!r}")
    close = difflib.get_close_matches(key, list(DATASETS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise RefsrError(f"{path}: unknown dataset {name!r}{hint} (known: {', '.join(DATASETS)})")


def dataset_options(name: str) -> list[str]:
    """The options a config may give dataset ``name``."""
    spec = get_dataset_spec(name)
    params = inspect.signature(spec.cls.__init__).parameters
    own = [n for n, p in params.items() if n not in _RESERVED and p.kind is not inspect.Parameter.VAR_KEYWORD]
    if spec.cls is SyntheticRefPairs:  # its config's fields are options of their own (the config is built here)
        own = [n for n in own if n != "config"] + [f.name for f in dataclasses.fields(SyntheticRefConfig)] + ["paths"]
    return own


def check_dataset_options(name: str, options: Mapping[str, Any], path: str) -> None:
    """Raise a :class:`RefsrError` naming ``path.<option>`` for an option dataset ``name`` does not take."""
    get_dataset_spec(name, f"{path}.dataset")
    allowed = dataset_options(name)
    for key in options:
        if key in _RESERVED:
            raise RefsrError(f"{path}.{key}: set by the engine; remove it")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RefsrError(f"{path}.{key}: unknown field{hint} (options of dataset {name!r}: {', '.join(allowed)})")


def _expand(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def build_dataset(name: str, root: str | Path | None, options: Mapping[str, Any], *, seed: int, scale: int,
                  path: str, protocol: str | None = None, keep_decoded: bool = False) -> Dataset:
    """Instantiate dataset ``name`` with ``options`` (errors name ``path``).

    ``scale`` and ``protocol`` are defaults for datasets that take them; ``with_ref_down`` defaults to true,
    ``keep_decoded`` (training: every image is read many times) to the argument.
    """
    spec = get_dataset_spec(name, f"{path}.dataset")
    check_dataset_options(spec.name, options, path)
    allowed = dataset_options(spec.name)
    # YAML gives lists where the datasets take tuples (scale_range, views); a tuple serves as a sequence too.
    kwargs = {k: (tuple(v) if isinstance(v, list) and k != "paths" else v) for k, v in options.items()}
    if "scale" in allowed:
        kwargs.setdefault("scale", scale)
    if "with_ref_down" in allowed:
        kwargs.setdefault("with_ref_down", True)
    if protocol is not None and "protocol" in allowed:
        kwargs.setdefault("protocol", protocol)
    if keep_decoded and "keep_decoded" in allowed:
        kwargs.setdefault("keep_decoded", True)
    if spec.root_required and (root is None or str(root) == ""):
        raise RefsrError(f"{path}.root: dataset {spec.name!r} needs the folder it is in: {spec.root_hint}")
    try:
        if spec.cls is SyntheticRefPairs:
            return _build_synthetic(root, kwargs, seed)
        params = inspect.signature(spec.cls.__init__).parameters
        if "seed" in params:
            kwargs["seed"] = seed
        if "root" in params:
            return spec.cls(_expand(root), **kwargs)
        return spec.cls(**kwargs)
    except RefsrError as exc:
        raise RefsrError(f"{path}: {exc}") from None
    except TypeError as exc:  # a wrongly typed option the dataset did not check itself
        raise RefsrError(f"{path}: bad options for dataset {spec.name!r} ({exc})") from None


def _build_synthetic(root: str | Path | None, kwargs: dict[str, Any], seed: int) -> Dataset:
    config_keys = {f.name for f in dataclasses.fields(SyntheticRefConfig)}
    synth = SyntheticRefConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in config_keys})
    paths = kwargs.pop("paths", None)
    if paths is not None:
        base = Path(root).expanduser() if root is not None else Path()
        files = [base / Path(p).expanduser() for p in ([paths] if isinstance(paths, str) else paths)]
        for unused in ("split", "sources", "skip_missing"):
            if unused in kwargs:
                raise RefsrError(f"{unused}: not used with 'paths' (photos listed by hand)")
        return SyntheticRefPairs.from_paths(files, config=synth, seed=seed, **kwargs)
    return SyntheticRefPairs(_expand(root), config=synth, seed=seed, **kwargs)
