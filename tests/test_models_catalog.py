"""Shipped weights as data: their records against the files and the docs, ``refsr models``, and no silent
random weights in ``refsr upscale`` / ``refsr eval`` / ``refsr.upscale``."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import refsr
from refsr.cli import main
from refsr.errors import RefsrError
from refsr.eval import add_eval_arguments, main_eval
from refsr.hub import default_weights_path, file_sha256, save_safetensors
from refsr.models import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, get_entry

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = refsr.list_models(pretrained=True)
SAMPLES = ROOT / "src" / "refsr" / "samples"


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_default_model_ships_weights_and_only_named_models_are_listed_as_pretrained() -> None:
    assert DEFAULT_MODEL in PRETRAINED
    assert PRETRAINED == [n for n in refsr.list_models() if get_entry(n).weights is not None]
    assert "bicubic" not in PRETRAINED  # nothing to ship: it has no parameters
    assert refsr.list_models("masa*", pretrained=True) == ["masa-lite", "masa-lite-video"]
    assert DEFAULT_VIDEO_MODEL in PRETRAINED


@pytest.mark.parametrize("name", PRETRAINED)
def test_weights_record_matches_the_file(name: str) -> None:
    info = get_entry(name).weights
    path = default_weights_path(name)
    assert path is not None and path.is_file() and path.name == info.file
    assert file_sha256(path) == info.sha256
    tensors = load_file(str(path))
    model = refsr.create_model(name, weights="default")
    counted = sum(p.numel() for p in model.parameters())
    assert counted == info.parameters
    # The file holds the parameters (and the buffers, which are not counted as parameters).
    buffers = {k for k, _ in model.named_buffers()}
    assert sum(v.numel() for k, v in tensors.items() if k not in buffers) == info.parameters
    assert model.scale == info.scale
    assert info.degradation in ("bicubic", "real")
    assert info.scores["all"][0] > 0 and 0 < info.scores["all"][1] < 1
    for config in info.recipe:
        assert (ROOT / config).is_file(), config


def _table_rows(text: str, first_cell: str) -> list[dict[str, str]]:
    """Every markdown table row whose first cell is ``first_cell``, as {column name: cell}; a column name
    loses its count in brackets ("video (320)" -> "video")."""
    rows = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [re.sub(r"\s*\(\d+\)$", "", c) for c in cells]
        elif cells[0] == first_cell:
            rows.append(dict(zip(header, cells)))
    return rows


@pytest.mark.parametrize("doc, name, label", [
    ("README.md", DEFAULT_MODEL, f"{DEFAULT_MODEL} (default)"),
    ("MODEL_CARD.md", DEFAULT_MODEL, f"{DEFAULT_MODEL} (default)"),
    ("MODEL_CARD.md", DEFAULT_VIDEO_MODEL, f"{DEFAULT_VIDEO_MODEL} (video)"),
])
def test_docs_quote_the_recorded_scores_of_the_shipped_models(doc: str, name: str, label: str) -> None:
    info = get_entry(name).weights
    text = (ROOT / doc).read_text(encoding="utf-8")
    rows = _table_rows(text, f"**{label}**") + _table_rows(text, label)
    quoted = {}
    for row in rows:
        for column, cell in row.items():
            group = "all" if column == "all" else column
            if group in info.scores:
                quoted[group] = cell.replace("**", "")
    # Every recorded group is quoted, with the recorded numbers.
    assert set(quoted) == set(info.scores), (set(info.scores) - set(quoted), doc)
    for group, (psnr, ssim) in info.scores.items():
        assert quoted[group] == f"{psnr:.2f}/{ssim:.3f}", (doc, group)


def test_refsr_models_table_and_json(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["models"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    for name in refsr.list_models():
        assert any(line.split()[:1] == [name] for line in lines), name
    default_line = next(line for line in lines if line.split()[:1] == [DEFAULT_MODEL])
    info = get_entry(DEFAULT_MODEL).weights
    assert f"{info.parameters:,}" in default_line and "yes" in default_line
    assert f"{info.scores['all'][0]:.2f}/{info.scores['all'][1]:.3f}" in default_line
    ssen_line = next(line for line in lines if line.split()[:1] == ["ssen-lite"])
    assert " no " in ssen_line

    code, out, _ = run_cli(["models", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert sorted(rows) == refsr.list_models()
    assert rows["masa"]["parameters"] == 4_028_291 and rows["masa"]["pretrained"] is False
    assert rows["refsrnet"]["scale"] == 8
    assert rows[DEFAULT_MODEL]["weights"]["sha256"] == info.sha256
    assert rows[DEFAULT_MODEL]["weights"]["scores"]["all"] == list(info.scores["all"])

    code, out, err = run_cli(["models", "nothing*"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra", [[], ["--weights", "default"]])
def test_upscale_refuses_a_model_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture, extra) -> None:
    before = files_under(tmp_path)
    code, out, err = run_cli(["upscale", SAMPLES / "bbb_lr.png", "--ref", SAMPLES / "bbb_ref.png", "-o",
                              tmp_path / "sr.png", "--model", "ssen-lite", *extra], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "'ssen-lite'" in err and DEFAULT_MODEL in err
    assert files_under(tmp_path) == before


def test_random_weights_on_purpose(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["upscale", SAMPLES / "bbb_lr.png", "-o", tmp_path / "sr.png", "--model", "ssen-lite",
                            "--random-weights", "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "sr.png").is_file()
    code, _, err = run_cli(["upscale", SAMPLES / "bbb_lr.png", "-o", tmp_path / "sr2.png", "--model", "masa-lite",
                            "--weights", "default", "--random-weights"], capsys)
    assert code == 2 and "not both" in err and not (tmp_path / "sr2.png").exists()


def test_a_model_name_means_its_shipped_weights() -> None:
    lr = SAMPLES / "bbb_lr.png"
    named = refsr.upscale(lr, SAMPLES / "bbb_ref.png", model=DEFAULT_MODEL)
    default = refsr.upscale(lr, SAMPLES / "bbb_ref.png")
    assert (named == default).all()
    with pytest.raises(RefsrError, match="ships no trained weights.*random_weights"):
        refsr.upscale(lr, None, model="ssen-lite")
    assert refsr.upscale(lr, None, model="bicubic").shape == (360, 640, 3)  # no parameters: nothing to load
    torch.manual_seed(0)
    assert refsr.upscale(lr, None, model="ssen-lite", random_weights=True).shape == (360, 640, 3)
    # create_model keeps timm's convention: random unless weights are asked for.
    assert not torch.equal(refsr.create_model(DEFAULT_MODEL).state_dict()["conv_out.weight"],
                           refsr.create_model(DEFAULT_MODEL, weights="default").state_dict()["conv_out.weight"])


def test_eval_refuses_a_model_without_weights() -> None:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--dataset", "open", "--model", "ssen-lite"])
    with pytest.raises(RefsrError, match="'ssen-lite' ships no trained weights"):
        main_eval(args)


def test_weights_of_another_variant_are_named(tmp_path: Path) -> None:
    # masa-lite-video is the same network: both names fit, the first is suggested.
    with pytest.raises(RefsrError, match="for model 'masa-lite' or 'masa-lite-video', not 'masa'.*--model masa-lite "):
        refsr.create_model("masa", weights=default_weights_path("masa-lite"))
    with torch.device("meta"):
        full = refsr.create_model("masa")
    path = save_safetensors({k: torch.zeros(v.shape) for k, v in full.state_dict().items()}, tmp_path / "m.safetensors")
    with pytest.raises(RefsrError, match="for model 'masa', not 'masa-lite'"):
        refsr.create_model("masa-lite", weights=path)
    # Weights that fit no variant keep the detailed key listing.
    broken = load_file(str(default_weights_path("masa-lite")))
    broken.pop("conv_out.bias")
    save_safetensors(broken, tmp_path / "broken.safetensors")
    with pytest.raises(RefsrError, match="do not fit model MASA: missing keys: conv_out.bias"):
        refsr.create_model("masa-lite", weights=tmp_path / "broken.safetensors")


def test_damaged_shipped_weights_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = get_entry(DEFAULT_MODEL)
    monkeypatch.setattr(entry, "weights", replace(entry.weights, sha256="0" * 64))
    with pytest.raises(RefsrError, match="do not match their recorded sha256"):
        refsr.create_model(DEFAULT_MODEL, weights="default")


def test_help_of_upscale_names_the_ways_to_choose_weights(capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # argparse would break "masa-lite" at its hyphen
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "refsr models" in text and "'default'" in text and DEFAULT_MODEL in text and "--random-weights" in text
