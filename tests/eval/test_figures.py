"""Figures: the crop strip and the correspondence drawing, their sizes and contents, the dense fallback."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image

from refsr.data.degrade import to_tensor
from refsr.errors import RefsrError
from refsr.eval import add_eval_arguments, main_eval, run_suite
from refsr.eval.figures import (
    LABEL_HEIGHT,
    PANEL_GAP,
    FigureWriter,
    correspondence_figure,
    crops_figure,
    dense_correspondence,
    grid_points,
    simple_features,
    texture_box,
)
from refsr.matching import match
from refsr.matching.correspondence import Correspondence
from refsr.models import RefSRModel, SizeRule
from refsr.models.bicubic import BicubicUpsampler


def test_texture_box_finds_the_textured_square() -> None:
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    patch = load_photo("astronaut.png")[40:60, 60:80]
    image[25:45, 50:70] = patch
    assert texture_box(image, 20) == (25, 50)


def test_crops_figure_size_and_panels(photo: np.ndarray) -> None:
    hr = photo[:90, :120]
    lr_up, sr = hr // 2, 255 - hr
    ref = load_photo("coffee.png")
    side = 64
    figure = crops_figure(lr_up, sr, hr, ref, side=side, box=(10, 20))
    assert figure.size == (4 * side + 3 * PANEL_GAP, side + LABEL_HEIGHT)
    pixels = np.asarray(figure)
    for i, source in enumerate((lr_up, sr, hr)):
        x = i * (side + PANEL_GAP)
        np.testing.assert_array_equal(
            pixels[LABEL_HEIGHT:, x : x + side], source[10 : 10 + side, 20 : 20 + side]
        )
    # The reference, 256x193, is shrunk to fit the 64x64 panel: 64 wide, centred vertically.
    ref_panel = pixels[LABEL_HEIGHT:, 3 * (side + PANEL_GAP) :]
    fitted = np.asarray(Image.fromarray(ref).resize((64, round(193 * 64 / 256)), Image.BICUBIC))
    top = (side - fitted.shape[0]) // 2
    np.testing.assert_array_equal(ref_panel[top : top + fitted.shape[0]], fitted)
    # The side is clipped to the image; a box that leaves it is an error.
    assert crops_figure(lr_up, sr, hr, ref, side=500).size == (4 * 90 + 3 * PANEL_GAP, 90 + LABEL_HEIGHT)
    with pytest.raises(RefsrError):
        crops_figure(lr_up, sr, hr, ref, side=64, box=(40, 0))


def test_dense_correspondence_is_the_dense_matcher_at_the_points() -> None:
    photo = load_photo("chelsea.png")
    query = to_tensor(np.ascontiguousarray(photo[40:80, 30:90]))[None]
    key = to_tensor(np.ascontiguousarray(photo[30:90, 10:100]))[None]  # holds the query at offset (10, 20)
    points = grid_points(40, 60, 8)
    coords, scores = dense_correspondence(query, key, points)
    full = match(simple_features(query), simple_features(key), method="dense", patch_size=3)
    np.testing.assert_array_equal(coords.numpy(), full.coords[0][points[:, 0], points[:, 1]].numpy())
    torch.testing.assert_close(scores, full.score[0][points[:, 0], points[:, 1]])
    # Away from the borders (where zero padding differs), every point finds itself.
    inner = (points[:, 0] >= 3) & (points[:, 0] < 37) & (points[:, 1] >= 3) & (points[:, 1] < 57)
    np.testing.assert_array_equal(coords[inner].numpy(), (points[inner] + torch.tensor([10, 20])).numpy())


def test_correspondence_figure_size_and_dots() -> None:
    lr = np.zeros((20, 30, 3), dtype=np.uint8)
    ref = np.zeros((100, 50, 3), dtype=np.uint8)
    points = torch.tensor([[5, 5]])
    figure = correspondence_figure(lr, ref, points, torch.tensor([[40.0, 25.0]]), scale=4, gap=8)
    assert figure.size == (4 * 30 + 8 + 50, 100)
    pixels = np.asarray(figure)
    # Dots at the LR point (centre (22, 22) at x4) and at the reference point (x = 128 + 25, y = 40).
    assert pixels[22, 22].any() and pixels[40, 128 + 25].any()
    assert (pixels[90, 0:120] == 255).all()  # below the enlarged LR: background


class MatchingProbe(RefSRModel):
    """PIL bicubic exposing a correspondence, as MASA does: every LR pixel matched to Ref↓ pixel (0, 0)."""

    takes_ref_down = True
    exposes_correspondence = True

    def __init__(self) -> None:
        super().__init__()
        self.bicubic = BicubicUpsampler(scale=4)
        self.size_rule = SizeRule(lr_multiple=8, ref_multiple=16, centre_lr=True)

    def forward(self, lr, ref, *, ref_down=None, return_correspondence: bool = False):
        sr = self.bicubic(lr)
        if not return_correspondence:
            return sr
        n, _, h, w = lr.shape
        key_size = (ref.shape[-2] // 4, ref.shape[-1] // 4)  # Ref↓'s, given or not
        index = torch.zeros(n, h, w, dtype=torch.long)
        return sr, Correspondence(index, torch.ones(n, h, w), key_size)


def build_cufed5(folder: Path) -> None:
    folder.mkdir(parents=True)
    photos = [load_photo(n) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    for i in range(2):
        Image.fromarray(photos[i][:101, :131]).save(folder / f"{i:03d}_0.png")
        Image.fromarray(photos[2][:90, :110]).save(folder / f"{i:03d}_1.png")


def test_figures_from_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build_cufed5(tmp_path / "CUFED5")
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(
        [
            "--dataset",
            "cufed5",
            "--root",
            str(tmp_path),
            "--model",
            "bicubic",
            "--figures",
            str(tmp_path / "figs"),
            "--figure-count",
            "1",
        ]
    )
    assert main_eval(args) == 0
    capsys.readouterr()
    folder = tmp_path / "figs" / "CUFED5"
    assert sorted(p.name for p in folder.iterdir()) == ["000_crops.png", "000_matches.png"]
    crops, matches = Image.open(folder / "000_crops.png"), Image.open(folder / "000_matches.png")
    # MASA rule: HR 101x131 (no crop fits beyond 101), LR from the HR padded to 128x160 -> 32x40.
    assert crops.size == (4 * 101 + 3 * PANEL_GAP, 101 + LABEL_HEIGHT)
    ref_h, ref_w = 96, 112  # the 90x110 reference padded to multiples of 16
    assert matches.size == (4 * 40 + 8 + ref_w, max(4 * 32, ref_h))


def test_ssen_figures_add_the_sampling_points(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """For an SSEN model, --figures also draws the deformable sampling points (the paper's Fig. 7)."""
    build_cufed5(tmp_path / "CUFED5")
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--dataset", "cufed5", "--root", str(tmp_path), "--model", "ssen-lite",
                              "--random-weights", "--figures", str(tmp_path / "figs"), "--figure-count", "1"])
    torch.manual_seed(0)
    assert main_eval(args) == 0
    capsys.readouterr()
    names = sorted(p.name for p in (tmp_path / "figs" / "CUFED5").iterdir())
    assert names == ["000_crops.png", "000_matches.png", "000_offsets.png"]
    assert Image.open(tmp_path / "figs" / "CUFED5" / "000_offsets.png").size[0] > 0


def test_model_correspondence_is_used_and_mapped(tmp_path: Path) -> None:
    build_cufed5(tmp_path / "CUFED5")
    probe = MatchingProbe()
    report = run_suite(
        probe,
        ["cufed5"],
        tmp_path,
        protocol="c2",
        model_label="probe",
        limit=1,
        figures=tmp_path / "figs",
        figure_count=1,
    )
    assert any("from model matching" in note for note in report.tables["main"].notes)
    assert len(report.figures) == 2 and all(Path(p).is_file() for p in report.figures)
    # The probe matches everything to Ref↓ pixel (0, 0), i.e. the reference's top-left 4x4 block, centre 2.
    from refsr.eval.datasets import make_dataset
    from refsr.eval.runner import prepare_inputs

    sample = make_dataset("cufed5", tmp_path, protocol="c2")[0]
    inputs = prepare_inputs(probe, sample)
    _, corr = probe(inputs.lr, inputs.ref, ref_down=inputs.ref_down, return_correspondence=True)
    points = grid_points(*sample["lr"].shape[-2:])
    mapped = FigureWriter._from_model(corr, points, inputs, tuple(inputs.ref.shape[-2:]))
    np.testing.assert_allclose(mapped.numpy(), np.full((len(points), 2), 2.0))


def test_figure_folder_must_be_a_folder(tmp_path: Path) -> None:
    build_cufed5(tmp_path / "CUFED5")
    blocker = tmp_path / "figs"
    blocker.write_text("not a folder")
    with pytest.raises(RefsrError, match="not a folder"):
        run_suite(BicubicUpsampler(), ["cufed5"], tmp_path, figures=blocker)
