"""Time per sample of the real-world degradation (``refsr.data.degrade.degrade_real``), and its figure.

The pipeline runs in data-loader workers, one thread each, so it is timed on one thread: a 160x160 HR crop
(MASA's training crop) of the bundled Big Buck Bunny frame, degraded to 40x40 with a new seed each time
(every draw of blur, resize, noise and JPEG is different); median, mean and 90th percentile over ``--samples``
draws, by the wall clock and by this thread's CPU time (which a busy shared machine inflates less), and the
time of the draw alone. Run with ``OMP_NUM_THREADS=1``.

    OMP_NUM_THREADS=1 python benchmarks/degrade.py                  # timing table
    python benchmarks/degrade.py --figure docs/figures/degradations.png   # the HR crop under 8 draws

The figure shows the HR crop and eight degraded LR images (seeds 0-7), each enlarged x4 with nearest
neighbour (x5 for the 40x40 LR, so 200x200 tiles) so that its pixels, ringing and JPEG blocks stay visible,
with each draw written under it, one line per stage: 1 and 2 the rounds' blur (iso, aniso, g = generalised,
p = plateau, with sigma; or the sinc cut-off), noise (gau: Gaussian sigma in 8-bit levels, poi: Poisson
scale; a trailing g: grey noise) and the first JPEG quality (q); 3 the final stage's order and JPEG quality.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from refsr.data.degrade import RealDegradation, degrade_real
from refsr.io import read_image

SIDE = 160
SCALE = 4


def hr_crop() -> np.ndarray:
    """A 160x160 crop of the bundled HR frame (grass, fur and sky: texture, edges and flat areas)."""
    frame = read_image(Path(str(resources.files("refsr") / "samples" / "bbb_hr.png")))
    top, left = (frame.shape[0] - SIDE) // 2, (frame.shape[1] - SIDE) // 2
    return np.ascontiguousarray(frame[top : top + SIDE, left : left + SIDE])


def time_samples(count: int) -> None:
    torch.set_num_threads(1)
    hr = hr_crop()
    options = RealDegradation()
    for seed in range(10):  # warm-up: first calls load libjpeg, allocate torch's buffers
        degrade_real(hr, SCALE, seed=seed)
    whole, cpu, draws = [], [], []
    for seed in range(count):
        start, start_cpu = time.perf_counter(), time.thread_time()
        draw = options.draw(seed)
        middle = time.perf_counter()
        draw.apply(hr, SCALE)
        end, end_cpu = time.perf_counter(), time.thread_time()
        whole.append(end - start)
        cpu.append(end_cpu - start_cpu)
        draws.append(middle - start)
    ms = np.asarray(whole) * 1e3
    cpu_ms = np.asarray(cpu) * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"real degradation of a {SIDE}x{SIDE} HR crop to {SIDE // SCALE}x{SIDE // SCALE}, {count} seeds, "
          f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={omp}")
    print("| clock | median | mean | p90 | max |")
    print("|---|---|---|---|---|")
    for name, values in (("wall", ms), ("CPU (this thread)", cpu_ms)):
        print(f"| {name} | {np.median(values):.2f} ms | {values.mean():.2f} ms | "
              f"{np.percentile(values, 90):.2f} ms | {values.max():.2f} ms |")
    print(f"draw alone (median, wall): {np.median(draws) * 1e3:.3f} ms; peak RSS {peak:.0f} MB")


def caption(draw) -> list[str]:
    """One short line per stage: each round's blur and noise (and the first JPEG quality), then the final
    stage."""
    def blur(kernel) -> str:
        if kernel is None:
            return "no blur"
        if kernel.kind == "sinc":
            return f"sinc {kernel.omega / np.pi:.2f}pi"
        family, _, shape = kernel.kind.rpartition("_")
        kind = {"generalized": "g", "plateau": "p", "": ""}[family] + (shape or kernel.kind)
        sigma = f"{kernel.sigma_x:.1f}" + (f"x{kernel.sigma_y:.1f}" if kernel.kind.endswith("aniso") else "")
        return f"{kind} {sigma}"

    def noise(n) -> str:
        amount = f"gau {n.sigma:.0f}" if n.kind == "gaussian" else f"poi {n.scale:.2f}"
        return amount + ("g" if n.grey else "")

    final = "sinc" if draw.final_sinc is not None else "no sinc"
    quality = f"q{draw.second.jpeg_quality}"
    order = f"{final} > {quality}" if draw.sinc_first else f"{quality} > {final}"
    return [
        f"1: {blur(draw.first.blur)}, {noise(draw.first.noise)}, q{draw.first.jpeg_quality}",
        f"2: {blur(draw.second.blur)}, {noise(draw.second.noise)}",
        f"3: {order}",
    ]


def make_figure(path: Path, zoom: int = 5, columns: int = 3) -> None:
    hr = hr_crop()
    options = RealDegradation()
    font = ImageFont.load_default(size=11)
    tile = SIDE // SCALE * zoom
    text_height = 60
    tiles = [(Image.fromarray(hr).resize((tile, tile), Image.Resampling.LANCZOS), ["HR crop (160x160)"])]
    for seed in range(8):
        draw = options.draw(seed)
        lr = draw.apply(hr, SCALE)
        enlarged = Image.fromarray(lr).resize((tile, tile), Image.Resampling.NEAREST)
        tiles.append((enlarged, [f"seed {seed}"] + caption(draw)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (tile + 4), rows * (tile + text_height + 4)), "white")
    pen = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(tiles):
        x, y = (i % columns) * (tile + 4), (i // columns) * (tile + text_height + 4)
        sheet.paste(image, (x, y))
        for k, line in enumerate(lines):
            pen.text((x + 2, y + tile + 1 + 12 * k), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    sheet.save(tmp, optimize=True)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="seeds timed (default: %(default)s)")
    parser.add_argument("--figure", type=Path, default=None, help="write the figure here instead of timing")
    args = parser.parse_args()
    if args.figure is not None:
        make_figure(args.figure)
    else:
        time_samples(args.samples)


if __name__ == "__main__":
    main()
