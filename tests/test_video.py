"""Video: refsr.upscale_video and ``refsr upscale clip.mp4``: frames, time stamps, audio, references encoded once,
the temporal reference, stills from a high-resolution clip, and bad input."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import load_photo
from PIL import Image

import refsr
from refsr.cli import main
from refsr.errors import RefsrError
from refsr.video import FrameUpscaler, _StillsFromVideo, stills_around, video_model

TINY = dict(nf=8, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(1, 1, 1))


def moving_frames(count: int, size: tuple[int, int] = (24, 32), photo: str = "astronaut.png") -> list[np.ndarray]:
    """A camera pan over a real photo: frame i is the window shifted i pixels right and down."""
    h, w = size
    image = load_photo(photo)
    return [np.ascontiguousarray(image[i : i + h, 2 * i : 2 * i + w]) for i in range(count)]


def write_clip(path: Path, frames: list[np.ndarray], *, rate: int = 12, codec: str = "ffv1",
               pts: list[int] | None = None, audio: str | None = None) -> Path:
    """A test clip (ffv1 is lossless and intra-only); ``audio``: add a sine of that codec, as long as the video."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    time_base = stream.time_base = Fraction(1, rate)  # (the stream's changes to the muxer's on the first packet)
    sound = None
    if audio is not None:
        sound = out.add_stream(audio, rate=8000)
        sound.layout = "mono"
        formats = sound.codec_context.codec.audio_formats
        sound.format = formats[0].name if formats else "s16"
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i if pts is None else pts[i]
        frame.time_base = time_base
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    if sound is not None:
        samples = 8000 * (pts[-1] + 1 if pts else len(frames)) // rate
        wave = (np.sin(np.arange(samples) / 7.0) * 8000).astype(np.int16)
        resampler = av.AudioResampler(format=sound.format.name, layout="mono", rate=8000)
        for start in range(0, samples, 960):
            chunk = av.AudioFrame.from_ndarray(wave[None, start : start + 960], format="s16", layout="mono")
            chunk.sample_rate = 8000
            chunk.pts = start
            for resampled in resampler.resample(chunk):
                for packet in sound.encode(resampled):
                    out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)
    out.close()
    return path


def read_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in container.decode(stream)]
    return [f for f, _ in frames], [t for _, t in frames]


def through_yuv420(image: np.ndarray) -> np.ndarray:
    """What an image looks like after PyAV's RGB -> yuv420p -> RGB, the encoder's own conversion."""
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")


def pil_bicubic_x4(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((4 * w, 4 * h), Image.BICUBIC))


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return refsr.create_model("masa", **TINY).eval()


# ------------------------------------------------------------------------------------------ frames and time
def test_frames_are_upscaled_in_order_with_their_time_stamps(tmp_path: Path) -> None:
    """Irregular time stamps (a variable frame rate) survive; each output frame is the bicubic x4 of its input
    (the model here is bicubic and the codec lossless, so only the encoder's yuv420p conversion remains)."""
    frames = moving_frames(7)
    source = write_clip(tmp_path / "in.mkv", frames, pts=[0, 1, 3, 4, 8, 9, 13])
    decoded, times = read_frames(source)
    assert times == pytest.approx([t / 12 for t in (0, 1, 3, 4, 8, 9, 13)], abs=1e-3)
    for suffix in (".mkv", ".mov", ".mp4"):
        lossless = suffix == ".mkv"
        out = refsr.upscale_video(source, tmp_path / f"out{suffix}", model="bicubic",
                                  codec="ffv1" if lossless else "libx264", crf=None if lossless else 0)
        got, got_times = read_frames(out)
        assert len(got) == 7
        assert got_times == pytest.approx(times, abs=1e-3)  # matroska keeps milliseconds
        for frame, result in zip(decoded, got):
            expected = through_yuv420(pil_bicubic_x4(frame))
            if lossless:
                np.testing.assert_array_equal(result, expected)
            else:  # x264 at crf 0 (lossless in yuv420p), B-frames reordered back by their time stamps
                assert np.abs(result.astype(int) - expected.astype(int)).max() <= 2


def test_frame_rate_and_avi_output(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "in.mkv", moving_frames(6), rate=25)
    out = refsr.upscale_video(source, tmp_path / "out.avi", model="bicubic")  # H.264 without B-frames
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 25 and (stream.width, stream.height) == (128, 96)
        assert stream.codec_context.name == "h264"
    with av.open(str(out)) as container:
        # AVI stores one time stamp per frame (its index: DTS); B-frames would need a PTS it cannot store.
        # (FFmpeg's reader then guesses H.264 presentation times one frame late; the file holds the right ones.)
        stamps = [p.dts for p in container.demux(video=0) if p.size]
    assert stamps == [0, 1, 2, 3, 4, 5]


def test_audio_is_copied_packet_for_packet(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "in.mkv", moving_frames(6), audio="pcm_s16le")
    out = refsr.upscale_video(source, tmp_path / "out.mkv", model="bicubic", codec="ffv1")

    def audio_packets(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]

    assert audio_packets(out) == audio_packets(source) != []


def test_audio_the_container_cannot_hold_is_encoded_to_aac(tmp_path: Path) -> None:
    if "libopus" not in av.codecs_available:
        pytest.skip("PyAV has no Opus encoder here")
    source = write_clip(tmp_path / "in.mkv", moving_frames(6), audio="libopus")
    out = refsr.upscale_video(source, tmp_path / "out.avi", model="bicubic")  # AVI cannot hold Opus
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert sum(f.samples for f in container.decode(audio)) > 0.3 * 48000 * 6 / 12  # roughly the clip's length


# ------------------------------------------------------------------------------------------ references
def _counting(model: torch.nn.Module) -> list:
    calls: list = []
    original = model.encode_reference

    def encode(ref, *args, **kwargs):
        calls.append(tuple(ref.shape[-2:]))
        return original(ref, *args, **kwargs)

    model.encode_reference = encode
    return calls


def test_every_still_is_encoded_once_for_the_clip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = refsr.create_model("masa", **TINY).eval()
    calls = _counting(model)
    frames = moving_frames(5)
    source = write_clip(tmp_path / "in.mkv", frames)
    stills = [pil_bicubic_x4(frames[0]), pil_bicubic_x4(frames[4])[:64]]
    refsr.upscale_video(source, tmp_path / "a.mkv", stills, model=model, codec="ffv1", multi_ref="per-tile",
                        precision="fp32")  # a bf16 copy would not carry the counting wrapper
    assert len(calls) == 2
    calls.clear()
    refsr.upscale_video(source, tmp_path / "b.mkv", stills, model=model, codec="ffv1", temporal=True,
                        precision="fp32")
    assert len(calls) == 2 + 4  # the stills once, and the previous output for frames 1 to 4


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frame_upscaler_equals_upscale_with_the_same_references(tiny, precision: str) -> None:
    """Per frame, stills (and the previous output) are exactly what refsr.upscale would do with those images as
    references: one still, several per tile, the temporal chain, or none (per-frame self-reference). Also in
    bfloat16, where a reference read from an image once had other strides than the same reference made by a
    tensor op (the self-reference), and 1.25 % of the pixels of the last case moved by one level."""
    frames = moving_frames(3, (32, 40))
    stills = [pil_bicubic_x4(moving_frames(1, (32, 40), "coffee.png")[0]), pil_bicubic_x4(frames[1])]
    size = frames[0].shape[:2]

    def check(temporal: bool, still_images: list[np.ndarray]) -> None:
        upscaler = FrameUpscaler(tiny, size, still_sizes=[s.shape[:2] for s in still_images], temporal=temporal,
                                 multi_ref="per-tile", precision=precision)
        prepared = [upscaler.prepare([s], f"s{i}") for i, s in enumerate(still_images)]
        previous = None
        for frame in frames:
            refs = list(still_images) + ([previous] if previous is not None else [])
            expected = refsr.upscale(frame, refs or None, model=tiny, multi_ref="per-tile", precision=precision)
            if temporal and not still_images and previous is not None:  # self-reference plus the previous output
                expected = refsr.upscale(frame, [pil_bicubic_x4(frame), previous], model=tiny, multi_ref="per-tile",
                                         precision=precision)
            got = upscaler(frame, prepared)
            np.testing.assert_array_equal(got, expected)
            previous = got if temporal else None

    check(False, stills[:1])
    check(False, stills)
    check(True, stills)
    check(False, [])
    check(True, [])


def test_stills_around() -> None:
    assert [stills_around(t, 4) for t in (0, 3, 4, 7, 8)] == [[0, 4], [0, 4], [4, 8], [4, 8], [8, 12]]
    assert stills_around(9, 4, count=10) == [8]


def test_stills_from_a_high_resolution_clip(tmp_path: Path, tiny) -> None:
    """Every Nth frame of the HR clip is a still for the frames around it, prepared once, resized to the output
    size when the HR clip is another size of the same aspect ratio."""
    hr = [pil_bicubic_x4(f) for f in moving_frames(10)]  # 96x128
    hr_small = [np.asarray(Image.fromarray(f).resize((64, 48), Image.BICUBIC)) for f in hr]
    path = write_clip(tmp_path / "hr.mkv", hr_small)
    upscaler = FrameUpscaler(tiny, (24, 32), still_sizes=[(96, 128)] * 2, precision="fp32")  # tiny itself, no copy
    calls = _counting(tiny)
    try:
        stills = _StillsFromVideo(path, 3, (96, 128))
        offered = [[s.name for s in stills.around(t, upscaler)] for t in range(10)]
        stills.close()
    finally:
        del tiny.encode_reference
    name = f"of {path}"
    assert offered[0] == [f"frame 0 {name}", f"frame 3 {name}"]
    assert offered[4] == [f"frame 3 {name}", f"frame 6 {name}"]
    assert offered[9] == [f"frame 9 {name}"]
    assert calls == [(96, 128)] * 4  # frames 0, 3, 6, 9: each once, at the output's size


def test_a_reference_video_of_another_aspect_ratio_is_refused(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "hr.mkv", [np.zeros((64, 64, 3), np.uint8)] * 2)
    with pytest.raises(RefsrError, match="another aspect ratio than the output's 128x96"):
        _StillsFromVideo(path, 4, (96, 128))


# ------------------------------------------------------------------------------------------ the command line
def test_command_line_writes_the_video_and_a_status(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import refsr.batch

    frames = moving_frames(4)
    source = write_clip(tmp_path / "clip.mkv", frames)
    Image.fromarray(pil_bicubic_x4(frames[0])).save(tmp_path / "still.png")
    monkeypatch.setattr(refsr.batch, "is_terminal", lambda stream: False)
    code, out, err = run_cli(["upscale", source, "--ref", tmp_path / "still.png", "-o", tmp_path / "x4.mp4",
                              "--model", "bicubic", "--crf", 10, "--progress"], capsys)
    assert code == 0, err
    assert out.split() == [str(tmp_path / "x4.mp4")]
    lines = err.splitlines()
    assert lines[-1].startswith(f"{tmp_path / 'x4.mp4'}: bicubic on cpu, 4 frames, 1 tile per frame, ")
    assert f"{source}: 4/4 frames" in lines
    assert len(read_frames(tmp_path / "x4.mp4")[0]) == 4


def test_the_default_model_of_a_video_with_stills_is_the_video_model(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    frames = moving_frames(3)
    source = write_clip(tmp_path / "clip.mkv", frames)
    Image.fromarray(pil_bicubic_x4(frames[0])).save(tmp_path / "still.png")
    for model, extra in (("masa-lite-video", ["--ref", tmp_path / "still.png"]), ("masa-lite", [])):
        code, _, err = run_cli(["upscale", source, *extra, "-o", tmp_path / f"default-{model}.mkv",
                                "--codec", "ffv1", "--progress"], capsys)
        assert code == 0 and f": {model} on cpu" in err.splitlines()[-1], err  # the status line names it
        code, _, err = run_cli(["upscale", source, *extra, "-o", tmp_path / f"{model}.mkv", "--codec", "ffv1",
                                "--model", model, "--quiet"], capsys)
        assert code == 0, err
        # The same frames as the model named (ffv1 is lossless).
        assert np.array_equal(read_frames(tmp_path / f"default-{model}.mkv")[0],
                              read_frames(tmp_path / f"{model}.mkv")[0])
    # The Python API chooses the same way.
    refsr.upscale_video(source, tmp_path / "api.mkv", [tmp_path / "still.png"], codec="ffv1")
    assert np.array_equal(read_frames(tmp_path / "api.mkv")[0], read_frames(tmp_path / "masa-lite-video.mkv")[0])
    assert video_model("default", stills=True, weights="w.safetensors") == "masa-lite"  # a file: as refsr.upscale


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def _bad_clips(tmp: Path) -> None:
    frames = moving_frames(8)
    write_clip(tmp / "good.mkv", frames)
    (tmp / "text.mp4").write_text("not a video at all\n")
    (tmp / "empty.mp4").write_bytes(b"")
    # No video stream: sound only.
    out = av.open(str(tmp / "sound.mkv"), "w")
    sound = out.add_stream("pcm_s16le", rate=8000)
    sound.layout = "mono"
    chunk = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    chunk.sample_rate = 8000
    for packet in [*sound.encode(chunk), *sound.encode(None)]:
        out.mux(packet)
    out.close()
    # A corrupt middle frame: x264 data scrambled half way through a Matroska file (its index is at the start).
    write_clip(tmp / "x264.mkv", moving_frames(16, (48, 64)), codec="libx264")
    data = bytearray((tmp / "x264.mkv").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 300] = bytes((b * 7 + 13) % 256 for b in data[middle : middle + 300])
    (tmp / "corrupt.mkv").write_bytes(bytes(data))
    (tmp / "x264.mkv").unlink()
    # Truncated: the last third of a Matroska file cut away (its header does not count frames).
    whole = (tmp / "good.mkv").read_bytes()
    (tmp / "truncated.mkv").write_bytes(whole[: len(whole) * 2 // 3])
    write_clip(tmp / "square_hr.mkv", [np.zeros((64, 64, 3), np.uint8)] * 2)
    Image.fromarray(pil_bicubic_x4(frames[0])).save(tmp / "still.png")
    (tmp / "still.txt").write_text("not an image")


BICUBIC = ["--model", "bicubic"]
VIDEO_BAD_INPUTS = {
    "not a video": (["{t}/text.mp4", "-o", "{t}/o.mp4"], "text.mp4: not a video file"),
    "empty video file": (["{t}/empty.mp4", "-o", "{t}/o.mp4"], "empty.mp4: the file is empty"),
    "missing video": (["{t}/nope.mp4", "-o", "{t}/o.mp4"], "nope.mp4: no such file"),
    "no video stream": (["{t}/sound.mkv", "-o", "{t}/o.mp4"], "sound.mkv: the file has no video stream"),
    "corrupt middle frame": (["{t}/corrupt.mkv", "-o", "{t}/o.mp4", *BICUBIC], "no output was written"),
    "truncated video": (["{t}/truncated.mkv", "-o", "{t}/o.mkv", *BICUBIC], "no output was written"),
    "unknown codec": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--codec", "h265000"], "unknown video codec 'h265000'"),
    "output PyAV does not write": (["{t}/good.mkv", "-o", "{t}/o.webm"], "unknown output video type '.webm'"),
    "video to an image name": (["{t}/good.mkv", "-o", "{t}/o.png"], "unknown output video type '.png'"),
    "images to a video name": (["{t}/still.png", "-o", "{t}/o.mp4"], "a video output needs a video input"),
    "output is the input": (["{t}/good.mkv", "-o", "{t}/good.mkv"], "is an input"),
    "crf for a codec without one": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--codec", "mpeg4", "--crf", "20"],
                                    "--crf (crf=) applies to"),
    "crf out of range": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--crf", "99"], "crf must be an integer from 0 to 63"),
    "reference video of another aspect ratio": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--ref-video",
                                                 "{t}/square_hr.mkv", *BICUBIC], "another aspect ratio"),
    "ref-frames without a reference video": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--ref-frames", "4"],
                                             "--ref-frames (ref_frames=) takes frames of --ref-video"),
    "still that is not an image": (["{t}/good.mkv", "--ref", "{t}/still.txt", "-o", "{t}/o.mp4"],
                                   "still.txt: not an image"),
    "temporal for images": (["{t}/still.png", "-o", "{t}/o.png", "--temporal"], "--temporal applies to a video"),
    "compare for a video": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--compare", "{t}/c.png"], "--compare applies to"),
    "budget too small for the frames": (["{t}/good.mkv", "-o", "{t}/o.mp4", "--max-memory", "100M"],
                                        "to at least"),
}


@pytest.mark.parametrize("case", list(VIDEO_BAD_INPUTS))
def test_video_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    import warnings

    _bad_clips(tmp_path)
    args, phrase = VIDEO_BAD_INPUTS[case]
    before = _snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(["upscale", *(a.format(t=tmp_path) for a in args)], capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("refsr: error: "), err
    assert phrase in err
    assert [str(w.message) for w in caught] == []
    assert _snapshot(tmp_path) == before  # never a partial (or truncated) output, nor a temporary file
