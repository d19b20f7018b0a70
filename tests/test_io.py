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
from refsr.io import atomic_output, read_image, read_image_size, write_image


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


def test_write_fails_cleanly_when_no_temporary_file_can_be_made(tmp_path: Path, monkeypatch) -> None:
    """A full inode table or a folder that refuses new files (``/sys``): one error naming the path, nothing left."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(RefsrError, match=r"out\.png: .*No space left on device") as raised:
        write_image(tmp_path / "out.png", load_photo("coffee.png"))
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_write_into_a_folder_that_refuses_files(tmp_path: Path) -> None:
    # Root ignores permission bits, so a chmod-ed folder would not do; /proc refuses new files to anyone.
    with pytest.raises(RefsrError, match=r"/proc/x\.png: the output folder /proc cannot be written"):
        write_image("/proc/x.png", load_photo("coffee.png"))


def test_atomic_output_removes_its_file_on_any_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    with pytest.raises(RefsrError, match=r"b\.bin: cannot write \(Is a directory\)"):
        (tmp_path / "b.bin").mkdir()
        with atomic_output(tmp_path / "b.bin") as tmp:  # the final rename fails: a folder is in the way
            tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"] and not any((tmp_path / "b.bin").iterdir())
    with atomic_output(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"whole")
    assert (tmp_path / "c.bin").read_bytes() == b"whole"


@pytest.mark.parametrize("fmt, ext", [("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_quality_sets_the_encoder_quality(tmp_path: Path, fmt: str, ext: str) -> None:
    img = load_photo("astronaut.png")
    for quality in (20, 90):
        write_image(tmp_path / f"q{quality}{ext}", img, quality=quality)
        expected = io.BytesIO()
        Image.fromarray(img).save(expected, format=fmt, quality=quality,
                                  **({"subsampling": 0} if fmt == "JPEG" else {}))
        assert (tmp_path / f"q{quality}{ext}").read_bytes() == expected.getvalue()
    assert (tmp_path / f"q20{ext}").stat().st_size < (tmp_path / f"q90{ext}").stat().st_size


@pytest.mark.parametrize("name, quality, phrase", [("x.png", 80, "JPEG and WebP only"), ("x.jpg", 0, "1 to 100"),
                                                   ("x.jpg", 101, "1 to 100")])
def test_bad_quality_is_refused_before_writing(tmp_path: Path, name: str, quality: int, phrase: str) -> None:
    with pytest.raises(RefsrError, match=phrase):
        write_image(tmp_path / name, load_photo("coffee.png"), quality=quality)
    assert list(tmp_path.iterdir()) == []


def test_image_size_reads_only_the_header(tmp_path: Path, monkeypatch) -> None:
    # A 12000x9000 PNG header with no pixel data: its size is known without decoding (which would fail).
    (tmp_path / "huge.png").write_bytes(png_bytes_with_size(12000, 9000))
    assert read_image_size(tmp_path / "huge.png") == (9000, 12000)
    with pytest.raises(RefsrError, match="truncated or corrupt"):
        read_image_size(tmp_path / "huge.png", decode=True)


def test_image_size_follows_exif_orientation(tmp_path: Path) -> None:
    pil = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = pil.getexif()
    exif[0x0112] = 6
    pil.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert read_image_size(tmp_path / "o.jpg") == read_image(tmp_path / "o.jpg").shape[:2] == (20, 10)


def test_pillow_size_warnings_do_not_leak(tmp_path: Path) -> None:
    import warnings

    # Above Pillow's MAX_IMAGE_PIXELS (89 M) it warns; above twice that it refuses.
    (tmp_path / "big.png").write_bytes(png_bytes_with_size(12000, 12000))
    (tmp_path / "bomb.png").write_bytes(png_bytes_with_size(20000, 20000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image_size(tmp_path / "big.png") == (12000, 12000)
        with pytest.raises(RefsrError, match=r"too large to read safely \(20000x20000\)"):
            read_image_size(tmp_path / "bomb.png")
    assert caught == []
