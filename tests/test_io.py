from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_photo
from refsr.errors import RefsrError
from refsr.io import read_image, write_image


def png_bytes_with_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG header declaring ``width`` x ``height`` (Pillow cannot write 0-size PNGs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_round_trip(tmp_path: Path, ext: str) -> None:
    img = load_photo("coffee.png")
    if ext == ".webp":
        pytest.importorskip("PIL.WebPImagePlugin")
    path = write_image(tmp_path / f"x{ext}", img)
    back = read_image(path)
    if ext == ".webp":  # lossy at quality 95: close, not equal
        assert np.abs(back.astype(int) - img.astype(int)).mean() < 3
    else:
        np.testing.assert_array_equal(back, img)


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    img = load_photo("chelsea.png")
    back = read_image(write_image(tmp_path / "x.jpg", img))
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 2.5


def test_grey_becomes_rgb(tmp_path: Path) -> None:
    grey = load_photo("astronaut.png")[..., 1]
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == grey.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_16bit_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 32896], [128, 255 * 257, 1000, 65279]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")  # the file really is 16-bit
    out = read_image(tmp_path / "deep.png")
    expected = np.array([[0, 1, 255, 128], [0, 255, 4, 254]], dtype=np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_alpha_is_dropped_without_compositing(tmp_path: Path) -> None:
    rgb = load_photo("coffee.png")[:20, :30]
    alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)  # fully transparent: colour must survive untouched
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[:, :5] = 255  # a white band on the left of a landscape image
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pil.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 3)  # displayed portrait
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the band is now at the top


def test_palette_and_cmyk_are_converted(tmp_path: Path) -> None:
    rgb = load_photo("chelsea.png")[:16, :16]
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (16, 16, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    back = read_image(tmp_path / "c.tif")
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


BAD_FILES = {
    "missing": (None, "no such file"),
    "empty": (b"", "empty"),
    "text named png": (b"hello, I am not an image\n", "not an image"),
    "truncated png": ("truncate", "truncated or corrupt"),
    "zero-size png": (png_bytes_with_size(0, 5), "zero size (0x5)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_errors(tmp_path: Path, case: str) -> None:
    content, phrase = BAD_FILES[case]
    path = tmp_path / "bad.png"
    if content == "truncate":
        buf = io.BytesIO()
        Image.fromarray(load_photo("astronaut.png")).save(buf, format="PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RefsrError) as err:
        read_image(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert phrase in message


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(RefsrError, match="is a folder"):
        read_image(tmp_path)


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"previous content")

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(RefsrError, match="cannot write"):
        write_image(target, load_photo("coffee.png"))
    assert target.read_bytes() == b"previous content"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left


@pytest.mark.parametrize(
    "name, phrase",
    [("x.gif", "unknown output image type"), ("missing/x.png", "does not exist"), ("file.txt/x.png", "not a folder")],
)
def test_write_rejects_bad_destinations(tmp_path: Path, name: str, phrase: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RefsrError, match=phrase):
        write_image(tmp_path / name, load_photo("coffee.png"))
