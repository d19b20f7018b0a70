"""train.precision, train.channels_last and the grad scaler: a few CPU iterations stay finite and close to
float32, and a resumed fp16 run keeps its loss scale and repeats an uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from refsr.errors import RefsrError
from refsr.train import load_config, run_training
from refsr.train.task import Precision

HERE = Path(__file__).parent
ASSETS = HERE.parent / "assets"


def masa_run(tmp_path: Path, name: str, *sets: str, callbacks=(), resume: bool = False):
    """configs/masa-lite.yaml, shrunk (nf 8, one block per stage), 4 iterations on two test photos."""
    photos = f"root: '{ASSETS}', paths: [astronaut.png, coffee.png]"
    base = [
        f"data.train.sources=[{{dataset: open-synthetic, {photos}, patch: 64, samples_per_photo: 2}}]",
        "model.overrides={nf: 8, encoder_blocks: [1, 1, 1], unet_blocks: [1, 1, 1], fusion_blocks: [1, 1, 1]}",
        "data.val=null", "data.train.crop=32", "data.train.samples_per_epoch=null", "data.train.num_workers=0",
        "train.batch=2", "train.iterations=4", "train.time_budget=null", "schedule.t_max=4",
        "train.tensorboard=false", "train.device=cpu", "train.checkpoint_interval=2",
    ]
    config = load_config(HERE.parents[1] / "configs/masa-lite.yaml", [*base, *sets])
    return run_training(config, tmp_path / name, resume=resume, callbacks=callbacks, progress=False)


def test_bf16_and_channels_last_train_finite_and_close_to_fp32(tmp_path: Path) -> None:
    fp32 = masa_run(tmp_path, "fp32")
    bf16 = masa_run(tmp_path, "bf16", "train.precision=bf16", "train.channels_last=true")
    for a, b in zip(fp32.records, bf16.records):
        assert math.isfinite(b.total)
        # The same samples and the same start: bfloat16's 8-bit mantissa moves the L1 loss by well under 5 %.
        assert b.total == pytest.approx(a.total, rel=0.05)
        assert b.throughput["samples_per_second"] > 0
    for key, value in fp32.model.state_dict().items():
        other = bf16.model.state_dict()[key]
        assert other.dtype == torch.float32 and torch.isfinite(other).all()  # the weights stay float32
        torch.testing.assert_close(other, value, rtol=0.05, atol=2e-3)


def test_fp16_scales_its_loss_and_resumes_exactly(tmp_path: Path) -> None:
    straight = masa_run(tmp_path, "a", "train.precision=fp16")
    assert all(math.isfinite(r.total) for r in straight.records)
    state = torch.load(tmp_path / "a/checkpoints/last/state.pt", weights_only=True)
    assert state["grad_scalers"]["optimizer"]["scale"] > 0  # the scaler's state is checkpointed

    class Stop(Exception):
        pass

    def stop(record) -> None:
        if record.iteration == 3:  # after the checkpoint at 2
            raise Stop

    with pytest.raises(Stop):
        masa_run(tmp_path, "b", "train.precision=fp16", callbacks=[stop])
    resumed = masa_run(tmp_path, "b", "train.precision=fp16", resume=True)
    assert [r.iteration for r in resumed.records] == [3, 4]
    assert [r.total for r in resumed.records] == [r.total for r in straight.records[2:]]
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def test_precision_rejects_an_unknown_name() -> None:
    with pytest.raises(RefsrError, match="train.precision: unknown 'fp8'"):
        Precision("fp8", torch.device("cpu"))
