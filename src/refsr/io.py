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
failed or interrupted write never leaves a partial file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refsr.errors import RefsrError

__all__ = ["read_image", "write_image", "to_pil", "IMAGE_EXTENSIONS", "check_output_path", "is_image_path"]

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
    try:
        with Image.open(p) as img:
            if img.width == 0 or img.height == 0:
                raise RefsrError(f"{p}: the image has zero size ({img.width}x{img.height})")
            # Decode fully here, inside the error handling: Pillow decodes lazily, and a truncated file
            # only fails at load().
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb8(img)
    except RefsrError:
        raise
    except UnidentifiedImageError:
        declared = _declared_png_size(p)
        if declared is not None and 0 in declared:
            # Pillow refuses zero-size PNGs outright; say why rather than "not an image".
            raise RefsrError(f"{p}: the image has zero size ({declared[0]}x{declared[1]})") from None
        raise RefsrError(f"{p}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise RefsrError(f"{p}: too large to read safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data: Pillow raises OSError ("image file is truncated"), SyntaxError (bad
        # PNG chunks) or ValueError, depending on the decoder.
        raise RefsrError(f"{p}: cannot decode the image, the file is truncated or corrupt ({exc})") from None
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


def check_output_path(path: PathLike, *, inputs: tuple[PathLike, ...] = ()) -> Path:
    """Check, before any work is done, that ``path`` can be written as an image.

    Raises:
        RefsrError: unknown extension, a folder in the way, a missing or non-folder parent, a parent that
            cannot be written, or ``path`` being one of ``inputs`` (which would overwrite the input).
    """
    p = Path(path)
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        known = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise RefsrError(f"{p}: unknown output image type {p.suffix!r}; use one of {known}")
    if p.is_dir():
        raise RefsrError(f"{p}: is a folder; give an output file name")
    for inp in inputs:
        try:
            same = p.exists() and Path(inp).exists() and os.path.samefile(p, inp)
        except OSError:
            same = False
        if same or p.resolve() == Path(inp).resolve():
            raise RefsrError(f"{p}: the output path is an input; choose another output name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise RefsrError(f"{p}: the output folder {parent} does not exist")
    if not parent.is_dir():
        raise RefsrError(f"{p}: the output folder {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RefsrError(f"{p}: the output folder {parent} cannot be written")
    return p


def write_image(path: PathLike, image: np.ndarray | Image.Image) -> Path:
    """Write ``image`` to ``path`` atomically; the format follows the extension.

    Args:
        path: destination; ``.png``, ``.jpg``/``.jpeg``, ``.webp``, ``.tif``/``.tiff`` or ``.bmp``.
        image: ``HxWx3`` or ``HxW`` ``uint8`` array (RGB), or a Pillow image.

    The image goes to a temporary file in the destination folder first and is renamed into place only once
    it is complete, so readers never see a partial file and a failure leaves nothing behind.
    """
    p = check_output_path(path)
    pil = to_pil(image)
    fmt = IMAGE_EXTENSIONS[p.suffix.lower()]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pil.save(fh, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, p)
    except OSError as exc:
        _unlink_quietly(tmp_name)
        raise RefsrError(f"{p}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        _unlink_quietly(tmp_name)
        raise
    return p


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass
