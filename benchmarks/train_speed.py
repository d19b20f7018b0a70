"""Training speed under each precision and memory layout, side by side: samples per second and peak RSS.

    python benchmarks/train_speed.py                       # configs/default.yaml, fp32 vs bf16 (+ channels-last)
    python benchmarks/train_speed.py --config configs/ssen-lite.yaml --iterations 20 --threads 2
    python benchmarks/train_speed.py --variants fp32,bf16+cl --set data.train.num_workers=0

Each variant trains ``--iterations`` steps of the config in a fresh child process (so its peak RSS is its
own), from the same seed on the same samples; the first ``--warmup`` steps are left out of the rate (the
first steps allocate and, with ``train.compile``, compile). The rate is the median over the remaining steps
of the loop's own ``samples_per_second`` (the step's samples over its wall time, data loading included), and
the CPU time is the child's (and its data-loader workers') user + system time over the whole run. Variants: ``fp32``, ``bf16``, ``fp16``,
each optionally with ``+cl`` (``train.channels_last``), ``+compile`` and/or ``+reread`` (every image decoded
again at every read: the data sources' ``keep_decoded`` off, as training ran before it).

On a machine shared with other jobs the wall-clock rates drop while CPU time stays about the same: the table
prints the load average before and after, and the CPU seconds per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, torch
from refsr.train import load_config, run_training
config, out, threads, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)
summary = run_training(load_config(config, sets), out, progress=False)
me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rates": [r.throughput["samples_per_second"] for r in summary.records],
                  "cpu": me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime,
                  "peak_mb": me.ru_maxrss / 1024}))
"""


def variant_sets(variant: str, sources: int) -> list[str]:
    parts = variant.split("+")
    sets = [f"train.precision={parts[0]}"]
    if "cl" in parts[1:]:
        sets.append("train.channels_last=true")
    if "compile" in parts[1:]:
        sets.append("train.compile=true")
    if "reread" in parts[1:]:  # every image decoded again at every read, as before keep_decoded
        sets += [f"data.train.sources.{i}.options.keep_decoded=false" for i in range(sources)]
    unknown = set(parts[1:]) - {"cl", "compile", "reread"}
    if parts[0] not in ("fp32", "bf16", "fp16") or unknown:
        raise SystemExit(f"train_speed: unknown variant {variant!r}; e.g. fp32, bf16, bf16+cl, fp16+cl+compile, "
                         "fp32+reread")
    return sets


def run_variant(config: str, variant: str, iterations: int, threads: int, extra: list[str]) -> dict:
    sets = [f"train.iterations={iterations}", "train.time_budget=null", "train.checkpoint_interval=100000",
            "train.tensorboard=false", "data.val=null", "train.device=cpu", *extra,
            *variant_sets(variant, len(yaml.safe_load(Path(config).read_text())["data"]["train"]["sources"]))]
    if not any(s.startswith("schedule.t_max") for s in extra):
        sets.append(f"schedule.t_max={iterations}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", _CHILD, config, out, str(threads), json.dumps(sets)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"train_speed: {variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    parser.add_argument("--variants", default="fp32,fp32+cl,bf16,bf16+cl")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="more config overrides (key.path=value)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for variant in args.variants.split(","):
        result = run_variant(args.config, variant, args.iterations, args.threads, args.set)
        rate = statistics.median(result["rates"][args.warmup:])
        rows.append((variant, rate, result["cpu"], result["peak_mb"]))
        print(f"  {variant}: {rate:.2f} samples/s, {result['cpu']:.0f} CPU s, peak {result['peak_mb']:.0f} MB",
              file=sys.stderr)
    base = rows[0][1]
    print(f"\n{Path(args.config).name}, {args.iterations} iterations ({args.warmup} warm-up), {args.threads} "
          f"threads; load average {load:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print("| variant | samples/s (median) | vs first | CPU s (whole run) | peak RSS |")
    print("|---|---|---|---|---|")
    for variant, rate, cpu, peak in rows:
        print(f"| {variant} | {rate:.2f} | {rate / base:.2f}x | {cpu:.0f} | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
