"""The command line: end to end with the bicubic model, and the bad-input table of the error contract."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, load_photo
from refsr.cli import main
from refsr.io import read_image


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse errors and --help
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def pil_bicubic_x4(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    return np.asarray(Image.fromarray(arr).resize((4 * w, 4 * h), Image.BICUBIC))


def test_upscale_bicubic_equals_pil(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sr.png"
    code, stdout, err = run_cli(
        ["upscale", DATA / "chelsea.png", "--ref", DATA / "coffee.png", "-o", out, "--model", "bicubic"], capsys
    )
    assert code == 0, err
    assert str(out) in stdout
    np.testing.assert_array_equal(read_image(out), pil_bicubic_x4(load_photo("chelsea.png")))


def test_upscale_tiled_bicubic_is_seamless(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sr.png"
    code, _, err = run_cli(["upscale", DATA / "astronaut.png", "-o", out, "--model", "bicubic", "--tile", 64], capsys)
    assert code == 0, err
    # Each tile drops more context than bicubic's support at inner edges: the seams are exact.
    np.testing.assert_array_equal(read_image(out), pil_bicubic_x4(load_photo("astronaut.png")))


def test_compare_writes_three_labelled_panels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lr = load_photo("chelsea.png")[:30, :40]
    Image.fromarray(lr).save(tmp_path / "lr.png")
    out, cmp = tmp_path / "sr.png", tmp_path / "cmp.png"
    code, stdout, err = run_cli(["upscale", tmp_path / "lr.png", "--ref", DATA / "coffee.png", "-o", out,
                                 "--model", "bicubic", "--compare", cmp, "--quiet"], capsys)
    assert code == 0, err
    assert stdout.splitlines() == [str(out), str(cmp)]
    panels = read_image(cmp)
    sr = read_image(out)
    h, w = sr.shape[:2]
    label = panels.shape[0] - h
    assert panels.shape[1] == 3 * w + 2 * 8 and 0 < label < 64
    # Panel 1 is PIL bicubic of the LR, panel 2 the SR (equal here, since the model is bicubic).
    np.testing.assert_array_equal(panels[label:, :w], pil_bicubic_x4(lr))
    np.testing.assert_array_equal(panels[label:, w + 8 : 2 * w + 8], sr)
    assert (panels[:label, :w] < 128).any()  # the label's text is drawn


def test_make_demo_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    """The Makefile's demo recipe, run as written (outputs redirected), on the bundled sample pair."""
    root = Path(__file__).resolve().parents[1]
    recipe = (root / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    command = " ".join(line.strip().rstrip("\\") for line in recipe.splitlines()[1:] if "refsr upscale" in line
                       or line.strip().startswith("-o"))
    args = command.split("refsr upscale", 1)[1].split()
    assert "--compare" in args and "out/demo_sr.png" in args and "out/demo_compare.png" in args
    (tmp_path / "out").mkdir()
    (tmp_path / "src").symlink_to(root / "src")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["upscale", *args], capsys)
    assert code == 0, err
    assert stdout.split() == ["out/demo_sr.png", "out/demo_compare.png"]
    sr = read_image(tmp_path / "out" / "demo_sr.png")
    assert sr.shape == (360, 640, 3)
    assert read_image(tmp_path / "out" / "demo_compare.png").shape[1] == 3 * 640 + 16


def test_multi_ref_modes_and_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lr = tmp_path / "lr.png"
    Image.fromarray(load_photo("coffee.png")[:24, :40]).save(lr)
    outs = []
    for mode in ("stitch", "per-tile", "auto"):
        out = tmp_path / f"{mode}.png"
        code, _, err = run_cli(["upscale", lr, "--ref", DATA / "chelsea.png", "--ref", DATA / "astronaut.png",
                                "-o", out, "--model", "masa-lite", "--multi-ref", mode, "--max-memory", "3G"], capsys)
        assert code == 0, err
        outs.append(read_image(out))
    assert outs[0].shape == (96, 160, 3)
    np.testing.assert_array_equal(outs[2], outs[1])  # auto is per-tile (measured better, see inference.py)


def test_upscale_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        Image.open(DATA / name).crop((0, 0, 40, 30)).save(src / name)
    (src / "notes.txt").write_text("ignored: not an image")
    code, _, err = run_cli(["upscale", src, "-o", tmp_path / "out", "--model", "bicubic"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chelsea.png", "coffee.png"]
    assert read_image(tmp_path / "out" / "coffee.png").shape == (120, 160, 3)


def test_one_by_one_image_works(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "dot.png")
    code, _, err = run_cli(["upscale", tmp_path / "dot.png", "-o", tmp_path / "sr.png", "--model", "bicubic"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "sr.png"), np.broadcast_to([10, 200, 30], (4, 4, 3)))


def test_16bit_and_rgba_inputs_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grey16 = (load_photo("coffee.png")[:30, :40, 0].astype(np.uint16) * 257)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    rgba = np.dstack([load_photo("chelsea.png")[:30, :40], np.full((30, 40), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    for name, expected in (("deep.png", np.repeat(grey16[..., None] // 257, 3, 2).astype(np.uint8)),
                           ("alpha.png", rgba[..., :3])):
        code, _, err = run_cli(["upscale", tmp_path / name, "-o", tmp_path / f"sr_{name}", "--model", "bicubic"], capsys)
        assert code == 0, err
        np.testing.assert_array_equal(read_image(tmp_path / f"sr_{name}"), pil_bicubic_x4(expected))


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture) -> None:
    for command in (["upscale"], ["eval"], ["train"], ["convert"], ["data"], ["data", "fetch"], ["bench"]):
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code == 0 and "usage: refsr" in out


def test_compare_without_a_reference_shows_the_self_reference(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The help says bicubic | refsr | reference: without --ref the third panel is the self-reference the model
    was given (the LR upscaled with PIL bicubic)."""
    lr = load_photo("coffee.png")[:20, :36]
    Image.fromarray(lr).save(tmp_path / "lr.png")
    code, _, err = run_cli(["upscale", tmp_path / "lr.png", "-o", tmp_path / "sr.png", "--model", "bicubic",
                            "--compare", tmp_path / "cmp.png", "--quiet"], capsys)
    assert code == 0, err
    panels = read_image(tmp_path / "cmp.png")
    w = 4 * 36
    label = panels.shape[0] - 4 * 20
    assert panels.shape[1] == 3 * w + 2 * 8
    np.testing.assert_array_equal(panels[label:, 2 * (w + 8):], pil_bicubic_x4(lr))
    assert (panels[:label, 2 * (w + 8):] < 128).any()  # labelled


def _frames(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(load_photo("chelsea.png")[i : i + 16, :24]).save(folder / name)


def test_glob_pattern_and_several_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _frames(tmp_path / "frames", ["f1.png", "f2.png", "f3.jpg"])
    code, out, err = run_cli(["upscale", str(tmp_path / "frames" / "*.png"), "-o", tmp_path / "out", "--model",
                              "bicubic"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1.png", "f2.png"]
    assert out.split() == [str(tmp_path / "out" / "f1.png"), str(tmp_path / "out" / "f2.png")]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "f2.png"),
                                  pil_bicubic_x4(read_image(tmp_path / "frames" / "f2.png")))
    code, _, err = run_cli(["upscale", tmp_path / "frames" / "f3.jpg", tmp_path / "frames" / "f1.png", "-o",
                            tmp_path / "out2", "--model", "bicubic"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["f1.png", "f3.jpg"]


def test_progress_goes_to_a_terminal_or_is_forced(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _frames(tmp_path / "frames", ["a.png", "b.png"])
    args = ["upscale", tmp_path / "frames", "-o", tmp_path / "out", "--model", "bicubic"]
    code, _, err = run_cli(args, capsys)  # stderr is not a terminal: nothing but errors
    assert code == 0 and err == ""
    code, _, err = run_cli([*args, "--progress"], capsys)  # forced into a log: one plain line per image
    lines = err.splitlines()
    assert code == 0 and len(lines) == 2 and "\r" not in err
    assert lines[0].startswith(f"[1/2] {tmp_path / 'frames' / 'a.png'} -> {tmp_path / 'out' / 'a.png'}: ")
    assert "bicubic on cpu, 1 tile" in lines[1]
    code, _, err = run_cli([*args, "--progress", "--quiet"], capsys)
    assert code == 0 and err == ""


def test_single_image_status_line_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import refsr.batch

    Image.fromarray(load_photo("astronaut.png")).save(tmp_path / "lr.png")
    monkeypatch.setattr(refsr.batch, "is_terminal", lambda stream: True)
    code, _, err = run_cli(["upscale", tmp_path / "lr.png", "-o", tmp_path / "sr.png", "--model", "bicubic",
                            "--tile", "64"], capsys)
    assert code == 0
    status = err.splitlines()[-1]
    # 203x241 LR in 64-pixel tiles overlapping by 12 (bicubic): rows start at 0, 52, 104, 139 and columns at
    # 0, 52, 104, 156, 177: 4 x 5 tiles
    assert status.startswith(f"{tmp_path / 'sr.png'}: bicubic on cpu, 20 tiles of 64 LR px, ") and status.endswith(" s")
    code, _, err = run_cli(["upscale", tmp_path / "lr.png", "-o", tmp_path / "sr.png", "--model", "bicubic",
                            "--quiet"], capsys)
    assert code == 0 and err == ""


def test_quality_applies_to_lossy_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(load_photo("astronaut.png")[:64, :64]).save(tmp_path / "lr.png")
    sizes = {}
    for quality in (10, 95):
        out = tmp_path / f"q{quality}.jpg"
        code, _, err = run_cli(["upscale", tmp_path / "lr.png", "-o", out, "--model", "bicubic", "--quality",
                                quality], capsys)
        assert code == 0, err
        sizes[quality] = out.stat().st_size
        expected = io.BytesIO()
        Image.fromarray(pil_bicubic_x4(load_photo("astronaut.png")[:64, :64])).save(
            expected, format="JPEG", quality=quality, subsampling=0)
        assert out.read_bytes() == expected.getvalue()
    assert sizes[10] < sizes[95] / 2


def test_matching_and_precision_options(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--matching and --precision reach refsr.upscale and the status line; a model without the choice says so."""
    import refsr
    import refsr.batch

    lr = load_photo("chelsea.png")[:24, :32]
    Image.fromarray(lr).save(tmp_path / "lr.png")
    ref = pil_bicubic_x4(load_photo("chelsea.png")[:40, :48])
    Image.fromarray(ref).save(tmp_path / "ref.png")
    monkeypatch.setattr(refsr.batch, "is_terminal", lambda stream: True)
    out = tmp_path / "sr.png"
    code, _, err = run_cli(["upscale", tmp_path / "lr.png", "--ref", tmp_path / "ref.png", "-o", out,
                            "--matching", "exact", "--precision", "fp32"], capsys)
    assert code == 0, err
    assert " (fp32, exact matching), 1 tile, " in err.splitlines()[-1]
    np.testing.assert_array_equal(read_image(out), refsr.upscale(lr, ref, matching="exact", precision="fp32"))
    for option, message in ((["--matching", "exact"], "has no choice of matching"),
                            (["--precision", "bf16"], "runs in fp32 only")):
        code, _, err = run_cli(["upscale", tmp_path / "lr.png", "-o", tmp_path / "b.png", "--model", "bicubic",
                                *option], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "b.png").exists()
