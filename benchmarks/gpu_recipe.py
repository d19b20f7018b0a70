"""The prepared GPU recipe: train refsr's lite models with `refsr train` inside a short window on a lent GPU.

Two steps. On the machine with the data cache and a network to PyPI:

    python benchmarks/gpu_recipe.py prepare            # gpu-carry/: the data pack + pydantic for Python 3.12

which writes ``gpu-carry/`` (git-ignored): ``pack/`` (``refsr data pack`` of
every job's config: decoded video frames and pre-scaled photos, no PyAV needed) and ``site/`` (the
pydantic wheels the GPU machine lacks, unpacked), and prints the command for the GPU window. There, from
the checkout root, with ``gpu-carry`` carried:

    PYTHONPATH=src:gpu-carry/site REFSR_DATA=gpu-carry/pack \\
        python benchmarks/gpu_recipe.py train --budget 540 --jobs masa-lite,ssen-lite

Each job gets a share of the wall-clock budget (its ``weight``). A short probe run measures its iterations per
second (the loop logs samples per second); the main run's cosine schedule is then sized to the time left,
so that it anneals fully, with the share as a time budget that guards it. For each job, ``$OUT`` (or
``--out``) receives ``<job>.safetensors`` (the weights; float16 when float32 would pass the 16 MiB a returned
file may have) and ``<job>.log.json.gz`` (the resolved config and every iteration's record), and
``recipe.json`` says what each run reached: planned and done iterations, the final losses, samples per second,
peak GPU memory, wall time. At most 8 files come back: three jobs per window at most.

The next window continues where this one stopped: ``--init-from DIR`` (the folder the last window's files were
fetched to) starts each job from its ``<job>.safetensors``, on a fresh cosine; a job whose config needs
another's weights (``refsrnet-lite`` takes ``ccnet-lite``'s and ``ssnet-sisr-lite``'s) finds them in this
run's output or there.

``--dry-run`` runs the same path on the CPU for a couple of iterations per step (a test runs it): no probe
sizing, no GPU. ``--set JOB:key=value`` adds a config override to one job (``*:key=value`` to all).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A returned file may have at most 16 MiB (the GPU machine's limit); a float32 state_dict above it is halved.
FILE_LIMIT = 16 * 2**20
# What every GPU job sets: the lent machine has 16 cores and one H200.
GPU_SETS = ["data.train.num_workers=12", "train.device=auto", "train.tensorboard=false", "data.val=null",
            "train.precision=bf16", "train.channels_last=true", "train.log_interval=50",
            "train.checkpoint_interval=1000000"]
DRY_SETS = ["data.train.num_workers=0", "train.device=cpu", "train.tensorboard=false", "data.val=null",
            "train.batch=2", "train.log_interval=1", "train.checkpoint_interval=1000000"]


@dataclass(frozen=True)
class Job:
    """One training run of the recipe.

    Attributes:
        config: the config file (relative to the checkout).
        sets: its GPU overrides (``key=value``).
        needs: ``{override key: job}``: the override takes that job's weights file.
        weight: its share of the budget, relative to the other jobs of the run.
    """

    config: str
    sets: tuple[str, ...] = ()
    needs: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0


# For the configs whose schedule is a constant or a late step (CC-Net's at 15,000 iterations): a cosine, so that a
# short run anneals.
_COSINE = "schedule={name: cosine, unit: iteration}"

JOBS: dict[str, Job] = {
    # The default model, continued from the shipped weights, now with the CGI video pairs (from the pack).
    "masa-lite": Job("configs/default.yaml", ("model.init=default", "train.batch=16", "optimizer.lr=2.0e-4")),
    # The default fine-tuned for real photos (Real-ESRGAN-style degradations of the LR).
    "masa-lite-real": Job("configs/masa-lite-real.yaml"),
    # SSEN and its baseline, trained alike so that the pair shows what the reference adds.
    "ssen-lite": Job("configs/ssen-lite.yaml", ("train.batch=16",)),
    "ssen-baseline-lite": Job("configs/ssen-lite.yaml", ("model.name=ssen-baseline-lite", "train.batch=16")),
    # RefSR-Net lite: CC-Net, the SRResNet trunk, then SS-Net on both (three jobs, in this order).
    "ccnet-lite": Job("configs/ccnet-lite.yaml", ("train.batch=32", _COSINE)),
    "ssnet-sisr-lite": Job("configs/ssnet.yaml", ("model.overrides.nf=32", "model.overrides.blocks=4",
                                                  "train.batch=16", _COSINE)),
    "refsrnet-lite": Job("configs/refsrnet-lite.yaml", ("train.batch=16", _COSINE),
                         needs={"model.overrides.ccnet_weights": "ccnet-lite",
                                "model.overrides.sisr_weights": "ssnet-sisr-lite"}),
    # AMSA's restoration net (random frozen extractors unless their weights are carried).
    "amsa-lite": Job("configs/amsa-lite.yaml", ("train.batch=8",)),
    # The peers' lite variants.
    "ttsr-lite": Job("configs/ttsr-lite.yaml", ("train.batch=16",)),
    "c2-matching-lite": Job("configs/c2-matching-lite.yaml", ("train.batch=8",)),
    "datsr-lite": Job("configs/datsr-lite.yaml", ("train.batch=8",)),
}


# ----------------------------------------------------------------------------------------------- prepare
def prepare(args: argparse.Namespace) -> int:
    """Build ``gpu-carry/pack`` and ``gpu-carry/site`` (see the module docstring)."""
    carry = Path(args.carry)
    carry.mkdir(exist_ok=True)
    pack = carry / "pack"
    if not pack.exists():
        configs = sorted({str(ROOT / JOBS[name].config) for name in args.jobs.split(",")})
        subprocess.run([sys.executable, "-m", "refsr.cli", "data", "pack", *configs, "-o", str(pack),
                        "--max-size", args.max_size], check=True)
    site = carry / "site"
    if not site.exists():
        wheels = carry / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                        "--python-version", args.python, "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), "pydantic"], check=True)
        staging = carry / ".site"
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging)
        staging.rename(site)
        shutil.rmtree(wheels)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    shown = carry.relative_to(ROOT) if carry.is_relative_to(ROOT) else carry
    print(f"{shown}: {size / 2**20:.1f} MiB to carry (with the checkout's own files, at most 64 MiB travel)")
    print(f"on the GPU machine, from the checkout root, carrying {shown} (at most 3 jobs a window):")
    print(f"  PYTHONPATH=src:{shown}/site REFSR_DATA={shown}/pack python benchmarks/gpu_recipe.py train "
          "--budget 540 --jobs masa-lite,ssen-lite")
    return 0


# ------------------------------------------------------------------------------------------------- train
def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if '"train"' in line]


def _train(config: str, out: Path, sets: list[str], log: Path) -> int:
    command = [sys.executable, "-m", "refsr.train", str(ROOT / config), "--out", str(out), "--no-progress"]
    for item in sets:
        command += ["--set", item]
    with log.open("a") as fh:
        fh.write(" ".join(command) + "\n")
        fh.flush()
        return subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def _length(iterations: int, seconds: float) -> list[str]:
    """Overrides for a run of ``iterations`` with a cosine over exactly them down to 1e-6, guarded by a time
    budget (every job's schedule is a cosine in iterations: ``_COSINE`` makes the others one)."""
    return [f"train.iterations={iterations}", "train.epochs=null", f"train.time_budget={seconds:.0f}s",
            "schedule.unit=iteration", f"schedule.t_max={iterations}", "schedule.eta_min=1.0e-6"]


def _weights_file(name: str, out: Path, init_from: Path | None) -> Path | None:
    for folder in (out, init_from):
        if folder is not None and (folder / f"{name}.safetensors").is_file():
            return folder / f"{name}.safetensors"
    return None


def _save_outputs(name: str, run: Path, out: Path) -> dict:
    """Copy the job's weights (float16 if float32 is too big to come back) and its log into ``out``."""
    from safetensors.torch import load_file, save_file

    weights = run / "checkpoints" / "last" / "model.safetensors"
    target = out / f"{name}.safetensors"
    stored = "float32"
    if weights.stat().st_size > FILE_LIMIT:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
        save_file(state, str(target), metadata={"stored_as": "float16", "from": "gpu_recipe"})
        stored = "float16"
    else:
        shutil.copyfile(weights, target)
    import yaml

    log = {"config": yaml.safe_load((run / "config.yaml").read_text()), "records": _records(run)}
    with gzip.open(out / f"{name}.log.json.gz", "wt") as fh:
        json.dump(log, fh)
    return {"weights": target.name, "stored_as": stored, "bytes": target.stat().st_size}


def run_job(name: str, share: float, args: argparse.Namespace, out: Path, work: Path) -> dict:
    job = JOBS[name]
    log = out / "recipe.log"
    sets = list(GPU_SETS) + list(job.sets)
    if args.dry_run:  # the job's own settings, then the CPU's small ones over them
        sets = [s for s in job.sets if not s.startswith("train.batch=")] + DRY_SETS
    for key, needed in job.needs.items():
        found = _weights_file(needed, out, args.init_from)
        if found is None:
            return {"skipped": f"needs {needed}'s weights: run that job first (or pass --init-from)"}
        sets.append(f"{key}={found}")
    previous = _weights_file(name, out, args.init_from)
    if previous is not None:
        sets.append(f"model.init={previous}")  # continue the last window's run, on a fresh cosine
    sets += [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] in (name, "*")]
    started = time.monotonic()
    result: dict = {"config": job.config, "sets": sets, "share_s": round(share, 1)}

    probe_n = 2 if args.dry_run else args.probe
    probe = work / f"{name}-probe"
    rc = _train(job.config, probe, sets + _length(probe_n, max(share / 3, 30)), log)
    records = _records(probe)
    if rc != 0 or not records:
        return {**result, "failed": f"probe exit status {rc}; see recipe.log"}
    # Iterations per second, from the loop's own per-iteration wall times (the first fifth, warm-up, left out).
    rate = 1.0 / statistics.median(r["iteration_seconds"] for r in records[len(records) // 5:])
    left = share - (time.monotonic() - started) - 20  # start-up, the final checkpoint and the copy
    iterations = 2 if args.dry_run else max(1, int(rate * left * 0.92))
    result.update(probe_it_per_s=round(rate, 3), planned=iterations)

    main = work / name
    rc = _train(job.config, main, sets + _length(iterations, max(left, 10)), log)
    records = _records(main)
    if rc != 0 or not records:
        return {**result, "failed": f"exit status {rc}; see recipe.log"}
    tail = records[-max(1, len(records) // 10):]
    result.update(
        done=records[-1]["iteration"],
        final_losses={k: round(statistics.mean(r["losses"][k] for r in tail), 6) for k in tail[-1]["losses"]},
        samples_per_second=round(statistics.median(r["samples_per_second"] for r in records), 2),
        peak_gpu_memory_mb=max((r.get("peak_gpu_memory_mb", 0) for r in records), default=0),
        wall_s=round(time.monotonic() - started, 1),
        **_save_outputs(name, main, out),
    )
    return result


def train(args: argparse.Namespace) -> int:
    names = args.jobs.split(",")
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise SystemExit(f"gpu_recipe: unknown job {unknown[0]!r}; jobs: {', '.join(JOBS)}")
    if len(names) > 3:
        raise SystemExit("gpu_recipe: at most 3 jobs per window (2 files each, 8 files come back)")
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-recipe-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-recipe-runs-"))
    deadline = time.monotonic() + args.budget
    summary: dict = {"budget_s": args.budget, "dry_run": args.dry_run, "jobs": {}}
    for i, name in enumerate(names):
        left = deadline - time.monotonic()
        share = left * JOBS[name].weight / sum(JOBS[n].weight for n in names[i:])
        summary["jobs"][name] = run_job(name, share, args, out, work)
        (out / "recipe.json").write_text(json.dumps(summary, indent=1))
        print(name, json.dumps(summary["jobs"][name]), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all("failed" not in j for j in summary["jobs"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    pre = sub.add_parser("prepare", help="build gpu-carry/ (data pack and pydantic) on this machine")
    pre.add_argument("--jobs", default=",".join(JOBS), help="the jobs whose data to pack (default: all)")
    pre.add_argument("--carry", default=str(ROOT / "gpu-carry"))
    pre.add_argument("--max-size", default="50M")
    pre.add_argument("--python", default="3.12", help="the GPU machine's Python (for the pydantic wheel)")
    pre.set_defaults(run=prepare)
    tr = sub.add_parser("train", help="train jobs within a wall-clock budget (on the GPU machine)")
    tr.add_argument("--jobs", required=True, help=f"comma-separated, in order; of {', '.join(JOBS)}")
    tr.add_argument("--budget", type=float, default=540.0, help="wall-clock seconds for all jobs")
    tr.add_argument("--probe", type=int, default=60, help="iterations of each probe run")
    tr.add_argument("--out", default=None, help="where the files go (default: $OUT)")
    tr.add_argument("--init-from", type=Path, default=None, help="the last window's files: continue from them")
    tr.add_argument("--set", action="append", default=[], metavar="JOB:key=value")
    tr.add_argument("--dry-run", action="store_true", help="the same path on the CPU, two iterations a step")
    tr.set_defaults(run=train)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
