"""Video: upscale a low-resolution clip with a few high-resolution stills (issue #20).

This is the use case behind RefSR-Net (a low-resolution video stream plus occasional high-resolution frames
from a hybrid or light-field camera) and reference-based video SR in general: a phone clip and a few photos
of the same scene.

Streaming. :func:`upscale_video` decodes, upscales and encodes one frame at a time with PyAV, so memory does
not grow with the clip's length: it holds the model, the encoded stills, one frame and (with ``temporal``) the
previous output. The output goes to a temporary file beside the target, renamed at the end: a failure, an
interrupt or a corrupt frame in the middle leaves no output file at all, never a truncated one.

Timing and sound. Frame rate and time stamps are kept (the output stream takes the input's time base and
each frame its input time stamp; where a decoder's time stamps are unreliable, as for packed B-frames in AVI,
the more regular of PTS and DTS is used, as FFmpeg's ``best_effort_timestamp`` does). Audio streams are
copied packet for packet where the output container can hold their codec, otherwise re-encoded to AAC.
Video is encoded with ``codec`` (default H.264: ``libx264`` where PyAV has it, else another encoder that
exists) at ``crf`` (default 18 for the codecs that take a CRF). AVI output is written without B-frames
(AVI stores no presentation time stamps).

References. Every reference is encoded once for the whole clip (``encode_reference``; :mod:`refsr.inference`)
and each frame is planned, tiled and decoded exactly as :func:`refsr.upscale` does:

- ``ref``: stills (photos) offered to every frame; several are used per tile (each tile decoded with the
  still it matches best) or stitched, as ``multi_ref`` says. Stills of any size and aspect ratio are used as
  they are (matching does not need them aligned with the frames); give them at about the output's scale.
- ``ref_video`` + ``ref_frames=N``: every Nth frame of a high-resolution version of the same clip becomes a
  still, taking part for the frames around it: frame ``t`` is offered the stills at ``N*floor(t/N)`` and the
  next one (read ahead from the high-resolution clip, which is decoded alongside). A reference video of
  another size is resized to the output's size (PIL bicubic); one of another aspect ratio is refused.
- ``temporal=True``: the previous output frame is offered as one more reference, so that detail carried
  from a still propagates to frames far from it (the recurrent idea of reference-based video SR). It loses
  to the stills alone, also with the video model, which was trained with chains of its own outputs as
  references: the previous output wins the per-tile match (it shows nearly the same content) but is a worse
  texture source than a real still, and the loss compounds from frame to frame (``refsr eval --video``;
  README, Video).
- Model. ``model="default"`` with stills runs :data:`~refsr.models.DEFAULT_VIDEO_MODEL` (``masa-lite-video``,
  trained on whole clips with stills a few frames away; :func:`video_model`), without stills the default
  model.
- No stills: each frame is its own reference (the frame upscaled with PIL bicubic), as for images.
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from refsr.batch import is_terminal
from refsr.devices import resolve_device
from refsr.errors import RefsrError
from refsr.inference import (
    DEFAULT_MAX_MEMORY,
    ImageLike,
    UpscalePlan,
    encode_references,
    image_size,
    image_to_tensor,
    local_self_reference_runner,
    output_to_image,
    parse_memory,
    plan_upscale,
    prepare_model,
    resolve_model,
    run_tiles,
    run_with_references,
    self_reference,
    stitch_references,
)
from refsr.io import atomic_output, check_output_file, read_image
from refsr.models import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, pad_inputs, pad_to_rule

__all__ = [
    "upscale_video",
    "FrameUpscaler",
    "PreparedReference",
    "VIDEO_FORMATS",
    "is_video_path",
    "default_codec",
    "stills_around",
    "video_model",
    "VideoResult",
]

PathLike = Union[str, os.PathLike]

#: Output suffix -> the container format PyAV writes.
VIDEO_FORMATS: dict[str, str] = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}

#: The encoders tried, in order, when no codec is given (H.264 first).
DEFAULT_CODECS = ("libx264", "h264", "libopenh264", "mpeg4")

#: Encoders that take a constant rate factor, and the default one (visually lossless for x264/x265).
CRF_CODECS = frozenset({"libx264", "libx265", "libvpx", "libvpx-vp9", "libaom-av1", "libsvtav1"})
DEFAULT_CRF = 18

# Channel count -> a layout name the AAC encoder accepts (an unnamed "2 channels" layout it refuses).
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def is_video_path(path: PathLike) -> bool:
    """True when ``path``'s extension is one of the video containers refsr reads and writes."""
    return Path(path).suffix.lower() in VIDEO_FORMATS


def _av():
    import av
    import av.logging

    return av


@contextmanager
def _ffmpeg(what: str | Callable[[], str]) -> Iterator[list]:
    """Run PyAV calls with FFmpeg's messages captured (never printed) and its errors as one-line RefsrErrors.

    ``what`` (or what it returns, at the time of the error) starts the message. The captured log lines (of
    all threads: decoders run their own) are yielded; FFmpeg's last complaint is added to the message.
    """
    av = _av()
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield logs
            except av.error.FFmpegError as exc:
                raise RefsrError(f"{what() if callable(what) else what}: {_reason(exc, logs)}") from None
    finally:
        av.logging.set_level(previous)


def _reason(exc: BaseException, logs: Sequence[Any] = ()) -> str:
    """An FFmpeg error in a few words: its own message without the file name, plus FFmpeg's last complaint."""
    text = getattr(exc, "strerror", None) or str(exc)
    detail = str(exc).split("last error log:", 1)[1].strip() if "last error log:" in str(exc) else ""
    if not detail and logs:
        detail = str(logs[-1].message if hasattr(logs[-1], "message") else logs[-1][-1]).strip()
    return f"{text} ({detail})" if detail and detail not in text else text


def default_codec() -> str:
    """The first of :data:`DEFAULT_CODECS` that PyAV can encode with."""
    for name in DEFAULT_CODECS:
        if _encoder(name) is not None:
            return name
    raise RefsrError("PyAV has no H.264 or MPEG-4 encoder here; pass --codec (codec=) with one it has")


def _encoder(name: str) -> Any:
    av = _av()
    try:
        codec = av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return None
    return codec if codec.type == "video" else None


def _check_codec(name: str | None, crf: int | None) -> str:
    codec = name or default_codec()
    if _encoder(codec) is None:
        av = _av()
        known = sorted(c for c in av.codecs_available if _encoder(c) is not None and c in
                       {"libx264", "libx265", "h264", "hevc", "mpeg4", "libvpx-vp9", "libaom-av1", "mjpeg", "ffv1"})
        raise RefsrError(f"unknown video codec {codec!r} (no such encoder in PyAV); use one of {', '.join(known)}")
    if crf is not None:
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 63:
            raise RefsrError(f"crf must be an integer from 0 to 63 (lower is better), got {crf!r}")
        if codec not in CRF_CODECS:
            raise RefsrError(f"--crf (crf=) applies to {', '.join(sorted(CRF_CODECS))}, not to codec {codec!r}")
    return codec


# ---------------------------------------------------------------------------------------------- references


@dataclass
class PreparedReference:
    """A reference prepared once (:func:`refsr.inference.encode_references`) for any number of frames.

    Attributes:
        name: how messages name it (a path, ``"frame 16 of HR.mp4"``).
        size: ``(h, w)`` of the image it was made from.
        prepared: the model's reference cache, or the padded tensor for a model that cannot cache.
    """

    name: str
    size: tuple[int, int]
    prepared: Any


def video_model(model: str | torch.nn.Module, *, stills: bool, weights: PathLike | None = None
                ) -> str | torch.nn.Module:
    """The model a clip runs when ``model`` is ``"default"``: :data:`~refsr.models.DEFAULT_VIDEO_MODEL` when it
    has high-resolution stills and no weights file is given (trained on clips with stills: +1.6 dB on the open
    clips), :data:`~refsr.models.DEFAULT_MODEL` without stills (better with a frame as its own reference).
    Any other ``model`` as it is.

    >>> video_model("default", stills=True), video_model("default", stills=False), video_model("ssen", stills=True)
    ('masa-lite-video', 'masa-lite', 'ssen')
    """
    if not (isinstance(model, str) and model == "default"):
        return model
    return DEFAULT_VIDEO_MODEL if stills and weights is None else DEFAULT_MODEL


def stills_around(index: int, spacing: int, count: int | None = None) -> list[int]:
    """The still indices offered to frame ``index`` when every ``spacing``-th frame is a still: the one at or
    before it and the next one (``count``: how many frames there are, to stop at the end).

    >>> stills_around(0, 16), stills_around(5, 16), stills_around(16, 16), stills_around(40, 16, count=41)
    ([0, 16], [0, 16], [16, 32], [32])
    """
    before = index // spacing * spacing
    after = before + spacing
    return [before] if count is not None and after >= count else [before, after]


class FrameUpscaler:
    """Upscale frames of one size, one at a time, with references prepared once.

    Args:
        model: a model name, ``"default"`` or an ``nn.Module``.
        frame_size: ``(h, w)`` of every frame.
        still_sizes: ``(h, w)`` of the stills offered to a frame at most at once (for the memory plan).
        temporal: offer the previous output as one more reference.
        weights, random_weights, device, max_memory, tile, multi_ref, matching, precision: as
            :func:`refsr.upscale`.
        progress: a bar over tiles (``None``: only on a terminal).
        frame_name, still_names: how budget errors name the frames and the stills.

    Raises:
        RefsrError: nothing fits the budget (the message names the culprit and the budget that works).
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        frame_size: tuple[int, int],
        *,
        still_sizes: Sequence[tuple[int, int]] = (),
        temporal: bool = False,
        weights: PathLike | None = None,
        random_weights: bool = False,
        device: str | torch.device = "cpu",
        max_memory: int | str = DEFAULT_MAX_MEMORY,
        tile: int | None = None,
        multi_ref: str = "auto",
        matching: str | None = None,
        precision: str = "auto",
        progress: bool | None = False,
        frame_name: str = "the video's frames",
        still_names: Sequence[str] | None = None,
    ) -> None:
        if tile is not None and (isinstance(tile, bool) or int(tile) < 1):
            raise RefsrError(f"tile must be a positive number of LR pixels, got {tile}")
        budget = parse_memory(max_memory)
        self.device = resolve_device(device)
        self.net, self.matching = prepare_model(model, weights, random_weights=random_weights, device=self.device,
                                                matching=matching, precision=precision)
        self.rule = self.net.size_rule
        self.scale = int(self.net.scale)
        self.uses_ref = bool(self.net.uses_ref)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.temporal = bool(temporal) and self.uses_ref
        self.progress = progress
        out_size = (self.frame_size[0] * self.scale, self.frame_size[1] * self.scale)
        sizes = list(still_sizes)
        names = list(still_names or [f"still {i + 1}" for i in range(len(sizes))])
        if self.temporal:
            # The previous output, and the frame's own self-reference when there are no stills.
            sizes = (sizes or [out_size]) + [out_size]
            names = (names or ["the frame's self-reference"]) + ["the previous output frame"]
        self.plan: UpscalePlan = plan_upscale(self.net, self.frame_size, sizes or None, budget, tile=tile,
                                              multi_ref=multi_ref, lr_name=frame_name, ref_names=names)
        self._previous: np.ndarray | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return self.frame_size[0] * self.scale, self.frame_size[1] * self.scale

    def _pad_reference(self, ref: torch.Tensor) -> torch.Tensor:
        return pad_to_rule(ref, self.rule.ref_multiple, self.rule.min_ref, self.rule.pad_mode, centre=False)[0]

    @torch.no_grad()
    def prepare(self, images: Sequence[ImageLike], name: str) -> PreparedReference:
        """Prepare a still (or several, stitched into one) once, for every frame that is offered it."""
        tensors = [image_to_tensor(image).to(self.device) for image in images]
        ref = tensors[0] if len(tensors) == 1 else stitch_references(tensors, self.rule)
        size = (int(ref.shape[-2]), int(ref.shape[-1]))
        return PreparedReference(name, size,
                                 encode_references(self.net, [self._pad_reference(ref)], self.matching)[0])

    def reset(self) -> None:
        """Forget the previous output (a new clip, or a cut)."""
        self._previous = None

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, stills: Sequence[PreparedReference] = ()) -> np.ndarray:
        """Upscale one ``HxWx3`` uint8 frame with ``stills`` (and the previous output) -> ``sHxsWx3`` uint8."""
        if tuple(frame.shape[:2]) != self.frame_size:
            raise RefsrError(f"a frame of {frame.shape[1]}x{frame.shape[0]} among frames of "
                             f"{self.frame_size[1]}x{self.frame_size[0]}: the video changes size, which refsr "
                             "does not support")
        x = image_to_tensor(frame).to(self.device)
        padded = pad_inputs(self.net, x)
        if self.uses_ref and self.plan.local_self_reference:
            del x
            run_tile = local_self_reference_runner(self.net, self.scale, self.matching)
            out = output_to_image(padded.crop(run_tiles(run_tile, padded.lr, self.scale, self.plan.tiles,
                                                        self.progress)))
        else:
            prepared: list[Any] = []
            if self.uses_ref:
                prepared = [s.prepared for s in stills]
                fresh = [] if prepared else [self_reference(x, self.scale)]
                if self.temporal and self._previous is not None:
                    fresh.append(image_to_tensor(self._previous).to(self.device))
                prepared += encode_references(self.net, [self._pad_reference(r) for r in fresh], self.matching)
            del x
            out = run_with_references(self.net, padded, prepared, self.plan.tiles, self.matching, self.progress)
        if self.temporal:
            self._previous = out
        return out


# ---------------------------------------------------------------------------------------------- reading


class _Timestamps:
    """Monotonic time stamps from decoded frames, trusting PTS or DTS by which has had fewer faults (as
    FFmpeg's ``best_effort_timestamp``), and stepping one tick past the last one when neither is usable."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None
        self.last: int | None = None

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        if pts is not None and self.last_pts is not None and pts <= self.last_pts:
            self.faulty_pts += 1
        if dts is not None and self.last_dts is not None and dts <= self.last_dts:
            self.faulty_dts += 1
        self.last_pts, self.last_dts = (pts if pts is not None else self.last_pts), (dts if dts is not None
                                                                                     else self.last_dts)
        stamp = pts if (pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None)) else dts
        if stamp is None or (self.last is not None and stamp <= self.last):
            stamp = None if self.last is None else self.last + 1
        self.last = stamp
        return stamp


class _Clip:
    """An input video: its container, first video stream and audio streams, checked on opening."""

    def __init__(self, path: Path, what: str = "the video") -> None:
        av = _av()
        self.path = path
        if not path.exists():
            raise RefsrError(f"{path}: no such file")
        if path.is_dir():
            raise RefsrError(f"{path}: is a folder, not a video file")
        if path.stat().st_size == 0:
            raise RefsrError(f"{path}: the file is empty")
        with _ffmpeg(str(path)):
            try:
                self.container = av.open(str(path))
            except av.error.FFmpegError as exc:
                raise RefsrError(f"{path}: not a video file, or one FFmpeg cannot read ({_reason(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise RefsrError(f"{path}: the file has no video stream ({what} must be a video)")
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        context = self.video.codec_context
        if context is None or not self.video.width or not self.video.height:
            name = getattr(self.video.codec_context, "name", None) or "unknown"
            self.container.close()
            raise RefsrError(f"{path}: cannot decode the video stream (codec {name}: no decoder in PyAV, or no "
                             "frame size)")
        self.audio = list(self.container.streams.audio)
        self.size = (int(self.video.height), int(self.video.width))
        self.rate = self.video.average_rate or self.video.guessed_rate or Fraction(25)
        self.time_base = self.video.time_base or Fraction(1, int(round(float(self.rate))) or 25)
        self.frames = int(self.video.frames or 0)  # as the container declares it (0: unknown)
        # For the progress bar only: the declared count, else the duration times the rate.
        seconds = (float(self.video.duration * self.video.time_base) if self.video.duration and self.video.time_base
                   else self.container.duration / 1e6 if self.container.duration else 0.0)
        self.expected_frames = self.frames or (round(seconds * float(self.rate)) or None)

    def close(self) -> None:
        self.container.close()

    def packets(self, with_audio: bool) -> Iterator[Any]:
        streams = [self.video, *(self.audio if with_audio else [])]
        return self.container.demux(*streams)

    def decoded(self, packet: Any, index: int) -> Iterator[Any]:
        """The frames of one video packet, each checked: a corrupt frame is an error, not a picture."""
        for frame in packet.decode():
            if frame.is_corrupt:
                raise RefsrError(f"{self.path}: frame {index} is corrupt; no output was written")
            yield frame
            index += 1



def _rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


class _StillsFromVideo:
    """Every ``spacing``-th frame of a high-resolution clip as a still, read in step with the clip being upscaled,
    each prepared once and dropped when no frame needs it any more."""

    def __init__(self, path: Path, spacing: int, out_size: tuple[int, int]) -> None:
        self.clip = _Clip(path, "the reference video")
        self.spacing = spacing
        self.out_size = out_size
        h, w = self.clip.size
        if abs(w / h - out_size[1] / out_size[0]) > 0.01:
            self.clip.close()
            raise RefsrError(f"{path}: the reference video is {w}x{h}, another aspect ratio than the output's "
                             f"{out_size[1]}x{out_size[0]}; give a high-resolution version of the same clip")
        self._frames = self._iterate()
        self._read = 0  # frames of the reference video decoded so far
        self._prepared: dict[int, PreparedReference] = {}
        self._ended = False

    def _iterate(self) -> Iterator[np.ndarray]:
        index = 0
        # demux() ends with an empty packet per stream, which flushes the decoder's last frames
        for packet in self.clip.packets(with_audio=False):
            for frame in self.clip.decoded(packet, index):
                index += 1
                yield _rgb(frame)

    def _fitted(self, image: np.ndarray) -> np.ndarray:
        h, w = self.out_size
        if image.shape[:2] == (h, w):
            return image
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))

    def around(self, index: int, upscaler: FrameUpscaler) -> list[PreparedReference]:
        """The prepared stills for frame ``index`` (decoding the reference video as far as they need)."""
        wanted = stills_around(index, self.spacing)
        with _ffmpeg(str(self.clip.path)):
            while not self._ended and self._read <= wanted[-1]:
                image = next(self._frames, None)
                if image is None:
                    self._ended = True
                    break
                if self._read % self.spacing == 0:
                    self._prepared[self._read] = upscaler.prepare(
                        [self._fitted(image)], f"frame {self._read} of {self.clip.path}")
                self._read += 1
        for key in [k for k in self._prepared if k < wanted[0]]:
            del self._prepared[key]  # no later frame is offered it
        return [self._prepared[k] for k in wanted if k in self._prepared]

    def close(self) -> None:
        self.clip.close()


# ---------------------------------------------------------------------------------------------- writing


class _Writer:
    """The output container: one video stream in the input's time base, and the input's audio streams."""

    def __init__(self, path: Path, fmt: str, codec: str, crf: int | None, size: tuple[int, int], clip: _Clip) -> None:
        av = _av()
        self.container = av.open(str(path), "w", format=fmt)
        stream = self.container.add_stream(codec, rate=clip.rate)
        stream.height, stream.width = size
        formats = [f.name for f in (_encoder(codec).video_formats or [])]
        stream.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        # The input's time base keeps every time stamp exact; AVI counts frames instead (one tick per frame at
        # the average rate), so there the stamps are rounded to it.
        # (The stream's own time_base changes to the muxer's once the header is written; frames keep this one.)
        self.input_time_base = clip.time_base
        self.time_base = Fraction(1) / Fraction(clip.rate) if fmt == "avi" else Fraction(clip.time_base)
        stream.time_base = self.time_base
        options = {}
        if codec in CRF_CODECS:
            options["crf"] = str(DEFAULT_CRF if crf is None else crf)
            if codec == "libvpx-vp9":
                options["b"] = "0"  # constant quality
        if fmt == "avi":
            options["bf"] = "0"  # AVI keeps no presentation time stamps: B-frames would come out of order
        stream.options = options
        self.video = stream
        # Audio: copied packet for packet where the container can hold the codec, else re-encoded to AAC.
        self.audio: dict[Any, tuple[Any, Any]] = {}
        for source in clip.audio:
            try:
                self.audio[source] = (self.container.add_stream_from_template(source), None)
            except (ValueError, av.error.FFmpegError):
                aac = self.container.add_stream("aac", rate=source.rate or 48000)
                aac.layout = _AAC_LAYOUTS.get(source.layout.nb_channels, "stereo")
                aac.format = "fltp"
                resampler = av.AudioResampler(format="fltp", layout=aac.layout, rate=aac.rate)
                self.audio[source] = (aac, resampler)
        self._timestamps = _Timestamps()

    def frame(self, image: np.ndarray, pts: int | None, dts: int | None) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        ratio = self.input_time_base / self.time_base
        pts, dts = (None if t is None else round(t * ratio) for t in (pts, dts))
        frame.pts = self._timestamps(pts, dts)
        frame.time_base = self.time_base
        for packet in self.video.encode(frame):
            self.container.mux(packet)

    def audio_packet(self, packet: Any) -> None:
        stream, resampler = self.audio[packet.stream]
        if resampler is None:
            if packet.dts is None:  # the demuxer's flush packet
                return
            packet.stream = stream
            self.container.mux(packet)
            return
        for decoded in packet.decode():
            for frame in resampler.resample(decoded):
                frame.pts = None
                for out in stream.encode(frame):
                    self.container.mux(out)

    def finish(self) -> None:
        for packet in self.video.encode(None):
            self.container.mux(packet)
        for stream, resampler in self.audio.values():
            if resampler is not None:
                for frame in resampler.resample(None):
                    for packet in stream.encode(frame):
                        self.container.mux(packet)
                for packet in stream.encode(None):
                    self.container.mux(packet)
        self.container.close()

    def abandon(self) -> None:
        try:
            self.container.close()
        except Exception:  # the output is discarded anyway: nothing more to report
            pass


# ---------------------------------------------------------------------------------------------- the clip


@dataclass(frozen=True)
class VideoResult:
    """What :func:`run_video` wrote: the output, the frames, the seconds taken, the plan of each frame."""

    path: Path
    frames: int
    seconds: float
    plan: UpscalePlan
    audio_streams: int


def check_video_output(output: PathLike, video: PathLike, codec: str | None, crf: int | None) -> tuple[Path, str]:
    """Check, before any work, that ``output`` can be written as a video; returns it and the codec to use."""
    out = Path(output)
    check_output_file(out, VIDEO_FORMATS, kind="output video", inputs=(video,))
    fmt = VIDEO_FORMATS[out.suffix.lower()]
    av = _av()
    if fmt not in av.formats_available:
        raise RefsrError(f"{out}: PyAV cannot write {out.suffix} files here; use .mp4 or .mkv")
    codec = _check_codec(codec, crf)
    with _ffmpeg(str(out)), av.open(io.BytesIO(), "w", format=fmt) as probe:
        try:
            probe.add_stream(codec)
        except ValueError:
            raise RefsrError(f"{out}: a {out.suffix} file cannot hold {codec} video; choose another --codec "
                             "(codec=) or output type") from None
    return out, codec


def run_video(
    video: PathLike,
    output: PathLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    model: str | torch.nn.Module = "default",
    weights: PathLike | None = None,
    random_weights: bool = False,
    device: str | torch.device = "cpu",
    max_memory: int | str = DEFAULT_MAX_MEMORY,
    tile: int | None = None,
    multi_ref: str = "auto",
    matching: str | None = None,
    precision: str = "auto",
    temporal: bool = False,
    ref_video: PathLike | None = None,
    ref_frames: int | None = None,
    crf: int | None = None,
    codec: str | None = None,
    progress: bool | None = None,
    on_frame: Callable[[int, int | None], None] | None = None,
) -> VideoResult:
    """:func:`upscale_video`, with what was done (for the command line's status line).

    ``on_frame(done, total)`` is called after each frame (``total``: the stream's frame count, or ``None``).
    """
    started = time.monotonic()
    source = Path(video)
    if ref_frames is not None and ref_video is None:
        raise RefsrError("--ref-frames (ref_frames=) takes frames of --ref-video (ref_video=); give the "
                         "high-resolution clip")
    spacing = 16 if ref_frames is None else ref_frames
    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 1:
        raise RefsrError(f"ref_frames must be a positive number of frames, got {ref_frames!r}")
    out, codec_name = check_video_output(output, source, codec, crf)
    budget = parse_memory(max_memory)
    stills = [] if ref is None else (list(ref) if isinstance(ref, (list, tuple)) else [ref])
    if ref is not None and not stills:
        raise RefsrError("an empty list of references was given; pass None for self-reference")
    still_names = [os.fspath(s) if isinstance(s, (str, os.PathLike)) else f"still {i + 1}"
                   for i, s in enumerate(stills)]
    still_sizes = [image_size(s) for s in stills]  # headers only: the budget is checked before decoding

    clip = _Clip(source)
    hr_stills: _StillsFromVideo | None = None
    try:
        model = video_model(model, stills=bool(stills) or ref_video is not None, weights=weights)
        net = resolve_model(model, weights, random_weights=random_weights)
        with _ffmpeg(str(source)):
            out_size = (clip.size[0] * int(net.scale), clip.size[1] * int(net.scale))
            if ref_video is not None:
                hr_stills = _StillsFromVideo(Path(ref_video), spacing, out_size)
                still_sizes += [out_size, out_size]
                still_names += [f"frames of {ref_video}"] * 2
            upscaler = FrameUpscaler(net, clip.size, still_sizes=still_sizes, temporal=temporal, device=device,
                                     max_memory=budget, tile=tile, multi_ref=multi_ref, matching=matching,
                                     precision=precision, progress=False,
                                     frame_name=f"the frames of {source}", still_names=still_names)
            fixed: list[PreparedReference] = []
            if stills:
                images = [read_image(s) if isinstance(s, (str, os.PathLike)) else s for s in stills]
                if upscaler.plan.multi_ref == "stitch" and len(images) > 1:
                    fixed = [upscaler.prepare(images, "the stitched stills")]
                else:
                    fixed = [upscaler.prepare([image], name) for image, name in zip(images, still_names)]
                del images
        frames = _stream(clip, out, codec_name, crf, upscaler, fixed, hr_stills, progress, on_frame)
    finally:
        clip.close()
        if hr_stills is not None:
            hr_stills.close()
    return VideoResult(out, frames, time.monotonic() - started, upscaler.plan, len(clip.audio))


def _stream(clip: _Clip, out: Path, codec: str, crf: int | None, upscaler: FrameUpscaler,
            fixed: list[PreparedReference], hr_stills: _StillsFromVideo | None, progress: bool | None,
            on_frame: Callable[[int, int | None], None] | None) -> int:
    """Decode, upscale and encode the clip frame by frame into a temporary file renamed to ``out`` at the end."""
    from tqdm.auto import tqdm

    total = clip.expected_frames
    show = progress if progress is not None else is_terminal(sys.stderr)
    done = 0
    stage = ""

    def describe() -> str:
        return stage.format(done=done)

    def handle(frame: Any) -> None:
        nonlocal done, stage
        stills = fixed + (hr_stills.around(done, upscaler) if hr_stills is not None else [])
        sr = upscaler(_rgb(frame), stills)
        stage = f"{out}: cannot encode frame {{done}}"
        writer.frame(sr, frame.pts, frame.dts)
        done += 1
        bar.update(1)
        if on_frame is not None:
            on_frame(done, total)

    with atomic_output(out) as tmp, tqdm(total=total, unit="frame", disable=not show, leave=False) as bar, \
            _ffmpeg(describe) as logs:
        stage = f"{out}: cannot write"
        writer = _Writer(tmp, VIDEO_FORMATS[out.suffix.lower()], codec, crf, upscaler.output_size, clip)
        try:
            # demux() ends with an empty packet per stream, which flushes the decoder's last frames
            for packet in clip.packets(with_audio=bool(clip.audio)):
                if packet.stream.type == "audio":
                    stage = f"{out}: cannot write the audio"
                    writer.audio_packet(packet)
                    continue
                stage = f"{clip.path}: cannot decode frame {{done}}; no output was written"
                decoded = list(clip.decoded(packet, done))
                _refuse_damage(clip.path, logs, done)
                for frame in decoded:
                    handle(frame)
            _refuse_damage(clip.path, logs, done)
            if done == 0:
                raise RefsrError(f"{clip.path}: the video has no frame that can be decoded")
            if clip.frames and clip.container.format.name != "avi" and done < clip.frames:
                # (AVI counts dropped frames too: tree.avi declares 444 and holds 68.)
                raise RefsrError(f"{clip.path}: the video ends after {done} of its {clip.frames} frames (truncated "
                                 "or corrupt); no output was written")
            stage = f"{out}: cannot write"
            writer.finish()
        except BaseException:
            writer.abandon()
            raise
    return done


def _refuse_damage(path: Path, logs: list, done: int) -> None:
    """Stop at the first error FFmpeg reported while reading: a damaged frame it concealed, or a file that
    ends early. (Only error-level messages are captured; see :func:`_ffmpeg`.)"""
    if logs:
        message = " ".join(str(logs[0][2]).split())
        raise RefsrError(f"{path}: damaged after frame {done} ({message}); no output was written")


def upscale_video(
    video: PathLike,
    output: PathLike,
    ref: ImageLike | Sequence[ImageLike] | None = None,
    *,
    model: str | torch.nn.Module = "default",
    weights: PathLike | None = None,
    random_weights: bool = False,
    device: str | torch.device = "cpu",
    max_memory: int | str = DEFAULT_MAX_MEMORY,
    tile: int | None = None,
    multi_ref: str = "auto",
    matching: str | None = None,
    precision: str = "auto",
    temporal: bool = False,
    ref_video: PathLike | None = None,
    ref_frames: int | None = None,
    crf: int | None = None,
    codec: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Super-resolve a video file with the help of high-resolution stills; see the module docstring.

    Args:
        video: the low-resolution clip (``.mp4``, ``.mkv``, ``.mov``, ``.avi`` or anything FFmpeg reads).
        output: the output video; its extension (``.mp4``, ``.mkv``, ``.mov``, ``.avi``) picks the container.
        ref: stills offered to every frame: an image (PIL, array or path) or a list of them; ``None`` for
            none (each frame is then its own reference, unless ``ref_video`` gives stills).
        model: as :func:`refsr.upscale`, except that ``"default"`` with stills (``ref`` or ``ref_video``) runs
            :data:`~refsr.models.DEFAULT_VIDEO_MODEL`, trained for them (:func:`video_model`).
        weights, random_weights, device, max_memory, tile, multi_ref, matching, precision: as
            :func:`refsr.upscale`, per frame.
        temporal: offer the previous output frame as one more reference (see the module docstring for what it
            gives).
        ref_video: a high-resolution version of the same clip; every ``ref_frames``-th frame is a still for
            the frames around it.
        ref_frames: the spacing of those stills (default 16).
        crf: the constant rate factor for ``libx264``/``libx265``/VP9/AV1 (default 18; lower is better).
        codec: the video encoder (default H.264 via PyAV: ``libx264`` where available).
        progress: a bar with frames and ETA on stderr; ``None``: only on a terminal.

    Returns:
        The output path, written whole or not at all.

    Raises:
        RefsrError: an unreadable, corrupt or non-video input (nothing is written), a bad output name,
            codec or CRF, a reference video of another aspect ratio, or a budget too small.
    """
    return run_video(video, output, ref, model=model, weights=weights, random_weights=random_weights,
                     device=device, max_memory=max_memory,
                     tile=tile, multi_ref=multi_ref, matching=matching, precision=precision, temporal=temporal, ref_video=ref_video, ref_frames=ref_frames,
                     crf=crf, codec=codec, progress=progress).path
