"""The cores of benchmarks/stereo_accuracy.py (Table 2) and benchmarks/refsrnet_tables.py (Table 3) on tiny
inputs: a synthetic stereo pair with known disparity, and one photo pair scored through refsr.eval."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_photo
from refsr.metrics import psnr, ssim

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stereo():
    return load_benchmark("stereo_accuracy")


@pytest.fixture(scope="module")
def tables():
    return load_benchmark("refsrnet_tables")


def photo_tensor(name: str) -> torch.Tensor:
    return torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1)[None].float() / 255


def shifted_pair(stereo, height: int, width: int, disparity: int, sr_scale: int):
    """Left = scene[:, :W], right = scene[:, d:d+W], so left (y, x) is right (y, x - d) everywhere."""
    from refsr.data.degrade import make_lr

    scene = photo_tensor("astronaut.png")[:, :, 40 : 40 + height, 60 : 60 + width + disparity]
    left, right = scene[..., :width].contiguous(), scene[..., disparity : disparity + width].contiguous()
    pixels = (left[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    lr = torch.from_numpy(make_lr(np.ascontiguousarray(pixels), sr_scale).copy()).permute(2, 0, 1)[None].float() / 255
    return stereo.StereoPair("shifted", left, lr, right, np.full((height, width), float(disparity)))


def test_accuracy_counts_by_hand(stereo):
    disparity = np.array([[1.0, np.nan, 2.0], [0.0, 1.0, np.inf]])
    coords = np.zeros((2, 3, 2))
    coords[0, 0] = (0, 0)  # true (0, -1): outside the key, not counted
    coords[0, 2] = (0, 2)  # true (0, 0): error 2
    coords[1, 0] = (1, 0)  # true (1, 0): exact
    coords[1, 1] = (0, 0)  # true (1, 0): error 1
    correct, counted = stereo.accuracy_counts(coords, disparity, key_width=3)
    assert counted == 3
    assert correct == [1, 2, 3, 3, 3, 3]  # thresholds 0, 1, 2, 4, 5, 6


def test_same_scale_shift_is_found(stereo):
    pair = shifted_pair(stereo, 24, 32, 5, sr_scale=1)
    rows = stereo.stereo_table([pair], ["zncc", "zncc-blurred", "dense"], sr_scale=1, search_range=8, zncc_patch=3)
    for row in rows:
        assert row.counted == 24 * (32 - 5)
        # A textured photo and a pure shift: nearly every pixel finds its exact twin (borders may not).
        assert row.shares[0] > 0.9, (row.label, row.shares)
        assert row.shares == sorted(row.shares)


def test_cross_scale_pipeline_with_random_ccnet(stereo):
    pair = shifted_pair(stereo, 32, 48, 4, sr_scale=8)
    ccnet, label = stereo.build_ccnet(None, lite=True)
    assert label == "CC-Net (random init)"
    rows = stereo.stereo_table([pair], ["zncc", "zncc-blurred", "ccnet"], sr_scale=8, search_range=6,
                               zncc_patch=5, ccnet=ccnet, ccnet_label=label)
    assert [r.label for r in rows] == ["ZNCC raw (5x5)", "ZNCC blurred (5x5)", "CC-Net (random init)"]
    for row in rows:
        assert row.counted == 32 * 44 and all(0 <= s <= 1 for s in row.shares)
    table = stereo.format_table(rows)
    assert table.count("\n") == 4 and "<= 6 px" in table


def test_refsrnet_table_on_one_pair(tables):
    photo = photo_tensor("coffee.png")[0]
    # LR 8x12: two overlapping 8x8 SS-Net patches (stride 4), so the two fusion rules differ.
    hr, ref = photo[:, :64, :96].contiguous(), photo[:, 8:72, 16:112].contiguous()
    pixels = (hr * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    from refsr.data.degrade import make_lr, to_tensor
    from refsr.models.bicubic import bicubic

    lr = to_tensor(make_lr(np.ascontiguousarray(pixels), 8))
    sample = {"lr": lr, "hr": hr, "ref": ref, "name": "coffee", "kind": "video"}
    methods = tables.build_methods(model_name="refsrnet-lite")
    # the SISR row matches the lite trunk, so one --sisr-weights file loads into both
    sisr_trunk, refsr_trunk = methods[1].model.trunk, methods[2].model.lr_features
    assert (sisr_trunk.nf, len(sisr_trunk.blocks)) == (refsr_trunk.nf, len(refsr_trunk.blocks)) == (32, 4)
    assert "32 ch, 4 blocks" in methods[1].label
    # A one-block, 8-channel SISR keeps the test light; the row's pipeline is the same.
    from refsr.hub import create_model

    methods[1] = tables.Method("SISR (tiny)", create_model("srresnet-x8", nf=8, blocks=1))
    table = tables.refsrnet_table({"tiny": [sample]}, methods)
    labels = list(table)
    assert labels[0] == "Bicubic" and "random init" in labels[2] and labels[3].endswith("average fusion")
    # The bicubic row is exactly PIL bicubic x8 scored under MASA's protocol.
    expected = bicubic(scale=8)(lr[None])
    expected_psnr = float(psnr(expected, hr[None], protocol="masa"))
    assert table["Bicubic"]["tiny"].psnr == pytest.approx(expected_psnr, abs=1e-4)
    assert table["Bicubic"]["tiny"].ssim == pytest.approx(float(ssim(expected, hr[None], protocol="masa")), abs=1e-5)
    for cells in table.values():
        assert cells["tiny"].count == 1 and math.isfinite(cells["tiny"].psnr)
    # Same weights, other fusion: different numbers, and the shared network keeps its own setting.
    assert table[labels[2]]["tiny"].psnr != table[labels[3]]["tiny"].psnr
    assert methods[2].model.fusion == "mask-gaussian"
    assert "| Bicubic |" in tables.format_table(table)


def test_even_subset(tables):
    subset = tables.EvenSubset(list(range(10)), 4)
    assert subset.indices == [0, 3, 6, 9] and [subset[i] for i in range(len(subset))] == [0, 3, 6, 9]


# ---- benchmarks/ssen_table3.py: SSEN Table 3 from eval reports ----------------------------------------------


def _report_run(method: str, psnrs: dict[str, float], kinds: dict[str, str], variant: dict | None = None) -> dict:
    images = [{"name": n, "psnr": p, "ssim": p / 100, "kind": kinds[n]} for n, p in psnrs.items()]
    return {"dataset": "Open", "method": method, "variant": variant or {}, "images": images}


def test_ssen_table3_gathers_rows_across_reports(tmp_path: Path) -> None:
    table3 = load_benchmark("ssen_table3")
    kinds = {"v1": "video", "v2": "video", "s1": "stereo"}
    video = {"runs": [_report_run("Bicubic", {"v1": 28.0, "v2": 30.0}, kinds),
                      _report_run("ssen-lite [w.safetensors]", {"v1": 29.0, "v2": 32.0}, kinds),
                      _report_run("ssen-lite", {"v1": 28.5, "v2": 30.5}, kinds,
                                  {"ref_transform": {"kind": "unrelated", "image": "/data/coffee.png"}})]}
    other = {"runs": [_report_run("Bicubic", {"s1": 25.0}, kinds),
                      _report_run("ssen-lite", {"s1": 26.0}, kinds),
                      _report_run("ssen-lite", {"s1": 25.5}, kinds,
                                  {"ref_transform": {"kind": "unrelated", "image": "/data/coffee.png"}})]}
    rows, columns, cells = table3.collect([video, other])
    assert rows == ["Bicubic", "ssen-lite", "ssen-lite, unrelated Ref (coffee)"]
    assert columns == ["video", "stereo", "all"]
    assert cells[("ssen-lite", "video")] == (30.5, 0.305, 2)
    assert cells[("ssen-lite, unrelated Ref (coffee)", "all")][0] == pytest.approx((28.5 + 30.5 + 25.5) / 3)
    text = table3.markdown(rows, columns, cells)
    assert "| ssen-lite | 30.50 / 0.305 | 26.00 / 0.260 | 29.00 / 0.290 |" in text
    table3.draw_figure(rows, columns, cells, tmp_path / "f.png")
    from PIL import Image

    assert Image.open(tmp_path / "f.png").size[0] > 100
    # a row scored on other images cannot be compared
    short = {"runs": [_report_run("ssen-baseline-lite", {"v1": 28.0}, kinds)]}
    with pytest.raises(SystemExit):
        table3.collect([video, other, short])
