"""Peak memory and time of ``refsr.upscale_video`` against the clip's length: the video path streams, so the
peak should not grow with the number of frames (issue #20: 300 frames within 1.2x the peak of 30).

Each case runs in a fresh child process, which reports its own peak RSS: ``VmHWM`` from ``/proc/self/status``
(the high-water mark of the process's own memory; ``ru_maxrss`` would not do, Linux carries it across
``exec`` from the parent). The clips are made beforehand in a temporary folder: a camera pan over a real test
photo (``tests/assets/astronaut.png`` enlarged x2), HR windows of 256x192, LR = PIL bicubic /4 (64x48), with a
mono PCM sound track, written lossless (FFV1 in Matroska); one still (the HR of frame 0). The run uses the
default model with ``--temporal`` (the previous output is encoded as a reference every frame: the heaviest
per-frame path), H.264 output.

    python benchmarks/video.py                       # 30 and 300 frames
    python benchmarks/video.py --frames 30 100 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads({threads})
import refsr
clip, still, out = {paths!r}
started = time.perf_counter()
refsr.upscale_video(clip, out, [still], temporal=True, progress=False)
seconds = time.perf_counter() - started
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(seconds=seconds, peak=int(peak) * 1024)))
"""


def _pan(count: int) -> list[np.ndarray]:
    """HR frames of a back-and-forth pan over the enlarged test photo, one pixel per frame."""
    photo = Image.open(ROOT / "tests" / "assets" / "astronaut.png").convert("RGB")
    big = np.asarray(photo.resize((photo.width * 2, photo.height * 2), Image.BICUBIC))
    room_x, room_y = big.shape[1] - 256, big.shape[0] - 192
    frames = []
    for i in range(count):
        x = i % (2 * room_x)
        x = x if x < room_x else 2 * room_x - x  # a triangle wave: back and forth
        y = (i // 3) % room_y
        frames.append(np.ascontiguousarray(big[y : y + 192, x : x + 256]))
    return frames


def make_clip(folder: Path, count: int) -> tuple[Path, Path]:
    """The LR clip (with sound) and the still, written into ``folder``."""
    import av

    hr = _pan(count)
    Image.fromarray(hr[0]).save(folder / "still.png")
    path = folder / f"clip{count}.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("ffv1", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        time_base = video.time_base = Fraction(1, 25)
        sound = out.add_stream("pcm_s16le", rate=8000)
        sound.layout = "mono"
        for i, frame in enumerate(hr):
            lr = np.asarray(Image.fromarray(frame).resize((64, 48), Image.BICUBIC))
            picture = av.VideoFrame.from_ndarray(lr, format="rgb24")
            picture.pts, picture.time_base = i, time_base
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        wave = (np.sin(np.arange(count * 320) / 9.0) * 6000).astype(np.int16)
        chunk = av.AudioFrame.from_ndarray(wave[None], format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = 8000, 0
        out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    return path, folder / "still.png"


def measure(clip: Path, still: Path, out: Path, threads: int) -> dict:
    code = _CHILD.format(threads=threads, paths=(str(clip), str(still), str(out)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not Path("/proc/self/status").is_file():
        raise SystemExit("this benchmark reads the peak RSS from Linux's /proc/self/status")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.frames:
            clip, still = make_clip(Path(tmp), count)
            result = measure(clip, still, Path(tmp) / f"out{count}.mp4", args.threads)
            rows.append((count, result["seconds"], result["peak"]))
            print(f"{count:>6} frames  {result['seconds']:8.1f} s  {result['seconds'] / count:6.2f} s/frame  "
                  f"peak RSS {result['peak'] / 2**20:8.1f} MB", flush=True)
    base = rows[0][2]
    print("\nframes  seconds  peak RSS (MB)  peak / first row")
    for count, seconds, peak in rows:
        print(f"{count:>6}  {seconds:7.1f}  {peak / 2**20:13.1f}  {peak / base:16.3f}")


if __name__ == "__main__":
    main()
