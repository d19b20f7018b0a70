"""The command line: end to end with the bicubic model, and the bad-input table of the error contract."""

from __future__ import annotations

import io
import os
import subprocess
import sys
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


def _make_bad(tmp: Path) -> dict[str, Path]:
    good = tmp / "good.png"
    Image.fromarray(load_photo("chelsea.png")[:24, :32]).save(good)
    (tmp / "folder").mkdir()
    (tmp / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(load_photo("astronaut.png")).save(buf, format="PNG")
    (tmp / "truncated.png").write_bytes(buf.getvalue()[:5000])
    (tmp / "text.png").write_text("this is text, not a PNG\n")
    from test_io import png_bytes_with_size

    (tmp / "zero.png").write_bytes(png_bytes_with_size(0, 7))
    (tmp / "a_file").write_text("in the way")
    (tmp / "empty_dir").mkdir()
    (tmp / "bad.safetensors").write_text("not weights")
    return {"good": good}


# name -> (argument list with {t} for the temp folder, phrase the one-line message must contain)
BAD_INPUTS = {
    "folder as reference": (["upscale", "{t}/good.png", "--ref", "{t}/folder", "-o", "{t}/o.png"], "is a folder"),
    "folder without images": (["upscale", "{t}/empty_dir", "-o", "{t}/outdir"], "holds no images"),
    "missing file": (["upscale", "{t}/nope.png", "-o", "{t}/o.png"], "no such file"),
    "missing reference": (["upscale", "{t}/good.png", "--ref", "{t}/nope.png", "-o", "{t}/o.png"], "no such reference"),
    "empty file": (["upscale", "{t}/empty.png", "-o", "{t}/o.png"], "empty"),
    "truncated png": (["upscale", "{t}/truncated.png", "-o", "{t}/o.png"], "truncated"),
    "text named png": (["upscale", "{t}/text.png", "-o", "{t}/o.png"], "not an image"),
    "zero-size image": (["upscale", "{t}/zero.png", "-o", "{t}/o.png"], "zero size"),
    "output folder missing": (["upscale", "{t}/good.png", "-o", "{t}/no/such/dir/o.png"], "does not exist"),
    "output folder is a file": (["upscale", "{t}/good.png", "-o", "{t}/a_file/o.png"], "not a folder"),
    "output is a folder": (["upscale", "{t}/good.png", "-o", "{t}/folder"], "unknown output image type"),
    "output equals input": (["upscale", "{t}/good.png", "-o", "{t}/good.png"], "is an input"),
    "output equals reference": (["upscale", "{t}/good.png", "--ref", "{t}/text.png", "-o", "{t}/text.png"], "is an input"),
    "unknown output type": (["upscale", "{t}/good.png", "-o", "{t}/o.xyz"], "unknown output image type"),
    "unknown model": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--model", "bicubik"], "did you mean 'bicubic'"),
    "weights not a checkpoint": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--model", "bicubic",
                                  "--weights", "{t}/bad.safetensors"], "not a readable safetensors"),
    "unknown device": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--device", "tpu"], "device"),
    "tile of zero": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--tile", "0"], "tile"),
    "bad memory size": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--max-memory", "lots"], "bad memory size"),
    "budget too small": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--model", "bicubic", "--max-memory", "1M"],
                         "raise --max-memory"),
    "compare with a folder": (["upscale", "{t}/empty_dir", "-o", "{t}/outdir", "--compare", "{t}/c.png"], "--compare"),
    "compare equals output": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--compare", "{t}/o.png"], "--compare"),
    "unknown multi-ref": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--multi-ref", "best"], "invalid choice"),
    "tile not a number": (["upscale", "{t}/good.png", "-o", "{t}/o.png", "--tile", "big"], "invalid int value"),
    "missing -o": (["upscale", "{t}/good.png"], "required"),
    "unknown command": (["enhance", "{t}/good.png"], "invalid choice"),
    "missing train config": (["train", "{t}/cfg.yaml"], "cfg.yaml"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_contract(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    _make_bad(tmp_path)
    args, phrase = BAD_INPUTS[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = run_cli([a.format(t=tmp_path) for a in args], capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("refsr: error: ")
    assert phrase in lines[0]
    assert "Traceback" not in err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written, not even a temporary file


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _make_bad(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(["upscale", tmp_path / "good.png", "-o", locked / "o.png"], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot be written" in err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture) -> None:
    for command in (["upscale"], ["eval"], ["train"], ["convert"], ["data"], ["data", "fetch"], ["bench"]):
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code == 0 and "usage: refsr" in out


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    """The installed entry point itself (a real process) keeps the contract."""
    exe = Path(sys.executable).with_name("refsr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "refsr.cli"]
    (tmp_path / "t.png").write_text("nope")
    proc = subprocess.run([*cmd, "upscale", str(tmp_path / "t.png"), "-o", str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("refsr: error: ")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is present")
def test_unavailable_device_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _make_bad(tmp_path)
    code, _, err = run_cli(["upscale", tmp_path / "good.png", "-o", tmp_path / "o.png", "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no CUDA GPU" in err
    assert not (tmp_path / "o.png").exists()
