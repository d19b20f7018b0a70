"""What a training run reports: a tqdm progress bar, ``metrics.jsonl`` and TensorBoard (rank 0 only).

``OUT/metrics.jsonl`` has one JSON object per line: ``{"kind": "train", "iteration", "epoch", "lr",
"losses": {name: value}, "total"}`` after every iteration, and ``{"kind": "val", "iteration", "epoch",
"psnr", ...}`` after every validation. On ``--resume`` the lines past the checkpoint are dropped first, so
the file reads as one uninterrupted run. TensorBoard events go to ``OUT/tb/`` (scalars ``loss/*``, ``lr/*``,
``val/*``; image grids ``train/images`` and ``val/images`` of LR↑, SR, HR and Ref side by side).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.io import atomic_output

__all__ = ["Monitor", "image_grid", "truncate_metrics", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def image_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, ref: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """One row of LR↑ (bicubic), SR, HR and Ref (resized to the HR size), ``(3, H, 4W + 3 gap)`` in [0, 1].

    Args: single images ``(3, h, w)`` (LR), ``(3, H, W)`` (SR, HR) and ``(3, Hr, Wr)`` (Ref), RGB float.
    """
    size = tuple(hr.shape[-2:])
    lr_up = F.interpolate(lr[None].float(), size=size, mode="bicubic", align_corners=False)[0]
    ref_fit = F.interpolate(ref[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    panels = [lr_up, sr.float(), hr.float(), ref_fit]
    spacer = torch.ones(3, size[0], gap)
    row: list[torch.Tensor] = []
    for i, panel in enumerate(panels):
        if i:
            row.append(spacer)
        row.append(panel.detach().cpu().clamp(0, 1))
    return torch.cat(row, dim=-1)


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``OUT/metrics.jsonl`` (empty when there is none)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(out_dir: Path, iteration: int) -> None:
    """Drop the records past ``iteration`` (the ones a resumed run is about to redo), atomically."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return
    keep = [r for r in read_metrics(out_dir) if int(r.get("iteration", 0)) <= iteration]
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in keep)


class Monitor:
    """Progress bar, metrics file and TensorBoard writer of the main process; a no-op elsewhere.

    Args:
        out_dir: the run's folder.
        enabled: False on every rank but 0.
        total: iterations to run (None when only a time budget bounds the run).
        initial: iterations already done (on resume).
        progress: show the tqdm bar.
        tensorboard: write TensorBoard events (needs the ``tensorboard`` package).
        desc: the bar's label.
    """

    def __init__(self, out_dir: Path, *, enabled: bool, total: int | None, initial: int, progress: bool,
                 tensorboard: bool, desc: str) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self._bar = None
        self._writer = None
        self._file = None
        if not enabled:
            return
        self._file = open(out_dir / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RefsrError(
                    "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                    "(or set train.tensorboard: false)"
                ) from None
            # purge_step drops the events a resumed run redoes, so the curves have no doubled stretch.
            self._writer = SummaryWriter(str(out_dir / "tb"), purge_step=initial + 1 if initial else None)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True,
                             file=sys.stderr)

    def iteration(self, record: Mapping[str, Any], *, scalars: bool) -> None:
        """Record one iteration; TensorBoard scalars and the bar's numbers only when ``scalars``."""
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps({"kind": "train", **record}) + "\n")
        self._file.flush()
        if not scalars:
            if self._bar is not None:
                self._bar.update(1)
            return
        step = record["iteration"]
        if self._writer is not None:
            for name, value in record["losses"].items():
                self._writer.add_scalar(f"loss/{name}", value, step)
            self._writer.add_scalar("loss/total", record["total"], step)
            for name, value in record["lr"].items():
                self._writer.add_scalar(f"lr/{name}", value, step)
            for name, value in record.get("metrics", {}).items():
                self._writer.add_scalar(f"metric/{name}", value, step)
            for name in ("samples_per_second", "peak_gpu_memory_mb"):
                if name in record:
                    self._writer.add_scalar(f"speed/{name}", record[name], step)
            self._writer.add_scalar("epoch", record["epoch"], step)
        if self._bar is not None:
            lrs = record["lr"]
            lr = lrs.get("default", next(iter(lrs.values())))
            self._bar.set_postfix(loss=f"{record['total']:.4g}", lr=f"{lr:.3g}", epoch=record["epoch"], refresh=False)
            self._bar.update(1)

    def validation(self, record: Mapping[str, Any], grids: list[torch.Tensor]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps({"kind": "val", **record}) + "\n")
        self._file.flush()
        step = record["iteration"]
        if self._writer is not None:
            for key in ("psnr", "ssim"):
                if record.get(key) is not None:
                    self._writer.add_scalar(f"val/{key}", record[key], step)
            for i, grid in enumerate(grids):
                self._writer.add_image(f"val/images/{i}", grid, step)
        text = f"iteration {step}: validation PSNR {record['psnr']:.3f} dB"
        if record.get("ssim") is not None:
            text += f", SSIM {record['ssim']:.4f}"
        self.message(text + (" (best so far)" if record.get("best") else ""))

    def images(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.enabled and self._writer is not None:
            self._writer.add_image(tag, grid, step)

    def message(self, text: str) -> None:
        """A line for the user (above the progress bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
