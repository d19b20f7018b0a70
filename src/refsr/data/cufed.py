"""CUFED (training pairs) and CUFED5 (test set) in the layouts the official repositories use.

Layouts (read from the official repositories' loaders and C2-Matching's ``datasets/DATASETS.md``):

- **CUFED train**: ``<root>/input/*.png`` and ``<root>/ref/*.png``, 11,871 pairs of 160x160 images. MASA and
  TTSR keep them at ``CUFED/train/{input,ref}``, C2-Matching and AMSA at ``CUFED/{input,ref}``; ``root`` may
  be any of ``<root>``, ``<root>/train``, ``<root>/CUFED``, ``<root>/CUFED/train``.
  Pairing: MASA and TTSR sort both folders and pair by index (``pairing="index"``); C2-Matching and AMSA
  pair files with the same name (``pairing="basename"``).
- **CUFED5 test**: one flat folder of ``XXX_0.png`` (the HR input) and ``XXX_1.png`` ... ``XXX_5.png`` (its
  references, level 1 most similar), 126 sets ``000``-``125``. MASA/TTSR keep it at
  ``CUFED/test/CUFED5``, C2/AMSA at ``datasets/CUFED5``; ``root`` may be the folder itself or a parent with
  ``CUFED5``, ``test/CUFED5`` or ``CUFED/test/CUFED5`` below it. C2/AMSA list the pairs in
  ``CUFED5_pairs.txt`` (126 lines ``XXX_0.png XXX_1.png``, paths relative to the image folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

from refsr.data.degrade import make_lr, mod_crop, pad_to_multiple
from refsr.data.standard import (
    PathLike,
    SeededDataset,
    check_protocol,
    list_images,
    prepare_self_reference_sample,
    prepare_test_sample,
    read_rgb,
    resolve_root,
    stack_references,
    zero_pad_to,
)
from refsr.errors import RefsrError
from refsr.imresize import imresize

__all__ = ["CUFEDTrain", "CUFED5", "CUFED5_LEVELS"]

CUFED5_LEVELS = (1, 2, 3, 4, 5)

_TRAIN_EXPECTED = "a folder with input/ and ref/ subfolders of images (CUFED train)"
_TEST_EXPECTED = "a folder of XXX_0.png inputs with references XXX_1.png ... XXX_5.png (CUFED5)"


def _has_train_layout(folder: Path) -> bool:
    return (folder / "input").is_dir() and (folder / "ref").is_dir()


class CUFEDTrain(SeededDataset):
    """CUFED training pairs, prepared as each official pipeline prepares them.

    Args:
        root: see the module docstring.
        protocol: the size rule (all images are 160x160 in CUFED, so these only matter for other sizes):

            - ``"masa"``: HR and Ref replicate-padded bottom/right to a multiple of ``4 * scale`` (16);
            - ``"c2"``: HR mod-cropped to ``scale``; Ref resized with PIL bicubic to the HR size (C2's
              ``gt_size``, 160, which is the CUFED image size);
            - ``"amsa"``: as ``"c2"`` with the HR mod-cropped to ``8 * scale``;
            - ``"ttsr"``: HR mod-cropped to ``scale``; Ref zero-padded top-left into a canvas of the HR size
              (TTSR's 160x160), its Ref↓ ``make_lr(mod_crop(ref))`` likewise into the LR size.
        pairing: ``"index"`` (MASA, TTSR) or ``"basename"`` (C2, AMSA); default from ``protocol``.
        scale: the SR factor.
        seed, transform: see :class:`refsr.data.standard.SeededDataset`; use
            :func:`refsr.data.augment.masa_augment` for MASA's role swap, jitter, flips and rotations.

    Samples: ``hr`` ``(3, H, W)``, ``lr`` ``(3, H/s, W/s)``, ``ref``, ``ref_down`` (float32 RGB in [0, 1]),
    ``name`` (the input file's stem), ``ref_name``.

    Raises:
        RefsrError: missing root, no ``input``/``ref`` folders, empty folders, different counts, or (by
            basename) names without a partner.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        protocol: str = "masa",
        pairing: str | None = None,
        scale: int = 4,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        self.protocol = check_protocol(protocol)
        self.scale = int(scale)
        if pairing is None:
            pairing = "index" if self.protocol in ("masa", "ttsr") else "basename"
        if pairing not in ("index", "basename"):
            raise RefsrError(
                f"unknown pairing {pairing!r}; use 'index' (MASA, TTSR) or 'basename' (C2, AMSA)"
            )
        self.pairing = pairing
        self.root = resolve_root(
            root, what="CUFED train", subfolders=("train", "CUFED", "CUFED/train"),
            accept=_has_train_layout, expected=_TRAIN_EXPECTED,
        )
        inputs, refs = list_images(self.root / "input"), list_images(self.root / "ref")
        if not inputs or not refs:
            empty = "input" if not inputs else "ref"
            raise RefsrError(f"CUFED train: {self.root / empty} has no images; expected {_TRAIN_EXPECTED}")
        self.pairs = self._pair(inputs, refs)

    def _pair(self, inputs: list[Path], refs: list[Path]) -> list[tuple[Path, Path]]:
        if self.pairing == "index":
            if len(inputs) != len(refs):
                raise RefsrError(
                    f"CUFED train: {len(inputs)} input images but {len(refs)} references in {self.root}; "
                    "pairing by sorted index needs the same count in input/ and ref/"
                )
            return list(zip(inputs, refs))
        by_name = {p.name: p for p in refs}
        missing_ref = [p.name for p in inputs if p.name not in by_name]
        input_names = {p.name for p in inputs}
        missing_input = [p.name for p in refs if p.name not in input_names]
        if missing_ref or missing_input:
            side, names = ("ref/", missing_ref) if missing_ref else ("input/", missing_input)
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            raise RefsrError(
                f"CUFED train: {len(names)} image(s) have no partner of the same name in {side} "
                f"({shown}); pairing by basename needs identical file names in input/ and ref/"
            )
        return [(p, by_name[p.name]) for p in inputs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        input_path, ref_path = self.pairs[index]
        hr, ref = read_rgb(input_path), read_rgb(ref_path)
        s = self.scale
        if self.protocol == "masa":
            hr, _ = pad_to_multiple(hr, 4 * s)
            ref, _ = pad_to_multiple(ref, 4 * s)
            ref_down = make_lr(ref, s)
        elif self.protocol in ("c2", "amsa"):
            hr = mod_crop(hr, s if self.protocol == "c2" else 8 * s)
            # C2/AMSA resize every training reference to gt_size (160) because some CUFED refs differ in size.
            ref = imresize(ref, size=hr.shape[:2], kernel="pil")
            ref_down = make_lr(ref, s)
        else:  # ttsr
            hr = mod_crop(hr, s)
            if ref.shape[0] > hr.shape[0] or ref.shape[1] > hr.shape[1]:
                raise RefsrError(
                    f"{ref_path}: the reference ({ref.shape[1]}x{ref.shape[0]}) is larger than the input "
                    f"({hr.shape[1]}x{hr.shape[0]}); TTSR's rule zero-pads references into the input's size"
                )
            ref_down = zero_pad_to(make_lr(mod_crop(ref, s), s), (hr.shape[0] // s, hr.shape[1] // s))
            ref = zero_pad_to(ref, hr.shape[:2])
        sample = {
            "hr": hr, "lr": make_lr(hr, s), "ref": ref, "ref_down": ref_down,
            "name": input_path.stem, "ref_name": ref_path.stem,
        }
        return self._finish(sample, index)


def _has_test_layout(folder: Path) -> bool:
    return any(folder.glob("*_0.*"))


Level = Union[int, str]


class CUFED5(SeededDataset):
    """The CUFED5 test set with a chosen reference, all five stacked, or the LR as its own reference.

    Args:
        root: see the module docstring.
        level: which reference:

            - ``1`` ... ``5``: ``XXX_k.png`` (level 1 is what C2, AMSA and TTSR's ``evaluate()`` use);
            - ``"stacked"``: all five on one image, as MASA's default ``TestSet_multi``: under
              ``protocol="masa"`` each reference is replicate-padded, centred, to 512x512 and the five are
              stacked vertically (Ref 2560x512, Ref↓ 640x128). Under the other protocols each reference is
              zero-padded top-left into a 500x500 square (CUFED5's largest side) before stacking, as the
              C2-style multi-reference loaders do, and the protocol's rule follows (for ``"c2"``/``"amsa"``
              the input is then zero-padded to the 2500x500 stack). ``stack_size`` overrides the square.
            - ``"lr"``: the LR input as its own reference (AMSA Table 3, "LR"); how the reference is made:
              :func:`refsr.data.standard.prepare_self_reference_sample` with ``self_ref_mode``.
        protocol: ``"masa"`` (HR replicate-padded, centred, to a multiple of 32; Ref replicate-padded
            bottom/right to 16), ``"c2"``, ``"amsa"`` or ``"ttsr"`` (see :mod:`refsr.data.standard`).
        scale: the SR factor.
        pairs_file: C2/AMSA's ``CUFED5_pairs.txt`` (lines ``XXX_0.png XXX_k.png``, relative to the image
            folder): a path, or ``"auto"`` to use ``CUFED5_pairs.txt`` in the image folder or its parent when
            there is one. The file then fixes the references; ``level`` must stay 1.
        self_ref_mode: for ``level="lr"``: ``"lr"`` (the LR itself; default for ``"masa"``) or ``"up"``
            (the PIL-bicubic ``LR↑``; default for the others).
        stack_size: the square side for ``level="stacked"`` (default 512 for MASA, 500 otherwise).
        seed, transform: see :class:`refsr.data.standard.SeededDataset`.

    Samples: ``hr`` (the metric target, never padded), ``lr``, ``ref``, ``ref_down``, ``name`` (``"XXX"``),
    ``pad`` ``(top, left)`` and ``hr_size`` ``(h, w)``: crop the SR with ``sr[..., top:top+h, left:left+w]``.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        level: Level = 1,
        protocol: str = "masa",
        scale: int = 4,
        pairs_file: PathLike | None = None,
        self_ref_mode: str | None = None,
        stack_size: int | None = None,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        self.protocol = check_protocol(protocol)
        self.scale = int(scale)
        if level not in (*CUFED5_LEVELS, "stacked", "lr"):
            raise RefsrError(f"unknown CUFED5 level {level!r}; use 1, 2, 3, 4, 5, 'stacked' or 'lr'")
        self.level = level
        self.self_ref_mode = self_ref_mode or ("lr" if self.protocol == "masa" else "up")
        if self.self_ref_mode not in ("lr", "up"):
            raise RefsrError(f"unknown self_ref_mode {self_ref_mode!r}; use 'lr' or 'up'")
        default_stack = 512 if self.protocol == "masa" else 500
        self.stack_size = int(stack_size) if stack_size is not None else default_stack
        self.root = resolve_root(
            root, what="CUFED5", subfolders=("CUFED5", "test/CUFED5", "CUFED/test/CUFED5"),
            accept=_has_test_layout, expected=_TEST_EXPECTED,
        )
        pairs_path = self._find_pairs_file(pairs_file)
        if pairs_path is not None:
            if level != 1:
                raise RefsrError(
                    f"{pairs_path} fixes the references; leave level at 1 when using a pairs file"
                )
            self.items = self._read_pairs_file(pairs_path)
        else:
            self.items = self._scan()

    # ---- listing ------------------------------------------------------------------------------------

    def _find_pairs_file(self, pairs_file: PathLike | None) -> Path | None:
        if pairs_file is None:
            return None
        if str(pairs_file) == "auto":
            for candidate in (self.root / "CUFED5_pairs.txt", self.root.parent / "CUFED5_pairs.txt"):
                if candidate.is_file():
                    return candidate
            return None
        path = Path(pairs_file).expanduser()
        if not path.is_file():
            raise RefsrError(f"CUFED5 pairs file {path} does not exist")
        return path

    def _read_pairs_file(self, path: Path) -> list[tuple[Path, list[Path]]]:
        items = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise RefsrError(
                    f"{path}:{number}: expected two file names 'XXX_0.png XXX_1.png', got {line.strip()!r}"
                )
            input_path, ref_path = self.root / fields[0], self.root / fields[1]
            for p in (input_path, ref_path):
                if not p.is_file():
                    raise RefsrError(f"{path}:{number}: {p} does not exist")
            items.append((input_path, [ref_path]))
        if not items:
            raise RefsrError(f"{path} lists no pairs; expected lines 'XXX_0.png XXX_1.png'")
        return items

    def _scan(self) -> list[tuple[Path, list[Path]]]:
        images = list_images(self.root)
        by_stem = {p.stem: p for p in images}
        inputs = [p for p in images if p.stem.endswith("_0")]
        if not inputs:
            raise RefsrError(f"CUFED5: no XXX_0 images in {self.root}; expected {_TEST_EXPECTED}")
        if self.level == "lr":
            levels: tuple[int, ...] = ()
        elif self.level == "stacked":
            levels = CUFED5_LEVELS
        else:
            levels = (int(self.level),)
        items = []
        for input_path in inputs:
            prefix = input_path.stem[:-2]
            refs = []
            for k in levels:
                ref = by_stem.get(f"{prefix}_{k}")
                if ref is None:
                    raise RefsrError(
                        f"CUFED5: {input_path.name} has no reference {prefix}_{k} in {self.root}; "
                        f"expected {_TEST_EXPECTED}"
                    )
                refs.append(ref)
            items.append((input_path, refs))
        return items

    # ---- samples ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        input_path, ref_paths = self.items[index]
        hr = read_rgb(input_path)
        if self.level == "lr":
            sample = prepare_self_reference_sample(
                hr, protocol=self.protocol, scale=self.scale, ref_mode=self.self_ref_mode, masa_hr_multiple=32
            )
        else:
            refs = [read_rgb(p) for p in ref_paths]
            if self.level == "stacked":
                mode = "replicate-centred" if self.protocol == "masa" else "zero-topleft"
                try:
                    ref = stack_references(refs, self.stack_size, mode=mode)
                except RefsrError as exc:
                    raise RefsrError(f"CUFED5 {input_path.name}: {exc}; pass a larger stack_size") from None
            else:
                ref = refs[0]
            sample = prepare_test_sample(
                hr, ref, protocol=self.protocol, scale=self.scale, masa_hr_multiple=32, masa_ref_centred=False
            )
        stem = input_path.stem
        sample["name"] = stem[:-2] if stem.endswith("_0") else stem
        return self._finish(sample, index)
