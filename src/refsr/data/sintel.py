"""MPI Sintel as RefSR-Net's training and test data, and the Middlebury ``.flo`` optical-flow format.

RefSR-Net (Zheng et al., BMVC 2017, section 5) takes **the HR frame t as the reference for the LR of frame
t + 1**, and trains its correspondence network on Sintel's ground-truth flow.

Layout (the MPI Sintel download, ``MPI-Sintel-complete``)::

    <root>/training/clean/<scene>/frame_0001.png ...     # rendered frames, 1-based, 4 digits
    <root>/training/final/<scene>/frame_0001.png ...
    <root>/training/flow/<scene>/frame_0001.flo ...      # one flow per frame but the last
    <root>/test/{clean,final}/<scene>/frame_XXXX.png     # no flow

**Flow direction.** Sintel's ``flow/<scene>/frame_t.flo`` is the *forward* flow of frame t: the pixel at
``(x, y)`` of frame t moves to ``(x + u, y + v)`` in frame t + 1. Frame t is the reference here, so the
returned ``"flow"`` ``(2, H, W)`` (channel 0 = u, horizontal, channel 1 = v, vertical, in HR pixels) is
defined on the **reference grid** and points into the **input (HR) frame**. To fetch, for an input pixel,
its reference pixel, one needs the backward flow, which Sintel does not ship; invert or splat this one.

Size rule: HR and reference mod-cropped (bottom/right) to a multiple of ``scale`` (Sintel's 1024x436 frames
lose 4 rows at x8); the flow is cropped with the reference, which does not change its values.
RefSR-Net works at x8, the default here.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from refsr.data.degrade import make_lr, mod_crop
from refsr.data.standard import PathLike, SeededDataset, list_images, read_rgb, resolve_root
from refsr.errors import RefsrError
from refsr.io import atomic_output, check_output_folder

__all__ = ["FLO_MAGIC", "read_flo", "write_flo", "decode_flo", "encode_flo", "SintelPairs"]

FLO_MAGIC = 202021.25  # the float32 whose little-endian bytes spell "PIEH"
_FLO_HEADER = struct.Struct("<fii")
# Middlebury's reference reader refuses larger sides; it also protects against reading garbage as a size.
_FLO_MAX_SIDE = 99_999


def decode_flo(data: bytes, *, source: str = "flow data") -> np.ndarray:
    """Parse the bytes of a Middlebury ``.flo`` file.

    Format (little-endian): float32 magic 202021.25, int32 width, int32 height, then ``height * width``
    pairs ``(u, v)`` of float32, row by row.

    Returns:
        ``(H, W, 2)`` float32 array, ``[..., 0] = u`` (horizontal), ``[..., 1] = v`` (vertical).

    Raises:
        RefsrError: wrong magic, impossible size, or a data length that does not match the header.
    """
    if len(data) < _FLO_HEADER.size:
        raise RefsrError(f"{source}: {len(data)} bytes is too short for a .flo header (12 bytes)")
    magic, width, height = _FLO_HEADER.unpack_from(data)
    if magic != np.float32(FLO_MAGIC):
        raise RefsrError(f"{source}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    if not (0 < width <= _FLO_MAX_SIDE and 0 < height <= _FLO_MAX_SIDE):
        raise RefsrError(f"{source}: impossible flow size {width}x{height} in the .flo header")
    expected = _FLO_HEADER.size + 8 * width * height
    if len(data) != expected:
        raise RefsrError(
            f"{source}: {len(data)} bytes, but a {width}x{height} .flo file has {expected}; "
            "the file is truncated or corrupt"
        )
    flow = np.frombuffer(data, dtype="<f4", count=2 * width * height, offset=_FLO_HEADER.size)
    return flow.reshape(height, width, 2).astype(np.float32)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file as an ``(H, W, 2)`` float32 array (u, v); see :func:`decode_flo`."""
    p = Path(path)
    if not p.is_file():
        raise RefsrError(f"{p}: no such .flo file")
    return decode_flo(p.read_bytes(), source=str(p))


def _flow_hw2(flow: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accept ``(H, W, 2)`` arrays and ``(2, H, W)`` tensors/arrays; return ``(H, W, 2)`` float32."""
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().numpy()
        if flow.ndim == 3 and flow.shape[0] == 2:
            flow = np.moveaxis(flow, 0, -1)
    arr = np.asarray(flow)
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise RefsrError(f"expected a flow of shape (H, W, 2) (or a (2, H, W) tensor), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RefsrError(f"cannot write an empty flow of shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def encode_flo(flow: np.ndarray | torch.Tensor) -> bytes:
    """The bytes of a ``.flo`` file holding ``flow`` (``(H, W, 2)`` array or ``(2, H, W)`` tensor)."""
    arr = _flow_hw2(flow)
    height, width = arr.shape[:2]
    if width > _FLO_MAX_SIDE or height > _FLO_MAX_SIDE:
        raise RefsrError(f"a {width}x{height} flow is too large for the .flo format")
    return _FLO_HEADER.pack(FLO_MAGIC, width, height) + arr.astype("<f4").tobytes()


def write_flo(path: PathLike, flow: np.ndarray | torch.Tensor) -> Path:
    """Write ``flow`` as a Middlebury ``.flo`` file, atomically (temporary file, then rename)."""
    p = Path(path)
    data = encode_flo(flow)
    check_output_folder(p.parent if str(p.parent) else Path("."), for_file=p)
    with atomic_output(p) as tmp:
        tmp.write_bytes(data)
    return p


_FRAME = re.compile(r"^frame_(\d+)$")
_SINTEL_EXPECTED = "training/{clean,final}/<scene>/frame_XXXX.png (and training/flow/<scene>/frame_XXXX.flo)"


class SintelPairs(SeededDataset):
    """Consecutive Sintel frames: HR frame t is the reference, the LR of frame t + 1 the input.

    Args:
        root: the Sintel folder (holding ``training/``), or the ``training``/``test`` folder itself.
        split: ``"training"`` or ``"test"`` (the test split has no flow).
        render_pass: ``"clean"`` or ``"final"``.
        scenes: keep only these scene names (e.g. a validation subset); all by default.
        scale: the SR factor (RefSR-Net: 8).
        with_flow: return ``"flow"`` (needs ``flow/<scene>/frame_t.flo`` for every pair).
        seed, transform: see :class:`refsr.data.standard.SeededDataset`.

    Samples: ``hr`` (frame t + 1), ``lr = make_lr(hr)``, ``ref`` (frame t), ``ref_down = make_lr(ref)``,
    float32 RGB in [0, 1]; ``name`` (``"<pass>/<scene>/frame_XXXX"`` of the input), ``ref_name``, ``pad``
    ``(0, 0)``, ``hr_size``; with ``with_flow``, ``flow`` ``(2, H, W)`` float32 (see the module docstring).
    """

    def __init__(
        self,
        root: PathLike,
        *,
        split: str = "training",
        render_pass: str = "clean",
        scenes: Sequence[str] | None = None,
        scale: int = 8,
        with_flow: bool = True,
        seed: int = 0,
        transform: Callable[..., dict] | None = None,
    ) -> None:
        super().__init__(seed=seed, transform=transform)
        if split not in ("training", "test"):
            raise RefsrError(f"unknown Sintel split {split!r}; use 'training' or 'test'")
        if render_pass not in ("clean", "final"):
            raise RefsrError(f"unknown Sintel pass {render_pass!r}; use 'clean' or 'final'")
        if split == "test" and with_flow:
            raise RefsrError("the Sintel test split has no ground-truth flow; pass with_flow=False")
        self.split, self.render_pass, self.scale, self.with_flow = split, render_pass, int(scale), with_flow
        base = resolve_root(
            root, what="MPI Sintel", subfolders=(split, f"MPI-Sintel-complete/{split}"),
            accept=lambda p: (p / render_pass).is_dir() or (p / split / render_pass).is_dir(),
            expected=_SINTEL_EXPECTED,
        )
        self.root = base / split if (base / split / render_pass).is_dir() else base
        frames_root = self.root / render_pass
        scene_dirs = sorted(p for p in frames_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if scenes is not None:
            wanted = list(scenes)
            known = {p.name for p in scene_dirs}
            unknown = [s for s in wanted if s not in known]
            if unknown:
                raise RefsrError(f"MPI Sintel: no scene {unknown[0]!r} in {frames_root}")
            scene_dirs = [p for p in scene_dirs if p.name in set(wanted)]
        # (scene, t, path of frame t, path of frame t + 1)
        self.pairs: list[tuple[str, int, Path, Path]] = []
        for scene_dir in scene_dirs:
            numbered = {}
            for p in list_images(scene_dir):
                m = _FRAME.match(p.stem)
                if m:
                    numbered[int(m.group(1))] = p
            for t in sorted(numbered):
                if t + 1 in numbered:
                    self.pairs.append((scene_dir.name, t, numbered[t], numbered[t + 1]))
        if not self.pairs:
            raise RefsrError(f"MPI Sintel: no consecutive frame_XXXX.png pairs under {frames_root}; "
                             f"expected {_SINTEL_EXPECTED}")
        if with_flow:
            for scene, t, _, _ in self.pairs:
                if not self.flow_path(scene, t).is_file():
                    raise RefsrError(
                        f"MPI Sintel: missing flow {self.flow_path(scene, t)}; "
                        "pass with_flow=False to go without"
                    )

    def flow_path(self, scene: str, t: int) -> Path:
        """Where the forward flow of frame ``t`` of ``scene`` lives."""
        return self.root / "flow" / scene / f"frame_{t:04d}.flo"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        scene, t, ref_path, input_path = self.pairs[index]
        s = self.scale
        hr, ref = mod_crop(read_rgb(input_path), s), mod_crop(read_rgb(ref_path), s)
        sample: dict[str, Any] = {
            "hr": hr, "lr": make_lr(hr, s), "ref": ref, "ref_down": make_lr(ref, s),
            "name": f"{self.render_pass}/{scene}/{input_path.stem}",
            "ref_name": f"{self.render_pass}/{scene}/{ref_path.stem}",
            "pad": (0, 0), "hr_size": (int(hr.shape[0]), int(hr.shape[1])),
        }
        if self.with_flow:
            flow = read_flo(self.flow_path(scene, t))
            if flow.shape[0] < ref.shape[0] or flow.shape[1] < ref.shape[1]:
                raise RefsrError(f"{self.flow_path(scene, t)}: the flow ({flow.shape[1]}x{flow.shape[0]}) is "
                                 f"smaller than its frame")
            flow = flow[: ref.shape[0], : ref.shape[1]]
            sample["flow"] = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))
        return self._finish(sample, index)
