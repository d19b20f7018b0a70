"""Time, CPU time and peak memory of ``refsr.upscale``; MASA's speed options against each other and against the
official MASA-SR.

    python benchmarks/upscale.py --large            # LR 512²/Ref 1024², 1024²/2048², 2048²/4096²: exact and
                                                    #   fast matching, float32 and bfloat16; PSNR fast vs exact
    python benchmarks/upscale.py --large --rows 1024:2048 --exact-up-to 1024
    python benchmarks/upscale.py --quick            # LR 256²/512² and 512²/1024², the defaults only
    python benchmarks/upscale.py --calibrate        # the measurements behind MASA's memory cost (fp32, bf16)
    python benchmarks/upscale.py --official DIR     # the full masa forward, LR 128²/Ref 512², against the
                                                    #   official MASA-SR checked out in DIR (never committed)
    python benchmarks/upscale.py --quality          # fast vs exact and bf16 vs fp32 on the open eval split
    python benchmarks/upscale.py --recall           # the fast coarse search vs the exact one, real photos
    python benchmarks/upscale.py --multi-ref        # several references: stitch vs per-tile
    python benchmarks/upscale.py --gpu-checks OUT.json  # on a CUDA machine: CUDA vs CPU, bf16's cost there

Every timed case runs in a fresh child process (niced with the parent: run this script under ``nice``), which
reports the wall time and the CPU time (user + system, all threads) of the ``upscale`` call and its peak RSS
(``ru_maxrss``, the figure ``RUSAGE_CHILDREN`` gives the parent); the parent adds the load average before and
after. On a machine shared with other jobs the wall time grows with their load while the CPU time stays about
the same; on an idle 2-core machine the wall time is about half the CPU time.

Images: a real photo (the largest training photo of the data cache, a 6028x3391 wallpaper, when it is there):
the LR is its left square resized to the LR side, the reference the square shifted right by a tenth, resized
to the reference side (PIL bicubic). Without the data cache: smooth random texture with a 1/f spectrum.
Models: masa-lite with its shipped weights unless ``--model``/``--weights`` say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS_QUICK = [(256, 512), (512, 1024)]
ROWS_LARGE = [(512, 1024), (1024, 2048), (2048, 4096)]
PHOTO = "lomiri-wallpapers-20.04/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"


# ---------------------------------------------------------------------- inputs


def noise_photo(side: int, seed: int) -> np.ndarray:
    """Smooth random texture with a 1/f spectrum: photo-like statistics, any size, no files."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(side)[:, None] ** 2 + np.fft.fftfreq(side)[None, :] ** 2
    spectrum = rng.standard_normal((side, side, 3)) + 1j * rng.standard_normal((side, side, 3))
    img = np.real(np.fft.ifft2(spectrum / np.sqrt(f + 1e-4)[..., None], axes=(0, 1)))
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def photo_path() -> Path | None:
    from refsr.data.cache import data_root

    path = data_root() / PHOTO
    return path if path.is_file() else None


def image_pair(lr_side: int, ref_side: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(lr, ref, source)``: uint8 HxWx3 arrays of the given sides (see the module docstring)."""
    from PIL import Image

    path = photo_path()
    if path is None:
        return noise_photo(lr_side, 0), noise_photo(ref_side, 1), "1/f noise"
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    shift = side // 10
    lr = img.crop((0, 0, side, side)).resize((lr_side, lr_side), Image.BICUBIC)
    ref = img.crop((shift, 0, shift + side, side)).resize((ref_side, ref_side), Image.BICUBIC)
    return np.asarray(lr), np.asarray(ref), path.name


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---------------------------------------------------------------------- one case in a child process


def run_child(spec: dict) -> dict:
    """One ``upscale`` call in this process (the child): its wall and CPU time, peak RSS and tile."""
    import torch

    import refsr
    import refsr.inference

    torch.set_num_threads(spec["threads"])
    lr, ref, source = image_pair(spec["lr"], spec["ref"])
    weights = spec["weights"]
    model = refsr.create_model(spec["model"], weights=weights).eval() if weights else \
        refsr.create_model(spec["model"]).eval()
    plans = []
    choose_tile = refsr.inference.choose_tile

    def recorded(*args, **kwargs):  # the plan upscale makes, for the table
        plans.append(choose_tile(*args, **kwargs))
        return plans[-1]

    refsr.inference.choose_tile = recorded
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sr = refsr.upscale(lr, ref, model=model, max_memory=spec["budget"], tile=spec["tile"],
                       matching=spec["matching"], precision=spec["precision"], progress=spec["progress"])
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if spec.get("save"):
        np.save(spec["save"], sr)
    dtype = refsr.devices.resolve_precision(spec["precision"], torch.device("cpu"), model.precisions)
    return dict(seconds=seconds, cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                peak=after.ru_maxrss * 1024, tile=plans[-1].tile, predicted=plans[-1].predicted_peak, source=source,
                precision="bf16" if dtype == torch.bfloat16 else "fp32")


def measure(lr_side: int, ref_side: int, *, model: str = "masa-lite", weights: str | None = "default",
            budget: str = "4G", tile: int | None = None, matching: str | None = None, precision: str = "auto",
            threads: int = 2, save: str | None = None, log: Path | None = None) -> dict:
    """Run one case in a fresh child process; returns its figures plus the load average before and after and
    the child's whole CPU time (start-up and model loading included)."""
    spec = dict(lr=lr_side, ref=ref_side, model=model, weights=weights, budget=budget, tile=tile,
                matching=matching, precision=precision, threads=threads, save=save, progress=log is not None)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    load = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    result = json.loads(done.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(load_before=load, load_after=os.getloadavg()[0],
                  process_cpu=(after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime))
    return result


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f}"


# ---------------------------------------------------------------------- tables


def table(rows: list[tuple[int, int]], log_dir: Path | None = None, **kwargs) -> list[dict]:
    """The default options (fast matching, automatic precision) at each size."""
    print("| LR | Ref | precision | tile | time (s) | CPU time (s) | peak RSS (GB) | predicted (GB) | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for lr_side, ref_side in rows:
        log = None if log_dir is None else log_dir / f"upscale_{lr_side}_{ref_side}.log"
        r = measure(lr_side, ref_side, log=log, **kwargs)
        results.append(dict(lr=lr_side, ref=ref_side, **r))
        tile = "whole" if r["tile"] is None else r["tile"]
        print(f"| {lr_side}² | {ref_side}² | {r['precision']} | {tile} | {r['seconds']:.1f} | {r['cpu']:.1f} | "
              f"{_gb(r['peak'])} | {_gb(r['predicted'])} | {r['load_before']:.1f}-{r['load_after']:.1f} |", flush=True)
    return results


def large(rows: list[tuple[int, int]], exact_up_to: int, log_dir: Path | None = None, **kwargs) -> list[dict]:
    """Exact vs fast matching, float32 vs bfloat16, at each size; the PSNR of fast against exact (same
    precision) and of bfloat16 against float32 (same matching)."""
    print("| LR | Ref | matching | precision | time (s) | CPU time (s) | peak RSS (GB) | tile | PSNR vs exact "
          "| PSNR vs fp32 | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr_side, ref_side in rows:
            outputs: dict[tuple[str, str], np.ndarray] = {}
            for matching in ("exact", "fast"):
                if matching == "exact" and lr_side > exact_up_to:
                    continue
                for precision in ("fp32", "bf16"):
                    save = os.path.join(tmp, f"{matching}_{precision}.npy")
                    log = None if log_dir is None else log_dir / f"large_{lr_side}_{matching}_{precision}.log"
                    r = measure(lr_side, ref_side, matching=matching, precision=precision, save=save, log=log,
                                **kwargs)
                    outputs[matching, precision] = np.load(save)
                    os.remove(save)
                    vs_exact = psnr(outputs[matching, precision], outputs["exact", precision]) \
                        if ("exact", precision) in outputs and matching == "fast" else None
                    vs_fp32 = psnr(outputs[matching, precision], outputs[matching, "fp32"]) \
                        if precision == "bf16" else None
                    r.update(lr=lr_side, ref=ref_side, matching=matching, psnr_vs_exact=vs_exact, psnr_vs_fp32=vs_fp32)
                    results.append(r)
                    cell = lambda v: "–" if v is None else f"{v:.1f} dB"  # noqa: E731
                    tile = "whole" if r["tile"] is None else r["tile"]
                    print(f"| {lr_side}² | {ref_side}² | {matching} | {precision} | {r['seconds']:.1f} | "
                          f"{r['cpu']:.1f} | {_gb(r['peak'])} | {tile} | {cell(vs_exact)} | {cell(vs_fp32)} | "
                          f"{r['load_before']:.1f}-{r['load_after']:.1f} |", flush=True)
    return results


def calibrate(model: str, weights: str | None) -> None:
    """Peak RSS of cases that isolate each term of MASA's cost model, in float32 and bfloat16.

    fixed: a tiny case. Per tile pixel: the whole LR at once (one "tile"), two sizes. Per image pixel (kept
    between the stages of ``forward_tiled``): two LR sizes in tiles of the same side. Per tile pixel of the
    tiled run: two tile sides on the same image. Per reference pixel (the cache): two reference sizes.
    """
    big = "64G"
    for precision in ("fp32", "bf16"):
        print(f"## {precision}", flush=True)

        def peak(lr_side: int, ref_side: int, tile: int | None = None) -> float:
            r = measure(lr_side, ref_side, model=model, weights=weights, budget=big, tile=tile,
                        precision=precision)
            print(f"LR {lr_side}², Ref {ref_side}², tile {tile}: {_gb(r['peak'])} GB", flush=True)
            return r["peak"]

        base = peak(32, 64)
        print(f"fixed: {_gb(base)} GB")
        p1, p2 = peak(128, 64), peak(192, 64)
        print(f"per pixel of a whole LR (untiled): {(p2 - p1) / (192**2 - 128**2):.0f} B")
        t1, t2 = peak(768, 64, 64), peak(768, 64, 128)
        print(f"per pixel of a tile (tiled, x4 tile side): {(t2 - t1) / (128**2 - 64**2):.0f} B")
        i1, i2 = peak(768, 64, 64), peak(1280, 64, 64)
        print(f"per pixel of a tiled image: {(i2 - i1) / (1280**2 - 768**2):.0f} B")
        r1, r2 = peak(32, 1024), peak(32, 2048)
        print(f"per reference pixel (cache, strips, index): {(r2 - r1) / (2048**2 - 1024**2):.0f} B", flush=True)


# ---------------------------------------------------------------------- against the official MASA-SR


_OFFICIAL_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
which, precision, lr_hw, ref_hw = {args!r}
gen = torch.Generator().manual_seed(0)
lr = torch.rand(1, 3, *lr_hw, generator=gen)
ref = torch.rand(1, 3, *ref_hw, generator=gen)
ref_down = torch.nn.functional.interpolate(ref, scale_factor=0.25, mode="bicubic", align_corners=False)
dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[precision]
torch.manual_seed(0)
if which == "official":
    # The architecture file alone: the package's __init__ imports the trainer (and tensorboardX).
    import importlib.util, os
    spec = importlib.util.spec_from_file_location("official_masa", os.path.join({root!r}, "models", "archs", "MASA_arch.py"))
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    from types import SimpleNamespace
    # The official test.py defaults.
    net = official.MASA(SimpleNamespace(input_nc=3, nf=64, sr_scale=4, num_nbr=1)).eval().to(dtype)
    run = lambda: net(lr.to(dtype), ref.to(dtype), ref_down.to(dtype))
else:
    import refsr
    net = refsr.create_model("masa").eval().to(dtype)
    run = lambda: net(lr, ref, ref_down=ref_down)
with torch.no_grad():
    times, cpus = [], []
    for _ in range({repeat}):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
best = min(range(len(times)), key=times.__getitem__)
print(json.dumps(dict(seconds=times[best], cpu=cpus[best], peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def compare_official(root: str, threads: int, repeat: int) -> None:
    """The full ``masa`` forward at LR 128² / Ref 512² (random weights), refsr vs the official code, each in
    its own child process, float32 and bfloat16, side by side."""
    print(f"| precision | implementation | time (s) | CPU time (s) | peak RSS (GB) | ratio | load |")
    print("|---|---|---|---|---|---|---|")
    official_fp32 = None
    for precision in ("fp32", "bf16"):
        figures = {}
        for which in ("official", "refsr"):
            code = _OFFICIAL_CHILD.format(threads=threads, root=os.path.abspath(root), repeat=repeat,
                                          args=(which, precision, (128, 128), (512, 512)))
            load = os.getloadavg()[0]
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                print(f"| {precision} | {which} | failed: {(done.stderr.strip().splitlines() or ['?'])[-1]} | | | | |")
                continue
            figures[which] = r = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = ""
            if which == "refsr" and "official" in figures:
                o = figures["official"]
                ratio = f"{r['seconds'] / o['seconds']:.2f}x time, {r['peak'] / o['peak']:.2f}x memory"
                if precision != "fp32" and official_fp32 is not None:  # the official code is a float32 one
                    ratio += (f" ({r['seconds'] / official_fp32['seconds']:.2f}x time, "
                              f"{r['peak'] / official_fp32['peak']:.2f}x memory of the official in fp32)")
            if which == "official" and precision == "fp32":
                official_fp32 = r
            print(f"| {precision} | {which} | {r['seconds']:.2f} | {r['cpu']:.2f} | {_gb(r['peak'])} | {ratio} | "
                  f"{load:.1f} |", flush=True)


# ---------------------------------------------------------------------- quality


def quality(weights: str | None, model: str, every: int, json_path: Path | None = None) -> dict:
    """Fast vs exact matching and bfloat16 vs float32: PSNR (Y, masa protocol) per kind on the open eval split,
    every ``every``-th video pair and every other pair, as ``refsr eval --dataset open`` scores them.

    "fast" alone runs the exhaustive search wherever an index would not save work, which is every pair here
    (the eval references are small): it equals "exact". "fast, forced index" builds the index anyway, with
    clusters small enough (about 1,000 per reference) that the 32 probes see about 3 % of Ref↓, as for a
    2048² reference: the approximation itself, measured on real pairs.
    """

    import torch

    import refsr
    import refsr.matching.mem as mem
    from refsr.data.open_pairs import KINDS
    from refsr.eval.datasets import make_dataset
    from refsr.eval.runner import evaluate

    torch.set_num_threads(2)
    parts = [(make_dataset("open", kinds=["video"]), every),
             (make_dataset("open", kinds=[k for k in KINDS["eval"] if k != "video"]), 1)]
    original_build, original_saves = mem.build_block_index, mem.index_saves_work

    def forced_build(key, dilations, **kwargs):
        positions = key.shape[-2] * key.shape[-1]
        return original_build(key, dilations, cluster_size=max(2, positions // 1024), **kwargs)

    # "fast" without a forced index is not run: on these pairs it is the exhaustive search, i.e. "exact".
    variants = [("exact fp32", "exact", torch.float32, False), ("fast fp32, forced index", "fast", torch.float32, True),
                ("exact bf16", "exact", torch.bfloat16, False)]
    scores: dict[str, dict[str, list[float]]] = {}
    for label, matching, dtype, forced in variants:
        net = refsr.create_model(model, weights=weights, matching=matching).eval().to(dtype)
        mem.build_block_index = forced_build if forced else original_build
        mem.index_saves_work = (lambda *a, **k: True) if forced else original_saves
        start = time.perf_counter()
        try:
            for dataset, step in parts:
                result = evaluate(net, dataset, protocol="masa", every=step)
                for image in result.images:
                    scores.setdefault(label, {}).setdefault(image.meta.get("kind", "?"), []).append(image.psnr)
        finally:
            mem.build_block_index, mem.index_saves_work = original_build, original_saves
        print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    kinds = sorted({k for per_kind in scores.values() for k in per_kind})
    print("| variant | " + " | ".join(f"{k} ({len(scores['exact fp32'][k])})" for k in kinds) + " | all |")
    print("|---|" + "---|" * (len(kinds) + 1))
    reference = scores["exact fp32"]
    for label, *_ in variants:
        cells = []
        for kind in kinds + ["all"]:
            values = [v for k in kinds for v in scores[label][k]] if kind == "all" else scores[label][kind]
            base = [v for k in kinds for v in reference[k]] if kind == "all" else reference[kind]
            delta = float(np.mean(values) - np.mean(base))
            cells.append(f"{np.mean(values):.3f}" + ("" if label == "exact fp32" else f" ({delta:+.3f})"))
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(scores, indent=1))
    return scores


# ---------------------------------------------------------------------- recall of the fast coarse search


def recall(pairs: list[tuple[int, int]], probes: list[int], sample: int) -> None:
    """The fast coarse search against the exhaustive one on masa-lite features of the photo pair: the share
    of blocks whose exact best Ref↓ position it finds, and of those where it finds a float-rounding tie
    (score within 1e-5). Brute force over the same descriptors on a fixed sample of blocks."""
    import torch

    import refsr
    from refsr.matching.block_search import build_block_index, exact_search_blocks, search_blocks

    torch.set_num_threads(2)
    net = refsr.create_model("masa-lite", weights="default").eval()
    print("| LR | Ref | blocks | clusters | probes | build (s) | search (s) | same position | within 1e-5 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lr_side, ref_side in pairs:
        lr, ref, _ = image_pair(lr_side, ref_side)
        lr_t = torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float() / 255
        ref_t = torch.from_numpy(ref.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            query, key = net.encoder.level1(lr_t), net.encoder.level1(net.make_ref_down(ref_t))
        descriptors, grid = block_descriptors(query)
        start = time.perf_counter()
        index = build_block_index(key)
        built = time.perf_counter() - start
        chosen = torch.randperm(descriptors.shape[0], generator=torch.Generator().manual_seed(0))[:sample]
        truth, truth_score = exact_search_blocks(index, descriptors[chosen])
        for count in probes:
            start = time.perf_counter()
            found, found_score = search_blocks(index, descriptors, probes=count, grid=grid, step=8)
            seconds = time.perf_counter() - start
            found, found_score = found[chosen], found_score[chosen]
            same = float((found == truth).float().mean())
            tied = float(((found == truth) | (found_score >= truth_score - 1e-5)).float().mean())
            print(f"| {lr_side}² | {ref_side}² | {descriptors.shape[0]} ({len(chosen)} checked) | {index.clusters} | "
                  f"{count} | {built:.1f} | {seconds:.1f} | {100 * same:.2f} % | {100 * tied:.2f} % |", flush=True)


def block_descriptors(query):
    """MEM's block descriptors of LR features ``(1, C, h, w)`` (``(blocks, D)``) and the block grid."""
    import torch
    import torch.nn.functional as F

    _, c, h, w = query.shape
    k, centre = 8, 5
    padded = F.pad(query, (1, 1, 1, 1), mode="replicate")[0]
    rows, cols = torch.arange(h // k) * k + centre, torch.arange(w // k) * k + centre
    parts = []
    for d in (1, 2, 3):
        taps = torch.tensor([-d, 0, d])
        patch = padded[:, (rows[:, None] + taps)[:, None, :, None], (cols[:, None] + taps)[None, :, None, :]]
        patch = patch.permute(1, 2, 3, 4, 0).reshape((h // k) * (w // k), 9 * c)  # (blocks, taps * C)
        parts.append(patch / patch.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return torch.cat(parts, dim=1), (h // k, w // k)


# ---------------------------------------------------------------------- several references


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


# ---------------------------------------------------------------------- on a GPU machine


def gpu_checks(out: Path) -> dict:
    """What only a CUDA machine can measure, written to ``out`` (JSON) for the GPU recipe: the same upscale on
    CUDA and on the CPU (PSNR between them, target >= 45 dB), bfloat16's PSNR cost on CUDA on the open eval
    split's non-video pairs (``precision="auto"`` may pick bfloat16 on CUDA only if it is <= 0.02 dB), and the
    times of LR 1024² with a 2048² reference."""
    import torch

    import refsr

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-checks needs a CUDA GPU")
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    lr, ref, source = image_pair(256, 512)
    outputs = {}
    for device in ("cpu", "cuda"):
        for matching in ("exact", "fast"):
            start = time.perf_counter()
            outputs[device, matching] = refsr.upscale(lr, ref, device=device, matching=matching, precision="fp32",
                                                      progress=False)
            report[f"seconds {device} {matching} 256/512"] = time.perf_counter() - start
    report["source"] = source
    report["psnr cuda vs cpu (exact)"] = psnr(outputs["cuda", "exact"], outputs["cpu", "exact"])
    report["psnr cuda vs cpu (fast)"] = psnr(outputs["cuda", "fast"], outputs["cpu", "fast"])
    tiled = refsr.upscale(lr, ref, device="cuda", tile=64, precision="fp32", progress=False)
    report["psnr cuda tiled vs whole"] = psnr(tiled, outputs["cuda", "fast"])

    from refsr.data.open_pairs import KINDS
    from refsr.eval.datasets import make_dataset
    from refsr.eval.runner import evaluate

    dataset = make_dataset("open", kinds=[k for k in KINDS["eval"] if k != "video"])
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        net = refsr.create_model("masa-lite", weights="default").eval().to(dtype)
        result = evaluate(net, dataset, protocol="masa", device="cuda")
        report[f"open eval non-video PSNR cuda {precision}"] = float(np.mean([i.psnr for i in result.images]))
    report["bf16 cost on cuda (dB)"] = (report["open eval non-video PSNR cuda fp32"]
                                        - report["open eval non-video PSNR cuda bf16"])
    lr, ref, _ = image_pair(1024, 2048)
    for precision in ("fp32", "bf16"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        refsr.upscale(lr, ref, device="cuda", precision=precision, progress=False)
        torch.cuda.synchronize()
        report[f"seconds cuda 1024/2048 {precision}"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small rows, default options")
    parser.add_argument("--large", action="store_true", help="exact/fast x fp32/bf16 at the large sizes")
    parser.add_argument("--calibrate", action="store_true", help="measure MASA's memory cost terms")
    parser.add_argument("--official", metavar="DIR", default=None, help="a checkout of dvlab-research/MASA-SR")
    parser.add_argument("--quality", action="store_true", help="fast vs exact, bf16 vs fp32 on the open eval split")
    parser.add_argument("--recall", action="store_true", help="the fast coarse search vs the exhaustive one")
    parser.add_argument("--multi-ref", action="store_true", help="stitch vs per-tile on open video pairs")
    parser.add_argument("--gpu-checks", type=Path, default=None, metavar="OUT.json", help="on a CUDA machine")
    parser.add_argument("--limit", type=int, default=10, help="pairs for --multi-ref")
    parser.add_argument("--every", type=int, default=4, help="every n-th video pair for --quality (default 4)")
    parser.add_argument("--probes", default="16,32,64", help="probes for --recall")
    parser.add_argument("--sample", type=int, default=2048, help="blocks checked by brute force for --recall")
    parser.add_argument("--model", default="masa-lite")
    parser.add_argument("--weights", default="default", help="weights file, 'default' (shipped), or 'none'")
    parser.add_argument("--max-memory", default="4G")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many forwards for --official")
    parser.add_argument("--exact-up-to", type=int, default=1024, help="--large: exact matching up to this LR side")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--rows", default=None, help="only these rows, e.g. 1024:2048,256:512")
    parser.add_argument("--log-dir", type=Path, default=None, help="write each case's progress log here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    weights = None if args.weights == "none" else args.weights
    rows = [tuple(int(v) for v in item.split(":")) for item in args.rows.split(",")] if args.rows else None
    print(f"# load average at start: {os.getloadavg()[0]:.2f}; {args.threads} threads", flush=True)
    results = None
    if args.calibrate:
        calibrate(args.model, weights)
    elif args.official:
        compare_official(args.official, args.threads, args.repeat)
    elif args.quality:
        results = quality(weights, args.model, args.every)
    elif args.recall:
        recall(rows or [(1024, 2048)], [int(p) for p in args.probes.split(",")], args.sample)
    elif args.multi_ref:
        compare_multi_ref(weights, args.model, args.limit)
    elif args.gpu_checks is not None:
        results = gpu_checks(args.gpu_checks)
    elif args.large:
        results = large(rows or ROWS_LARGE, args.exact_up_to, log_dir=args.log_dir, model=args.model, weights=weights,
                        budget=args.max_memory, threads=args.threads)
    else:
        results = table(rows or (ROWS_QUICK if args.quick else ROWS_LARGE), log_dir=args.log_dir, model=args.model,
                        weights=weights, budget=args.max_memory, threads=args.threads)
    if args.json and results is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
