"""Paper-style result tables: rows are methods, columns are datasets (or levels, gaps, conditions).

Each cell reads ``PSNR/SSIM`` with two and three decimals, as the RefSR papers print them (MASA-SR Table 1,
AMSA Table 1): ``27.54/0.814``. An empty cell (a method not run on a column) prints ``-``.

>>> t = Table("demo", ["Bicubic", "MASA"], ["CUFED5", "Sun80"])
>>> t.set("Bicubic", "CUFED5", 24.18, 0.684, 126)
>>> print(t.render())  # doctest: +NORMALIZE_WHITESPACE
demo
Method   CUFED5       Sun80
-------  -----------  -----
Bicubic  24.18/0.684  -
MASA     -            -
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cell", "Table", "format_cell", "format_table"]


@dataclass(frozen=True)
class Cell:
    """One table cell: mean PSNR (dB), mean SSIM and the number of images they average."""

    psnr: float
    ssim: float
    count: int = 0


def format_cell(cell: Cell | None, *, psnr_digits: int = 2, ssim_digits: int = 3) -> str:
    """``"27.54/0.814"``; ``"inf"`` for an exact result, ``"-"`` for no cell."""
    if cell is None:
        return "-"

    def number(value: float, digits: int) -> str:
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"

    return f"{number(cell.psnr, psnr_digits)}/{number(cell.ssim, ssim_digits)}"


def format_table(
    rows: Sequence[str],
    columns: Sequence[str],
    cells: dict[tuple[str, str], Cell],
    *,
    title: str | None = None,
    notes: Iterable[str] = (),
    corner: str = "Method",
) -> str:
    """A plain-text table with aligned columns, a dashed rule under the header, and notes below.

    Args:
        rows: row labels (methods), top to bottom.
        columns: column labels, left to right.
        cells: ``(row, column) -> Cell``; missing pairs print ``-``.
        title: a line printed above the table.
        notes: lines printed below it.
        corner: the header of the label column.
    """
    header = [corner, *columns]
    body = [[row, *(format_cell(cells.get((row, column))) for column in columns)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths)).rstrip()

    out = [title] if title else []
    out += [line(header), line(["-" * w for w in widths]), *(line(values) for values in body)]
    out += list(notes)
    return "\n".join(out)


@dataclass
class Table:
    """A table being filled in: ``set`` cells, then ``render`` or ``to_dict``.

    Attributes:
        title: printed above; ``rows`` and ``columns``: labels, in order (``set`` appends new ones);
        cells: ``(row, column) -> Cell``; notes: lines printed below; corner: the row-label header.
    """

    title: str
    rows: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    corner: str = "Method"

    def set(self, row: str, column: str, psnr: float, ssim: float, count: int = 0) -> None:
        """Fill one cell (adding its row and column if they are new)."""
        if row not in self.rows:
            self.rows.append(row)
        if column not in self.columns:
            self.columns.append(column)
        self.cells[(row, column)] = Cell(float(psnr), float(ssim), int(count))

    def get(self, row: str, column: str) -> Cell | None:
        return self.cells.get((row, column))

    def render(self) -> str:
        return format_table(
            self.rows, self.columns, self.cells, title=self.title, notes=self.notes, corner=self.corner
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the labels, and every cell as numbers and as printed."""

        def number(value: float) -> float | str:
            return value if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")

        return {
            "title": self.title,
            "rows": list(self.rows),
            "columns": list(self.columns),
            "cells": [
                {
                    "row": row,
                    "column": column,
                    "psnr": number(cell.psnr),
                    "ssim": number(cell.ssim),
                    "count": cell.count,
                    "text": format_cell(cell),
                }
                for (row, column), cell in self.cells.items()
            ],
            "notes": list(self.notes),
        }
