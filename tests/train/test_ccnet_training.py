"""CC-Net training: Eq. 1 against a hand-written softmax, the crops and their targets, known matches from
disparity / flow / synthetic warps, and a few real training iterations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, load_photo

from refsr.data.synthetic import SyntheticRefConfig, SyntheticRefPairs
from refsr.errors import RefsrError
from refsr.train import load_config, run_training
from refsr.train.config import parse_config
from refsr.train.distributed import DistContext
from refsr.train.monitor import read_metrics
from refsr.train.tasks.ccnet import (
    CCNetTask,
    ccnet_classification_loss,
    correspondence_pairs,
    cut_crops,
    rotate_target,
)


def photo(name: str = "coffee.png") -> torch.Tensor:
    return torch.tensor(load_photo(name)).permute(2, 0, 1).double() / 255


def test_loss_is_eq_1_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 17, 29])
    loss = ccnet_classification_loss(f, g, target)
    expected = []
    for n in range(3):
        s = np.array([[float(f[n] @ g[n, :, i, j]) for j in range(6)] for i in range(5)])
        p = np.exp(s) / np.exp(s).sum()  # the 2-D softmax
        q = np.zeros((5, 6))
        q[divmod(int(target[n]), 6)] = 1.0  # one-hot ground truth
        expected.append(-(q * np.log(p)).sum())
    assert float(loss) == pytest.approx(np.mean(expected), abs=1e-12)
    # (y, x) targets and (N, C, 1, 1) descriptors give the same; "none" gives each term.
    yx = torch.stack((target // 6, target % 6), dim=1)
    assert float(ccnet_classification_loss(f[..., None, None], g, yx)) == pytest.approx(float(loss), abs=1e-14)
    per = ccnet_classification_loss(f, g, target, reduction="none")
    np.testing.assert_allclose(per.numpy(), expected, atol=1e-12)
    with pytest.raises(RefsrError, match="outside"):
        ccnet_classification_loss(f, g, torch.tensor([0, 1, 30]))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate_target_follows_rot90(k) -> None:
    onehot = torch.zeros(7, 7)
    onehot[1, 5] = 1
    turned = torch.rot90(onehot, k, dims=(-2, -1))
    assert divmod(int(turned.argmax()), 7) == rotate_target((1, 5), 7, k)


@pytest.mark.parametrize("rotation", [0, 1, 2, 3])
@pytest.mark.parametrize("ref_yx", [(60, 70), (3, 2), (90, 125)])  # inside, and near both corners
def test_crops_put_the_target_on_the_true_match(rotation, ref_yx) -> None:
    """With lr_up = the reference shifted by (dy, dx), the 65x65 LR patch must be exactly the reference crop's
    65x65 window at the target index: crop geometry, window shift at the borders and rotation all agree."""
    ref = photo()[:, :96, :128]
    dy, dx = 5, -7
    lr_up = torch.roll(ref, shifts=(dy, dx), dims=(1, 2))  # lr_up[y, x] = ref[y - dy, x - dx]
    target_yx = (ref_yx[0] + dy, ref_yx[1] + dx)
    if not (32 <= target_yx[0] < 64 and 32 <= target_yx[1] < 96):
        lr_up = F.pad(ref[None], (40, 40, 40, 40), mode="replicate")[0]  # the LR patch needs room
        target_yx = (ref_yx[0] + 40, ref_yx[1] + 40)
    window = 21
    lr_patch, ref_crop, label = cut_crops(lr_up, ref, target_yx, ref_yx, window, rotation)
    assert lr_patch.shape == (3, 65, 65) and ref_crop.shape == (3, window + 64, window + 64)
    ty, tx = divmod(label, window)
    torch.testing.assert_close(ref_crop[:, ty : ty + 65, tx : tx + 65], lr_patch, rtol=0, atol=0)


def test_disparity_and_flow_pairs() -> None:
    disp = torch.full((6, 9), 2.5)
    disp[1, 3] = float("nan")
    target, ref = correspondence_pairs({"disparity": disp})
    assert len(target) == 53 and not ((target[:, 0] == 1) & (target[:, 1] == 3)).any()
    np.testing.assert_allclose(ref[:, 1], target[:, 1] - 2.5)
    np.testing.assert_allclose(ref[:, 0], target[:, 0])
    flow = torch.zeros(2, 4, 5)
    flow[0], flow[1] = 1.5, -2.0  # reference (x, y) is at (x + 1.5, y - 2) in the target
    target, ref = correspondence_pairs({"flow": flow})
    np.testing.assert_allclose(target - ref, np.broadcast_to([-2.0, 1.5], target.shape))
    assert correspondence_pairs({"lr": torch.zeros(3, 2, 2)}) is None


def test_synthetic_warp_pairs_are_exact() -> None:
    """The match from the synthetic warp's homography: HR pixels sampled at the matches reproduce the reference
    (up to the warp's bicubic resampling), and a one-pixel error in the match is clearly worse."""
    config = SyntheticRefConfig(patch=96, scale_range=(0.9, 1.1), rotation=10.0, max_shift=0.2,
                                homography_prob=0.5, homography=0.03, flip_prob=0.5, colour=0.0, gamma=1.0,
                                luminance=0.0)
    source = SyntheticRefPairs.from_paths([DATA / "coffee.png", DATA / "astronaut.png"], config=config, scale=8,
                                          seed=3, samples_per_photo=3)
    flips = set()
    for index in range(len(source)):
        sample = source[index]
        flips.add(source.params(index).flip)
        target, ref = correspondence_pairs(sample, source, index)
        ok = (ref[:, 0] >= 0) & (ref[:, 0] <= 95) & (ref[:, 1] >= 0) & (ref[:, 1] <= 95)
        hr, refimg = sample["hr"][None].double(), sample["ref"].double()
        ry, rx = np.rint(ref[ok]).astype(int).T

        def error(shift: float) -> float:
            # Bilinear sample of the HR at the (sub-pixel) target of every integer reference pixel.
            ty = target[ok, 0] + (np.rint(ref[ok, 0]) - ref[ok, 0]) + shift
            tx = target[ok, 1] + (np.rint(ref[ok, 1]) - ref[ok, 1])
            grid = torch.tensor(np.stack((tx / 95 * 2 - 1, ty / 95 * 2 - 1), axis=-1))[None, None]
            sampled = F.grid_sample(hr, grid, align_corners=True)[0, :, 0]
            return float((sampled - refimg[:, ry, rx]).abs().mean())

        assert error(0.0) < 0.02
        assert error(1.0) > 1.5 * error(0.0)
    assert flips == {False, True}


def tiny_ccnet_config(**train: object) -> dict:
    return {
        "task": "ccnet",
        "name": "tiny",
        "seed": 0,
        "model": {"name": "refsr.models.refsrnet:CCNet",
                  "overrides": {"channels": [4, 4, 4, 4, 4, 8], "out_channels": 8}},
        "data": {"train": {
            "sources": [{"dataset": "open-synthetic", "paths": [str(DATA / "coffee.png"), str(DATA / "astronaut.png")],
                         "patch": 96, "scale_range": [0.9, 1.1], "rotation": 5.0, "max_shift": 0.1,
                         "flip_prob": 0.0, "samples_per_photo": 4}]}, "val": None},
        "ccnet": {"window": 9, "grid": 8, "crops_per_sample": 2},
        "optimizer": {"lr": 1.0e-3},
        "schedule": {"name": "multistep", "milestones": [2], "gamma": 0.05},
        "train": {"batch": 4, "iterations": 3, "log_interval": 1, "checkpoint_interval": 2, "device": "cpu",
                  "tensorboard": False, **train},
    }


def test_dataset_items_and_a_few_training_iterations(tmp_path) -> None:
    cfg = parse_config(tiny_ccnet_config())
    task = CCNetTask(cfg, DistContext())
    item = task.dataset[0]
    assert item["lr_up"].shape == (2, 3, 65, 65) and item["ref"].shape == (2, 3, 73, 73)
    assert item["target"].shape == (2,) and int(item["target"].max()) < 81
    assert task.micro_batch == 2  # 4 crops from 2 pairs
    # Deterministic per index.
    assert torch.equal(task.dataset[1]["ref"], task.dataset[1]["ref"])

    summary = run_training(cfg, tmp_path, progress=False)
    assert summary.iteration == 3 and summary.stopped_by == "iterations"
    lines = read_metrics(tmp_path)
    assert [line["iteration"] for line in lines] == [1, 2, 3]
    assert [line["lr"]["default"] for line in lines] == pytest.approx([1e-3, 1e-3, 5e-5])  # milestone at 2
    assert all(np.isfinite(line["losses"]["classification"]) and 0 <= line["metrics"]["accuracy"] <= 1
               for line in lines)
    from safetensors.torch import load_file

    from refsr.models.refsrnet import CCNet

    net = CCNet(channels=(4, 4, 4, 4, 4, 8), out_channels=8)
    # The run's weights are a CC-Net state_dict, which refsrnet's ccnet_weights= loads too.
    net.load_state_dict(load_file(str(summary.last_checkpoint / "model.safetensors")))


def test_ccnet_training_resumes_exactly(tmp_path) -> None:
    cfg = parse_config(tiny_ccnet_config(iterations=4))
    straight = run_training(cfg, tmp_path / "a", progress=False)

    def stop_after_2(record) -> None:
        if record.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "b", callbacks=[stop_after_2], progress=False)
    resumed = run_training(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.iteration == 4
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert [r["losses"] for r in read_metrics(tmp_path / "b")] == [r["losses"] for r in read_metrics(tmp_path / "a")]


@pytest.mark.parametrize(
    "change, what",
    [({"task": "sr"}, "task"), ({"trian": {}}, "did you mean train"),
     ({"model": {"name": "masa-lite"}}, "name its class, refsr.models.refsrnet:CCNet"),
     ({"losses": [{"name": "l1"}]}, "losses")],
)
def test_bad_configs(change, what) -> None:
    with pytest.raises(RefsrError, match=what):
        parse_config({**tiny_ccnet_config(), **change})


def test_a_network_that_is_not_a_65_pixel_ccnet_is_refused(tmp_path) -> None:
    config = tiny_ccnet_config()
    config["model"]["overrides"]["dilations"] = [1, 1, 1, 1, 1, 1]
    with pytest.raises(RefsrError, match="receptive field must be 65"):
        run_training(parse_config(config), tmp_path, progress=False)


def test_configs_in_the_repository_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    full = load_config(root / "ccnet.yaml")
    assert (full.ccnet.window, full.train.batch, full.optimizer.lr) == (129, 16, 1e-3)
    assert full.model.overrides["channels"] == [16, 32, 64, 64, 64, 128]
    assert full.model.overrides["dilations"] == [1, 1, 2, 4, 8, 16]
    assert (full.schedule.milestones, full.schedule.gamma, full.train.iterations) == ([30000], 0.05, 50000)
    lite = load_config(root / "ccnet-lite.yaml")
    assert lite.model.overrides["out_channels"] < 256


def test_refsr_train_runs_ccnet_configs(tmp_path, capsys) -> None:
    """`refsr train` takes `task: ccnet` configs like any other, --resume included."""
    import yaml

    from refsr.cli import main as cli_main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_ccnet_config(iterations=2)))
    assert cli_main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    assert cli_main(["train", str(config), "--out", str(tmp_path / "run"), "--resume", "--no-progress",
                     "--set", "train.iterations=3"]) == 0
    assert "trained 3 iterations" in capsys.readouterr().out


@pytest.mark.parametrize("text, what", [("task: ccnet\ndata: [unclosed\n", "not valid YAML"),
                                        ("", "the config is empty"), ("- a\n- b\n", "must be a mapping")])
def test_unreadable_ccnet_config_files(tmp_path, capsys, text, what) -> None:
    """A CC-Net YAML goes through the same file reader as every config: one line, exit status 2."""
    from refsr.cli import main as cli_main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RefsrError, match=what):
        load_config(path)
    assert cli_main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert what in err and "\n" not in err and "Traceback" not in err
