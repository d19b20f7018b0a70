"""Cross-scale matching accuracy on real stereo pairs with ground-truth disparity (RefSR-Net's Table 2).

Usage::

    python benchmarks/stereo_accuracy.py --quick            # Motorcycle at 1/4 size, every method
    python benchmarks/stereo_accuracy.py                    # Motorcycle and Aloe at 1/2 size (slow: dense)
    python benchmarks/stereo_accuracy.py --methods zncc,zncc-blurred,ccnet \
        --ccnet-weights runs/ccnet/checkpoints/last/model.safetensors
    python benchmarks/stereo_accuracy.py --sr-scale 1 --methods dense,mem,patchmatch   # same-scale matching

RefSR-Net (Zheng et al., BMVC 2017) Table 2 measures how often the match of an LR pixel (the LR bilinearly
upsampled x8) in the HR reference lies within 0, 1, 2, 4, 5, 6 pixels of the true position, on MPI Sintel
with optical-flow ground truth. Sintel is not open data here; this script does the same on the stereo pairs
of the open benchmark that have ground-truth disparity: Middlebury 2014 "Motorcycle" (scikit-image) and
Middlebury "Aloe" (opencv-doc), read with ``refsr.data.open_pairs.OpenPairs(split="eval", kinds=["stereo"])``
(pairs without disparity are skipped). Fetch them with ``refsr data fetch``.

Protocol:

* **Images.** Left view = target, right view = reference. ``--prescale P`` (default 2; ``--quick``: 4)
  first downsizes both views by P with PIL bicubic (``OpenPairs(prescale=P)``; the disparity follows by
  block averaging), because dense matching at full size is far too slow on a CPU. Both views are then
  mod-cropped to a multiple of ``lcm(8, s)``. HR = the cropped left view, LR = PIL bicubic ÷s of it
  (``s = --sr-scale``, default 8, as in the paper), reference = the cropped right view at full resolution.
* **Query.** The LR bilinearly upsampled ×s (:func:`refsr.matching.ccnet.upsample_lr`, the CC-Net input of
  the paper); with ``--sr-scale 1`` the HR left view itself.
* **Rows** (``--methods``, comma-separated):

  - ``dense``, ``mem``, ``patchmatch``: the library's cosine matchers on 3x3 patches of raw RGB, query vs
    HR reference, each with its defaults (patchmatch seed 0), searching the whole reference;
  - ``mem-fast``: MEM with the indexed coarse search (``coarse="fast"``, what ``refsr upscale`` runs); with
    ``mem`` in the same run, the share of pixels where both find the same reference position is printed too;
  - ``zncc``: "ZNCC" of the paper, :func:`refsr.matching.zncc.match_zncc` on ``--zncc-patch`` (default 9)
    RGB patches, one channel group, query vs HR reference, window ``--search-range``;
  - ``zncc-blurred``: "ZNCC_blurry", the same against the reference blurred like the LR
    (:func:`refsr.matching.zncc.blur_like_lr`: PIL bicubic ÷s then bilinear ×s);
  - ``ccnet``: CC-Net descriptors (:class:`refsr.models.refsrnet.CCNet`) of the query and the reference,
    :func:`refsr.matching.ccnet.match_ccnet` (inner product, 1x1) within ``--search-range``. With
    ``--ccnet-weights FILE`` (a CC-Net state_dict, e.g. a ``task: ccnet`` run's
    ``checkpoints/last/model.safetensors``, or a
    ``refsrnet`` checkpoint with ``ccnet.`` keys) the row is "CC-Net"; without, the network keeps its seeded
    random initialisation and the row is labelled "CC-Net (random init)": it only exercises the pipeline.
* **Window.** ``--search-range`` R (default 100, the paper's test-time value, in pixels of the matched
  grid) for ``zncc``, ``zncc-blurred`` and ``ccnet``: a ``(2R+1)^2`` window centred on the query position.
* **Score.** A pixel counts if its disparity is known and its true match ``(y, round(x - d))`` lies inside the
  reference. Its error is the Euclidean distance between the reported match and that position (a wrong row
  counts too); "<= t px" is the share of counted pixels with error <= t, pooled over all pairs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from refsr.errors import RefsrError
from refsr.matching import match
from refsr.matching.ccnet import match_ccnet, upsample_lr
from refsr.matching.zncc import blur_like_lr, match_zncc

THRESHOLDS = (0, 1, 2, 4, 5, 6)
METHODS = ("dense", "mem", "mem-fast", "patchmatch", "zncc", "zncc-blurred", "ccnet")
#: RefSR-Net Table 2 (MPI Sintel validation set), for reference next to our numbers.
PAPER_TABLE_2 = {
    "ZNCC": (23.1, 45.4, 60.3, 71.9, 75.1, 76.5),
    "ZNCC_blurry": (36.7, 55.1, 66.3, 75.3, 80.3, 81.3),
    "PatchMatch": (35.3, 56.5, 65.6, 74.4, 77.9, 79.8),
    "CC-Net": (43.6, 65.0, 72.0, 78.5, 81.3, 81.9),
}


@dataclass
class StereoPair:
    """One evaluation pair: ``hr`` ``(1,3,H,W)`` left view, ``lr`` ``(1,3,H/s,W/s)``, ``ref`` ``(1,3,Hr,Wr)``
    right view (all float32 RGB in [0, 1]) and ``disparity`` ``(H, W)`` float, HR pixels, NaN/inf unknown."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor
    ref: torch.Tensor
    disparity: np.ndarray


@dataclass
class Row:
    """Pooled result of one method: correct-pixel counts per threshold, counted pixels, seconds."""

    method: str
    label: str
    correct: list[int] = field(default_factory=lambda: [0] * len(THRESHOLDS))
    counted: int = 0
    seconds: float = 0.0
    coords: list[torch.Tensor] = field(default_factory=list)  # per pair, to compare two methods

    @property
    def shares(self) -> list[float]:
        return [c / self.counted if self.counted else float("nan") for c in self.correct]


def load_pairs(prescale: int, sr_scale: int, names: Sequence[str] | None = None,
               root: str | None = None) -> list[StereoPair]:
    """The open benchmark's stereo pairs with ground-truth disparity, prepared as the module docstring says."""
    from refsr.data.open_pairs import OpenPairs

    dataset = OpenPairs(root, split="eval", kinds=["stereo"], scale=sr_scale, multiple=math.lcm(8, sr_scale),
                        prescale=prescale, skip_missing=True)
    pairs = []
    for index, row in enumerate(dataset.rows):
        if names is not None and row["pair_id"] not in names:
            continue
        sample = dataset[index]
        if "disparity" not in sample:
            continue
        pairs.append(StereoPair(str(sample["name"]), sample["hr"][None], sample["lr"][None], sample["ref"][None],
                                sample["disparity"].numpy().astype(np.float64)))
    return pairs


def accuracy_counts(coords: np.ndarray, disparity: np.ndarray, key_width: int) -> tuple[list[int], int]:
    """Correct-pixel counts per threshold and the number of counted pixels.

    ``coords (H, W, 2)`` matched ``(y, x)`` in the reference; ``disparity (H, W)``, unknown = non-finite.
    """
    height, width = disparity.shape
    ys, xs = np.mgrid[0:height, 0:width]
    known = np.isfinite(disparity)
    true_x = np.full(disparity.shape, -1.0)
    true_x[known] = np.round(xs[known] - disparity[known])
    counted = known & (true_x >= 0) & (true_x < key_width)
    error = np.hypot(coords[..., 0] - ys, coords[..., 1] - true_x)[counted]
    return [int((error <= t).sum()) for t in THRESHOLDS], int(counted.sum())


def build_ccnet(weights: str | None, *, lite: bool = False, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A CC-Net in eval mode and its row label: trained weights from ``weights``, else a seeded random init."""
    from refsr.hub import read_checkpoint
    from refsr.models.refsrnet import CCNet

    torch.manual_seed(seed)
    network = CCNet(channels=(8, 16, 32, 32, 32, 64), out_channels=128) if lite else CCNet()
    if weights is None:
        return network.eval(), "CC-Net (random init)"
    state = read_checkpoint(weights)
    if any(k.startswith("ccnet.") for k in state):
        # A whole RefSR-Net checkpoint: keep its CC-Net part.
        state = {k[len("ccnet."):]: v for k, v in state.items() if k.startswith("ccnet.")}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RefsrError(f"{weights}: not a CC-Net of this shape ({first}); try --ccnet-lite") from None
    return network.eval(), "CC-Net"


def match_pair(pair: StereoPair, method: str, *, sr_scale: int, search_range: int, zncc_patch: int,
               ccnet: torch.nn.Module | None) -> torch.Tensor:
    """``LongTensor (H, W, 2)``: the reference position ``(y, x)`` each HR-grid pixel of the query matched."""
    query = upsample_lr(pair.lr, sr_scale) if sr_scale > 1 else pair.hr
    with torch.no_grad():
        if method in ("dense", "mem", "patchmatch"):
            corr = match(query, pair.ref, method=method)
        elif method == "mem-fast":
            corr = match(query, pair.ref, method="mem", coarse="fast")
        elif method == "zncc":
            corr = match_zncc(query, pair.ref, patch_size=zncc_patch, search_range=search_range)
        elif method == "zncc-blurred":
            key = blur_like_lr(pair.ref, sr_scale) if sr_scale > 1 else pair.ref
            corr = match_zncc(query, key, patch_size=zncc_patch, search_range=search_range)
        elif method == "ccnet":
            if ccnet is None:
                raise RefsrError("the ccnet row needs a CC-Net (build_ccnet)")
            corr = match_ccnet(ccnet(query), ccnet(pair.ref), patch_size=1, search_range=search_range)
        else:
            raise RefsrError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return corr.coords[0]


def stereo_table(pairs: Sequence[StereoPair], methods: Sequence[str], *, sr_scale: int = 8,
                 search_range: int = 100, zncc_patch: int = 9, ccnet: torch.nn.Module | None = None,
                 ccnet_label: str = "CC-Net") -> list[Row]:
    """Run every method on every pair and pool the counts (the core of :func:`main`)."""
    labels = {"dense": "dense (cosine 3x3)", "mem": "MEM (cosine 3x3)",
              "mem-fast": "MEM, indexed coarse search (cosine 3x3)", "patchmatch": "PatchMatch (cosine 3x3)",
              "zncc": f"ZNCC raw ({zncc_patch}x{zncc_patch})",
              "zncc-blurred": f"ZNCC blurred ({zncc_patch}x{zncc_patch})", "ccnet": ccnet_label}
    rows = []
    for method in methods:
        if method not in labels:
            raise RefsrError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        row = Row(method, labels[method])
        for pair in pairs:
            start = time.perf_counter()
            coords = match_pair(pair, method, sr_scale=sr_scale, search_range=search_range,
                                zncc_patch=zncc_patch, ccnet=ccnet)
            row.seconds += time.perf_counter() - start
            row.coords.append(coords)
            correct, counted = accuracy_counts(coords.numpy(), pair.disparity, pair.ref.shape[-1])
            row.correct = [a + b for a, b in zip(row.correct, correct)]
            row.counted += counted
        rows.append(row)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| method | time (s) | " + " | ".join(f"<= {t} px" for t in THRESHOLDS) + " |",
             "|---|---:|" + "---:|" * len(THRESHOLDS)]
    for row in rows:
        cells = " | ".join(f"{100 * s:.1f} %" for s in row.shares)
        lines.append(f"| {row.label} | {row.seconds:.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--prescale", type=int, default=None, help="downsizing before everything (default 2)")
    parser.add_argument("--sr-scale", type=int, default=8, help="LR factor (default 8, the paper's)")
    parser.add_argument("--search-range", type=int, default=100, help="window half-side (default 100)")
    parser.add_argument("--zncc-patch", type=int, default=9, help="ZNCC patch side (default 9)")
    parser.add_argument("--ccnet-weights", default=None, help="CC-Net weights; none: random init, labelled so")
    parser.add_argument("--ccnet-lite", action="store_true", help="refsrnet-lite's half-width CC-Net")
    parser.add_argument("--pairs", default=None, help="comma-separated pair ids (motorcycle, aloe)")
    parser.add_argument("--quick", action="store_true", help="Motorcycle only, prescale 4")
    parser.add_argument("--root", default=None, help="data cache (default: refsr's)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prescale = args.prescale if args.prescale is not None else (4 if args.quick else 2)
    names = args.pairs.split(",") if args.pairs else (["motorcycle"] if args.quick else None)
    methods = [m for m in args.methods.split(",") if m]

    try:
        pairs = load_pairs(prescale, args.sr_scale, names, args.root)
        if not pairs:
            print("stereo_accuracy: no stereo pair with disparity is fetched; run 'refsr data fetch'",
                  file=sys.stderr)
            return 2
        ccnet, label = build_ccnet(args.ccnet_weights, lite=args.ccnet_lite) if "ccnet" in methods else (None, "")
        print(f"pairs: {', '.join(f'{p.name} {p.hr.shape[-1]}x{p.hr.shape[-2]}' for p in pairs)} "
              f"(prescale 1/{prescale}); LR = PIL bicubic /{args.sr_scale}, query = bilinear x{args.sr_scale}; "
              f"search range {args.search_range}; load average {os.getloadavg()[0]:.2f}, {args.threads} threads")
        rows = stereo_table(pairs, methods, sr_scale=args.sr_scale, search_range=args.search_range,
                            zncc_patch=args.zncc_patch, ccnet=ccnet, ccnet_label=label)
    except RefsrError as exc:
        print(f"stereo_accuracy: {exc}", file=sys.stderr)
        return 2
    print(f"\n{rows[0].counted} pixels with known disparity and an in-image match; error = Euclidean distance.\n")
    print(format_table(rows))
    by_method = {row.method: row for row in rows}
    if "mem" in by_method and "mem-fast" in by_method:
        pairs_of = zip(by_method["mem"].coords, by_method["mem-fast"].coords)
        same = sum(int((a == b).all(dim=-1).sum()) for a, b in pairs_of)
        total = sum(a.shape[0] * a.shape[1] for a in by_method["mem"].coords)
        print(f"\nMEM with the indexed coarse search finds the exact MEM's reference position at {same:,} of "
              f"{total:,} pixels ({100 * same / total:.2f} %).")
    print("\nPaper (MPI Sintel validation, not comparable data): "
          + "; ".join(f"{k} {'/'.join(f'{v:.1f}' for v in vals)}" for k, vals in PAPER_TABLE_2.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
