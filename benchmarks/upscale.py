"""Time and peak memory of ``refsr.upscale`` with the tile chosen from a memory budget.

Each case runs in a fresh child process (niced), which reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the figure ``RUSAGE_CHILDREN`` gives the parent); tracemalloc
would not see torch's allocations. The images are random-phase noise filtered to look like a photo: content
does not change the memory, and barely the time.

    python benchmarks/upscale.py             # all rows, including LR 1024^2 with a 2048^2 reference
    python benchmarks/upscale.py --quick     # the small rows only
    python benchmarks/upscale.py --calibrate # the measurements behind each model's memory_cost
    python benchmarks/upscale.py --multi-ref --weights W.safetensors  # stitch vs per-tile, open video pairs

Rows: (LR 256^2, Ref 512^2), (LR 512^2, Ref 1024^2), (LR 1024^2, Ref 2048^2), masa-lite (random weights, or
``--weights``), budget 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROWS_QUICK = [(256, 512), (512, 1024)]
ROWS_FULL = ROWS_QUICK + [(1024, 2048)]

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
import refsr
from refsr.inference import choose_tile, parse_memory
lr_side, ref_side, model_name, weights, budget, tile, seed = {args!r}

def photo(side, seed):
    # Smooth random texture with a 1/f spectrum: photo-like statistics, any size, no files.
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(side)[:, None] ** 2 + np.fft.fftfreq(side)[None, :] ** 2
    spectrum = (rng.standard_normal((side, side, 3)) + 1j * rng.standard_normal((side, side, 3)))
    img = np.real(np.fft.ifft2(spectrum / np.sqrt(f + 1e-4)[..., None], axes=(0, 1)))
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)

import threading
t0 = time.perf_counter()
def report():  # progress on stderr, so that an interrupted run still tells its peak so far
    while True:
        time.sleep(30)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"[{{time.perf_counter() - t0:.0f}} s] peak RSS so far {{peak:.2f}} GB", file=sys.stderr, flush=True)
threading.Thread(target=report, daemon=True).start()
lr, ref = photo(lr_side, seed), photo(ref_side, seed + 1)
torch.manual_seed(0)
model = refsr.create_model(model_name, weights=weights).eval()
start = time.perf_counter()
sr = refsr.upscale(lr, ref, model=model, max_memory=budget, tile=tile, progress={progress})
seconds = time.perf_counter() - start
padded = (-(-lr_side // 8) * 8,) * 2
plan = choose_tile(model, padded, (-(-ref_side // 16) * 16) ** 2, parse_memory(budget), tile=tile)
print(json.dumps(dict(seconds=seconds, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      tile=plan.tile, predicted=plan.predicted_peak, shape=list(sr.shape))))
"""


def measure(lr_side: int, ref_side: int, *, model: str = "masa-lite", weights: str | None = None,
            budget: str = "4G", tile: int | None = None, threads: int = 2, log: Path | None = None) -> dict:
    """Run one case in a child process (run this script under ``nice``; the child inherits it).

    Returns seconds, peak RSS (bytes), tile and predicted peak. The child's stderr (a progress bar over
    tiles and the peak RSS every 30 s) goes to ``log`` when given.
    """
    code = _CHILD.format(threads=threads, args=(lr_side, ref_side, model, weights, budget, tile, 0),
                         progress=log is not None)
    cmd = [sys.executable, "-c", code]
    err = open(log, "w") if log is not None else subprocess.PIPE
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        if log is not None:
            err.close()
    if done.returncode != 0:
        tail = done.stderr[-2000:] if done.stderr else f"see {log}"
        raise SystemExit(f"case LR {lr_side} / Ref {ref_side} failed:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(rows: list[tuple[int, int]], log_dir: Path | None = None, **kwargs) -> list[dict]:
    print("| LR | Ref | tile | time (s) | peak RSS (GB) | predicted (GB) |")
    print("|---|---|---|---|---|---|")
    results = []
    for lr_side, ref_side in rows:
        log = None if log_dir is None else log_dir / f"upscale_{lr_side}_{ref_side}.log"
        r = measure(lr_side, ref_side, log=log, **kwargs)
        results.append(dict(lr=lr_side, ref=ref_side, **r))
        tile = "whole" if r["tile"] is None else r["tile"]
        print(f"| {lr_side}² | {ref_side}² | {tile} | {r['seconds']:.1f} | {_gb(r['peak'])} | {_gb(r['predicted'])} |",
              flush=True)
    return results


def calibrate(model: str) -> None:
    """Peak RSS for cases that isolate each term of the cost model; prints the fitted coefficients."""
    big = "64G"  # no tiling: the whole LR is one "tile"
    base = measure(32, 64, model=model, budget=big)
    print("fixed (LR 32, Ref 64):", _gb(base["peak"]), "GB", flush=True)
    tiles = [(side, measure(side, 64, model=model, budget=big)) for side in (128, 192)]
    for side, r in tiles:
        print(f"LR {side}^2, Ref 64: {_gb(r['peak'])} GB", flush=True)
    (s1, r1), (s2, r2) = tiles
    per_tile = (r2["peak"] - r1["peak"]) / (s2 * s2 - s1 * s1)
    print(f"per tile pixel: {per_tile:.0f} B", flush=True)
    refs = [(side, measure(32, side, model=model, budget=big)) for side in (512, 1024)]
    for side, r in refs:
        print(f"LR 32, Ref {side}^2: {_gb(r['peak'])} GB", flush=True)
    (q1, p1), (q2, p2) = refs
    per_ref = (p2["peak"] - p1["peak"]) / (q2 * q2 - q1 * q1)
    print(f"per ref pixel (cache, strips): {per_ref:.0f} B", flush=True)
    both = measure(128, 1024, model=model, budget=big)
    print(f"LR 128^2, Ref 1024^2: {_gb(both['peak'])} GB (predicted {_gb(both['predicted'])})", flush=True)


def compare_multi_ref(weights: str | None, model: str, limit: int) -> None:
    """PSNR (Y, masa protocol) of one reference, stitched references and per-tile choice on video pairs.

    Each target gets two references: its own (a nearby frame of the same video) and a distractor, the
    reference of the next pair from another video, in that order. Tiles are forced (128 LR pixels) so that
    per-tile choice has something to choose per tile.
    """
    import numpy as np
    import torch

    import refsr
    from refsr.data.open_pairs import OpenPairs

    torch.set_num_threads(2)
    pairs = OpenPairs(split="eval", kinds=["video"], multiple=32, skip_missing=True)
    rows = list(range(len(pairs)))
    samples, seen = [], set()
    for i in rows:  # one pair per video, so that the distractor comes from another video
        video = pairs.rows[i]["target"]
        if video not in seen:
            seen.add(video)
            samples.append(i)
        if len(samples) == limit:
            break
    torch.manual_seed(0)
    net = refsr.create_model(model, weights=weights).eval()

    def image(t: torch.Tensor) -> np.ndarray:
        return (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    print("| pair | LR | own ref only | stitch | per-tile |")
    print("|---|---|---|---|---|")
    totals = np.zeros(3)
    for j, i in enumerate(samples):
        sample = pairs[i]
        distractor = pairs[samples[(j + 1) % len(samples)]]["ref"]
        lr, hr, own = image(sample["lr"]), image(sample["hr"]), image(sample["ref"])
        refs = [own, image(distractor)]
        scores = []
        for ref, mode in ((own, "stitch"), (refs, "stitch"), (refs, "per-tile")):
            sr = refsr.upscale(lr, ref, model=net, multi_ref=mode, tile=128, progress=False)
            scores.append(refsr.metrics.psnr(sr, hr, protocol="masa"))
        totals += scores
        print(f"| {sample['name']} | {lr.shape[1]}x{lr.shape[0]} | " + " | ".join(f"{v:.2f}" for v in scores) + " |",
              flush=True)
    mean = totals / max(len(samples), 1)
    print(f"| mean of {len(samples)} | | " + " | ".join(f"{v:.2f}" for v in mean) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small rows only")
    parser.add_argument("--calibrate", action="store_true", help="measure the cost model's terms")
    parser.add_argument("--multi-ref", action="store_true", help="stitch vs per-tile on open video pairs")
    parser.add_argument("--limit", type=int, default=10, help="pairs for --multi-ref")
    parser.add_argument("--model", default="masa-lite")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--rows", default=None, help="only these rows, e.g. 1024:2048,256:512")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each case's progress log here")
    args = parser.parse_args(argv)
    if args.calibrate:
        calibrate(args.model)
        return
    if args.multi_ref:
        compare_multi_ref(args.weights, args.model, args.limit)
        return
    rows = ROWS_QUICK if args.quick else ROWS_FULL
    if args.rows:
        rows = [tuple(int(v) for v in item.split(":")) for item in args.rows.split(",")]
    results = table(rows, log_dir=args.log_dir, model=args.model, weights=args.weights, budget=args.max_memory)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
