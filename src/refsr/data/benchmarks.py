"""Sun80, Urban100 and Manga109 as RefSR test sets.

How the papers use them (MASA-SR section 4.1, AMSA section 4.1, C2-Matching issue #14):

- **Sun80** (Sun and Hays 2012): 80 images, each with its own folder of scene-matched candidate references;
  one candidate is drawn at random per image. Layout, as MASA's ``Sun80`` loader and the C2-style
  ``Sun80Set`` loaders read it::

      <root>/Sun_Hays_SR_groundtruth/<name>.jpg
      <root>/Sun_Hays_SR_scenematches/<name>.jpg/*.jpg     # the folder is named after the full file name

  A folder named after the stem (``Sun_Hays_SR_scenematches/<name>/``) is accepted too.
- **Urban100**: 100 HR images, no references: the LR image serves as its own reference (see
  :func:`refsr.data.standard.prepare_self_reference_sample`). MASA's loader uses the LR itself (``Ref =
  LR_pad``); C2-Matching ships no Urban100 loader, and C2-style loaders in the wild put the LR, zero-padded,
  at the HR size. ``self_ref_mode="up"`` uses the PIL-bicubic LR↑ instead.
- **Manga109**: 109 HR images, no references: each image gets another image of the set, drawn at random.

Layout for Urban100 and Manga109: the HR images directly in ``<root>`` or in ``<root>/HR``.

The random draws are seeded: the reference of image ``i`` depends only on ``(seed, i)``, never on the epoch,
the access order or the DataLoader workers, so ``seed`` names a fixed benchmark. C2-Matching's authors note
that Sun80 and Manga109 scores move with the chosen references, so report the seed with the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from refsr.data.standard import (
    STREAM_REFERENCE,
    PathLike,
    SeededDataset,
    check_protocol,
    list_images,
    prepare_self_reference_sample,
    prepare_test_sample,
    read_rgb,
    resolve_root,
)
from refsr.errors import RefsrError

__all__ = ["Sun80", "Urban100", "Manga109"]

_SUN_GT = "Sun_Hays_SR_groundtruth"
_SUN_REFS = "Sun_Hays_SR_scenematches"
_SUN_EXPECTED = f"{_SUN_GT}/<name>.jpg and {_SUN_REFS}/<name>.jpg/*.jpg (Sun80)"

# MASA pads Sun80/Urban100 HR images to a multiple of 64 (at x4), CUFED5 to 32. Manga109 is not in MASA's
# code; its pages are as large as Urban100's images, so it gets the same rule.
_MASA_LARGE_MULTIPLE = 64


def _has_images(folder: Path) -> bool:
    return bool(list_images(folder))


class Sun80(SeededDataset):
    """Sun80 with one seeded, randomly drawn reference per image.

    Args:
        root: the folder holding ``Sun_Hays_SR_groundtruth`` and ``Sun_Hays_SR_scenematches`` (or a parent
            with a ``Sun80`` folder).
        protocol: ``"masa"`` (HR replicate-padded, centred, to a multiple of 64; Ref replicate-padded,
            centred, to 16, as MASA's Sun80 loader), ``"c2"``, ``"amsa"`` or ``"ttsr"``.
        scale: the SR factor.
        seed: picks the references (see the module docstring); also seeds ``transform``.

    Samples: ``hr``, ``lr``, ``ref``, ``ref_down``, ``name`` (file stem), ``ref_name`` (the chosen reference's
    file name), ``pad``, ``hr_size``. :meth:`reference_for` tells which file image ``i`` gets.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        protocol: str = "masa",
        scale: int = 4,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        self.protocol = check_protocol(protocol)
        self.scale = int(scale)
        self.root = resolve_root(
            root, what="Sun80", subfolders=("Sun80",),
            accept=lambda p: (p / _SUN_GT).is_dir() and (p / _SUN_REFS).is_dir(), expected=_SUN_EXPECTED,
        )
        self.inputs = list_images(self.root / _SUN_GT)
        if not self.inputs:
            raise RefsrError(f"Sun80: {self.root / _SUN_GT} has no images; expected {_SUN_EXPECTED}")
        self.candidates: list[list[Path]] = []
        for path in self.inputs:
            folder = self.root / _SUN_REFS / path.name
            if not folder.is_dir():
                folder = self.root / _SUN_REFS / path.stem
            if not folder.is_dir():
                raise RefsrError(
                    f"Sun80: no reference folder {_SUN_REFS}/{path.name}/ for {path.name} in {self.root}"
                )
            refs = list_images(folder)
            if not refs:
                raise RefsrError(f"Sun80: the reference folder {folder} has no images")
            self.candidates.append(refs)

    def __len__(self) -> int:
        return len(self.inputs)

    def reference_for(self, index: int) -> Path:
        """The reference file of image ``index``: uniform over its candidates, seeded by ``(seed, index)``."""
        index = self._check_index(index)
        refs = self.candidates[index]
        g = self.generator(index, STREAM_REFERENCE, per_epoch=False)
        return refs[int(torch.randint(len(refs), (), generator=g))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        ref_path = self.reference_for(index)
        sample = prepare_test_sample(
            read_rgb(self.inputs[index]), read_rgb(ref_path), protocol=self.protocol, scale=self.scale,
            masa_hr_multiple=_MASA_LARGE_MULTIPLE, masa_ref_centred=True,
        )
        sample["name"], sample["ref_name"] = self.inputs[index].stem, ref_path.name
        return self._finish(sample, index)


def _resolve_flat(root: PathLike, what: str) -> Path:
    return resolve_root(
        root, what=what, subfolders=("HR", what, f"{what}/HR"), accept=_has_images,
        expected=f"a folder of HR images, directly or in HR/ ({what})",
    )


class Urban100(SeededDataset):
    """Urban100 with the LR image as its own reference.

    Args:
        root: the HR images, directly or in ``HR/``.
        protocol: ``"masa"`` (HR replicate-padded, centred, to a multiple of 64, as MASA's Urban100 loader),
            ``"c2"``, ``"amsa"`` or ``"ttsr"``.
        self_ref_mode: ``"lr"`` (the LR itself; default for ``"masa"``) or ``"up"`` (PIL-bicubic LR↑;
            default for the others); see :func:`refsr.data.standard.prepare_self_reference_sample`.
        scale: the SR factor.

    Samples: ``hr``, ``lr``, ``ref``, ``ref_down``, ``name``, ``pad``, ``hr_size``.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        protocol: str = "masa",
        self_ref_mode: str | None = None,
        scale: int = 4,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        self.protocol = check_protocol(protocol)
        self.scale = int(scale)
        self.self_ref_mode = self_ref_mode or ("lr" if self.protocol == "masa" else "up")
        if self.self_ref_mode not in ("lr", "up"):
            raise RefsrError(f"unknown self_ref_mode {self_ref_mode!r}; use 'lr' or 'up'")
        self.root = _resolve_flat(root, "Urban100")
        self.inputs = list_images(self.root)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        sample = prepare_self_reference_sample(
            read_rgb(self.inputs[index]), protocol=self.protocol, scale=self.scale,
            ref_mode=self.self_ref_mode, masa_hr_multiple=_MASA_LARGE_MULTIPLE,
        )
        sample["name"] = self.inputs[index].stem
        return self._finish(sample, index)


class Manga109(SeededDataset):
    """Manga109 with another image of the set, drawn at random (seeded), as each image's reference.

    Args:
        root: the HR images, directly or in ``HR/``; at least two.
        protocol: ``"masa"`` (HR replicate-padded, centred, to a multiple of 64, Ref bottom/right to 16),
            ``"c2"``, ``"amsa"`` or ``"ttsr"``.
        scale: the SR factor.
        seed: picks the references (image ``i``'s depends only on ``(seed, i)``); also seeds ``transform``.

    Samples: ``hr``, ``lr``, ``ref``, ``ref_down``, ``name``, ``ref_name``, ``pad``, ``hr_size``.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        protocol: str = "masa",
        scale: int = 4,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        self.protocol = check_protocol(protocol)
        self.scale = int(scale)
        self.root = _resolve_flat(root, "Manga109")
        self.inputs = list_images(self.root)
        if len(self.inputs) < 2:
            raise RefsrError(f"Manga109: {self.root} has {len(self.inputs)} image(s); at least 2 are needed "
                             "so that each image can take another one as its reference")

    def __len__(self) -> int:
        return len(self.inputs)

    def reference_index(self, index: int) -> int:
        """Image ``index``'s reference: uniform over the other images, seeded by ``(seed, index)``."""
        index = self._check_index(index)
        g = self.generator(index, STREAM_REFERENCE, per_epoch=False)
        # Draw among the n - 1 others and skip over ``index``: one draw, no rejection loop.
        other = int(torch.randint(len(self.inputs) - 1, (), generator=g))
        return other + (other >= index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        ref_path = self.inputs[self.reference_index(index)]
        sample = prepare_test_sample(
            read_rgb(self.inputs[index]), read_rgb(ref_path), protocol=self.protocol, scale=self.scale,
            masa_hr_multiple=_MASA_LARGE_MULTIPLE, masa_ref_centred=False,
        )
        sample["name"], sample["ref_name"] = self.inputs[index].stem, ref_path.stem
        return self._finish(sample, index)
