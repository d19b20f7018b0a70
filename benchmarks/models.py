"""Forward time and peak memory of the models on CPU (inference, ``torch.no_grad``).

Usage::

    python benchmarks/models.py              # MASA at the paper's and CUFED5's stacked sizes; MASA-lite; AMSA;
                                             # TTSR, C2-Matching and DATSR at the paper's size
    python benchmarks/models.py --quick      # the paper's size only
    python benchmarks/models.py --model ttsr --threads 1   # one model's cases
    refsr bench models                       # the same, from a source checkout

Every case runs in a fresh subprocess, so that one case's allocations cannot hide in another's peak. Inside
it: build the model (random weights, seed 0) and uniform random inputs, run the forward ``repeat`` times
and report the best wall time, split into stages (encoder, MEM matching, texture transfer, decoder; the rest
is Ref↓ and the bicubic skip), the CPU time of that run (user + system, all threads: on a busy machine
the wall time grows with the other jobs while the CPU time stays about the same, and on an idle 2-core
machine the wall time is about half of it), and the peak resident set size (``ru_maxrss``: the whole process,
interpreter and PyTorch included, as the official figures were measured). "Extra" is the peak minus the
resident size just before the first forward (model and inputs already in memory).

Official reference figures (the official MASA-SR code, measured once on the same 2-core machine type,
random weights, best of 3): LR 128^2 with Ref 512^2: about 14 s and 3.6 GB; CUFED5's five stacked
references (LR 88x128, Ref 2560x512): 41 s and 10 GB. Targets here: <= 6 s and <= 1.5 GB, and <= 4 GB for
the stacked shape.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

STAGES = ("encode", "match", "transfer", "decode")


@dataclass(frozen=True)
class Case:
    model: str
    lr: tuple[int, int]
    ref: tuple[int, int]
    official: str  # the official implementation's figures, for the table
    target: str


CASES = (
    Case("masa", (128, 128), (512, 512), "~14 s, 3.6 GB", "<= 6 s, <= 1.5 GB"),
    Case("masa", (88, 128), (2560, 512), "41 s, 10.0 GB", "<= 4 GB"),
    Case("masa-lite", (128, 128), (512, 512), "n/a", "n/a"),
    # AMSA at its training size (HR 160^2, five reference scales). Stages: encode = contrastive features and
    # their pyramids, match = CFE-PatchMatch + offsets, transfer = VGG textures, decode = MSDA + fusion.
    Case("amsa", (40, 40), (160, 160), "n/a (CUDA-only code)", "match <= 3 s, <= 12 s"),
    Case("amsa-lite", (40, 40), (160, 160), "n/a", "n/a"),
    # The peers at the paper's size. Stages: encode = texture / contrastive features, match = the exhaustive
    # search (and C2/DATSR's offsets), transfer = TTSR's texture folding or C2/DATSR's VGG textures, decode =
    # the main / restoration network. Official figures: none measured here (C2's and DATSR's code is CUDA-only).
    Case("ttsr", (128, 128), (512, 512), "n/a", "n/a"),
    Case("c2-matching", (128, 128), (512, 512), "n/a (CUDA-only code)", "n/a"),
    Case("datsr", (128, 128), (512, 512), "n/a (CUDA-only code)", "n/a"),
)


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(
    model_name: str, lr_hw: tuple[int, int], ref_hw: tuple[int, int], repeat: int, threads: int
) -> dict:
    """Run one case in this process and return its figures."""
    import torch

    import refsr

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = refsr.create_model(model_name).eval()
    gen = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, *lr_hw, generator=gen)
    ref = torch.rand(1, 3, *ref_hw, generator=gen)

    # Per-stage timers around the model's stage methods (the forward itself is unchanged).
    spent: dict[str, float] = {}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return result

        return wrapper

    for stage in STAGES:
        setattr(model, stage, timed(stage, getattr(model, stage)))

    baseline = _maxrss_bytes()
    runs = []
    with torch.no_grad():
        for _ in range(repeat):
            spent.clear()
            cpu_start = time.process_time()
            start = time.perf_counter()
            sr = model(lr, ref)
            total = time.perf_counter() - start
            runs.append({"total": total, "cpu": time.process_time() - cpu_start, **spent})
            del sr
    best = min(runs, key=lambda r: r["total"])
    return {
        "best": best,
        "runs": len(runs),
        "all_totals": [r["total"] for r in runs],
        "peak_bytes": _maxrss_bytes(),
        "baseline_bytes": baseline,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _spawn(case: Case, repeat: int, threads: int) -> dict:
    sizes = [str(v) for v in (*case.lr, *case.ref)]
    script = os.path.abspath(__file__)
    command = [sys.executable, script, "--case", case.model, *sizes, str(repeat), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MASA at LR 128^2 / Ref 512^2 only")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="only the cases of this model (repeat for several)")
    parser.add_argument("--case", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        name, lh, lw, rh, rw, repeat, threads = args.case
        result = run_case(name, (int(lh), int(lw)), (int(rh), int(rw)), int(repeat), int(threads))
        print(json.dumps(result))
        return 0

    load = os.getloadavg()[0]
    print(f"# CPU threads: {args.threads}; load average at start: {load:.2f}")
    if load > 1.0:
        print("# warning: the machine is busy; times will be inflated")
    header = (
        f"{'model':<10} {'LR':>8} {'Ref':>9} {'best s':>7} {'cpu s':>6} {'encode':>7} {'match':>6} {'transfer':>8} "
        f"{'decode':>7} {'peak RSS MB':>11} {'extra MB':>8}  official / target"
    )
    print(header)
    print("-" * len(header))
    cases = CASES[:1] if args.quick else CASES
    if args.model:
        cases = tuple(case for case in cases if case.model in args.model)
    for case in cases:
        result = _spawn(case, args.repeat, args.threads)
        lr_text, ref_text = "x".join(map(str, case.lr)), "x".join(map(str, case.ref))
        if "error" in result:
            print(f"{case.model:<10} {lr_text:>8} {ref_text:>9}   error: {result['error']}")
            continue
        best = result["best"]
        stages = [best.get(stage, 0.0) for stage in STAGES]
        peak_mb = result["peak_bytes"] / 2**20
        extra_mb = (result["peak_bytes"] - result["baseline_bytes"]) / 2**20
        print(
            f"{case.model:<10} {lr_text:>8} {ref_text:>9} {best['total']:>7.2f} {best['cpu']:>6.2f} {stages[0]:>7.2f} "
            f"{stages[1]:>6.2f} {stages[2]:>8.2f} {stages[3]:>7.2f} {peak_mb:>11.0f} {extra_mb:>8.0f}"
            f"  {case.official} / {case.target}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
