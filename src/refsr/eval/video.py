"""``refsr eval --video``: the open benchmark's video clips upscaled with a few high-resolution stills.

The hybrid-camera protocol of issue #20. For each clip of the open benchmark's ``eval`` (or ``cgi``) split:

1. Frames ``start .. start + frames - 1`` are decoded (PyAV; a frame's index is its position in the decoder's
   output, as in :class:`refsr.data.OpenPairs`), cut to whole intervals of ``spacing`` plus one frame, so
   that every frame lies between two stills. **HR** = each frame mod-cropped to the scale.
2. **Stills** = the HR frames ``0, spacing, 2*spacing, ...``; the **LR clip** = every frame, PIL-bicubic
   ``/scale`` (:func:`refsr.data.degrade.make_lr`): the low-resolution stream of a hybrid camera, which has a
   frame at each still's moment too.
3. Methods, each over the whole LR clip in order (:class:`refsr.video.FrameUpscaler`, exactly the path of
   ``refsr upscale clip.mp4``):

   - ``Bicubic``: PIL bicubic ``xscale``;
   - ``Self-reference``: each frame with itself upscaled as reference (no stills; ``refsr upscale`` without
     ``--ref``);
   - ``Stills``: the stills before and after the frame (each tile decoded with the one it matches best), as
     ``--ref-video HR --ref-frames spacing`` offers them;
   - ``Stills + temporal``: the same and the previous output frame (``--temporal``);
   - ``HR as reference``: the frame's own ground truth as its only reference. No user has it; it
     measures what a perfect reference is worth to the model, the ceiling for any still or previous output
     offered in its place (1.43 dB above the stills for ``masa-lite-video``, 0.32 dB for ``masa-lite``: see
     the README).

   With ``model="default"`` the rows with references run ``masa-lite-video`` and self-reference runs
   ``masa-lite``, as ``refsr upscale`` does (:func:`refsr.video.video_model`).

4. Scores: PSNR/SSIM (:mod:`refsr.metrics`, protocol ``masa`` by default: Y, no crop) of every frame that is
   not a still, pooled over frames and clips, overall and by the distance to the nearest still; and a flicker
   measure over all consecutive frames, ``mean |(SR_t - SR_t-1) - (HR_t - HR_t-1)|`` on Y in 8-bit levels (0
   when the output changes from frame to frame exactly as the ground truth does).

Cost: each frame runs the model four times; ``frames`` and ``limit`` (clips) keep a run small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from refsr.data.cache import PathLike
from refsr.data.clips import VideoClip, read_clip, video_clips
from refsr.data.degrade import make_lr, mod_crop
from refsr.errors import RefsrError
from refsr.eval.figures import fit_panel, labelled_row, texture_box
from refsr.eval.tables import Table
from refsr.imresize import imresize
from refsr.io import write_image
from refsr.metrics import get_protocol, psnr, rgb_to_y, ssim
from refsr.video import FrameUpscaler, PreparedReference, stills_around, video_model

__all__ = ["VideoClip", "video_clips", "read_clip", "VideoEvalReport", "evaluate_video", "METHODS", "video_methods",
           "flicker"]

#: The methods, in table order.
METHODS = ("Bicubic", "Self-reference", "Stills", "Stills + temporal", "HR as reference")
# The methods whose frames get a reference other than themselves (the video model's, by default).
_WITH_REFERENCES = ("Stills", "Stills + temporal", "HR as reference")
#: Short names for the command line's ``--methods``.
METHOD_SHORT_NAMES = {"bicubic": "Bicubic", "self": "Self-reference", "stills": "Stills",
                      "temporal": "Stills + temporal", "hr": "HR as reference"}


def video_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Methods by row name or short name (case ignored), in table order.

    >>> video_methods(["hr", "Stills"])
    ('Stills', 'HR as reference')

    Raises:
        RefsrError: an unknown name.
    """
    known = {m.lower(): m for m in METHODS} | METHOD_SHORT_NAMES
    wanted = set()
    for name in names:
        method = known.get(name.strip().lower())
        if method is None:
            raise RefsrError(f"unknown video method {name.strip()!r}; use {', '.join(METHOD_SHORT_NAMES)}")
        wanted.add(method)
    return tuple(m for m in METHODS if m in wanted)


def flicker(outputs: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean over consecutive pairs of ``mean |(SR_t - SR_t-1) - (HR_t - HR_t-1)|`` on Y (8-bit levels)."""
    if len(outputs) != len(truths) or len(outputs) < 2:
        raise RefsrError("flicker needs two or more output frames, one per ground-truth frame")
    luma = [(rgb_to_y(o), rgb_to_y(t)) for o, t in zip(outputs, truths)]
    return float(np.mean([np.abs((o1 - o0) - (t1 - t0)).mean()
                          for (o0, t0), (o1, t1) in zip(luma[:-1], luma[1:])]))


@dataclass
class VideoEvalReport:
    """Everything ``refsr eval --video`` measured.

    Attributes:
        frames: one record per scored frame and method: clip, index, distance, method, psnr, ssim.
        flicker: ``{clip: {method: value}}``.
        clips: ``{clip: {"frames": n, "size": "WxH", "seconds": {method: s}}}``.
        tables: the printed tables by key; settings: the run's options; figures: files written.
    """

    frames: list[dict[str, Any]] = field(default_factory=list)
    flicker: dict[str, dict[str, float]] = field(default_factory=dict)
    clips: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def mean(self, method: str, select: Callable[[dict[str, Any]], bool] = lambda r: True) -> tuple[float, float, int]:
        """Mean PSNR, SSIM and count of ``method``'s frame records that ``select`` keeps."""
        kept = [r for r in self.frames if r["method"] == method and select(r)]
        if not kept:
            return math.nan, math.nan, 0
        return (float(np.mean([r["psnr"] for r in kept])), float(np.mean([r["ssim"] for r in kept])), len(kept))

    def render(self) -> str:
        parts = [table.render() for table in self.tables.values()]
        if self.flicker:
            methods = [m for m in METHODS if any(m in v for v in self.flicker.values())]
            rows = [[clip.split(":", 1)[-1], *(f"{values[m]:.3f}" for m in methods)]
                    for clip, values in self.flicker.items()]
            rows.append(["mean", *(f"{np.mean([v[m] for v in self.flicker.values()]):.3f}" for m in methods)])
            header = ["Clip", *methods]
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
            lines = ["Flicker: mean |(SR_t - SR_t-1) - (HR_t - HR_t-1)| on Y, 8-bit levels (lower is steadier)"]
            for row in [header, ["-" * w for w in widths], *rows]:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            parts.append("\n".join(lines))
        if self.skipped:
            parts.append("Skipped: " + "; ".join(self.skipped))
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "tables": {key: table.to_dict() for key, table in self.tables.items()},
            "flicker": self.flicker,
            "clips": self.clips,
            "frames": self.frames,
            "figures": self.figures,
            "skipped": self.skipped,
        }


def _distance_bins(spacing: int) -> list[tuple[int, int]]:
    """Up to four ranges of distance covering 1 .. spacing // 2."""
    far = max(1, spacing // 2)
    width = max(1, math.ceil(far / 4))
    return [(lo, min(lo + width - 1, far)) for lo in range(1, far + 1, width)]


def _label(lo: int, hi: int) -> str:
    return f"d={lo}" if lo == hi else f"d={lo}-{hi}"


def evaluate_video(
    model: str | torch.nn.Module,
    *,
    split: str = "eval",
    root: PathLike | None = None,
    spacing: int = 16,
    frames: int = 49,
    start: int = 0,
    limit: int | None = None,
    clips: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    max_memory: int | str = "4G",
    protocol: str = "masa",
    methods: Sequence[str] = METHODS,
    figures: PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> VideoEvalReport:
    """Run the protocol of the module docstring; returns the report with its tables filled in.

    Args:
        model: a model name, ``"default"`` or an ``nn.Module``. ``"default"`` runs what ``refsr upscale`` runs
            (:func:`refsr.video.video_model`): the rows with stills or the frame's own HR as reference run
            ``masa-lite-video``, self-reference runs ``masa-lite``.
        split: ``"eval"`` or ``"cgi"``.
        spacing: a still every ``spacing`` frames.
        frames: frames per clip (at most; cut to whole intervals plus one).
        start: frames to skip at the start of each clip (after the manifest's first frame).
        limit: at most this many clips; clips: their names (``vtest`` or ``opencv-doc:vtest``).
        sources: only clips from these packages.
        device, max_memory: as :func:`refsr.upscale`.
        protocol: the metric protocol.
        methods: a subset of :data:`METHODS`.
        figures: a folder for one strip per clip (the frame farthest from a still, a crop of each method).
        progress: called with a line of news per clip and method.
    """
    from refsr.inference import resolve_model

    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 2:
        raise RefsrError(f"the still spacing must be 2 frames or more, got {spacing!r}")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < spacing + 1:
        raise RefsrError(f"--frames must be at least the still spacing + 1 ({spacing + 1}), got {frames!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise RefsrError(f"unknown method {unknown[0]!r}; use {', '.join(METHODS)}")
    get_protocol(protocol)
    # "default" runs what refsr upscale runs: the video model where the frames get references, the default
    # model where they are their own.
    chosen_models = {with_refs: video_model(model, stills=with_refs) for with_refs in (False, True)}
    nets = {with_refs: resolve_model(m) for with_refs, m in chosen_models.items()}
    scale = int(nets[True].scale)
    chosen = video_clips(split, root=root, scale=scale, sources=sources, names=clips)
    if limit is not None:
        chosen = chosen[: max(0, int(limit))]
    names = {with_refs: m if isinstance(m, str) else type(m).__name__ for with_refs, m in chosen_models.items()}
    report = VideoEvalReport(settings=dict(split=split, spacing=spacing, frames=frames, start=start, scale=scale,
                                           protocol=protocol, methods=list(methods), clips=[c.name for c in chosen],
                                           models={m: names[m in _WITH_REFERENCES] for m in methods
                                                   if m != "Bicubic"}))
    for clip in chosen:
        _evaluate_clip(nets, clip, root, spacing, frames, start, scale, device, max_memory, protocol, methods,
                       figures, report, progress)
    _fill_tables(report, spacing, methods)
    return report


def _evaluate_clip(nets: dict[bool, torch.nn.Module], clip: VideoClip, root: PathLike | None, spacing: int, frames: int,
                   start: int, scale: int, device: Any, max_memory: Any, protocol: str, methods: Sequence[str],
                   figures: PathLike | None, report: VideoEvalReport, progress: Callable[[str], None] | None) -> None:
    decoded = read_clip(clip, root, start, frames)
    count = (len(decoded) - 1) // spacing * spacing + 1 if decoded else 0
    if count < spacing + 1:
        report.skipped.append(f"{clip.name} ({len(decoded)} frames, fewer than {spacing + 1})")
        return
    hr = [mod_crop(f, scale) for f in decoded[:count]]
    del decoded
    lr = [make_lr(f, scale) for f in hr]
    size = lr[0].shape[:2]
    report.clips[clip.name] = {"frames": count, "size": f"{hr[0].shape[1]}x{hr[0].shape[0]}", "seconds": {}}
    far = spacing // 2
    shown = {}
    outputs_for_flicker: dict[str, float] = {}
    for method in methods:
        started = time.monotonic()
        if progress is not None:
            progress(f"{clip.name}: {method} on {count} frames of {size[1]}x{size[0]}")
        run = _method_runner(nets[method in _WITH_REFERENCES], method, size, spacing, count, hr, device, max_memory)
        previous: tuple[np.ndarray, np.ndarray] | None = None
        steps = []
        for t in range(count):
            sr = run(t, lr[t])
            distance = min(t % spacing, spacing - t % spacing)
            if distance > 0:
                report.frames.append({"clip": clip.name, "index": t, "distance": distance, "method": method,
                                      "psnr": float(psnr(sr, hr[t], protocol=protocol)),
                                      "ssim": float(ssim(sr, hr[t], protocol=protocol))})
            if previous is not None:
                steps.append(flicker([previous[0], sr], [previous[1], hr[t]]))
            previous = (sr, hr[t])
            if t == far:
                shown[method] = sr
        outputs_for_flicker[method] = float(np.mean(steps))
        report.clips[clip.name]["seconds"][method] = round(time.monotonic() - started, 1)
    report.flicker[clip.name] = outputs_for_flicker
    if figures is not None and shown:
        report.figures.append(str(_strip(clip, hr[far], hr[0], shown, Path(figures))))


def _method_runner(net: torch.nn.Module, method: str, size: tuple[int, int], spacing: int, count: int,
                   hr: list[np.ndarray], device: Any, max_memory: Any) -> Callable[[int, np.ndarray], np.ndarray]:
    """``(frame index, LR frame) -> SR frame`` for one method, in frame order."""
    scale = int(net.scale)
    if method == "Bicubic":
        return lambda t, frame: imresize(frame, size=(frame.shape[0] * scale, frame.shape[1] * scale))
    with_stills = method in ("Stills", "Stills + temporal")
    own_truth = method == "HR as reference"
    out_size = hr[0].shape[:2]
    still_sizes = [out_size, out_size] if with_stills else [out_size] if own_truth else ()
    upscaler = FrameUpscaler(net, size, still_sizes=still_sizes,
                             temporal=method == "Stills + temporal", device=device, max_memory=max_memory,
                             multi_ref="per-tile", precision="fp32",
                             # The protocol's numbers are the model's own: float32 and its exact matching.
                             matching=net.matching_modes[0] if net.matching_modes else None)
    prepared: dict[int, PreparedReference] = {}

    def run(t: int, frame: np.ndarray) -> np.ndarray:
        stills = []
        if with_stills:
            wanted = stills_around(t, spacing, count)
            for key in [k for k in prepared if k not in wanted]:
                del prepared[key]  # each still is prepared once and dropped when no later frame needs it
            for key in wanted:
                if key not in prepared:
                    prepared[key] = upscaler.prepare([hr[key]], f"still {key}")
            stills = [prepared[k] for k in wanted]
        elif own_truth:
            stills = [upscaler.prepare([hr[t]], f"frame {t}")]
        return upscaler(frame, stills)

    return run


def _strip(clip: VideoClip, truth: np.ndarray, still: np.ndarray, shown: dict[str, np.ndarray], folder: Path) -> Path:
    """A crop of every method's output at the frame farthest from a still, next to the ground truth."""
    side = min(96, truth.shape[0], truth.shape[1])
    top, left = texture_box(truth, side)
    panels = [Image.fromarray(np.ascontiguousarray(img[top : top + side, left : left + side]))
              for img in (*shown.values(), truth)]
    panels.append(fit_panel(still, side, side))
    labels = [*shown, "HR", "still"]
    folder.mkdir(parents=True, exist_ok=True)
    name = clip.name.replace(":", "_").replace("/", "_")
    return write_image(folder / f"video_{name}.png", labelled_row(panels, labels))


def _fill_tables(report: VideoEvalReport, spacing: int, methods: Sequence[str]) -> None:
    far = spacing // 2
    overall = Table(f"Video, stills every {spacing} frames: PSNR/SSIM of the frames between stills, by distance "
                    "d to the nearest still")
    for method in methods:
        cells = [("all (d>=1)", lambda r: True)]
        cells += [(_label(lo, hi), lambda r, lo=lo, hi=hi: lo <= r["distance"] <= hi) for lo, hi in
                  _distance_bins(spacing)]
        cells.append((f"far (d>={far})", lambda r: r["distance"] >= far))
        for column, select in cells:
            value_psnr, value_ssim, n = report.mean(method, select)
            if n:
                overall.set(method, column, value_psnr, value_ssim, n)
    overall.notes.append(f"frames pooled over {len(report.clips)} clip(s); "
                         f"{sum(1 for r in report.frames if r['method'] == methods[0])} scored frames per method")
    report.tables["by_distance"] = overall
    per_clip = Table("Video, per clip: PSNR/SSIM of the frames between stills", corner="Method")
    for method in methods:
        for clip in report.clips:
            value_psnr, value_ssim, n = report.mean(method, lambda r, c=clip: r["clip"] == c)
            if n:
                per_clip.set(method, clip.split(":", 1)[-1], value_psnr, value_ssim, n)
    report.tables["per_clip"] = per_clip
