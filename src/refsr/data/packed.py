"""Reading a data pack: the images a pack stores in place of the open benchmark's files.

A pack (``refsr data pack``, :mod:`refsr.data.pack`) is a data root that holds only what some training
configs read, already decoded and pre-scaled: the photos as the loaders pre-scale them, the video frames as
PyAV decodes them, each as a WebP file (lossless, or lossy above a PSNR floor). Its index,
:data:`PACK_INDEX`, maps each manifest path (and frame index) to its stored file. The open benchmark's
datasets look there first (:func:`packed_image`), so ``REFSR_DATA=PACK refsr train CONFIG`` runs on a
machine with no network and no PyAV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from refsr.errors import RefsrError
from refsr.io import read_image

__all__ = ["PACK_INDEX", "PackedImage", "pack_index", "packed_image"]

#: The pack's index file, at its root.
PACK_INDEX = "refsr-pack.json"


@dataclass(frozen=True)
class PackedImage:
    """One stored image: its file (relative to the pack root) and the pre-scale factor already applied."""

    file: str
    prescale: int


@lru_cache(maxsize=8)
def _read_index(index_file: Path, mtime_ns: int) -> dict[str, PackedImage]:
    del mtime_ns  # part of the cache key only: a rewritten pack is read again
    try:
        data = json.loads(index_file.read_text(encoding="utf-8"))
        entries = data["images"]
        return {key: PackedImage(str(value["file"]), int(value["prescale"])) for key, value in entries.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RefsrError(f"{index_file}: not a readable refsr data pack index ({exc}); make the pack again "
                         "with 'refsr data pack'") from None


def pack_index(root: Path) -> dict[str, PackedImage] | None:
    """The index of the pack at ``root`` (``{key: PackedImage}``), or ``None`` when ``root`` is not a pack.

    Keys are manifest paths, and ``<video path>#<frame index>`` for video frames.
    """
    index_file = Path(root) / PACK_INDEX
    if not index_file.is_file():
        return None
    return _read_index(index_file, index_file.stat().st_mtime_ns)


def frame_key(path: str, index: int) -> str:
    """The index key of frame ``index`` of the video at manifest path ``path``."""
    return f"{path}#{int(index)}"


def packed_image(root: Path, key: str) -> tuple[np.ndarray, int] | None:
    """The stored image of ``key`` (``HxWx3`` uint8) and the pre-scale factor it already has, or ``None`` when
    ``root`` is not a pack or the pack does not hold ``key``."""
    index = pack_index(root)
    if index is None or key not in index:
        return None
    entry = index[key]
    return read_image(Path(root) / entry.file), entry.prescale
