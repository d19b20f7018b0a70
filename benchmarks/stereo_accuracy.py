"""How often each matcher finds the true stereo correspondence, on Middlebury's Motorcycle pair.

Usage::

    python benchmarks/stereo_accuracy.py                 # dense, mem, patchmatch at half size
    python benchmarks/stereo_accuracy.py --methods patchmatch --scale 1

Data: scikit-image's copy of the Middlebury 2014 "Motorcycle" pair (``motorcycle_left.png``,
``motorcycle_right.png``, 741x500 RGB) and the left image's ground-truth disparity
(``motorcycle_disp.npz``, array ``arr_0``, float32, ``inf`` = unknown), read from
``$REFSR_DATA/scikit-image/skimage/data/`` (``REFSR_DATA`` defaults to ``~/.cache/refsr/data``). The left
pixel ``(y, x)`` shows the scene point that the right image shows at ``(y, x - d)``.

Protocol:

* Features are the raw pixels: RGB in [0, 1] as 3 channels, so every method matches 3x3x3 patches by cosine
  (patchmatch's 32-d projection is then no smaller than the 27-d patches, so it ranks exactly).
* ``--scale 2`` (the default) first downsizes both images with PIL bicubic to ``round(741/2) x
  round(500/2)``, because dense matching at full size (370k x 370k patch pairs) is far too slow here. The
  disparity is reduced to the same grid by averaging each 2x2 block (unknown if any of the four is) and
  halving it.
* Everything is then cropped at the bottom/right to multiples of 8 (MEM needs the query side divisible by
  its 8-pixel blocks), so all methods see the same pixels.
* Query = left image, key = right image; each method runs once with its defaults (patchmatch: paper
  schedule, seed 0).
* A pixel counts if its disparity is known and its true match ``(y, round(x - d))`` lies inside the right
  image. Its error is the Euclidean distance, in (downsized) pixels, between the reported match and that
  true position (so a wrong row counts too); "<= t px" is the share of counted pixels with error <= t.
  The true column is rounded to the pixel grid, so "<= 0 px" means the exact pixel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refsr.matching import match

THRESHOLDS = (0, 1, 2, 4)
BLOCK = 8


def data_dir() -> Path:
    root = Path(os.environ.get("REFSR_DATA", "~/.cache/refsr/data")).expanduser()
    return root / "scikit-image" / "skimage" / "data"


def load_pair(scale: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Left and right images ``(1, 3, h, w)`` in [0, 1] and the disparity ``(h, w)`` in their pixels."""
    folder = data_dir()
    left = Image.open(folder / "motorcycle_left.png").convert("RGB")
    right = Image.open(folder / "motorcycle_right.png").convert("RGB")
    disparity = np.load(folder / "motorcycle_disp.npz")["arr_0"].astype(np.float64)
    if scale > 1:
        size = (round(left.width / scale), round(left.height / scale))
        left = left.resize(size, Image.BICUBIC)
        right = right.resize(size, Image.BICUBIC)
        height, width = size[1], size[0]
        blocks = disparity[: height * scale, : width * scale].reshape(height, scale, width, scale)
        # The mean is inf (unknown) as soon as one of the block's pixels is unknown.
        disparity = blocks.mean(axis=(1, 3)) / scale
    height, width = (left.height // BLOCK) * BLOCK, (left.width // BLOCK) * BLOCK

    def tensor(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32)[:height, :width] / 255.0
        return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)

    return tensor(left), tensor(right), disparity[:height, :width]


def accuracy(coords: np.ndarray, disparity: np.ndarray) -> tuple[list[float], int]:
    """Shares of counted pixels within each threshold, and how many pixels counted."""
    height, width = disparity.shape
    ys, xs = np.mgrid[0:height, 0:width]
    known = np.isfinite(disparity)
    true_x = np.full(disparity.shape, -1.0)
    true_x[known] = np.round(xs[known] - disparity[known])
    counted = known & (true_x >= 0) & (true_x < width)
    error = np.hypot(coords[..., 0] - ys, coords[..., 1] - true_x)[counted]
    return [float((error <= t).mean()) for t in THRESHOLDS], int(counted.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="dense,mem,patchmatch", help="comma-separated")
    parser.add_argument("--scale", type=int, default=2, help="downsizing factor before matching (default 2)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    folder = data_dir()
    if not (folder / "motorcycle_disp.npz").exists():
        print(f"stereo_accuracy: no Motorcycle data in {folder}; set REFSR_DATA", file=sys.stderr)
        return 2
    left, right, disparity = load_pair(args.scale)
    height, width = disparity.shape
    print(
        f"Motorcycle, scale 1/{args.scale}: {width}x{height} RGB, 3x3 patches of raw pixels; "
        f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads"
    )
    rows = []
    for method in args.methods.split(","):
        start = time.perf_counter()
        with torch.no_grad():
            corr = match(left, right, method=method)
        seconds = time.perf_counter() - start
        shares, counted = accuracy(corr.coords[0].numpy(), disparity)
        rows.append((method, seconds, shares, float(corr.score.mean())))
    print(f"\n{counted} pixels with known disparity and an in-image match; error = Euclidean distance.\n")
    print("| method | time (s) | " + " | ".join(f"<= {t} px" for t in THRESHOLDS) + " | mean cosine |")
    print("|---|---:|" + "---:|" * len(THRESHOLDS) + "---:|")
    for method, seconds, shares, cosine in rows:
        cells = " | ".join(f"{100 * s:.1f} %" for s in shares)
        print(f"| {method} | {seconds:.2f} | {cells} | {cosine:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
