"""The Qt resource bundle reader, checked on bundles built here by an independent writer of the format."""

from __future__ import annotations

import struct
import zlib

import pytest

from refsr.data.rcc import FLAG_COMPRESSED, FLAG_DIRECTORY, FLAG_ZSTD, RccBundle, extract_rcc, flat_name
from refsr.errors import RefsrError


def qt_hash(name: str) -> int:
    """Qt's qt_hash over UTF-16 code units (the value rcc stores beside each name)."""
    units = struct.unpack(f">{len(name.encode('utf-16-be')) // 2}H", name.encode("utf-16-be"))
    h = 0
    for unit in units:
        h = ((h << 4) + unit) & 0xFFFFFFFF
        top = h & 0xF0000000
        if top:
            h ^= top >> 23
        h &= ~top & 0xFFFFFFFF
    return h


def write_rcc(files: dict[str, tuple[bytes, bool]], version: int, *, extra_flags: int = 0) -> bytes:
    """Build an rcc bundle: ``files`` maps a resource path to (content, compress?).

    Written the way Qt's rcc lays a bundle out: breadth-first tree, each directory's children consecutive
    and sorted by name hash, names and data in their own sections, compressed data in qCompress format.
    """
    tree: dict = {}
    for path, content in files.items():
        parts = path.split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = content

    names = bytearray()
    name_at: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_at:
            name_at[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, qt_hash(name)) + encoded)
        return name_at[name]

    data = bytearray()
    # Breadth-first numbering: the root is node 0, a directory's children get consecutive numbers.
    nodes: list[tuple[str, object]] = [("", tree)]
    first_child: dict[int, int] = {}
    i = 0
    while i < len(nodes):
        name, content = nodes[i]
        if isinstance(content, dict):
            first_child[i] = len(nodes)
            nodes.extend(sorted(content.items(), key=lambda kv: qt_hash(kv[0])))
        i += 1

    packed = bytearray()
    for index, (name, content) in enumerate(nodes):
        offset = 0 if index == 0 else name_offset(name)
        if isinstance(content, dict):
            packed += struct.pack(">IHII", offset, FLAG_DIRECTORY, len(content), first_child[index])
        else:
            payload, compress = content
            flags = extra_flags
            if compress:
                flags |= FLAG_COMPRESSED
                payload = struct.pack(">I", len(payload)) + zlib.compress(payload, 9)
            packed += struct.pack(">IHHHI", offset, flags, 0, 0, len(data))
            data += struct.pack(">I", len(payload)) + payload
        if version >= 2:
            packed += struct.pack(">Q", 1_700_000_000_000 + index)

    header_size = 24 if version >= 3 else 20
    tree_at = header_size
    names_at = tree_at + len(packed)
    data_at = names_at + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 1)
    return bytes(header + packed + names + data)


FILES = {
    "gcompris/src/activities/erase/resource/alpaca.webp": (bytes(range(256)) * 7, True),
    "gcompris/src/activities/erase/resource/bee.webp": (b"RIFF\x00\x01beebee" * 50, False),
    "gcompris/src/activities/erase/Erase.qml": ("import QtQuick 2.12\n// é ü ñ\n".encode(), True),
    "gcompris/top.txt": (b"", False),
    "readme": (b"top level file", True),
    "gcompris/src/ünïcode dir/ψ.png": (b"\x89PNG fake", False),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_every_file_back(version: int) -> None:
    bundle = RccBundle(write_rcc(FILES, version), name="t.rcc")
    assert bundle.version == version
    assert sorted(bundle.paths) == sorted(FILES)
    for path, (content, compress) in FILES.items():
        assert bundle.read(path) == content
        entry = next(e for e in bundle.entries if e.path == path)
        assert entry.compressed == compress
    if version >= 2:
        assert all(e.mtime_ms >= 1_700_000_000_000 for e in bundle.entries)
    else:
        assert all(e.mtime_ms == 0 for e in bundle.entries)


def test_extract_flattens_paths(tmp_path) -> None:
    rcc = tmp_path / "erase.rcc"
    rcc.write_bytes(write_rcc(FILES, 3))
    written = extract_rcc(rcc, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(flat_name(p) for p in FILES)
    target = tmp_path / "out" / "gcompris__src__activities__erase__resource__alpaca.webp"
    assert target.read_bytes() == FILES["gcompris/src/activities/erase/resource/alpaca.webp"][0]
    only = extract_rcc(rcc, tmp_path / "some", select=lambda p: p.endswith(".webp"))
    assert len(only) == 2


def test_flat_name_matches_manifest_convention() -> None:
    assert (
        flat_name("gcompris/src/activities/erase/resource/alpaca.webp")
        == "gcompris__src__activities__erase__resource__alpaca.webp"
    )


def test_rejects_bad_input() -> None:
    with pytest.raises(RefsrError, match="qres"):
        RccBundle(b"PK\x03\x04" + bytes(40))
    good = write_rcc(FILES, 2)
    with pytest.raises(RefsrError, match="version 7"):
        RccBundle(good[:4] + struct.pack(">I", 7) + good[8:])
    with pytest.raises(RefsrError, match="corrupt"):
        RccBundle(good[: len(good) // 2])
    with pytest.raises(RefsrError, match="no resource"):
        RccBundle(good).read("missing/file")


def test_damaged_zlib_stream_is_reported() -> None:
    blob = bytearray(write_rcc({"a.bin": (b"x" * 1000, True)}, 1))
    blob[-3] ^= 0xFF  # inside the zlib stream (its Adler-32 trailer)
    with pytest.raises(RefsrError, match="corrupt"):
        RccBundle(bytes(blob)).read("a.bin")


def test_zstd_entries_are_refused_clearly() -> None:
    bundle = RccBundle(write_rcc({"a.bin": (b"abc", False)}, 3, extra_flags=FLAG_ZSTD))
    with pytest.raises(RefsrError, match="zstd"):
        bundle.read("a.bin")
