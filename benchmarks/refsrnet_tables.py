"""RefSR-Net's Table 3 on open data: x8 PSNR/SSIM of bicubic, SISR and RefSR-Net (two fusion rules).

Usage::

    python benchmarks/refsrnet_tables.py --limit 2                           # random weights: a pipeline check
    python benchmarks/refsrnet_tables.py --weights refsrnet.safetensors --sisr-weights srresnet_x8.safetensors
    python benchmarks/refsrnet_tables.py --model refsrnet-lite --weights lite.safetensors --kinds video

RefSR-Net (Zheng et al., BMVC 2017) Table 3 reports x8 PSNR on MPI Sintel (test) and on LF video, for
bicubic, single-image SR networks and "RefSR (CC-Net + SS-Net)"; Sec. 4 compares the paper's mask-weighted
sliding-window fusion (masks smoothed by a Gaussian, sigma 3) with the plain averaging of overlapping
patches of [2]. Neither dataset is open here, so this script scores the same rows on the open benchmark's
real pairs of the ``video`` kind (two frames of a video, the paper's "temporal precedent frame" setting)
and the ``stereo`` kind (the two views of a stereo rig, like LF video's two grid positions).

Protocol:

* **Data.** ``refsr.eval.make_dataset("open", protocol=P, scale=8, kinds=[kind])`` per kind: the
  ``OpenPairs(split="eval")`` pairs (the eval split is not filtered by scale except the QCIF clip marked
  "x2 only", which is dropped at x8); under the ``masa`` protocol the HR is mod-cropped to 64 (= 8 x 8), the
  LR is PIL bicubic ÷8 of it, the reference is the other frame/view at full resolution.
* **Metric.** ``--protocol`` (default ``masa``: PSNR and SSIM on Y, BT.601 studio range, no border crop, on
  the 8-bit SR). The paper does not state its PSNR convention; ``masa`` is the library's default.
* **Rows.** ``Bicubic`` (PIL-exact bicubic x8), ``SISR`` (``srresnet-x8``, SRResNet + NN; ``--sisr-weights``),
  ``RefSR-Net, mask-Gaussian fusion`` and ``RefSR-Net, average fusion``: the same ``--model`` network
  (``refsrnet`` or ``refsrnet-lite``; ``--weights``, a full state_dict) with ``fusion`` switched. A
  network without a weights file keeps its seeded random initialisation and its row says "(random init)":
  such numbers only show that the pipeline runs. ``--sisr-weights`` also loads into RefSR-Net's frozen
  SRResNet trunk when ``--weights`` is not given (as ``refsrnet(sisr_weights=...)`` does).
* **Subset.** ``--limit N`` scores N pairs per kind, evenly spaced over the kind's pairs (the first, the last
  and N-2 between), so a short run still covers the frame gaps; without it, every pair.
* Every model runs through :func:`refsr.eval.runner.evaluate` (padding to the model's size rule, cropping,
  8-bit quantisation, metrics), one image at a time, on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from refsr.errors import RefsrError
from refsr.models import RefSRModel

KINDS = ("video", "stereo")
SCALE = 8
#: RefSR-Net Table 3 (PSNR, dB), for reference; other data, not comparable.
PAPER_TABLE_3 = {"bicubic": (30.59, 30.32), "SRResNet + NN": (33.68, 31.72), "RefSR": (38.03, 38.88)}


@dataclass
class Method:
    """A table row: its label and the model (any refsr model with ``scale == 8``)."""

    label: str
    model: torch.nn.Module


@dataclass
class Cell:
    psnr: float
    ssim: float
    count: int
    seconds: float


class EvenSubset:
    """``count`` items of ``dataset`` evenly spaced from first to last; keeps ``rows`` for the runner's meta."""

    def __init__(self, dataset: Any, count: int) -> None:
        total = len(dataset)
        count = min(count, total)
        self.indices = sorted({int(round(i)) for i in np.linspace(0, total - 1, count)}) if count > 1 else [0]
        self.dataset = dataset
        rows = getattr(dataset, "rows", None)
        if isinstance(rows, list):
            self.rows = [rows[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def _load_weights(model: torch.nn.Module, path: str) -> None:
    from refsr.hub import load_state_dict, read_checkpoint

    load_state_dict(model, read_checkpoint(path), source=path)


def build_methods(*, model_name: str = "refsrnet", weights: str | None = None, sisr_weights: str | None = None,
                  seed: int = 0) -> list[Method]:
    """The four rows: bicubic, SISR, RefSR-Net with mask-Gaussian fusion, and the same network averaging."""
    from refsr.hub import create_model

    if model_name not in ("refsrnet", "refsrnet-lite"):
        raise RefsrError(f"--model must be refsrnet or refsrnet-lite; got {model_name!r}")
    torch.manual_seed(seed + 1)
    refsr = create_model(model_name, fusion="mask-gaussian",
                         sisr_weights=sisr_weights if weights is None else None)
    if weights is not None:
        _load_weights(refsr, weights)
    # The SISR row is the SRResNet + NN whose trunk RefSR-Net uses, at that trunk's size (refsrnet-lite's is
    # 32 channels, 4 blocks), so that --sisr-weights of the lite pre-training load into both.
    trunk = refsr.lr_features
    torch.manual_seed(seed)
    bicubic = create_model("bicubic", scale=SCALE)
    sisr = create_model("srresnet-x8", nf=trunk.nf, blocks=len(trunk.blocks))
    if sisr_weights is not None:
        _load_weights(sisr, sisr_weights)
    size = "" if (trunk.nf, len(trunk.blocks)) == (64, 16) else f", {trunk.nf} ch, {len(trunk.blocks)} blocks"
    sisr_label = f"SISR (srresnet-x8{size})" + ("" if sisr_weights else " (random init)")
    tag = f"RefSR-Net ({model_name}{'' if weights else ', random init'})"
    # The averaging row is the same network (same weights) with the other fusion rule.
    averaging = _with_fusion(refsr, "average")
    return [
        Method("Bicubic", bicubic),
        Method(sisr_label, sisr),
        Method(f"{tag}, mask-Gaussian fusion", refsr),
        Method(f"{tag}, average fusion", averaging),
    ]


class _FusionView(RefSRModel):
    """The wrapped RefSR-Net with ``fusion`` switched for the duration of each forward (weights shared)."""

    def __init__(self, network: RefSRModel, fusion: str) -> None:
        super().__init__()
        self.network = network
        self.fusion = fusion
        self.scale = network.scale
        self.size_rule = network.size_rule
        self.uses_ref = network.uses_ref

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        saved = self.network.fusion
        self.network.fusion = self.fusion
        try:
            return self.network(lr, ref)
        finally:
            self.network.fusion = saved


def _with_fusion(network: torch.nn.Module, fusion: str) -> torch.nn.Module:
    from refsr.ops.sliding_window import WEIGHT_MODES

    if fusion not in WEIGHT_MODES:
        raise RefsrError(f"fusion must be one of {', '.join(WEIGHT_MODES)}; got {fusion!r}")
    return _FusionView(network, fusion)


def refsrnet_table(datasets: dict[str, Any], methods: Sequence[Method], *, protocol: str = "masa",
                   limit: int | None = None) -> dict[str, dict[str, Cell]]:
    """Score every method on every dataset: ``{method label: {dataset label: Cell}}`` (the core of main)."""
    from refsr.eval.runner import evaluate

    table: dict[str, dict[str, Cell]] = {}
    for method in methods:
        if getattr(method.model, "scale", SCALE) != SCALE:
            raise RefsrError(f"{method.label}: the model's scale is {method.model.scale}, not {SCALE}")
        row = table.setdefault(method.label, {})
        for label, dataset in datasets.items():
            subset = EvenSubset(dataset, limit) if limit is not None else dataset
            start = time.perf_counter()
            result = evaluate(method.model, subset, protocol=protocol, dataset_label=label,
                              method_label=method.label)
            row[label] = Cell(result.psnr, result.ssim, result.count, time.perf_counter() - start)
    return table


def format_table(table: dict[str, dict[str, Cell]]) -> str:
    labels = list(next(iter(table.values())).keys())
    head = "| method | " + " | ".join(f"{d} PSNR | {d} SSIM" for d in labels) + " | time (s) |"
    lines = [head, "|---|" + "---:|---:|" * len(labels) + "---:|"]
    for method, cells in table.items():
        values = " | ".join(f"{cells[d].psnr:.2f} | {cells[d].ssim:.4f}" for d in labels)
        lines.append(f"| {method} | {values} | {sum(c.seconds for c in cells.values()):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="refsrnet", help="refsrnet (default) or refsrnet-lite")
    parser.add_argument("--weights", default=None, help="RefSR-Net weights (full state_dict); none: random init")
    parser.add_argument("--sisr-weights", default=None, help="srresnet-x8 weights; none: random init")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated open-pair kinds (video,stereo)")
    parser.add_argument("--protocol", default="masa", help="metric protocol (default masa: Y, no crop)")
    parser.add_argument("--limit", type=int, default=None, help="pairs per kind, evenly spaced")
    parser.add_argument("--root", default=None, help="data cache (default: refsr's)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")

    from refsr.eval.datasets import make_dataset

    try:
        kinds = [k for k in args.kinds.split(",") if k]
        datasets = {kind: make_dataset("open", args.root, protocol=args.protocol, scale=SCALE, kinds=[kind])
                    for kind in kinds}
        methods = build_methods(model_name=args.model, weights=args.weights, sisr_weights=args.sisr_weights)
        sizes = ", ".join(f"{k}: {min(len(d), args.limit or len(d))} of {len(d)}" for k, d in datasets.items())
        print(f"open benchmark x{SCALE}, protocol {args.protocol}; pairs {sizes}; "
              f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads")
        table = refsrnet_table(datasets, methods, protocol=args.protocol, limit=args.limit)
    except RefsrError as exc:
        print(f"refsrnet_tables: {exc}", file=sys.stderr)
        return 2
    print()
    print(format_table(table))
    print("\nPaper Table 3 (PSNR; MPI Sintel / LF video, other data): "
          + "; ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in PAPER_TABLE_3.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
