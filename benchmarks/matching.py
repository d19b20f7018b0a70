"""Time, memory and FLOP table for the matching methods (and MASA's transfer) on CPU.

Usage::

    python benchmarks/matching.py            # full sweep, about 2-3 minutes on 2 cores
    python benchmarks/matching.py --quick    # 64^2 and 128^2 only

Every case runs in a fresh subprocess (``--case``), so that one case's allocations cannot hide in another's
peak. Inside it: import, build the random inputs, make one call on a tiny 16x16 input that absorbs one-time
set-up (thread pool, oneDNN kernels), record ``ru_maxrss`` (the baseline: interpreter, torch, inputs), run
the method ``repeat`` times, record ``ru_maxrss`` again. "Peak extra memory" is the difference: the largest
resident set the method added on top of its inputs, measured by the kernel, so it includes allocator
overhead and short-lived temporaries. Features are float32, C=64, query size = key size, N=1. "time" is the
best wall-clock time of ``--repeat`` runs (a case slower than 5 s runs once); "cpu" is the best process CPU
time (all threads), a fairer figure when other jobs share the cores.

FLOP counts (multiply-add = 2 FLOPs; only the patch inner products, which dominate):

* dense: ``2 * h*w * H*W * C * 9``: 309 GFLOP at 128^2.
* mem:   coarse ``2 * blocks * H*W * C * 9 * len(dilations)`` + fine ``2 * h*w * dy*dx * C * 9``:
  14.5 + 3.2 = 17.7 GFLOP at 128^2 (blocks = 256, d = 13).
* patchmatch: no closed form here (depends on its schedule and proxy); shown as "n/a".

To add a method, add one ``Method`` line to ``METHODS``. A method whose module fails to import is skipped
with a note.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

SWEEP = (32, 64, 96, 128, 192, 256)
QUICK_SWEEP = (64, 128)
CHANNELS = 64
# Skip a case whose FLOP count would take far too long on a 2-core CPU (dense beyond 256^2).
MAX_GFLOP = 6000.0


def dense_flops(h: int, w: int, height: int, width: int, c: int) -> float:
    return 2.0 * h * w * height * width * c * 9


def mem_flops(h: int, w: int, height: int, width: int, c: int) -> float:
    from refsr.matching.mem import mem_geometry

    geometry = mem_geometry((h, w), (height, width))
    blocks = geometry.block_grid[0] * geometry.block_grid[1]
    dy, dx = geometry.diameter
    coarse = 2.0 * blocks * height * width * c * 9 * 3
    fine = 2.0 * h * w * dy * dx * c * 9
    return coarse + fine


@dataclass(frozen=True)
class Method:
    name: str
    target: str  # "module:function", called as function(query, key)
    flops: Optional[Callable[[int, int, int, int, int], float]] = None


METHODS: list[Method] = [
    Method("dense", "refsr.matching.dense:match_dense", dense_flops),
    Method("mem", "refsr.matching.mem:match_mem", mem_flops),
    Method("patchmatch", "refsr.matching.patchmatch:match_patchmatch"),
]


def _resolve(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(kind: str, size: int, repeat: int, threads: int) -> dict:
    """Run one case in this process; ``kind`` is a method name or "transfer"."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, CHANNELS, size, size, generator=gen)
    key = torch.randn(1, CHANNELS, size, size, generator=gen)
    if kind == "transfer":
        from refsr.matching.mem import match_mem
        from refsr.matching.transfer import masa_transfer

        with torch.no_grad():
            corr = match_mem(query, key)
        refs = [torch.randn(1, CHANNELS, s * size, s * size, generator=gen) for s in (1, 2, 4)]

        def call():
            return masa_transfer(corr, refs)

    else:
        function = _resolve(next(m.target for m in METHODS if m.name == kind))

        def call():
            return function(query, key)

    # One tiny call first, so that one-time set-up (thread pool, oneDNN kernels) is not counted as the
    # method's memory or time.
    with torch.no_grad():
        if kind == "transfer":
            tiny = torch.randn(1, 4, 16, 16, generator=gen)
            masa_transfer(match_mem(tiny, tiny), [torch.randn(1, 4, 16 * s, 16 * s) for s in (1, 2, 4)])
        else:
            function(torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 4, 16, 16, generator=gen))
    baseline = _maxrss_bytes()
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = call()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            del result
            if times[0] > 5.0:  # one run of a slow case is enough for its order of magnitude
                break
    return {
        "best": min(times),
        "cpu": min(cpu_times),
        "runs": len(times),
        "extra_bytes": _maxrss_bytes() - baseline,
    }


def _spawn(kind: str, size: int, repeat: int, threads: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--case", kind, str(size), str(repeat)]
    command.append(str(threads))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 64^2 and 128^2 only")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--methods", default=",".join(m.name for m in METHODS), help="comma-separated")
    parser.add_argument("--no-transfer", action="store_true", help="skip the MASA transfer table")
    parser.add_argument(
        "--case", nargs=4, metavar=("KIND", "SIZE", "REPEAT", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.case:
        kind, size, repeat, threads = args.case
        print(json.dumps(run_case(kind, int(size), int(repeat), int(threads))))
        return 0

    load = os.getloadavg()[0]
    print(f"# CPU threads: {args.threads}; load average at start: {load:.2f}")
    if load > 1.0:
        print("# warning: the machine is busy; times will be inflated")
    sizes = QUICK_SWEEP if args.quick else SWEEP
    wanted = set(args.methods.split(","))
    methods = []
    for method in METHODS:
        if method.name not in wanted:
            continue
        try:
            _resolve(method.target)
        except Exception as error:  # a missing or broken module must not sink the whole table
            reason = f"{type(error).__name__}: {error}"
            print(f"# note: skipping {method.name}: cannot import {method.target} ({reason})")
            continue
        methods.append(method)

    header = (
        f"{'method':<11} {'size (q=k)':>10} {'GFLOP':>9} {'time (s)':>9} {'cpu (s)':>8} {'runs':>4} "
        f"{'GFLOP/s':>8} {'peak extra MB':>14}"
    )
    print(header)
    print("-" * len(header))
    times: dict[tuple[str, int], tuple[float, float]] = {}
    for method in methods:
        for size in sizes:
            gflop = method.flops(size, size, size, size, CHANNELS) / 1e9 if method.flops else None
            if gflop is not None and gflop > MAX_GFLOP:
                print(f"{method.name:<11} {size:>7}^2 {gflop:>9.1f}   skipped (too slow for this machine)")
                continue
            result = _spawn(method.name, size, args.repeat, args.threads)
            if "error" in result:
                print(f"{method.name:<11} {size:>7}^2   error: {result['error']}")
                continue
            times[method.name, size] = (result["best"], result["cpu"])
            rate = f"{gflop / result['best']:>8.1f}" if gflop is not None else f"{'n/a':>8}"
            flop_text = f"{gflop:>9.1f}" if gflop is not None else f"{'n/a':>9}"
            print(
                f"{method.name:<11} {size:>7}^2 {flop_text} {result['best']:>9.3f} {result['cpu']:>8.3f} "
                f"{result['runs']:>4} {rate} "
                f"{result['extra_bytes'] / 2**20:>14.0f}",
                flush=True,
            )

    if any(name == "dense" for name, _ in times):
        print()
        print("speed-up over dense, wall-clock (cpu time):")
        for method in methods:
            if method.name == "dense":
                continue
            cells = []
            for size in sizes:
                if ("dense", size) in times and (method.name, size) in times:
                    (dense_wall, dense_cpu), (wall, cpu) = times["dense", size], times[method.name, size]
                    cells.append(f"{size}^2: {dense_wall / wall:.1f}x ({dense_cpu / cpu:.1f}x)")
            print(f"  {method.name:<11} " + ", ".join(cells))

    if not args.no_transfer:
        print()
        print("MASA transfer (x1, x2, x4 from Ref maps of Ref↓ size x1/x2/x4), C=64:")
        for size in (QUICK_SWEEP[-1:] if args.quick else (64, 128)):
            result = _spawn("transfer", size, args.repeat, args.threads)
            if "error" in result:
                print(f"  LR {size}^2: error: {result['error']}")
                continue
            print(
                f"  LR {size}^2, Ref↓ {size}^2 (Ref {4 * size}^2): best {result['best']:.3f} s "
                f"(cpu {result['cpu']:.3f} s) over "
                f"{result['runs']} runs, peak extra {result['extra_bytes'] / 2**20:.0f} MB "
                f"(outputs alone: {CHANNELS * 21 * size * size * 4 / 2**20:.0f} MB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
