"""Paper-style tables: the cell format, the layout, and a two-dataset ``refsr eval`` table with baselines."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_photo
from PIL import Image

import refsr.eval.tables as tables_module
from refsr.eval import Cell, Table, format_table, run_suite
from refsr.eval.tables import format_cell
from refsr.metrics import psnr, ssim
from refsr.models import RefSRModel
from refsr.models.bicubic import BicubicUpsampler


def test_cell_format() -> None:
    assert format_cell(Cell(27.5449, 0.81449, 126)) == "27.54/0.814"
    assert format_cell(Cell(24.1789, 0.6839)) == "24.18/0.684"
    assert format_cell(Cell(math.inf, 1.0)) == "inf/1.000"
    assert format_cell(None) == "-"
    assert format_cell(Cell(30.0, 0.9), psnr_digits=3, ssim_digits=4) == "30.000/0.9000"


def test_layout_by_hand() -> None:
    cells = {
        ("Bicubic", "CUFED5"): Cell(24.18, 0.684),
        ("MASA", "CUFED5"): Cell(27.54, 0.814),
        ("MASA", "Urban100"): Cell(26.09, 0.786),
    }
    text = format_table(["Bicubic", "MASA"], ["CUFED5", "Urban100"], cells, title="Table 1", notes=["note"])
    assert text.splitlines() == [
        "Table 1",
        "Method   CUFED5       Urban100",
        "-------  -----------  -----------",
        "Bicubic  24.18/0.684  -",
        "MASA     27.54/0.814  26.09/0.786",
        "note",
    ]


def test_table_object_and_dict() -> None:
    table = Table("t")
    table.set("A", "X", 30.0, 0.9, 3)
    table.set("B", "Y", math.inf, 1.0, 1)
    table.set("A", "Y", 31.0, 0.91, 1)
    assert table.rows == ["A", "B"] and table.columns == ["X", "Y"]
    assert table.get("B", "X") is None
    data = table.to_dict()
    by_key = {(c["row"], c["column"]): c for c in data["cells"]}
    assert by_key[("A", "X")] == {
        "row": "A",
        "column": "X",
        "psnr": 30.0,
        "ssim": 0.9,
        "count": 3,
        "text": "30.00/0.900",
    }
    assert by_key[("B", "Y")]["psnr"] == "inf"  # JSON has no infinity
    assert "B" in table.render().splitlines()[-1]


def test_module_doctest() -> None:
    result = doctest.testmod(tables_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


class BicubicWithRef(RefSRModel):
    """PIL bicubic that declares it uses a reference, so that the LR↑-as-Ref baseline row is made for it."""

    def __init__(self) -> None:
        super().__init__()
        self.bicubic = BicubicUpsampler(scale=4)

    def forward(self, lr, ref):
        return self.bicubic(lr)


def pil_resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def masa_bicubic(hr: np.ndarray, multiple: int) -> tuple[float, float]:
    """MASA's rule by hand: HR replicate-padded centred to ``multiple``, PIL bicubic down and up, crop."""
    h, w = hr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    padded = np.pad(hr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
    lr = pil_resize(padded, (padded.shape[0] // 4, padded.shape[1] // 4))
    sr = pil_resize(lr, padded.shape[:2])[ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
    return psnr(sr, hr), ssim(sr, hr)


def test_two_datasets_with_baselines(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    cufed, urban = root / "CUFED5", root / "Urban100"
    cufed.mkdir(parents=True)
    urban.mkdir(parents=True)
    photos = [load_photo(n) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    for i in range(2):
        Image.fromarray(photos[i][:97, :113]).save(cufed / f"{i:03d}_0.png")
        Image.fromarray(photos[2][i * 9 : i * 9 + 80, :100]).save(cufed / f"{i:03d}_1.png")
    Image.fromarray(photos[2][:150, :190]).save(urban / "img_001.png")

    report = run_suite(BicubicWithRef(), ["cufed5", "urban100"], root, model_label="model", baselines=True)
    main = report.tables["main"]
    assert main.rows == ["Bicubic", "model, LR↑ as Ref", "model"]
    assert main.columns == ["CUFED5", "Urban100"]
    lines = main.render().splitlines()
    assert lines[0] == "PSNR/SSIM, protocol masa, x4"
    assert lines[1].split() == ["Method", "CUFED5", "Urban100"]
    assert [line[:17].strip() for line in lines[3:6]] == ["Bicubic", "model, LR↑ as Ref", "model"]
    # Columns line up: every cell of a column starts where its header does.
    starts = [lines[1].index("CUFED5"), lines[1].index("Urban100")]
    for line in lines[3:6]:
        assert line[starts[0] - 2 : starts[0]] == "  " and line[starts[0]].isdigit()
        assert line[starts[1] - 2 : starts[1]] == "  " and line[starts[1]].isdigit()

    cufed_scores = [masa_bicubic(photos[i][:97, :113], 32) for i in range(2)]
    urban_scores = [masa_bicubic(photos[2][:150, :190], 64)]  # MASA pads Sun80/Urban100 to 64
    for column, scores in (("CUFED5", cufed_scores), ("Urban100", urban_scores)):
        cell = main.get("Bicubic", column)
        assert cell.count == len(scores)
        assert cell.psnr == pytest.approx(np.mean([s[0] for s in scores]), rel=1e-12)
        assert cell.ssim == pytest.approx(np.mean([s[1] for s in scores]), rel=1e-12)
    assert any(note.startswith("protocol masa (Y=") for note in main.notes)
    assert "n: CUFED5=2, Urban100=1" in main.notes
