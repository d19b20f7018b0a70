"""C2-Matching's extractor training (task: contrastive_teacher / contrastive_student): the pairs' known
correspondences, VGG16 initialisation, both stages end to end on the test photos, exact resume, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tiny_sr  # noqa: F401  (registers the tiny-sr-test model, for the restoration config checks)
import torch
import torch.nn.functional as F
from conftest import timeless
from safetensors.torch import load_file

from refsr.data.synthetic import SyntheticRefConfig, SyntheticRefPairs
from refsr.errors import RefsrError
from refsr.models.contrastive_extractor import ContrastiveExtractor
from refsr.train import load_config, run_training
from refsr.train.config import parse_config
from refsr.train.monitor import read_metrics
from refsr.train.tasks.contrastive import (
    load_vgg16_features,
    random_homography,
    synthetic_correspondence,
    warp_with_homography,
)

HERE = Path(__file__).parent
ASSETS = HERE.parent / "assets"
CONFIGS = HERE.parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sample_at(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``image (C,H,W)`` read at pixel positions ``coords (h,w,2)`` (bilinear, align_corners)."""
    h, w = image.shape[-2:]
    grid = coords / torch.tensor([w - 1, h - 1]) * 2 - 1
    return F.grid_sample(image[None], grid[None].float(), mode="bilinear", align_corners=True)[0]


# ------------------------------------------------------------------------------------------ geometry
def test_a_translation_warp_is_exact():
    image = torch.arange(3 * 6 * 7, dtype=torch.float32).reshape(3, 6, 7)
    shift = np.array([[1, 0, 2], [0, 1, 1], [0, 0, 1]], np.float64)  # ref(q) = image(q + (2, 1))
    ref, coords = warp_with_homography(image, shift)
    torch.testing.assert_close(ref[:, :5, :5], image[:, 1:, 2:])
    assert (ref[:, 5:, :] == 0).all() and (ref[:, :, 5:] == 0).all()  # outside the image: zeros
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    torch.testing.assert_close(coords, torch.stack([xs - 2, ys - 1], dim=-1))


def test_random_homographies_move_the_corners_by_at_most_perturb_and_round_trip():
    g = torch.Generator().manual_seed(0)
    # A smooth image, so that resampling it twice (bilinear) changes it little.
    image = F.interpolate(torch.rand(1, 3, 6, 7, generator=g), size=(40, 48), mode="bicubic", align_corners=True)[0]
    for _ in range(5):
        h = random_homography(40, 48, 6.0, g)
        corners = np.array([[0, 0, 1], [47, 0, 1], [47, 39, 1], [0, 39, 1]], np.float64)
        moved = corners @ h.T
        moved = moved[:, :2] / moved[:, 2:]
        assert np.abs(moved - corners[:, :2]).max() <= 6.0 and np.abs(moved - corners[:, :2]).max() > 0.5
        ref, coords = warp_with_homography(image, h)
        # Reading the reference at each pixel's match gives the pixel back (bilinear twice: approximately).
        inside = (coords[..., 0] > 1) & (coords[..., 0] < 46) & (coords[..., 1] > 1) & (coords[..., 1] < 38)
        back = _sample_at(ref, coords)
        error = (back - image).abs().mean(0)[inside].mean()
        wrong = (_sample_at(ref, coords + 3) - image).abs().mean(0)[inside].mean()
        assert error < 0.2 * wrong


def test_synthetic_references_come_with_their_correspondence():
    cfg = SyntheticRefConfig(patch=48, scale_range=(0.85, 1.15), rotation=12.0, max_shift=0.2, homography_prob=1.0,
                             flip_prob=0.5, colour=0.0, gamma=1.0, luminance=0.0)
    data = SyntheticRefPairs.from_paths([ASSETS / "astronaut.png"], config=cfg, seed=1, samples_per_photo=6)
    flips = set()
    for index in range(len(data)):
        sample = data[index]
        coords = synthetic_correspondence(data, index)
        flips.add(data.params(index).flip)
        inside = ((coords > 2) & (coords < 45)).all(-1)
        assert inside.float().mean() > 0.3
        back = _sample_at(sample["ref"], coords)
        error = (back - sample["hr"]).abs().mean(0)[inside].mean()
        wrong = (_sample_at(sample["ref"], coords.flip(-1)) - sample["hr"]).abs().mean(0)[inside].mean()
        assert error < 0.04 and error < 0.5 * wrong, (index, error, wrong)
    assert flips == {True, False}
    identity = SyntheticRefPairs.from_paths([ASSETS / "coffee.png"], config=SyntheticRefConfig.identity(32))
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    torch.testing.assert_close(synthetic_correspondence(identity, 0), torch.stack([xs, ys], -1))


# ------------------------------------------------------------------------------------- initialisation
def test_torchvision_vgg16_weights_fill_both_branches():
    gen = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256)}
    state = {}
    for index, (c_out, c_in) in shapes.items():
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen)
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=gen)
    state["classifier.0.weight"] = torch.zeros(2, 2)
    extractor = ContrastiveExtractor()
    load_vgg16_features(extractor, state)
    for branch in (extractor.lr_branch, extractor.ref_branch):
        for name, index in (("conv1_1", 0), ("conv1_2", 2), ("conv2_1", 5), ("conv2_2", 7), ("conv3_1", 10)):
            assert torch.equal(getattr(branch, name).weight, state[f"features.{index}.weight"])
            assert torch.equal(getattr(branch, name).bias, state[f"features.{index}.bias"])
    del state["features.10.weight"], state["features.12.weight"]
    with pytest.raises(RefsrError, match="holds 4 convolutions"):
        load_vgg16_features(ContrastiveExtractor(), {k: v for k, v in state.items() if "features.10." not in k})


# ------------------------------------------------------------------------------------------- training
def _sets(out_stage: str, *extra: str) -> list[str]:
    """The shipped config on two test photos: 64x64 crops, batch 2, random-init VGG16, 3 iterations; on the
    machine's default device, deterministic (so that a resumed run repeats an uninterrupted one on a GPU too)."""
    source = (f"[{{dataset: open-synthetic, root: '{ASSETS}', paths: [astronaut.png, chelsea.png], patch: 64, "
              "samples_per_photo: 3}]")
    return [f"data.train.sources={source}", "data.train.crop=64", "data.train.num_workers=0", "model.init=null",
            "train.batch=2", "train.iterations=3", "train.checkpoint_interval=1", "train.tensorboard=false",
            "train.log_interval=1", "losses.0.min_matches=32", "contrastive.perturb=6.0",
            "train.deterministic=true", *extra]


def test_teacher_then_student_train_and_resume_exactly(tmp_path):
    from refsr.train.cli import main

    # Stage 1 through the command line: `refsr train configs/c2-teacher.yaml` dispatches on `task`.
    args = [str(CONFIGS / "c2-teacher.yaml"), "--out", str(tmp_path / "teacher"), "--no-progress"]
    for item in _sets("teacher"):
        args += ["--set", item]
    assert main(args) == 0
    teacher_records = [r for r in read_metrics(tmp_path / "teacher") if r["kind"] == "train"]
    assert [r["iteration"] for r in teacher_records] == [1, 2, 3]
    assert all(math.isfinite(r["losses"]["contrastive"]) and r["losses"]["contrastive"] > 0 for r in teacher_records)
    assert all(r["lr"]["default"] == 1e-3 for r in teacher_records)
    teacher_file = tmp_path / "teacher/checkpoints/last/model.safetensors"
    teacher = load_file(str(teacher_file))
    torch.manual_seed(10)
    initial = ContrastiveExtractor().state_dict()
    assert sorted(teacher) == sorted(initial)
    assert all(not torch.equal(teacher[k], initial[k]) for k in teacher if k.endswith("weight"))

    # Stage 2 from the teacher; resumed after iteration 2 it repeats an uninterrupted run exactly.
    sets = _sets("student", f"contrastive.teacher={teacher_file}", "losses.1.min_matches=32")
    cfg = load_config(CONFIGS / "c2-student.yaml", sets)
    straight = run_training(cfg, tmp_path / "a", progress=False)
    assert straight.stopped_by == "iterations" and straight.iteration == 3

    class Killed(Exception):
        pass

    def kill(record):
        if record.iteration == 2:
            raise Killed

    with pytest.raises(Killed):
        run_training(load_config(CONFIGS / "c2-student.yaml", sets), tmp_path / "b", callbacks=[kill], progress=False)
    resumed = run_training(load_config(CONFIGS / "c2-student.yaml", sets), tmp_path / "b", resume=True,
                           progress=False)
    assert [r.iteration for r in resumed.records] == [3]  # from the checkpoint written at 2
    assert timeless(read_metrics(tmp_path / "a")) == timeless(read_metrics(tmp_path / "b"))
    a, b = (load_file(str(tmp_path / run / "checkpoints/last/model.safetensors")) for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    assert all(sorted(r["losses"]) == ["contrastive", "distillation"] for r in records)
    assert all(r["losses"]["distillation"] > 0 for r in records)
    # Weighted sum: the total is contrastive + 15 x KL (the logged terms are already weighted).
    assert all(math.isclose(r["total"], sum(r["losses"].values()), rel_tol=1e-6) for r in records)
    # The student moved, the teacher file did not.
    assert any(not torch.equal(a[k], teacher[k]) for k in a)
    assert all(torch.equal(v, teacher[k]) for k, v in load_file(str(teacher_file)).items())


# ---------------------------------------------------------------------------------------------- config
def _teacher_dict() -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / "c2-teacher.yaml").read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["losses"].append({"name": "l1"}),
         "losses[1].name: task contrastive_teacher takes only contrastive"),
        (lambda d: d["losses"].append({"name": "distillation"}), "takes only contrastive losses, not 'distillation'"),
        (lambda d: d.update(task="contrastive_student"),
         "losses: task contrastive_student needs a {name: distillation}"),
        (lambda d: (d.update(task="contrastive_student"), d["losses"].append({"name": "distillation"})),
         "contrastive.teacher: task contrastive_student needs the teacher's weights"),
        (lambda d: d["contrastive"].update(teacher="x.safetensors"), "contrastive.teacher: only used by task"),
        (lambda d: d["data"].update(val={"dataset": "cufed5", "root": "x"}), "data.val: the contrastive tasks do not"),
        (lambda d: d["model"].update(name="refsr.models.contrastive_extractor:Nope"), "has no 'Nope'"),
        (lambda d: d["model"].update(name="no_such_module_xyz:Net"), "model.name: cannot import 'no_such_module_xyz'"),
        (lambda d: d["model"].update(overrides={"trainabel": True}), "model.overrides.trainabel: model"),
        (lambda d: d["contrastive"].update(pairs="synthetic", perturb=3.0), "contrastive.perturb: only used with"),
        (lambda d: d.update(task="restoration"), "losses[0].name: 'contrastive' trains a feature extractor"),
    ],
)
def test_contrastive_config_mistakes_are_named(edit, message):
    data = _teacher_dict()
    edit(data)
    with pytest.raises(RefsrError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_restoration_configs_refuse_extractor_fields():
    import yaml

    data = yaml.safe_load((HERE / "tiny.yaml").read_text())
    data["model"]["name"] = "refsr.models.contrastive_extractor:ContrastiveExtractor"
    with pytest.raises(RefsrError, match="module:attribute names are for the contrastive tasks"):
        parse_config(data)
    data = yaml.safe_load((HERE / "tiny.yaml").read_text())
    data["contrastive"] = {"perturb": 5.0}
    with pytest.raises(RefsrError, match="contrastive: only used by the contrastive tasks"):
        parse_config(data)


def test_synthetic_pairs_train_on_their_own_references(tmp_path):
    source = (f"[{{dataset: open-synthetic, root: '{ASSETS}', paths: [astronaut.png, coffee.png], patch: 64, "
              "rotation: 10.0, samples_per_photo: 1}]")
    sets = _sets("teacher", f"data.train.sources={source}", "data.train.crop=null", "data.train.augment={name: none}",
                 "contrastive={pairs: synthetic, border: 6.0}", "train.iterations=1")
    summary = run_training(load_config(CONFIGS / "c2-teacher.yaml", sets), tmp_path, progress=False)
    assert summary.iteration == 1 and math.isfinite(summary.records[0].losses["contrastive"])
    with pytest.raises(RefsrError, match="synthetic needs data.train.crop: null"):
        run_training(load_config(CONFIGS / "c2-teacher.yaml", [*sets, "data.train.crop=64"]), tmp_path / "x",
                     progress=False)
