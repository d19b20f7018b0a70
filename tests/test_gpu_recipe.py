"""benchmarks/gpu_recipe.py: every job's config takes its GPU settings, and the dry run (the same path on the
CPU) trains, sizes, saves and records each job."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from refsr.train import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_refsrnet_tables import load_benchmark  # noqa: E402  (the benchmarks' loader, shared)


@pytest.fixture(scope="module")
def recipe():
    return load_benchmark("gpu_recipe")


def test_every_job_config_takes_its_gpu_settings(recipe, tmp_path: Path) -> None:
    """A config error would cost a GPU window: every job parses with what the recipe sets on the GPU."""
    weights = tmp_path / "w.safetensors"
    for name, job in recipe.JOBS.items():
        needs = [f"{key}={weights}" for key in job.needs]
        cfg = load_config(ROOT / job.config, [*recipe.GPU_SETS, *job.sets, *needs, *recipe._length(1000, 120)])
        assert cfg.schedule.name == "cosine" and cfg.schedule.t_max == 1000, name
        assert cfg.train.iterations == 1000 and cfg.train.time_budget == 120 and cfg.data.val is None, name
        assert cfg.train.precision == "bf16" and cfg.data.train.num_workers == 12, name


SMALL_MASA = [
    "*:data.train.sources=[{dataset: open-synthetic, split: train, sources: [scikit-image], patch: 96}]",
    "masa-lite:model.overrides={nf: 8, encoder_blocks: [1, 1, 1], unet_blocks: [1, 1, 1], fusion_blocks: [1, 1, 1]}",
    "masa-lite:data.train.crop=64", "masa-lite:data.train.samples_per_epoch=null",
]


def dry_run(ci_data: Path, out: Path, jobs: str, sets: list[str], *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "benchmarks/gpu_recipe.py"), "train", "--dry-run", "--budget", "300",
            "--jobs", jobs, "--out", str(out), *extra]
    for item in sets:
        args += ["--set", item]
    env = dict(os.environ, REFSR_DATA=str(ci_data), PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_the_dry_run_trains_records_and_continues(ci_data: Path, tmp_path: Path) -> None:
    done = dry_run(ci_data, tmp_path / "out", "masa-lite,refsrnet-lite", [*SMALL_MASA, "masa-lite:model.init=null"])
    summary = json.loads((tmp_path / "out/recipe.json").read_text())
    masa = summary["jobs"]["masa-lite"]
    assert masa["planned"] == 2 and masa["done"] == 2 and masa["probe_it_per_s"] > 0, done.stdout + done.stderr
    assert masa["final_losses"]["l1"] > 0 and masa["stored_as"] == "float32"
    # refsrnet-lite needs ccnet-lite's and ssnet-sisr-lite's weights, which this run did not make.
    assert "needs ccnet-lite" in summary["jobs"]["refsrnet-lite"]["skipped"]
    assert done.returncode == 0
    weights = load_file(str(tmp_path / "out/masa-lite.safetensors"))
    assert weights["conv_out.weight"].shape == (3, 8, 3, 3)
    with gzip.open(tmp_path / "out/masa-lite.log.json.gz", "rt") as fh:
        log = json.load(fh)
    assert [r["iteration"] for r in log["records"]] == [1, 2] and log["config"]["model"]["name"] == "masa-lite"
    assert len(list((tmp_path / "out").iterdir())) <= 8

    # The next window continues from this one's weights.
    done = dry_run(ci_data, tmp_path / "next", "masa-lite", SMALL_MASA, "--init-from", str(tmp_path / "out"))
    masa = json.loads((tmp_path / "next/recipe.json").read_text())["jobs"]["masa-lite"]
    assert f"model.init={tmp_path / 'out' / 'masa-lite.safetensors'}" in masa["sets"], done.stderr
    assert masa["done"] == 2
