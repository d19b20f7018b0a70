"""The error contract of the command line, case by case.

For every bad input: exit status 2, exactly one line ``refsr: error: ...`` on stderr that contains the
phrase that says what was wrong, no traceback, no Python warning, and no new or changed file anywhere under
the test folder (a snapshot of paths, sizes and contents before and after). The CLI runs in-process
(:func:`refsr.cli.main`); the few cases that need a real process (an interrupt, warnings written to the real
stderr) run as subprocesses at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image
from test_io import png_bytes_with_size

from refsr.cli import main
from refsr.io import read_image

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own exits (--help)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content ("dir" for folders)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def make_inputs(tmp: Path) -> None:
    """The files the cases refer to, as ``{t}/name``."""
    good = load_photo("chelsea.png")[:24, :32]
    Image.fromarray(good).save(tmp / "good.png")
    Image.fromarray(good).save(tmp / "good.jpg")
    (tmp / "folder").mkdir()
    (tmp / "empty_dir").mkdir()
    (tmp / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(load_photo("astronaut.png")).save(buf, format="PNG")
    (tmp / "truncated.png").write_bytes(buf.getvalue()[:5000])
    (tmp / "text.png").write_text("this is text, not a PNG\n")
    (tmp / "zero.png").write_bytes(png_bytes_with_size(0, 7))
    (tmp / "huge.png").write_bytes(png_bytes_with_size(12000, 12000))  # a header only: 144 Mpixels
    (tmp / "bomb.png").write_bytes(png_bytes_with_size(20000, 20000))  # beyond Pillow's refusal limit
    (tmp / "a_file").write_text("in the way")
    (tmp / "bad.safetensors").write_text("not weights")
    # A checkpoint that pickles a Python object (torch refuses it under weights_only=True, with coloured advice).
    import argparse

    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, tmp / "pickled.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp / "scripted.pth"))
    # Batches: a folder with one good and one truncated image; one with two bad ones; two inputs of one name.
    for name, files in {"mixed": ("good.png", "truncated.png"), "twobad": ("good.png", "text.png", "empty.png"),
                        "other": ("good.png",)}.items():
        (tmp / name).mkdir()
        for file in files:
            (tmp / name / file).write_bytes((tmp / file).read_bytes())


def fail_mkstemp_unless_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder accepts the start-up probe, then refuses the real temporary file (an inode table that
    fills up during the run)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".refsr-probe."):
            return real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def refuse_every_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder where no file can be created (``/sys``; chmod does not stop root, so patch instead)."""

    def mkstemp(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


UP = ["upscale", "{t}/good.png"]
BICUBIC = ["--model", "bicubic"]
# name -> (arguments with {t} for the test folder, phrase the one line must contain[, set-up])
BAD_INPUTS: dict[str, tuple] = {
    # -- inputs
    "missing file": (["upscale", "{t}/nope.png", "-o", "{t}/o.png"], "nope.png: no such file"),
    "empty file": (["upscale", "{t}/empty.png", "-o", "{t}/o.png"], "empty"),
    "truncated png": (["upscale", "{t}/truncated.png", "-o", "{t}/o.png"], "truncated"),
    "text named png": (["upscale", "{t}/text.png", "-o", "{t}/o.png"], "not an image"),
    "zero-size image": (["upscale", "{t}/zero.png", "-o", "{t}/o.png"], "zero size"),
    "folder without images": (["upscale", "{t}/empty_dir", "-o", "{t}/outdir"], "holds no images"),
    "pattern matching nothing": (["upscale", "{t}/*.tiff", "-o", "{t}/outdir"], "no image file matches"),
    "pillow refuses the size": (["upscale", "{t}/bomb.png", "-o", "{t}/o.png"], "too large to read safely"),
    # -- references
    "folder as reference": ([*UP, "--ref", "{t}/folder", "-o", "{t}/o.png"], "is a folder"),
    "missing reference": ([*UP, "--ref", "{t}/nope.png", "-o", "{t}/o.png"], "no such reference"),
    "empty reference": ([*UP, "--ref", "{t}/empty.png", "-o", "{t}/o.png"], "empty.png: the file is empty"),
    "truncated reference": ([*UP, "--ref", "{t}/truncated.png", "-o", "{t}/o.png"], "truncated"),
    "zero-size reference": ([*UP, "--ref", "{t}/zero.png", "-o", "{t}/o.png"], "zero size"),
    # -- sizes and budgets: the input that is too large is named, and the budget that works
    "LR too large for the budget": (["upscale", "{t}/huge.png", "--ref", "{t}/good.png", "-o", "{t}/o.png"],
                                    "huge.png (12000x12000) is too large for the memory budget"),
    "LR too large, self-reference": (["upscale", "{t}/huge.png", "-o", "{t}/o.png"],
                                     "huge.png (12000x12000) is too large"),
    "reference too large": ([*UP, "--ref", "{t}/huge.png", "-o", "{t}/o.png"],
                            "the reference {t}/huge.png (12000x12000) is too large"),
    "budget too small": ([*UP, "-o", "{t}/o.png", *BICUBIC, "--max-memory", "1M"], "to at least"),
    "budget too small, self-reference": ([*UP, "-o", "{t}/o.png", "--max-memory", "100M"], "to at least"),
    "budget too small with a tile": ([*UP, "-o", "{t}/o.png", "--max-memory", "100M", "--tile", "64"],
                                     "tiles of 64 LR pixels need about"),
    "budget of zero": ([*UP, "-o", "{t}/o.png", "--max-memory", "0"], "must be positive"),
    "bad memory size": ([*UP, "-o", "{t}/o.png", "--max-memory", "lots"], "bad memory size"),
    # -- outputs
    "output folder missing": ([*UP, "-o", "{t}/no/such/dir/o.png"], "does not exist"),
    "output folder is a file": ([*UP, "-o", "{t}/a_file/o.png"], "not a folder"),
    "output is a folder": ([*UP, "-o", "{t}/folder"], "is a folder; name the output image, e.g. {t}/folder/good.png"),
    "output without extension": ([*UP, "-o", "{t}/result"], "has no extension"),
    "unknown output type": ([*UP, "-o", "{t}/o.xyz"], "unknown output image type"),
    "output equals input": ([*UP, "-o", "{t}/good.png"], "is an input"),
    "output equals reference": ([*UP, "--ref", "{t}/text.png", "-o", "{t}/text.png"], "is an input"),
    "folder refuses files": ([*UP, "-o", "{t}/o.png"], "cannot be written (Permission denied)", refuse_every_file),
    "no temporary file at write time": ([*UP, "-o", "{t}/o.png", *BICUBIC], "o.png: cannot write (No space left",
                                        fail_mkstemp_unless_probe),
    "quality out of range": ([*UP, "-o", "{t}/o.jpg", "--quality", "0"], "--quality must be from 1 to 100"),
    "quality for a PNG": ([*UP, "-o", "{t}/o.png", "--quality", "80"], "applies to JPEG and WebP"),
    # -- --compare
    "compare with a folder": (["upscale", "{t}/other", "-o", "{t}/outdir", "--compare", "{t}/c.png"], "--compare"),
    "compare equals output": ([*UP, "-o", "{t}/o.png", "--compare", "{t}/o.png"], "--compare"),
    "compare of unknown type": ([*UP, "-o", "{t}/o.png", "--compare", "{t}/c.gif"], "unknown output image type"),
    "compare fails at write time": ([*UP, "-o", "{t}/o.png", "--compare", "{t}/c.png", *BICUBIC],
                                    "cannot write (No space left", fail_mkstemp_unless_probe),
    # -- batches: every input checked before the first is computed, all the bad ones reported together
    "batch with a truncated image": (["upscale", "{t}/mixed", "-o", "{t}/outdir", *BICUBIC],
                                     "truncated.png: cannot decode"),
    "batch with two bad images": (["upscale", "{t}/twobad", "-o", "{t}/outdir", *BICUBIC],
                                  "2 of 3 inputs cannot be upscaled, nothing was written"),
    "batch pattern with a bad image": (["upscale", "{t}/twobad/*.png", "-o", "{t}/outdir", *BICUBIC],
                                       "2 of 3 inputs cannot be upscaled"),
    "batch output is an image name": (["upscale", "{t}/other", "-o", "{t}/out.png"], "must be a folder"),
    "batch output is a file": (["upscale", "{t}/other", "-o", "{t}/a_file"], "must be a folder, not a file"),
    "batch into its input folder": (["upscale", "{t}/other", "-o", "{t}/other"], "would overwrite an input"),
    "two inputs of one name": (["upscale", "{t}/good.png", "{t}/other/good.png", "-o", "{t}/outdir"],
                               "would both be written"),
    "batch output under a file": (["upscale", "{t}/other", "-o", "{t}/a_file/out"], "is a file, not a folder"),
    # -- model, weights, device, options
    "unknown model": ([*UP, "-o", "{t}/o.png", "--model", "bicubik"], "did you mean 'bicubic'"),
    "weights not a checkpoint": ([*UP, "-o", "{t}/o.png", "--model", "masa-lite", "--weights",
                                  "{t}/bad.safetensors"], "not a readable safetensors"),
    "weights with pickled objects": ([*UP, "-o", "{t}/o.png", "--model", "masa-lite", "--weights",
                                      "{t}/pickled.pth"], "pickled Python objects (argparse.Namespace)"),
    "weights are TorchScript": ([*UP, "-o", "{t}/o.png", "--model", "masa-lite", "--weights", "{t}/scripted.pth"],
                                "TorchScript archive"),
    "unknown device": ([*UP, "-o", "{t}/o.png", "--device", "tpu"], "device"),
    "tile of zero": ([*UP, "-o", "{t}/o.png", "--tile", "0"], "tile"),
    "tile not a number": ([*UP, "-o", "{t}/o.png", "--tile", "big"], "invalid int value"),
    "unknown multi-ref": ([*UP, "-o", "{t}/o.png", "--multi-ref", "best"], "invalid choice"),
    "missing -o": (["upscale", "{t}/good.png"], "required"),
    "unknown command": (["enhance", "{t}/good.png"], "invalid choice"),
    "missing train config": (["train", "{t}/cfg.yaml"], "cfg.yaml"),
    # -- convert: the output is checked before anything is converted
    "convert to a missing folder": (["convert", "--from", "masa", "{t}/pickled.pth", "-o", "{t}/no/w.safetensors"],
                                    "does not exist"),
    "convert to a folder that refuses files": (["convert", "--from", "masa", "{t}/pickled.pth", "-o",
                                                "{t}/w.safetensors"], "cannot be written", refuse_every_file),
    "convert to another type": (["convert", "--from", "masa", "{t}/pickled.pth", "-o", "{t}/w.pth"],
                                "must be a .safetensors file"),
    "convert a pickled checkpoint": (["convert", "--from", "masa", "{t}/pickled.pth", "-o", "{t}/w.safetensors"],
                                     "pickled Python objects"),
}
if not torch.cuda.is_available():
    BAD_INPUTS["unavailable device"] = ([*UP, "-o", "{t}/o.png", "--device", "cuda"], "no CUDA GPU")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_contract(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                            case: str) -> None:
    make_inputs(tmp_path)
    args, phrase, *setup = BAD_INPUTS[case]
    before = snapshot(tmp_path)
    if setup:
        setup[0](monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli([a.format(t=tmp_path) for a in args], capsys)
    monkeypatch.undo()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("refsr: error: ")
    assert phrase.format(t=tmp_path) in lines[0]
    assert "Traceback" not in err and "\x1b" not in err
    assert [str(w.message) for w in caught] == []  # nothing that would reach the terminal as a warning
    assert snapshot(tmp_path) == before  # nothing written, not even a temporary file or an empty folder


def test_the_table_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 40


def test_budget_errors_name_a_budget_that_works(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The budget an error suggests is enough: the same run with it succeeds."""
    make_inputs(tmp_path)
    for extra in ([], ["--ref", tmp_path / "good.jpg"]):
        code, _, err = run_cli([*UP[:1], tmp_path / "good.png", *extra, "-o", tmp_path / "o.png",
                                "--max-memory", "100M", "--quiet"], capsys)
        assert code == 2
        suggested = err.split("to at least ")[1].split()[:2]
        budget = suggested[0] + suggested[1][0]  # "914 MB" -> "914M"
        torch.manual_seed(0)
        code, _, err = run_cli([*UP[:1], tmp_path / "good.png", *extra, "-o", tmp_path / "o.png",
                                "--max-memory", budget, "--quiet"], capsys)
        assert code == 0, err


# ------------------------------------------------------------------------------------------ --keep-going
def test_keep_going_reports_each_bad_input_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_inputs(tmp_path)
    code, out, err = run_cli(["upscale", tmp_path / "twobad", "-o", tmp_path / "outdir", *BICUBIC,
                              "--keep-going"], capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith("refsr: error: ") for line in lines)
    assert "empty.png: the file is empty" in lines[0] and "text.png: not an image" in lines[1]
    assert lines[2].endswith(f"2 of 3 images failed; 1 written to {tmp_path / 'outdir'}")
    assert out.split() == [str(tmp_path / "outdir" / "good.png")]
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["good.png"]
    assert "Traceback" not in err


def test_keep_going_with_nothing_good_creates_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_inputs(tmp_path)
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "a.png").write_bytes(b"")
    code, _, err = run_cli(["upscale", tmp_path / "allbad", "-o", tmp_path / "new" / "outdir", *BICUBIC,
                            "--keep-going"], capsys)
    assert code == 2 and err.splitlines()[-1].endswith("1 of 1 images failed; 0 written")
    assert not (tmp_path / "new").exists()


def test_output_folder_appears_only_with_its_first_image(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails at its first write leaves no empty folder behind (not even the missing parents)."""
    make_inputs(tmp_path)
    fail_mkstemp_unless_probe(monkeypatch)
    code, _, err = run_cli(["upscale", tmp_path / "other", "-o", tmp_path / "new" / "outdir", *BICUBIC], capsys)
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ subprocesses
def _refsr(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    code = "import sys; from refsr.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def test_warnings_never_reach_the_real_stderr(tmp_path: Path) -> None:
    """With warnings enabled (PYTHONWARNINGS=default), Pillow's DecompressionBombWarning (a 144 Mpixel header)
    and torch's UserWarning about a TorchScript file are not printed: one line each."""
    make_inputs(tmp_path)
    runs = [
        ["upscale", str(tmp_path / "huge.png"), "--ref", str(tmp_path / "good.png"), "-o", str(tmp_path / "o.png")],
        ["upscale", str(tmp_path / "good.png"), "--model", "masa-lite", "--weights", str(tmp_path / "scripted.pth"),
         "-o", str(tmp_path / "o.png")],
    ]
    for args in runs:
        proc = _refsr(*args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        assert err.count("\n") == 1 and err.startswith("refsr: error: "), err
        assert "Warning" not in err and "\x1b" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_interrupt_during_start_up_prints_no_traceback(tmp_path: Path, delay: float) -> None:
    """Ctrl-C while Python, torch or the model are still loading: at most one line, never a traceback."""
    make_inputs(tmp_path)
    proc = _refsr("upscale", str(tmp_path / "good.png"), "-o", str(tmp_path / "o.png"))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count("\n") <= 1
    assert proc.returncode in (0, 130, -signal.SIGINT)
    if (tmp_path / "o.png").exists():  # the signal came after the image was written: it is whole
        assert read_image(tmp_path / "o.png").shape == (96, 128, 3)
    assert [p.name for p in tmp_path.glob(".*")] == []  # no temporary file left


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from Linux's /proc")
def test_large_lr_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A real 12000x12000 PNG (a few hundred kB compressed, 432 MB decoded): refused from its header, so the
    process stays far below the decoded size."""
    make_inputs(tmp_path)
    arr = np.zeros((12000, 12000), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.png", compress_level=1)
    del arr
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would include this (forking) process.
    code = ("import sys; from refsr.cli import main; rc = main(sys.argv[1:]); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]); sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, "upscale", str(tmp_path / "big.png"), "--ref",
                           str(tmp_path / "good.png"), "-o", str(tmp_path / "o.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "big.png (12000x12000) is too large for the memory budget" in proc.stderr
    assert proc.stderr.count("\n") == 1
    peak_kb = int(proc.stdout.split()[-1])
    assert peak_kb * 1024 < 432e6  # less than the LR's decoded pixels alone (grey; RGB would be 3x)
