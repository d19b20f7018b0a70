"""Light-field grids (e.g. 8x8 views) as RefSR pairs: one view super-resolved with another as reference.

RefSR-Net (Zheng et al., BMVC 2017, section 5) tests on the light-field video dataset with the LR view at
grid position (3, 3) and the reference view at (0, 0), and trains with both positions drawn at random.

Two layouts are read, detected per scene (``<root>/<scene>/``):

- ``"rowcol"``: ``<row>_<col>.png``, 0-based, any zero padding (``3_3.png``, ``03_03.png``);
- ``"hci"``: ``input_Cam000.png`` ... ``input_Cam063.png``, the HCI light-field benchmark's naming, with the
  camera index ``row * cols + col`` (row-major).

Every view of the ``rows x cols`` grid must be present. Any image extension is accepted.

Size rule: both views mod-cropped (bottom/right) to a multiple of ``scale``; LR and Ref↓ made with
:func:`refsr.data.degrade.make_lr`. RefSR-Net works at x8, the default here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Union

import torch

from refsr.data.degrade import make_lr, mod_crop
from refsr.data.standard import STREAM_VIEWS, PathLike, SeededDataset, list_images, read_rgb, resolve_root
from refsr.errors import RefsrError

__all__ = ["LightFieldGrid"]

_ROWCOL = re.compile(r"^(\d+)_(\d+)$")
_HCI = re.compile(r"^input_Cam(\d+)$")
_EXPECTED = "scene folders of views named <row>_<col>.png or input_CamNNN.png"

View = Union[tuple[int, int], str]


def _scan_scene(folder: Path, rows: int, cols: int) -> tuple[str, dict[tuple[int, int], Path]]:
    """The layout name and the view paths by (row, col) of one scene; errors name what is missing."""
    rowcol: dict[tuple[int, int], Path] = {}
    hci: dict[tuple[int, int], Path] = {}
    for p in list_images(folder):
        m = _ROWCOL.match(p.stem)
        if m:
            rowcol[(int(m.group(1)), int(m.group(2)))] = p
            continue
        m = _HCI.match(p.stem)
        if m:
            index = int(m.group(1))
            hci[divmod(index, cols)] = p
    if rowcol and hci:
        raise RefsrError(f"light field {folder}: mixes <row>_<col> and input_CamNNN names; keep one layout")
    layout, views = ("rowcol", rowcol) if rowcol else ("hci", hci)
    if not views:
        raise RefsrError(f"light field {folder}: no views; expected {_EXPECTED}")
    grid = [(r, c) for r in range(rows) for c in range(cols)]
    missing = [rc for rc in grid if rc not in views]
    if missing:
        r, c = missing[0]
        name = f"{r}_{c}" if layout == "rowcol" else f"input_Cam{r * cols + c:03d}"
        raise RefsrError(
            f"light field {folder}: {len(missing)} of the {rows}x{cols} views are missing (first: {name})"
        )
    extra = sorted(set(views) - set(grid))
    if extra:
        raise RefsrError(f"light field {folder}: view {extra[0]} lies outside the {rows}x{cols} grid")
    return layout, views


class LightFieldGrid(SeededDataset):
    """One sample per scene: the LR of one view, another view (HR) as reference.

    Args:
        root: a folder of scene folders (or a single scene folder).
        grid: ``(rows, cols)`` of the views, or one int for a square grid (default 8x8).
        lr_view: the (row, col) of the view to super-resolve, or ``"random"`` (default (3, 3)).
        ref_view: the (row, col) of the reference view, or ``"random"`` (default (0, 0)). Random positions
            are drawn per scene from ``(seed, epoch, index)`` and always differ from each other.
        scale: the SR factor (RefSR-Net: 8).
        seed, transform: see :class:`refsr.data.standard.SeededDataset`.

    Samples: ``hr``, ``lr``, ``ref``, ``ref_down`` (float32 RGB in [0, 1]), ``name`` (the scene),
    ``lr_view`` and ``ref_view`` (row, col), ``layout``, ``pad`` ``(0, 0)``, ``hr_size``.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        grid: int | tuple[int, int] = 8,
        lr_view: View = (3, 3),
        ref_view: View = (0, 0),
        scale: int = 8,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        rows, cols = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise RefsrError(f"a light-field grid needs at least two views, got {rows}x{cols}")
        self.rows, self.cols, self.scale = int(rows), int(cols), int(scale)
        self.lr_view = self._check_view(lr_view, "lr_view")
        self.ref_view = self._check_view(ref_view, "ref_view")
        if self.lr_view == self.ref_view and self.lr_view != "random":
            raise RefsrError(f"lr_view and ref_view are both {self.lr_view}; choose two different views")

        def is_scene(p: Path) -> bool:
            return any(_ROWCOL.match(q.stem) or _HCI.match(q.stem) for q in list_images(p))

        def holds_scenes(p: Path) -> bool:
            return is_scene(p) or any(is_scene(q) for q in p.iterdir() if q.is_dir())

        self.root = resolve_root(
            root, what="light field", subfolders=(), accept=holds_scenes, expected=_EXPECTED
        )
        folders = [self.root] if is_scene(self.root) else sorted(
            q for q in self.root.iterdir() if q.is_dir() and not q.name.startswith(".") and is_scene(q)
        )
        self.scenes: list[tuple[str, str, dict[tuple[int, int], Path]]] = []
        for folder in folders:
            layout, views = _scan_scene(folder, self.rows, self.cols)
            self.scenes.append((folder.name, layout, views))

    def _check_view(self, view: View, what: str) -> View:
        if view == "random":
            return view
        try:
            r, c = (int(v) for v in view)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise RefsrError(f"{what} must be a (row, col) pair or 'random', got {view!r}") from None
        if not (0 <= r < self.rows and 0 <= c < self.cols):
            raise RefsrError(f"{what} {(r, c)} lies outside the {self.rows}x{self.cols} grid")
        return (r, c)

    def views_for(self, index: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (row, col) of the LR view and of the reference view of scene ``index`` (this epoch)."""
        index = self._check_index(index)
        n = self.rows * self.cols
        g = self.generator(index, STREAM_VIEWS, per_epoch=True)
        fixed_lr = None if self.lr_view == "random" else self.lr_view[0] * self.cols + self.lr_view[1]
        fixed_ref = None if self.ref_view == "random" else self.ref_view[0] * self.cols + self.ref_view[1]
        lr_i, ref_i = fixed_lr, fixed_ref
        if lr_i is None:
            # Draw among the views other than a fixed reference, skipping over it.
            if ref_i is None:
                lr_i = int(torch.randint(n, (), generator=g))
            else:
                lr_i = int(torch.randint(n - 1, (), generator=g))
                lr_i += lr_i >= ref_i
        if ref_i is None:
            ref_i = int(torch.randint(n - 1, (), generator=g))
            ref_i += ref_i >= lr_i
        return divmod(lr_i, self.cols), divmod(ref_i, self.cols)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        name, layout, views = self.scenes[index]
        lr_rc, ref_rc = self.views_for(index)
        s = self.scale
        hr, ref = mod_crop(read_rgb(views[lr_rc]), s), mod_crop(read_rgb(views[ref_rc]), s)
        sample = {
            "hr": hr, "lr": make_lr(hr, s), "ref": ref, "ref_down": make_lr(ref, s),
            "name": name, "lr_view": lr_rc, "ref_view": ref_rc, "layout": layout,
            "pad": (0, 0), "hr_size": (int(hr.shape[0]), int(hr.shape[1])),
        }
        return self._finish(sample, index)
