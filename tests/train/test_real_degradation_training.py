"""Training on real-degraded LR (data.train.degradation: real): the config fields, the training set (LR remade
from the final HR crop, the rest of the sample untouched), and the shipped masa-lite-real config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from refsr.data.degrade import make_lr, to_tensor
from refsr.errors import RefsrError
from refsr.metrics import psnr
from refsr.train.builders import build_training_set
from refsr.train.config import load_config, parse_config
from refsr.train.loop import run_training

import tiny_sr  # noqa: F401  (registers the tiny-sr-test model)

HERE = Path(__file__).parent
ASSETS = HERE.parent / "assets"
CONFIGS = HERE.parents[1] / "configs"


def tiny(**train_data) -> dict:
    data = yaml.safe_load((HERE / "tiny.yaml").read_text())
    data["data"]["val"] = None
    source = data["data"]["train"]["sources"][0]
    source.update(root=str(ASSETS), patch=96)  # LR 24x24: big enough to see the degradation
    data["data"]["train"].update(crop=64, crop_ref="aligned", **train_data)
    return data


def error_of(data: dict) -> str:
    with pytest.raises(RefsrError) as err:
        parse_config(data)
    return str(err.value)


def test_the_fields_parse_and_are_checked():
    cfg = parse_config(tiny(degradation="real", degradation_options={"second": {"jpeg_range": [60, 95]}},
                            ref_degradation="jpeg", ref_jpeg_range=[80, 90]))
    train = cfg.data.train
    assert (train.degradation, train.ref_degradation, train.ref_jpeg_range) == ("real", "jpeg", (80, 90))
    assert train.degradation_options == {"second": {"jpeg_range": [60, 95]}}
    assert parse_config(tiny()).data.train.degradation == "bicubic"
    misspelt = tiny(degradation="real", degradation_options={"first": {"jpeg_rang": [60, 95]}})
    assert error_of(misspelt) == ("data.train.degradation_options.first.jpeg_rang: unknown degradation "
                                  "option; did you mean jpeg_range?")
    reversed_range = tiny(degradation="real", degradation_options={"second": {"noise_range": [9, 1]}})
    assert error_of(reversed_range).startswith(
        "data.train.degradation_options.second.noise_range: give a range")
    assert error_of(tiny(ref_degradation="jpeg")) == (
        "data.train.ref_degradation: only used with degradation: real")
    assert error_of(tiny(degradation="real", ref_jpeg_range=[80, 90])) == (
        "data.train.ref_jpeg_range: only used with ref_degradation: jpeg")
    assert error_of(tiny(degradation="real", ref_degradation="jpeg", ref_jpeg_range=[0, 90])).startswith(
        "data.train.ref_jpeg_range: JPEG qualities within 1..100")
    assert error_of(tiny(degradation="jpeg")).startswith("data.train.degradation: unknown value 'jpeg'")


def u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_the_lr_is_remade_from_the_final_hr_crop():
    bicubic = build_training_set(parse_config(tiny()), scale=4)
    real = build_training_set(parse_config(tiny(degradation="real")), scale=4)
    again = build_training_set(parse_config(tiny(degradation="real")), scale=4)
    jpeg_ref = build_training_set(parse_config(tiny(degradation="real", ref_degradation="jpeg")), scale=4)
    for index in range(len(real)):
        b, r, a, j = bicubic[index], real[index], again[index], jpeg_ref[index]
        # The degradation draws after the crop and the augmentation: the HR and the reference are theirs.
        for key in ("hr", "ref", "ref_down"):
            assert torch.equal(r[key], b[key])
        assert r["lr"].shape == b["lr"].shape == (3, 16, 16) and not torch.equal(r["lr"], b["lr"])
        assert torch.equal(r["lr"], a["lr"])  # same seed, same sample
        # Aligned with the final HR: closer to its bicubic LR than to that of the HR turned upside down.
        hr = u8(r["hr"])
        lr = u8(r["lr"])
        upside_down = make_lr(hr[::-1].copy(), 4)
        assert psnr(lr, make_lr(hr, 4), protocol="masa") > psnr(lr, upside_down, protocol="masa")
        # A compressed reference, and a Ref↓ made from it; the LR is the same draw.
        assert torch.equal(j["lr"], r["lr"]) and torch.equal(j["hr"], r["hr"])
        assert not torch.equal(j["ref"], r["ref"])
        assert torch.equal(j["ref_down"], to_tensor(make_lr(u8(j["ref"]), 4)))


@pytest.mark.slow
def test_the_shipped_masa_lite_real_config_trains_on_the_test_photos(tmp_path):
    photos = f"root: '{ASSETS}', paths: [astronaut.png, coffee.png]"
    sets = [
        f"data.train.sources=[{{dataset: open-synthetic, {photos}, patch: 64, samples_per_photo: 2}}]",
        "data.train.crop=64", "data.train.samples_per_epoch=null", "data.train.num_workers=0",
        "train.batch=2", "train.iterations=3", "train.time_budget=null", "schedule.t_max=3",
        "train.tensorboard=false",
    ]
    cfg = load_config(CONFIGS / "masa-lite-real.yaml", sets)
    assert cfg.model.init == "default" and cfg.data.train.degradation == "real" and cfg.train.batch == 2
    summary = run_training(cfg, tmp_path, progress=False)
    assert summary.iteration == 3
    assert all(math.isfinite(v) for record in summary.records for v in record.losses.values())
    shipped = load_config(CONFIGS / "masa-lite-real.yaml")
    assert (shipped.train.batch, shipped.data.train.crop, shipped.data.train.degradation) == (16, 160, "real")
