"""The training loop: exact resume, accumulation, GAN hook, NaN stop, time budget, checkpoints, logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tiny_sr  # noqa: F401  (registers the tiny-sr-test model)
import torch
from conftest import timeless
from safetensors.torch import load_file, save_file

from refsr.errors import RefsrError
from refsr.train import builders, checkpoint, load_config, run_training
from refsr.train.distributed import ResumableDistributedSampler, epoch_order
from refsr.train.monitor import image_grid, read_metrics
from refsr.train.schema import ScheduleConfig

HERE = Path(__file__).parent
ASSETS = HERE.parent / "assets"


@pytest.fixture(autouse=True)
def _one_thread():
    # The tensors here are tiny: a second thread only adds synchronisation (and contention on a busy machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(*sets: str):
    """tests/train/tiny.yaml on the test photos, without TensorBoard unless asked."""
    base = [f"data.train.sources.0.root={ASSETS}", f"data.val.root={ASSETS}", "train.tensorboard=false"]
    return load_config(HERE / "tiny.yaml", [*base, *sets])


def weights(folder: Path, stem: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"{stem}.safetensors"))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A VGG19 file with random weights for conv1_1 and conv1_2 (enough for a conv1_2 perceptual loss)."""
    from refsr.models.vgg import VGG19Features

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg_conv1.safetensors"
    save_file({k: v.contiguous() for k, v in VGG19Features(("conv1_2",)).state_dict().items()}, str(path))
    return path


def _full_features(vgg_file: Path) -> list[str]:
    """Every engine feature at once: crop, augmentation, accumulation, EMA, perceptual + GAN from iteration 2."""
    losses = (
        "[{name: l1, weight: 1.0},"
        f" {{name: perceptual, weight: 0.1, layer: conv1_2, vgg_weights: '{vgg_file}'}},"
        " {name: adversarial, weight: 0.01, start_iteration: 2, discriminator: {nf: 4, input_size: 32},"
        "  optimizer: {lr: 1.0e-4, betas: [0.0, 0.9]}}]"
    )
    return [f"losses={losses}", "data.train.sources.0.patch=48", "data.train.crop=32",
            "data.train.crop_ref=independent"]


# --------------------------------------------------------------------------------------------- resume
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, vgg_file):
    sets = _full_features(vgg_file)
    straight = run_training(tiny_config(*sets, "train.tensorboard=true"), tmp_path / "a", progress=False)
    assert straight.iteration == 6 and straight.stopped_by == "iterations"

    class Killed(Exception):
        pass

    def kill(record):
        if record.iteration == 3:  # after the checkpoint at 2 (mid-epoch: 8 of 12 samples read)
            raise Killed

    with pytest.raises(Killed):
        run_training(tiny_config(*sets), tmp_path / "b", callbacks=[kill], progress=False)
    state = torch.load(tmp_path / "b/checkpoints/last/state.pt", weights_only=True)
    assert (state["iteration"], state["epoch"], state["position"]) == (2, 0, 8)
    assert [r["iteration"] for r in read_metrics(tmp_path / "b") if r["kind"] == "train"] == [1, 2, 3]

    resumed = run_training(tiny_config(*sets), tmp_path / "b", resume=True, progress=False)
    assert [r.iteration for r in resumed.records] == [3, 4, 5, 6]
    # Every loss of every iteration, every lr and every validation score, bit for bit.
    assert timeless(read_metrics(tmp_path / "a")) == timeless(read_metrics(tmp_path / "b"))
    for stem in ("model", "model_ema", "discriminator"):
        a, b = weights(tmp_path / "a/checkpoints/last", stem), weights(tmp_path / "b/checkpoints/last", stem)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), stem
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in weights(tmp_path / "b/checkpoints/last").items())

    # The features were really on.
    train = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    assert [sorted(r["losses"]) for r in train[:2]] == [["l1", "perceptual"]] * 2
    assert sorted(train[2]["losses"]) == ["adversarial", "discriminator", "l1", "perceptual"]
    assert math.isclose(train[-1]["total"], sum(v for k, v in train[-1]["losses"].items() if k != "discriminator"),
                        rel_tol=1e-6)
    # Cosine per epoch, stepped before each epoch (offset 1): 3 iterations per epoch.
    cfg = tiny_config()
    expected = [builders.lr_factor(cfg.schedule, iteration=i, epoch=i // 3, total_units=None, base_lr=1e-3)
                for i in range(6)]
    assert [r["lr"]["default"] for r in train] == pytest.approx([1e-3 * f for f in expected], rel=1e-12)
    assert [r["lr"]["offset"] for r in train] == pytest.approx([1e-4 * f for f in expected], rel=1e-12)
    assert expected[0] == expected[2] != expected[3]
    ema, model = weights(tmp_path / "a/checkpoints/last", "model_ema"), weights(tmp_path / "a/checkpoints/last")
    assert any(not torch.equal(ema[k], model[k]) for k in ema)
    # Validated at 3 and 6; the best checkpoint holds the EMA weights it validated.
    val = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "val"]
    assert [r["iteration"] for r in val] == [3, 6] and all(r["count"] == 2 for r in val)
    info = json.loads((tmp_path / "a/checkpoints/best/info.json").read_text())
    best = max(val, key=lambda r: r["psnr"])
    assert info["iteration"] == best["iteration"] and info["psnr"] == best["psnr"] and info["ema"] is True
    if best["iteration"] == 6:
        assert all(torch.equal(v, ema[k]) for k, v in weights(tmp_path / "a/checkpoints/best").items())

    # TensorBoard: scalars for losses, lr and PSNR, and LR↑/SR/HR/Ref grids.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a/tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("loss/l1", "loss/perceptual", "loss/adversarial", "loss/discriminator", "loss/total",
                "lr/default", "lr/offset", "val/psnr"):
        assert tag in scalars, tag
    assert [e.value for e in events.Scalars("val/psnr")] == pytest.approx([r["psnr"] for r in val])
    grid = events.Images("val/images/0")[0]
    assert (grid.height, grid.width) == (32, 4 * 32 + 3 * 2)
    assert "train/images" in events.Tags()["images"]


def test_resume_refuses_the_wrong_folder(tmp_path):
    with pytest.raises(RefsrError, match="no checkpoint to resume"):
        run_training(tiny_config(), tmp_path / "empty", resume=True, progress=False)
    run_training(tiny_config("train.iterations=1", "data.val=null"), tmp_path / "run", progress=False)
    with pytest.raises(RefsrError, match="already holds a run; pass --resume"):
        run_training(tiny_config(), tmp_path / "run", progress=False)


# ---------------------------------------------------------------------------------------- accumulation
def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    # Adam with a large eps is sensitive to the gradient's scale, so a wrong average would show.
    common = ["data.val=null", "train.ema_decay=null", "train.iterations=2", "optimizer.eps=1.0",
              "optimizer.lr=0.5", "optimizer.param_groups=[]"]
    big = run_training(tiny_config(*common, "train.batch=2", "train.grad_accumulation=1"), tmp_path / "big",
                       progress=False)
    acc = run_training(tiny_config(*common, "train.batch=1", "train.grad_accumulation=2"), tmp_path / "acc",
                       progress=False)
    init = builders.build_model(tiny_config())
    for k, v in big.model.state_dict().items():
        torch.testing.assert_close(acc.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(v, init.state_dict()[k])
    assert [r.total for r in acc.records] == pytest.approx([r.total for r in big.records], rel=1e-6)


# ------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_with_the_iteration_and_term_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import refsr.losses

    calls = {"n": 0}
    real = refsr.losses.l1_loss

    def poisoned(sr, hr):
        calls["n"] += 1
        loss = real(sr, hr)
        return loss * float("nan") if calls["n"] == 5 else loss  # the 1st micro-batch of iteration 3

    monkeypatch.setattr(refsr.losses, "l1_loss", poisoned)
    with pytest.raises(RefsrError) as err:
        run_training(tiny_config(), tmp_path, progress=False)
    message = str(err.value)
    assert message.startswith("iteration 3: the l1 loss is nan")
    assert f"{tmp_path / 'checkpoints' / 'last'} (iteration 2)" in message and "--resume" in message
    state = torch.load(tmp_path / "checkpoints/last/state.pt", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "checkpoints/last").values())
    assert [r["iteration"] for r in read_metrics(tmp_path) if r["kind"] == "train"] == [1, 2]


def test_time_budget_stops_the_run_and_counts_over_resumes(tmp_path):
    sets = ["train.iterations=null", "train.time_budget=0.3s", "data.val=null", "schedule.t_max=100",
            "train.checkpoint_interval=100000"]
    first = run_training(tiny_config(*sets), tmp_path, progress=False)
    assert first.stopped_by == "time_budget" and first.iteration >= 1
    state = torch.load(tmp_path / "checkpoints/last/state.pt", weights_only=True)
    assert state["iteration"] == first.iteration and state["elapsed"] >= 0.3
    again = run_training(tiny_config(*sets), tmp_path, resume=True, progress=False)
    assert again.stopped_by == "time_budget" and again.iteration == first.iteration and again.records == []


# ---------------------------------------------------------------------------------------- components
def test_schedules_match_torch_schedulers():
    model = torch.nn.Linear(1, 1)
    cases = [
        (ScheduleConfig(name="cosine", unit="iteration", t_max=20, eta_min=1e-5),
         lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-5)),
        (ScheduleConfig(name="multistep", unit="iteration", milestones=[3, 7], gamma=0.5),
         lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7], gamma=0.5)),
    ]
    for cfg, make in cases:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        scheduler = make(opt)
        for i in range(20):
            ours = 1e-3 * builders.lr_factor(cfg, iteration=i, epoch=0, total_units=None, base_lr=1e-3)
            assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), (cfg.name, i)
            opt.step()
            scheduler.step()
    warm = ScheduleConfig(name="constant", warmup_iterations=4)
    assert [builders.lr_factor(warm, iteration=i, epoch=0, total_units=None, base_lr=1.0) for i in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_sampler_shards_and_resumes_one_global_order():
    order = epoch_order([7, 5], seed=3, epoch=2)
    assert sorted(order.tolist()) == list(range(12))
    assert not torch.equal(order, epoch_order([7, 5], seed=3, epoch=3))
    shards = []
    for rank in range(3):
        s = ResumableDistributedSampler([7, 5], seed=3, rank=rank, world=3)
        s.set_epoch(2, start=3)
        shards.append(list(s))
    # Ranks interleave the remaining order: sample j of rank r is order[start + 3j + r].
    assert [x for trio in zip(*shards) for x in trio] == order[3:12].tolist()
    # Weighted sources: the counts follow the shares exactly, every index is valid.
    mixed = epoch_order([4, 100], seed=0, epoch=0, weights=[0.75, 0.25], samples_per_epoch=40)
    assert (mixed < 4).sum().item() == 30 and len(mixed) == 40
    # The small source is drawn in whole rounds of permutations (7 rounds and 2 more), the large one without
    # repeats.
    first, second = mixed[mixed < 4].tolist(), mixed[mixed >= 4].tolist()
    assert sorted(first.count(i) for i in range(4)) == [7, 7, 8, 8]
    assert len(set(second)) == 10 and max(second) < 104


def test_checkpoint_writes_atomically_and_recovers(tmp_path):
    root = tmp_path / "checkpoints"
    w1, w2 = {"model": {"w": torch.zeros(2)}}, {"model": {"w": torch.ones(2)}}
    checkpoint.write_checkpoint(root, "last", w1, state={"format": checkpoint.FORMAT_VERSION, "iteration": 1,
                                                         "rng": [checkpoint.capture_rng()]})
    checkpoint.write_checkpoint(root, "last", w2, state={"format": checkpoint.FORMAT_VERSION, "iteration": 2})
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    assert torch.equal(weights(root / "last")["w"], torch.ones(2))
    assert checkpoint.read_state(root / "last")["iteration"] == 2
    # A crash between the two renames leaves only .last.old: it is still found.
    (root / "last").rename(root / ".last.old")
    (root / ".last.new").mkdir()  # and a half-written new one is ignored
    assert checkpoint.find_checkpoint(root, "last") == root / ".last.old"
    (root / ".last.old" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(RefsrError, match="not a readable training state"):
        checkpoint.read_state(root / ".last.old")


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    torch.save({"rng": checkpoint.capture_rng()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_image_grid_places_lr_sr_hr_ref_side_by_side():
    torch.manual_seed(0)
    lr, sr, hr, ref = torch.rand(3, 4, 5), torch.rand(3, 16, 20) * 2 - 0.5, torch.rand(3, 16, 20), torch.rand(3, 16, 20)
    grid = image_grid(lr, sr, hr, ref, gap=2)
    assert grid.shape == (3, 16, 4 * 20 + 6)
    assert torch.equal(grid[:, :, 22:42], sr.clamp(0, 1))
    assert torch.equal(grid[:, :, 44:64], hr)
    torch.testing.assert_close(grid[:, :, 66:86], ref)  # same size: the resize is the identity
    assert torch.equal(grid[:, :, 20:22], torch.ones(3, 16, 2))


def test_worker_processes_read_the_same_samples(tmp_path):
    # 4 iterations cross an epoch boundary (3 per epoch), where the workers must see the new epoch.
    sets = ["data.val=null", "train.iterations=4", "train.checkpoint_interval=100"]
    inline = run_training(tiny_config(*sets), tmp_path / "inline", progress=False)
    workers = run_training(tiny_config(*sets, "data.train.num_workers=2"), tmp_path / "workers", progress=False)
    assert timeless([r.as_dict() for r in workers.records]) == timeless([r.as_dict() for r in inline.records])
    assert inline.records[-1].epoch == 1


def test_the_shipped_masa_lite_config_trains_on_the_test_photos(tmp_path):
    photos = f"root: '{ASSETS}', paths: [astronaut.png, coffee.png]"
    sets = [
        f"data.train.sources=[{{dataset: open-synthetic, {photos}, patch: 32, samples_per_photo: 2}}]",
        f"data.val={{dataset: open-synthetic, root: '{ASSETS}', paths: [chelsea.png], patch: 64}}",
        "model.overrides={nf: 8, encoder_blocks: [1, 1, 1], unet_blocks: [1, 1, 1], fusion_blocks: [1, 1, 1]}",
        "data.train.crop=null", "data.train.crop_ref=none", "data.train.samples_per_epoch=null",
        "train.batch=2", "train.iterations=2", "train.epochs=null", "train.time_budget=null", "schedule.t_max=2",
        "train.ema_decay=null", "data.train.num_workers=0", "train.tensorboard=false",
        "train.device=cpu",  # the weights are compared with a CPU model's below
    ]
    summary = run_training(load_config(HERE.parents[1] / "configs/masa-lite.yaml", sets), tmp_path, progress=False)
    assert summary.iteration == 2 and summary.best_score is not None and math.isfinite(summary.best_score)
    import refsr

    model = refsr.create_model("masa-lite", weights=tmp_path / "checkpoints/best/model.safetensors",
                               nf=8, encoder_blocks=(1, 1, 1), unet_blocks=(1, 1, 1), fusion_blocks=(1, 1, 1))
    assert all(torch.equal(v, summary.model.state_dict()[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------ GAN kinds, AMSA's lr groups
@pytest.mark.parametrize("adversarial, discriminator_type", [
    ("{name: adversarial, kind: wgan_gp, gradient_penalty: 10.0, weight: 1.0e-6,"
     " discriminator: {name: image, nf: 4}, optimizer: {lr: 1.0e-4, betas: [0.9, 0.999]}}", "ImageDiscriminator"),
    ("{name: adversarial, kind: vanilla, weight: 1.0e-3,"
     " discriminator: {name: patchgan, nf: 4, n_layers: 2, norm: batch}}", "PatchGANDiscriminator"),
])
def test_wgan_gp_and_patchgan_train_in_the_engine(tmp_path, adversarial, discriminator_type):
    sets = [f"losses=[{{name: l1, weight: 1.0}}, {adversarial}]", "data.val=null", "train.iterations=2",
            "train.ema_decay=null", "train.checkpoint_interval=100"]
    cfg = tiny_config(*sets)
    d_before = builders.build_discriminator(cfg.adversarial, cfg.seed)
    summary = run_training(cfg, tmp_path, progress=False)
    assert type(summary.discriminator).__name__ == discriminator_type
    for record in summary.records:
        assert sorted(record.losses) == ["adversarial", "discriminator", "l1"]
        assert all(math.isfinite(v) for v in record.losses.values())
    moved = [not torch.equal(a, b) for a, b in zip(summary.discriminator.state_dict().values(),
                                                   d_before.state_dict().values())]
    assert any(moved)
    assert sorted(weights(tmp_path / "checkpoints/last", "discriminator")) == sorted(d_before.state_dict())


def test_amsa_offset_learning_rates_by_name():
    # AMSA's stage-3 optimiser: names with 'offset' and 'small' -> 1e-6, 'offset' and 'medium' -> 1e-5, other
    # 'offset' -> 1e-4, the rest -> lr_g 1e-4 (official ref_restoration_model.py).
    from torch import nn

    from refsr.train.schema import OptimizerConfig, ParamGroupConfig

    net = nn.ModuleDict({
        "small_dyn_agg": nn.ModuleDict({"conv_offset_mask": nn.Conv2d(1, 1, 1), "conv": nn.Conv2d(1, 1, 1)}),
        "medium_dyn_agg": nn.ModuleDict({"conv_offset_mask": nn.Conv2d(1, 1, 1)}),
        "large_dyn_agg": nn.ModuleDict({"conv_offset_mask": nn.Conv2d(1, 1, 1)}),
        "head": nn.Conv2d(1, 1, 1),
    })
    cfg = OptimizerConfig(lr=1e-4, param_groups=[
        ParamGroupConfig(match=r"^(?=.*offset)(?=.*small)", lr=1e-6),
        ParamGroupConfig(match=r"^(?=.*offset)(?=.*medium)", lr=1e-5),
        ParamGroupConfig(match=r"offset", lr=1e-4),
    ])
    opt = builders.build_optimizer(net, cfg)
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {g["name"]: (g["lr"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups}
    assert groups == {
        r"^(?=.*offset)(?=.*small)": (1e-6, ["small_dyn_agg.conv_offset_mask.bias",
                                             "small_dyn_agg.conv_offset_mask.weight"]),
        r"^(?=.*offset)(?=.*medium)": (1e-5, ["medium_dyn_agg.conv_offset_mask.bias",
                                              "medium_dyn_agg.conv_offset_mask.weight"]),
        "offset": (1e-4, ["large_dyn_agg.conv_offset_mask.bias", "large_dyn_agg.conv_offset_mask.weight"]),
        "default": (1e-4, ["head.bias", "head.weight", "small_dyn_agg.conv.bias", "small_dyn_agg.conv.weight"]),
    }
