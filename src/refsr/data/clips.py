"""The open benchmark's video clips as whole clips: :func:`video_clips`, :func:`read_clip`, and
:class:`ClipFrames`, training samples for a model that upscales a video with a few high-resolution stills.

The pairs of :class:`refsr.data.OpenPairs` fix one reference frame per target, at a gap of 1, 4, 8 or 16.
A model that is to upscale a whole low-resolution clip with a still every few frames (``refsr upscale
clip.mp4 --ref ...``, ``refsr eval --video``) meets every gap in between, and with ``--temporal`` also its own
previous output as a reference. :class:`ClipFrames` draws both from every frame of a clip:

- **target**: frame ``t`` (HR mod-cropped to ``multiple``; LR = PIL bicubic ``/scale``, as everywhere);
- **still**: the HR frame ``k`` frames away, ``k`` uniform in ``1 .. max_gap``, before or after ``t``
  (either, when both lie in the clip);
- **chain** (with probability ``chain_prob``, when ``k > 1``): the LR frames ``1 .. max_chain`` steps before
  ``t`` on the still's side. The training task upscales them in order (the first with the still, each
  next one with the output before it as its reference) and gives ``t`` the last output as its reference
  instead of the still: the reference ``--temporal`` hands a frame at inference, and what it has lost on the
  way. :class:`refsr.train.tasks.restoration.RestorationTask` runs the chain.

Video is decoded with PyAV (:class:`refsr.data.open_pairs.VideoFrames`); a data pack holds only the frames of
the manifest's pairs, so this dataset needs the fetched clips themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from refsr.data.cache import PathLike, data_root, is_complete
from refsr.data.degrade import make_lr, mod_crop, to_tensor
from refsr.data.fetch import read_manifest
from refsr.data.open_pairs import KINDS, VIDEO_SUFFIXES, VideoFrames, checked_multiple, sequence_files
from refsr.data.standard import STREAM_FRAMES, seeded_generator
from refsr.errors import RefsrError
from refsr.io import read_image

__all__ = ["VideoClip", "video_clips", "read_clip", "ClipFrames"]


@dataclass(frozen=True)
class VideoClip:
    """A clip of the open benchmark: ``name`` (the manifest's pair id without the frame pair), the path under
    the data cache (a video file or an image-sequence pattern), its first usable frame and the manifest note."""

    name: str
    path: str
    first: int
    note: str

    @property
    def grey(self) -> bool:
        """Whether the clip is grey (replicated to three channels: score it on Y)."""
        return "grey" in self.note.lower()


def video_clips(split: str = "eval", *, root: PathLike | None = None, scale: int = 4,
                sources: Sequence[str] | None = None, names: Sequence[str] | None = None) -> list[VideoClip]:
    """The clips behind the ``video`` pairs of ``split`` whose data is fetched.

    Raises:
        RefsrError: an unknown split or clip name, or none of the clips fetched.
    """
    if split not in KINDS:
        raise RefsrError(f"unknown split {split!r} for video clips; choose one of {', '.join(KINDS)}")
    cache = data_root(root)
    clips: dict[str, VideoClip] = {}
    for row in read_manifest("manifest_pairs.csv"):
        if row["split"] != split or row["kind"] != "video":
            continue
        if "x2 only" in row["note"] and scale != 2:
            continue
        if sources is not None and row["source"] not in sources:
            continue
        name = row["pair_id"].rsplit(":", 1)[0]
        first = min(int(row["target_index"]), int(row["ref_index"]))
        known = clips.get(row["target"])
        if known is None or first < known.first:
            clips[row["target"]] = VideoClip(name, row["target"], first, row["note"])
    found = list(clips.values())
    if names:
        wanted = {n.strip() for n in ([names] if isinstance(names, str) else names)}
        short = {c.name.split(":", 1)[-1]: c for c in found} | {c.name: c for c in found}
        unknown = sorted(wanted - set(short))
        if unknown:
            raise RefsrError(f"unknown clip {unknown[0]!r}; the {split} split has "
                             f"{', '.join(c.name.split(':', 1)[-1] for c in found)}")
        found = [c for c in found if c.name in wanted or c.name.split(":", 1)[-1] in wanted]
    fetched = [c for c in found if is_complete(cache / c.path.split("/", 1)[0])]
    if not fetched:
        raise RefsrError(f"{cache}: none of the {split} video clips is fetched; run 'refsr data fetch'")
    return fetched


def read_clip(clip: VideoClip, root: PathLike | None, start: int, count: int) -> list[np.ndarray]:
    """Frames ``clip.first + start`` onwards (at most ``count``) as ``HxWx3`` uint8 RGB (grey replicated)."""
    full = data_root(root) / clip.path
    first = clip.first + start
    if "*" in clip.path:
        return [read_image(p) for p in sequence_files(full)[first : first + count]]
    if Path(clip.path).suffix.lower() not in VIDEO_SUFFIXES:
        raise RefsrError(f"{full}: not a video or an image sequence")
    video = VideoFrames(full)
    indices = list(range(first, min(first + count, len(video))))
    return video.read_sequential(indices)


def _clip_length(clip: VideoClip, root: PathLike | None) -> int:
    """Frames of ``clip`` from its first usable one to its end."""
    full = data_root(root) / clip.path
    if "*" in clip.path:
        total = len(sequence_files(full))
    else:
        total = len(VideoFrames(full))
    return max(total - clip.first, 0)


class ClipFrames(Dataset):
    """Every frame of the open benchmark's video clips, each with a still ``1 .. max_gap`` frames away and,
    sometimes, the LR frames of a chain (see the module docstring).

    Args:
        root: the data cache (``refsr data fetch``).
        split: whose ``video`` clips: ``"cgi"`` (the training clips: Big Buck Bunny, Megamind) or ``"eval"``.
        names: keep only these clips (short names such as ``"bikes"``). None keeps all.
        scale: the super-resolution factor.
        multiple: HR frames are mod-cropped to a multiple of this (default ``lcm(4, scale)``).
        frames: use at most this many frames of each clip (from its first usable one). None: all.
        max_gap: the largest distance between a frame and its still.
        chain_prob: the probability that a sample with ``k > 1`` carries a chain.
        max_chain: the longest chain (0: never a chain; then the samples have no chain keys).
        with_ref_down: add ``ref_down``, the still downscaled by ``scale`` with PIL bicubic.
        keep_decoded: decode every clip once and keep its frames (training reads each frame many times).
        seed: seeds the draws; with :meth:`set_epoch`, the same (seed, epoch, index) gives the same sample.

    Each sample is a dict:

    - ``"lr"``, ``"hr"``, ``"ref"`` (the still), ``"ref_down"`` (with ``with_ref_down``): float32
      ``(3, H, W)`` RGB in [0, 1], as in :class:`refsr.data.OpenPairs`;
    - with ``max_chain > 0``: ``"chain_lr"``, float32 ``(max_chain, 3, H/scale, W/scale)``: the chain's LR
      frames in the order they are upscaled, placed last (the frame just before ``t`` at index
      ``max_chain - 1``; unused places are zero); ``"chain_length"``, an int64 scalar, 0 for no chain;
    - ``"name"``: ``"<clip>:<t>:<still>"``; ``"kind"``: ``"video"``; ``"grey"``: score on Y.

    Raises:
        RefsrError: no clip fetched, a clip too short for ``max_gap``, or bad arguments.
    """

    def __init__(
        self,
        root: PathLike | None = None,
        split: str = "cgi",
        *,
        names: Sequence[str] | None = None,
        scale: int = 4,
        multiple: int | None = None,
        frames: int | None = None,
        max_gap: int = 8,
        chain_prob: float = 0.5,
        max_chain: int = 3,
        with_ref_down: bool = False,
        keep_decoded: bool = False,
        seed: int = 0,
    ) -> None:
        self.scale, self.multiple = scale, checked_multiple(scale, multiple)
        if not isinstance(max_gap, int) or max_gap < 1:
            raise RefsrError(f"max_gap must be a positive integer, got {max_gap!r}")
        if not isinstance(max_chain, int) or max_chain < 0:
            raise RefsrError(f"max_chain must be a non-negative integer, got {max_chain!r}")
        if not 0.0 <= float(chain_prob) <= 1.0:
            raise RefsrError(f"chain_prob must lie in [0, 1], got {chain_prob!r}")
        if frames is not None and (not isinstance(frames, int) or frames < 2):
            raise RefsrError(f"frames must be an integer of at least 2, got {frames!r}")
        self.root = data_root(root)
        self.max_gap, self.max_chain, self.chain_prob = max_gap, max_chain, float(chain_prob)
        self.with_ref_down, self.keep_decoded = with_ref_down, bool(keep_decoded)
        self.seed, self.epoch = int(seed), 0
        self.clips = video_clips(split, root=self.root, scale=scale, names=names)
        self.lengths = []
        for clip in self.clips:
            length = _clip_length(clip, self.root)
            if frames is not None:
                length = min(length, frames)
            if length <= max_gap:
                raise RefsrError(f"clip {clip.name} has {length} frames; max_gap={max_gap} needs more than that")
            self.lengths.append(length)
        self.offsets = np.cumsum([0, *self.lengths]).tolist()
        self._decoded: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._videos: dict[int, VideoFrames] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Draw other stills and chains (call at each epoch); the same (seed, epoch) gives the same samples."""
        self.epoch = int(epoch)

    # -- frames ----------------------------------------------------------------------------------------------
    def preload(self) -> None:
        """With ``keep_decoded``, decode every clip now (e.g. before data-loader workers are forked)."""
        if self.keep_decoded:
            for c in range(len(self.clips)):
                self._whole_clip(c)

    def _prepare(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hr = mod_crop(frame, self.multiple)
        return hr, make_lr(hr, self.scale)

    def _whole_clip(self, c: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        kept = self._decoded.get(c)
        if kept is None:
            pairs = [self._prepare(f) for f in read_clip(self.clips[c], self.root, 0, self.lengths[c])]
            kept = self._decoded[c] = ([p[0] for p in pairs], [p[1] for p in pairs])
        return kept

    def _frames(self, c: int, indices: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(hr, lr)`` of frames ``indices`` (from the clip's first usable frame) of clip ``c``."""
        if self.keep_decoded:
            hrs, lrs = self._whole_clip(c)
            return [(hrs[i], lrs[i]) for i in indices]
        clip = self.clips[c]
        full = self.root / clip.path
        if "*" in clip.path:
            files = sequence_files(full)
            return [self._prepare(read_image(files[clip.first + i])) for i in indices]
        video = self._videos.get(c)
        if video is None:
            video = self._videos[c] = VideoFrames(full)
        return [self._prepare(f) for f in video.read([clip.first + i for i in indices])]

    # -- samples ---------------------------------------------------------------------------------------------
    def draw(self, index: int) -> tuple[int, int, int, list[int]]:
        """``(clip, t, still, chain)`` of sample ``index`` in this epoch: frame numbers within the clip, the
        chain in the order it is upscaled (empty for none)."""
        c = int(np.searchsorted(self.offsets, index, side="right")) - 1
        t, n = index - self.offsets[c], self.lengths[c]
        g = seeded_generator(self.seed, STREAM_FRAMES, self.epoch, index)
        gap = 1 + int(torch.randint(self.max_gap, (1,), generator=g))
        # Toward the still: -1 when it comes before t. A gap that fits on neither side is shortened.
        sides = [d for d in (-1, 1) if 0 <= t + d * gap < n]
        if not sides:
            gap = max(t, n - 1 - t)
            sides = [-1 if t >= n - 1 - t else 1]
        side = sides[int(torch.randint(len(sides), (1,), generator=g))]
        chain_draw = float(torch.rand((), generator=g))
        length_draw = int(torch.randint(self.max_chain, (1,), generator=g)) if self.max_chain else 0
        chain: list[int] = []
        if self.max_chain and gap > 1 and chain_draw < self.chain_prob:
            length = 1 + length_draw % min(self.max_chain, gap - 1)
            chain = [t + side * s for s in range(length, 0, -1)]
        return c, t, t + side * gap, chain

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        index %= len(self)
        c, t, still, chain = self.draw(index)
        frames = self._frames(c, [t, still, *chain])
        (hr, lr), (ref, ref_lr) = frames[0], frames[1]
        clip = self.clips[c]
        sample: dict[str, Any] = {"lr": to_tensor(lr), "hr": to_tensor(hr), "ref": to_tensor(ref),
                                  "name": f"{clip.name}:{t}:{still}", "kind": "video", "grey": clip.grey}
        if self.with_ref_down:
            sample["ref_down"] = to_tensor(ref_lr)  # make_lr of the still: what a pair's Ref↓ is
        if self.max_chain:
            chain_lr = torch.zeros((self.max_chain, *sample["lr"].shape))
            for place, (_, frame_lr) in zip(range(self.max_chain - len(chain), self.max_chain), frames[2:]):
                chain_lr[place] = to_tensor(frame_lr)
            sample["chain_lr"] = chain_lr
            sample["chain_length"] = torch.tensor(len(chain), dtype=torch.int64)
        return sample
