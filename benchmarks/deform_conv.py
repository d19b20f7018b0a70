"""Time and memory table for ``refsr.ops.deform_conv2d`` (DCNv2) on CPU, beside a plain ``F.conv2d``.

Usage::

    python benchmarks/deform_conv.py            # C = 64 and 256, 40^2 and 160^2, forward and forward+backward
    python benchmarks/deform_conv.py --quick    # 40^2 only

Cases are the shapes the RefSR models use: N=1, C_in = C_out = C, 3x3 kernel, padding 1, G=8 deformable
groups, offsets ~ N(0, 2) pixels, sigmoid-ed random mask, float32. Every case runs in a fresh subprocess
(``--case``) so one case's allocations cannot hide in another's peak. Inside it: build the inputs, make one
tiny call that absorbs one-time set-up, record ``ru_maxrss`` (baseline), run ``repeat`` times, record
``ru_maxrss`` again; "peak extra MB" is the difference (kernel-measured, so it includes allocator overhead and
short-lived temporaries, and in "fwd+bwd" the gradients). "im2col MB" is the size of one sampled-column
buffer, ``C * 9 * H * W * 4`` bytes, the pure path's main temporary. "time" is the best wall-clock time,
"cpu" the best process CPU time (all threads). "conv2d" is the best wall-clock time of ``F.conv2d`` on the
same shapes (forward only, or forward+backward), for scale.

Backend: "torch" (the pure grid_sample path) always; "torchvision" too when it imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = (40, 160)
QUICK_SIZES = (40,)
CHANNELS = (64, 256)
GROUPS = 8
KERNEL = 3


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(backend: str, mode: str, channels: int, size: int, repeat: int, threads: int) -> dict:
    """One case in this process: ``mode`` is "fwd" (no autograd) or "fwd+bwd"."""
    import torch
    import torch.nn.functional as F

    from refsr.ops import deform_conv2d

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    taps = KERNEL * KERNEL

    def inputs(c: int, s: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(1, c, s, s, generator=gen)
        offset = 2.0 * torch.randn(1, 2 * GROUPS * taps, s, s, generator=gen)
        mask = torch.sigmoid(torch.randn(1, GROUPS * taps, s, s, generator=gen))
        weight = torch.randn(c, c, KERNEL, KERNEL, generator=gen) / (c * taps) ** 0.5
        bias = torch.zeros(c)
        tensors = (x, offset, mask, weight, bias)
        if mode == "fwd+bwd":
            for tensor in tensors:
                tensor.requires_grad_()
        return tensors

    def call(tensors: tuple[torch.Tensor, ...]) -> None:
        x, offset, mask, weight, bias = tensors
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, backend=backend)
            if mode == "fwd+bwd":
                out.sum().backward()

    def conv(tensors: tuple[torch.Tensor, ...]) -> None:
        x, _, _, weight, bias = tensors
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = F.conv2d(x, weight, bias, padding=1)
            if mode == "fwd+bwd":
                out.sum().backward()

    tensors = inputs(channels, size)
    call(inputs(GROUPS, 8))  # one tiny call: thread pool, kernels
    conv(inputs(GROUPS, 8))
    baseline = _maxrss_bytes()
    times, cpu_times = [], []
    for _ in range(repeat):
        for tensor in tensors:
            tensor.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        call(tensors)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if times[0] > 5.0:  # one run of a slow case is enough for its order of magnitude
            break
    extra = _maxrss_bytes() - baseline
    conv_times = []
    for _ in range(len(times)):
        for tensor in tensors:
            tensor.grad = None
        start = time.perf_counter()
        conv(tensors)
        conv_times.append(time.perf_counter() - start)
    return {
        "best": min(times),
        "cpu": min(cpu_times),
        "runs": len(times),
        "extra_bytes": extra,
        "conv": min(conv_times),
    }


def _spawn(backend: str, mode: str, channels: int, size: int, repeat: int, threads: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--case", backend, mode]
    command += [str(channels), str(size), str(repeat), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40^2 only")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument(
        "--case", nargs=6, metavar=("BACKEND", "MODE", "C", "SIZE", "REPEAT", "THREADS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)

    if args.case:
        backend, mode, channels, size, repeat, threads = args.case
        print(json.dumps(run_case(backend, mode, int(channels), int(size), int(repeat), int(threads))))
        return 0

    from refsr.ops import torchvision_available

    load = os.getloadavg()[0]
    print(f"# CPU threads: {args.threads}; load average at start: {load:.2f}")
    if load > 1.0:
        print("# warning: the machine is busy; times will be inflated")
    backends = ["torch"] + (["torchvision"] if torchvision_available() else [])
    if len(backends) == 1:
        print("# torchvision does not import here: pure PyTorch path only")
    print(f"# N=1, C_in=C_out=C, {KERNEL}x{KERNEL} kernel, padding 1, G={GROUPS} deformable groups, float32")
    modes = ["fwd"] + ([] if args.no_backward else ["fwd+bwd"])
    sizes = QUICK_SIZES if args.quick else SIZES

    header = (
        f"{'backend':<12} {'mode':<8} {'C':>4} {'size':>6} {'im2col MB':>10} {'time (s)':>9} {'cpu (s)':>8} "
        f"{'runs':>4} {'peak extra MB':>14} {'conv2d (s)':>11}"
    )
    print(header)
    print("-" * len(header))
    for backend in backends:
        for mode in modes:
            for channels in CHANNELS:
                for size in sizes:
                    columns_mb = channels * KERNEL * KERNEL * size * size * 4 / 2**20
                    result = _spawn(backend, mode, channels, size, args.repeat, args.threads)
                    prefix = f"{backend:<12} {mode:<8} {channels:>4} {size:>4}^2 {columns_mb:>10.0f}"
                    if "error" in result:
                        print(f"{prefix}   error: {result['error']}")
                        continue
                    print(
                        f"{prefix} {result['best']:>9.3f} {result['cpu']:>8.3f} {result['runs']:>4} "
                        f"{result['extra_bytes'] / 2**20:>14.0f} {result['conv']:>11.3f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
