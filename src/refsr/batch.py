"""What ``refsr upscale`` does with its inputs: expand them into jobs, check every job before any work, and
report progress the way the terminal (or the log) wants it.

Inputs. Each ``INPUT`` is an image file, a folder (its images, not recursive) or a glob pattern
(``"frames/*.png"``, quoted so that refsr, not the shell, expands it). One image file writes ``-o OUT`` (an
image name); anything else is a batch and ``-o`` names a folder, which is created only when the first image is
written. Output names are the input names, so two inputs of the same name are refused.

Checks. Before the first image is computed every input's header is read (and, in a batch, its pixels decoded
once and dropped, so that a truncated file is found now and not after half the batch) and its size is planned
against the memory budget (:func:`refsr.inference.plan_upscale`). All the bad inputs are reported together, in
one line; with ``--keep-going`` each one gets its own line, the good ones are processed and the run ends with
exit status 2 and a summary line.

Progress. On a terminal: a bar over images (batches) and one over tiles, and a short status line for a single
image (model, device, tiles, time). Not on a terminal: nothing, unless ``--progress`` asks, and then one plain
line per image (a log cannot take a redrawn bar). ``--quiet`` is silent.
"""

from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TextIO

from refsr.errors import RefsrError
from refsr.io import IMAGE_EXTENSIONS, check_output_folder, check_output_path, is_image_path

__all__ = ["Job", "expand_inputs", "make_jobs", "Reporter", "progress_mode", "is_terminal", "GLOB_CHARACTERS"]

#: Characters that make an input a glob pattern (when no file of that name exists).
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Job:
    """One image to upscale: read ``source``, write ``target``."""

    source: Path
    target: Path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p))


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], bool]:
    """The image files that ``inputs`` name, and whether this is a batch (several images, a folder, a glob).

    Raises:
        RefsrError: a missing input, a folder without images or a pattern that matches no image.
    """
    files: list[Path] = []
    batch = len(inputs) > 1
    known = ", ".join(sorted(IMAGE_EXTENSIONS))
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            batch = True
            found = _images_in(path)
            if not found:
                raise RefsrError(f"{path}: the folder holds no images ({known})")
            files += found
        elif path.exists():
            files.append(path)
        elif GLOB_CHARACTERS & set(str(item)):
            batch = True
            found = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file() and is_image_path(p))
            if not found:
                raise RefsrError(f"{item}: no image file matches the pattern ({known})")
            files += found
        else:
            raise RefsrError(f"{path}: no such file")
    return files, batch


def make_jobs(inputs: Sequence[str | Path], output: Path, refs: Sequence[Path]) -> tuple[list[Job], bool]:
    """Jobs for ``refsr upscale INPUT... -o OUTPUT``, with the output side checked (nothing is created).

    Returns:
        The jobs and whether this is a batch (``output`` is then a folder).

    Raises:
        RefsrError: see :func:`expand_inputs`; an output that cannot be written, that is an input, or (in a
            batch) that is not a folder name, or two inputs that would write the same file.
    """
    files, batch = expand_inputs(inputs)
    if not batch:
        source = files[0]
        if output.is_dir():
            raise RefsrError(f"{output}: is a folder; name the output image, e.g. {output / source.name}")
        check_output_path(output, inputs=(source, *refs))
        return [Job(source, output)], False
    if output.exists() and not output.is_dir():
        raise RefsrError(f"{output}: the input is several images, so the output must be a folder, not a file")
    if is_image_path(output):
        raise RefsrError(f"{output}: the input is several images, so the output must be a folder, not an image name")
    sources = {p.resolve() for p in files} | {Path(r).resolve() for r in refs}
    jobs: list[Job] = []
    seen: dict[Path, Path] = {}
    for source in files:
        target = output / source.name
        if target.resolve() in sources:
            raise RefsrError(f"{target}: the output would overwrite an input; choose another output folder")
        if target in seen:
            raise RefsrError(f"{seen[target]} and {source} would both be written to {target}; upscale them "
                             "into separate folders")
        if target.is_dir():
            raise RefsrError(f"{target}: is a folder, in the way of the output image")
        seen[target] = source
        jobs.append(Job(source, target))
    check_output_folder(output, create=True)
    return jobs, True


def progress_mode(quiet: bool, forced: bool, stream: TextIO | None = None) -> str:
    """``"bar"`` (a terminal), ``"lines"`` (``--progress`` into a log), or ``"off"``."""
    if quiet:
        return "off"
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        return "bar"
    return "lines" if forced else "off"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for a closed or replaced stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Reporter:
    """Progress and status on stderr, as :func:`progress_mode` says; errors always.

    Args:
        mode: ``"bar"``, ``"lines"`` or ``"off"``.
        total: how many images.
        unit: what is counted (``"img"``, ``"frame"``).
    """

    def __init__(self, mode: str, total: int, unit: str = "img") -> None:
        self.mode = mode
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._bar: Any = None
        if mode == "bar" and total > 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    @property
    def tile_bars(self) -> bool:
        """Whether the tile loop may draw its own bar."""
        return self.mode == "bar"

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def finished(self, job: Job, seconds: float, status: str) -> None:
        """One image is written: advance the bar, or print one line (``lines``; a single image on a terminal)."""
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self.mode == "lines" and self.total > 1:
            self._write(f"[{self.done}/{self.total}] {job.source} -> {job.target}: {status}, {seconds:.1f} s")
        elif self.mode != "off":
            self._write(f"{job.target}: {status}, {seconds:.1f} s")

    def error(self, message: str) -> None:
        """A bad input (``--keep-going``): its own ``refsr: error:`` line, whatever the mode."""
        self._write(f"refsr: error: {message}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
