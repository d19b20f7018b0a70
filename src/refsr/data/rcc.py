"""A reader for Qt's binary resource bundles (``.rcc`` files, format versions 1 to 3).

GCompris ships its photos inside such bundles, so the open benchmark needs to read them without Qt.

Layout (all integers big-endian):

- Header: ``b"qres"``, then ``uint32`` version, tree offset, data offset, names offset; version 3 adds a
  ``uint32`` of global flags (which compression the bundle may use; the entries' own flags are what count).
- Tree: an array of fixed-size nodes, node 0 being the root directory. A node is 14 bytes: ``uint32`` name
  offset, ``uint16`` flags, then either ``uint32`` child count and ``uint32`` index of the first child (a
  directory, flag ``0x02``; its children are consecutive nodes) or ``uint16`` country, ``uint16`` language
  and ``uint32`` data offset (a file). Version 2 and later append a ``uint64`` modification time, making
  22 bytes.
- Names: at the names offset plus a node's name offset, ``uint16`` length in UTF-16 code units, ``uint32``
  hash, then the name in UTF-16BE.
- Data: at the data offset plus a file node's data offset, ``uint32`` stored size, then the stored bytes.
  Flag ``0x01`` marks zlib compression as Qt's ``qCompress`` writes it: a ``uint32`` uncompressed length,
  then a zlib stream. Flag ``0x04`` (zstd, Qt 6) is recognised and refused, since no GCompris bundle uses it.

Example::

    bundle = RccBundle.open("erase.rcc")
    for entry in bundle.entries:
        print(entry.path, entry.stored_size)
    data = bundle.read("gcompris/src/activities/erase/resource/alpaca.webp")
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from refsr.errors import RefsrError

__all__ = [
    "RccEntry",
    "RccBundle",
    "flat_name",
    "extract_rcc",
    "FLAG_COMPRESSED",
    "FLAG_DIRECTORY",
    "FLAG_ZSTD",
]

PathLike = Union[str, os.PathLike]

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_ZSTD = 0x04
_NODE_SIZE_V1 = 14
_NODE_SIZE_V2 = 22


@dataclass(frozen=True)
class RccEntry:
    """One file in a bundle.

    Attributes:
        path: the resource path inside the bundle, ``/``-separated, without the leading ``:/``.
        flags: the node's flags (``FLAG_COMPRESSED``, ``FLAG_ZSTD``).
        country, language: the Qt locale the entry is registered for (0 and 0 for "any").
        offset: absolute byte offset of the stored bytes in the bundle (just after their ``uint32`` size).
        stored_size: number of stored bytes (compressed size when compressed).
        mtime_ms: modification time in ms since the epoch (0 in version 1 bundles).
    """

    path: str
    flags: int
    country: int
    language: int
    offset: int
    stored_size: int
    mtime_ms: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & (FLAG_COMPRESSED | FLAG_ZSTD))


def flat_name(resource_path: str) -> str:
    """The file name the manifests use for a resource: ``a/b/c.webp`` -> ``a__b__c.webp``."""
    return resource_path.strip("/").replace("/", "__")


class RccBundle:
    """A parsed ``.rcc`` bundle held in memory (GCompris bundles are at most a few MB).

    Args:
        data: the whole file's bytes.
        name: used in error messages only.
    """

    def __init__(self, data: bytes, name: str = "<rcc>") -> None:
        self.name = name
        self._data = memoryview(data)
        if len(data) < 20 or bytes(data[:4]) != MAGIC:
            raise RefsrError(f"{name}: not a Qt resource bundle (no 'qres' header)")
        self.version, self._tree, self._data_offset, self._names = struct.unpack_from(">4I", data, 4)
        if self.version not in (1, 2, 3):
            raise RefsrError(f"{name}: Qt resource format version {self.version} is not supported (1 to 3)")
        self.header_flags = struct.unpack_from(">I", data, 20)[0] if self.version >= 3 else 0
        self._node_size = _NODE_SIZE_V1 if self.version == 1 else _NODE_SIZE_V2
        self.entries: list[RccEntry] = self._walk()
        self._by_path = {}
        # A path may be registered for several locales; the entry for "any locale" (0, 0), else the lowest
        # (language, country), is the one `read` returns, so extraction is deterministic.
        for entry in sorted(self.entries, key=lambda e: (e.language, e.country)):
            self._by_path.setdefault(entry.path, entry)

    @classmethod
    def open(cls, path: PathLike) -> RccBundle:
        """Read and parse the bundle at ``path``."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RefsrError(f"{path}: cannot read the resource bundle ({exc.strerror or exc})") from exc
        return cls(data, name=str(path))

    # -- parsing ------------------------------------------------------------------------------------------
    def _u16(self, offset: int) -> int:
        return struct.unpack_from(">H", self._data, offset)[0]

    def _u32(self, offset: int) -> int:
        return struct.unpack_from(">I", self._data, offset)[0]

    def _corrupt(self, what: str) -> RefsrError:
        return RefsrError(f"{self.name}: corrupt Qt resource bundle ({what})")

    def _node_name(self, node_offset: int) -> str:
        at = self._names + self._u32(node_offset)
        if at + 6 > len(self._data):
            raise self._corrupt("a name lies past the end of the file")
        length = self._u16(at)
        start = at + 6  # uint16 length, uint32 hash
        if start + 2 * length > len(self._data):
            raise self._corrupt("a name lies past the end of the file")
        return bytes(self._data[start : start + 2 * length]).decode("utf-16-be")

    def _walk(self) -> list[RccEntry]:
        size = len(self._data)
        n_nodes_max = max(0, (size - self._tree) // self._node_size)
        entries: list[RccEntry] = []
        # Iterative walk: (node index, parent path). The visited set guards against cycles in a damaged file.
        stack: list[tuple[int, str]] = [(0, "")]
        visited: set[int] = set()
        while stack:
            index, parent = stack.pop()
            if index in visited or index >= n_nodes_max:
                raise self._corrupt(f"tree node {index} is out of range or visited twice")
            visited.add(index)
            node = self._tree + index * self._node_size
            flags = self._u16(node + 4)
            name = "" if index == 0 else self._node_name(node)
            path = f"{parent}/{name}" if parent else name
            if flags & FLAG_DIRECTORY:
                count, first = self._u32(node + 6), self._u32(node + 10)
                # Push in reverse so children come out in stored order.
                stack.extend((first + k, path) for k in reversed(range(count)))
                continue
            if index == 0:
                raise self._corrupt("the root node is not a directory")
            country, language = self._u16(node + 6), self._u16(node + 8)
            data_at = self._data_offset + self._u32(node + 10)
            if data_at + 4 > size:
                raise self._corrupt(f"the data of {path} lies past the end of the file")
            stored = self._u32(data_at)
            if data_at + 4 + stored > size:
                raise self._corrupt(f"the data of {path} runs past the end of the file")
            mtime = struct.unpack_from(">Q", self._data, node + 14)[0] if self.version >= 2 else 0
            entries.append(RccEntry(path, flags, country, language, data_at + 4, stored, mtime))
        return entries

    # -- access ---------------------------------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        """Every file's resource path, in tree order, each once."""
        return list(dict.fromkeys(e.path for e in self.entries))

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._by_path

    def __iter__(self) -> Iterator[RccEntry]:
        return iter(self.entries)

    def read(self, path_or_entry: str | RccEntry) -> bytes:
        """The file's contents, decompressed."""
        if isinstance(path_or_entry, RccEntry):
            entry = path_or_entry
        else:
            entry = self._by_path.get(path_or_entry.strip("/"))
            if entry is None:
                raise RefsrError(f"{self.name}: no resource {path_or_entry!r} in the bundle")
        stored = bytes(self._data[entry.offset : entry.offset + entry.stored_size])
        if entry.flags & FLAG_ZSTD:
            raise RefsrError(
                f"{self.name}: {entry.path} is zstd-compressed, which this reader does not support"
            )
        if not entry.flags & FLAG_COMPRESSED:
            return stored
        if len(stored) < 4:
            raise self._corrupt(f"{entry.path} is too short to be compressed data")
        expected = struct.unpack_from(">I", stored, 0)[0]
        try:
            data = zlib.decompress(stored[4:])
        except zlib.error as exc:
            raise self._corrupt(f"{entry.path} does not decompress: {exc}") from exc
        if len(data) != expected:
            raise self._corrupt(f"{entry.path} decompresses to {len(data)} bytes, the header says {expected}")
        return data


def extract_rcc(
    bundle: PathLike | RccBundle,
    dest: PathLike,
    *,
    select: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Write a bundle's files flat into ``dest``, each named :func:`flat_name` of its resource path.

    Args:
        bundle: a ``.rcc`` file or a parsed bundle.
        dest: the output folder (created if missing).
        select: keep only resource paths for which this returns True; all files when None.

    Returns:
        The written files, in tree order.
    """
    if not isinstance(bundle, RccBundle):
        bundle = RccBundle.open(bundle)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in bundle.paths:
        if select is not None and not select(path):
            continue
        target = dest / flat_name(path)
        target.write_bytes(bundle.read(path))
        written.append(target)
    return written
