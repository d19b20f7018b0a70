"""Reading and writing images, with clear errors and atomic writes.

Every image comes out of :func:`read_image` as an ``HxWx3`` ``uint8`` RGB array, whatever was on disk:

- EXIF orientation is applied, so the pixels are the way a photo viewer shows them.
- Grey (``L``, ``1``, ``I;16``…) is replicated to three channels; palette and CMYK images are converted.
- 16-bit (and 32-bit integer) samples are mapped to 8 bits by ``round(v / 257)``, so 65535 -> 255 and
  257·k -> k exactly.
- Float (``F``) images are taken as [0, 1] when their maximum is at most 1, and as [0, 255] otherwise; both
  are clipped to range and rounded.
- **Alpha is dropped**: an RGBA (or LA, or palette with transparency) image keeps its colour channels as they
  are, with no compositing onto a background. Super-resolution models here work on RGB only.
- Multi-frame files (GIF, TIFF stacks) give their first frame.

:func:`write_image` writes to a temporary file in the destination folder and renames it into place, so a
failed or interrupted write never leaves a partial file behind. :func:`atomic_output` is that pattern for any
writer (safetensors, video, JSON): every failure, the temporary file's creation included, becomes one
:class:`~refsr.errors.RefsrError` that names the path and the reason.

:func:`read_image_size` reads only the header (Pillow opens lazily), so that callers can refuse an image that
cannot fit their memory budget before decoding it. Pillow's warnings (``DecompressionBombWarning``, EXIF
complaints) never reach the terminal: the size check says what matters about size, and the pixels are what
matter otherwise.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refsr.errors import RefsrError

__all__ = [
    "read_image",
    "read_image_size",
    "write_image",
    "to_pil",
    "IMAGE_EXTENSIONS",
    "LOSSY_FORMATS",
    "check_output_path",
    "check_output_file",
    "check_output_folder",
    "is_image_path",
    "atomic_output",
    "save_image",
]

PathLike = Union[str, os.PathLike]

# Extension -> the Pillow format used to write it.
IMAGE_EXTENSIONS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}

# Lossy formats are written at high quality: the output of a super-resolution model is worth keeping.
_SAVE_OPTIONS: dict[str, dict] = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}

#: The formats that take a ``quality`` (1-100).
LOSSY_FORMATS = frozenset(_SAVE_OPTIONS)

# EXIF orientations that turn the image by 90 degrees (exif_transpose swaps width and height).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def is_image_path(path: PathLike) -> bool:
    """True when ``path``'s extension is one that refsr reads and writes."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to HxWx3 uint8 RGB, following the rules in the module docstring."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own I;16 -> L conversion clips instead of scaling, so scale by hand.
        arr = np.asarray(img.convert("I") if mode != "I" else img).astype(np.int64)
        grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        peak = float(finite.max()) if finite.size else 0.0
        scaled = arr * 255.0 if peak <= 1.0 else arr
        grey = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(img)
    if mode == "RGBA":
        return np.ascontiguousarray(np.asarray(img)[..., :3])
    if mode == "P" and "transparency" in img.info:
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[..., :3])
    if mode == "LA":
        img = img.getchannel("L")
    if mode in ("L", "LA", "1"):
        return np.repeat(np.asarray(img.convert("L"))[..., None], 3, axis=2)
    # P, CMYK, YCbCr, LAB, HSV, RGBX, ...: Pillow knows how.
    return np.asarray(img.convert("RGB"))


def _check_file(p: Path) -> None:
    if not p.exists():
        raise RefsrError(f"{p}: no such file")
    if p.is_dir():
        raise RefsrError(f"{p}: is a folder, not an image file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise RefsrError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise RefsrError(f"{p}: the file is empty")


@contextmanager
def _opened(p: Path) -> Iterator[Image.Image]:
    """``Image.open(p)`` with Pillow's warnings silenced and its errors turned into one-line RefsrErrors."""
    _check_file(p)
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (the callers' budget checks say what matters about size), "Corrupt
            # EXIF data", palette transparency notes: none of them should reach the user's terminal.
            warnings.simplefilter("ignore")
            with Image.open(p) as img:
                if img.width == 0 or img.height == 0:
                    raise RefsrError(f"{p}: the image has zero size ({img.width}x{img.height})")
                yield img
    except RefsrError:
        raise
    except UnidentifiedImageError:
        declared = _declared_png_size(p)
        if declared is not None and 0 in declared:
            # Pillow refuses zero-size PNGs outright; say why rather than "not an image".
            raise RefsrError(f"{p}: the image has zero size ({declared[0]}x{declared[1]})") from None
        raise RefsrError(f"{p}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        declared = _declared_png_size(p)
        size = f" ({declared[0]}x{declared[1]})" if declared else ""
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise RefsrError(f"{p}: the image is too large to read safely{size}: Pillow refuses more than "
                         f"{limit / 1e6:.0f} Mpixels; give a smaller image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data: Pillow raises OSError ("image file is truncated"), SyntaxError (bad
        # PNG chunks) or ValueError, depending on the decoder.
        raise RefsrError(f"{p}: cannot decode the image, the file is truncated or corrupt ({exc})") from None


def read_image_size(path: PathLike, *, decode: bool = False) -> tuple[int, int]:
    """The ``(height, width)`` that :func:`read_image` would return, from the file's header.

    Only the header is read (Pillow opens lazily), so an image far too large for memory is measured without
    being decoded. EXIF orientation is taken into account (a portrait photo stored landscape gives its
    portrait size).

    Args:
        path: an image file.
        decode: also decode the pixels once (and drop them), to find truncated or corrupt files before any
            work starts; costs one decode.

    Raises:
        RefsrError: as :func:`read_image` (missing, folder, empty, not an image, zero size, corrupt).
    """
    p = Path(path)
    with _opened(p) as img:
        width, height = img.size
        if decode:
            img.load()
        # A PNG may keep its EXIF after the pixel data, where Pillow finds it only by decoding: without
        # ``decode`` only EXIF before the pixels counts (where every camera and editor writes it).
        if decode or img.format != "PNG" or "exif" in img.info:
            if img.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    return height, width


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``HxWx3`` ``uint8`` RGB.

    Args:
        path: a PNG, JPEG, WebP, TIFF or BMP file (any format Pillow reads is accepted).

    Returns:
        ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, channel order RGB, values 0..255.

    Raises:
        RefsrError: the path is missing or a folder, the file is empty, truncated or not an image, or the
            image has a zero-size side.
    """
    p = Path(path)
    with _opened(p) as img:
        # Decode fully here, inside the error handling: Pillow decodes lazily, and a truncated file only
        # fails at load().
        img.load()
        img = ImageOps.exif_transpose(img)
        arr = _to_rgb8(img)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RefsrError(f"{p}: the image has zero size ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def _declared_png_size(path: Path) -> tuple[int, int] | None:
    """The (width, height) a PNG's IHDR declares, or None if the file does not start like a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An ``HxWx3`` (or ``HxW``) ``uint8`` array as a Pillow image; a Pillow image is returned unchanged."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise RefsrError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise RefsrError(f"expected an HxWx3 or HxW image array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RefsrError(f"cannot write an image of zero size {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_output_file(path: PathLike, suffixes: Mapping[str, object] | frozenset[str] | tuple[str, ...], *,
                      kind: str = "output", inputs: tuple[PathLike, ...] = ()) -> Path:
    """Check, before any work is done, that a file with one of ``suffixes`` can be written at ``path``.

    The folder is probed by creating (and removing) a temporary file in it: permission bits are not enough
    (root ignores them; ``/sys``, a read-only mount or a full inode table refuse files anyway).

    Raises:
        RefsrError: a folder in the way, no or an unknown extension, a missing or non-folder parent, a
            parent where no file can be created, or ``path`` being one of ``inputs``.
    """
    p = Path(path)
    known = ", ".join(sorted(suffixes))
    if p.is_dir():
        raise RefsrError(f"{p}: is a folder; give an {kind} file name (with one of {known})")
    if not p.suffix:
        raise RefsrError(f"{p}: the {kind} name has no extension; add one of {known}")
    if p.suffix.lower() not in suffixes:
        raise RefsrError(f"{p}: unknown {kind} type {p.suffix!r}; use one of {known}")
    for inp in inputs:
        try:
            same = p.exists() and Path(inp).exists() and os.path.samefile(p, inp)
        except OSError:
            same = False
        if same or p.resolve() == Path(inp).resolve():
            raise RefsrError(f"{p}: the output path is an input; choose another output name")
    check_output_folder(p.parent if str(p.parent) else Path("."), for_file=p)
    return p


def check_output_folder(folder: PathLike, *, for_file: PathLike | None = None, create: bool = False) -> Path:
    """Check that files can be created in ``folder``; with ``create``, a missing folder may be made later.

    With ``create=True`` the nearest existing ancestor must be a folder where files (and so the missing
    folders) can be created; nothing is made now.
    """
    folder = Path(folder)
    name = Path(for_file) if for_file is not None else folder
    probe = folder
    if create:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise RefsrError(f"{name}: {probe} is a file, not a folder")
    elif not folder.exists():
        raise RefsrError(f"{name}: the output folder {folder} does not exist")
    elif not folder.is_dir():
        raise RefsrError(f"{name}: the output folder {folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".refsr-probe.", suffix=".tmp", dir=probe)
    except OSError as exc:
        raise RefsrError(f"{name}: the output folder {probe} cannot be written ({_reason(exc)})") from None
    os.close(fd)
    _unlink_quietly(tmp)
    return folder


def check_output_path(path: PathLike, *, inputs: tuple[PathLike, ...] = ()) -> Path:
    """Check, before any work is done, that ``path`` can be written as an image.

    Raises:
        RefsrError: unknown extension, a folder in the way, a missing or non-folder parent, a parent that
            cannot be written, or ``path`` being one of ``inputs`` (which would overwrite the input).
    """
    return check_output_file(path, IMAGE_EXTENSIONS, kind="output image", inputs=inputs)


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; on success it is renamed to ``path``, on failure removed.

    The body writes the temporary file by name (any writer). An ``OSError`` anywhere, the temporary file's
    creation and the final rename included, becomes a :class:`RefsrError` naming ``path`` and the reason;
    any other exception removes the temporary file and propagates. The file gets the permissions a plain
    ``open()`` would give it (``mkstemp`` makes it private).

    >>> with atomic_output("out.txt") as tmp:       # doctest: +SKIP
    ...     tmp.write_text("complete or nothing")
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
    except OSError as exc:
        raise RefsrError(f"{p}: cannot write ({_reason(exc)})") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, p)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise RefsrError(f"{p}: cannot write ({_reason(exc)})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _save_options(fmt: str, quality: int | None) -> dict:
    options = dict(_SAVE_OPTIONS.get(fmt, {}))
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise RefsrError(f"quality must be an integer from 1 to 100, got {quality!r}")
        if fmt not in LOSSY_FORMATS:
            raise RefsrError(f"quality applies to JPEG and WebP only, not to {fmt}")
        options["quality"] = quality
    return options


def save_image(target: PathLike, image: np.ndarray | Image.Image, fmt: str, *, quality: int | None = None) -> None:
    """Encode ``image`` into the file ``target`` as Pillow format ``fmt`` (no atomicity: see :func:`write_image`)."""
    pil = to_pil(image)
    options = _save_options(fmt, quality)
    with open(target, "wb") as fh:
        pil.save(fh, format=fmt, **options)
        fh.flush()
        os.fsync(fh.fileno())


def write_image(path: PathLike, image: np.ndarray | Image.Image, *, quality: int | None = None) -> Path:
    """Write ``image`` to ``path`` atomically; the format follows the extension.

    Args:
        path: destination; ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.tif``/``.tiff`` or ``.bmp``.
        image: ``HxWx3`` or ``HxW`` ``uint8`` array (RGB), or a Pillow image.
        quality: 1-100 for JPEG and WebP (default 95); an error for other formats.

    The image goes to a temporary file in the destination folder first and is renamed into place only once
    it is complete (:func:`atomic_output`), so readers never see a partial file and a failure leaves nothing
    behind.

    Raises:
        RefsrError: a bad path or image, or the write failed (the message names the path and the reason).
    """
    p = check_output_path(path)
    pil = to_pil(image)
    fmt = IMAGE_EXTENSIONS[p.suffix.lower()]
    _save_options(fmt, quality)  # a bad quality fails before the temporary file exists
    with atomic_output(p) as tmp:
        save_image(tmp, pil, fmt, quality=quality)
    return p


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(name: str | os.PathLike) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass
