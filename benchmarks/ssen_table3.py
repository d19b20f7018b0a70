"""SSEN's Table 3 idea on open data: the EDSR-style baseline against SSEN, per pair kind, with the pair's own
reference, the LR↑ as reference, and an unrelated reference (a photo of other content, and flat grey).

SSEN (Shim et al., CVPR 2020) Table 3 scores the baseline (no reference) and SSEN on CUFED5 at five levels of
reference similarity, to show that SSEN gains most from similar references and never falls below the
baseline. CUFED5 is not open here; the open benchmark's pair kinds (video frames, stereo views, landmark
photos, thumbnails...) play the similarity levels, and the unrelated reference plays the worst level.

This script only *reads* two ``refsr eval --json`` reports and tabulates them (no model runs)::

    refsr eval --dataset open --model ssen-lite --weights runs/ssen-lite/.../model.safetensors \\
        --baselines --breakdown kind --robustness unrelated=coffee.png,grey --every 4 --json ssen.json
    refsr eval --dataset open --model ssen-baseline-lite --weights .../model.safetensors \\
        --breakdown kind --every 4 --json baseline.json
    python benchmarks/ssen_table3.py ssen.json baseline.json [more.json ...] [--figure ssen_table3.png]

Rows: every run of both reports (bicubic, the baseline, SSEN with each kind of reference); columns: each pair
kind and "all". Cells: mean Y PSNR (dB) / SSIM over that kind's images, as the reports scored them (same
protocol, same images: a row may gather its images from several reports, e.g. one eval of the non-video
kinds and one of every 4th video pair, but every row must end up with the same images). ``--figure`` draws the PSNR
gain of each row over bicubic per kind as grouped bars (PIL only).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Row order and short names in the table and the figure.
KIND_ORDER = ("video", "stereo", "stereo_calib", "flow", "multiview", "landmark_other_photo",
              "thumbnail_of_same_photo")


def _row_label(run: dict[str, Any]) -> str:
    """A run's row: the method label (without eval's ``[weights file]`` tag), plus the reference it was given
    when a robustness study changed it."""
    method = re.sub(r" \[[^\]]*\]", "", run["method"])
    transform = run.get("variant", {}).get("ref_transform")
    if not transform:
        return method
    image = str(transform.get("image", "?"))
    return f"{method}, unrelated Ref ({'grey' if image == 'grey' else Path(image).stem})"


def collect(reports: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], tuple]]:
    """Rows, columns and ``{(row, column): (psnr, ssim, count)}`` from eval reports' per-image runs.

    A row's images may come from several reports (e.g. one eval of the non-video kinds and one of every 4th
    video pair); every row must end up with the same images, so that the columns compare like with like.
    """
    images_by_row: dict[str, dict[str, dict[str, Any]]] = {}
    for report in reports:
        for run in report["runs"]:
            # a method that ignores its reference reappears unchanged in robustness tables: setdefault
            # keeps one copy of each image
            found = images_by_row.setdefault(_row_label(run), {})
            for image in run["images"]:
                found.setdefault(image["name"], image)
    rows = list(images_by_row)
    names = {row: sorted(images) for row, images in images_by_row.items()}
    for row in rows[1:]:
        if names[row] != names[rows[0]]:
            raise SystemExit(f"error: {row!r} and {rows[0]!r} were scored on different images; run every eval "
                             "with the same --kinds/--every/--limit")
    cells: dict[tuple[str, str], tuple[float, float, int]] = {}
    kinds: set[str] = set()
    for row in rows:
        images = list(images_by_row[row].values())
        groups: dict[str, list[dict[str, Any]]] = {"all": images}
        for im in images:
            groups.setdefault(str(im.get("kind", "?")), []).append(im)
            kinds.add(str(im.get("kind", "?")))
        for column, ims in groups.items():
            psnrs = [float(im["psnr"]) for im in ims]
            ssims = [float(im["ssim"]) for im in ims]
            cells[(row, column)] = (sum(psnrs) / len(psnrs), sum(ssims) / len(ssims), len(ims))
    columns = [k for k in KIND_ORDER if k in kinds] + sorted(kinds - set(KIND_ORDER)) + ["all"]
    return rows, columns, cells


def markdown(rows: list[str], columns: list[str], cells: dict) -> str:
    counts = {c: next(cells[(r, c)][2] for r in rows if (r, c) in cells) for c in columns}
    head = "| method | " + " | ".join(f"{c} ({counts[c]})" for c in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        texts = []
        for column in columns:
            cell = cells.get((row, column))
            texts.append("" if cell is None else f"{cell[0]:.2f} / {cell[1]:.3f}")
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


_PALETTE = [(120, 120, 120), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194)]


def draw_figure(rows: list[str], columns: list[str], cells: dict, path: Path) -> None:
    """Grouped bars: PSNR gain over the first row (bicubic) for every other row, one group per column."""
    from PIL import Image, ImageDraw

    base, others = rows[0], rows[1:]
    gains = {(r, c): cells[(r, c)][0] - cells[(base, c)][0] for r in others for c in columns
             if (r, c) in cells and (base, c) in cells}
    top = max([0.0, *gains.values()])
    bottom = min([0.0, *gains.values()])
    span = max(top - bottom, 1e-6)
    bar, gap, margin_left, plot_h, legend_h = 14, 18, 60, 300, 18 * len(others) + 10
    width = margin_left + len(columns) * (len(others) * bar + gap) + gap
    height = 40 + plot_h + 40 + legend_h
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def y_of(value: float) -> float:
        return 30 + (top - value) / span * plot_h

    zero = y_of(0.0)
    step = 0.5 if span <= 4 else 1.0
    tick = math.floor(bottom / step) * step
    while tick <= top + 1e-9:
        y = y_of(tick)
        draw.line([(margin_left - 4, y), (width - gap, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick:+.1f}", fill="black")
        tick += step
    draw.line([(margin_left, zero), (width - gap, zero)], fill="black")
    draw.text((4, 2), f"PSNR gain over {base} (dB)", fill="black")
    for ci, column in enumerate(columns):
        x0 = margin_left + gap + ci * (len(others) * bar + gap)
        for ri, row in enumerate(others):
            if (row, column) not in gains:
                continue
            y = y_of(gains[(row, column)])
            draw.rectangle([x0 + ri * bar, min(y, zero), x0 + (ri + 1) * bar - 2, max(y, zero)],
                           fill=_PALETTE[(ri + 1) % len(_PALETTE)])
        label = column.replace("_other_photo", "").replace("_of_same_photo", "")
        draw.text((x0, 30 + plot_h + 8), label, fill="black")
    for ri, row in enumerate(others):
        y = 40 + plot_h + 30 + 18 * ri
        draw.rectangle([margin_left, y, margin_left + 12, y + 12], fill=_PALETTE[(ri + 1) % len(_PALETTE)])
        draw.text((margin_left + 18, y), row.replace("↑", "^"), fill="black")
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="refsr eval --json reports (SSEN first, then the baseline)")
    parser.add_argument("--figure", default=None, help="also draw the gains over bicubic as a PNG here")
    args = parser.parse_args(argv)
    reports = []
    for name in args.reports:
        try:
            reports.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
    rows, columns, cells = collect(reports)
    # bicubic first (the figure's zero line), then the rest in report order
    rows.sort(key=lambda r: r.lower() != "bicubic")
    print(markdown(rows, columns, cells))
    if args.figure:
        draw_figure(rows, columns, cells, Path(args.figure))
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
