"""Training on open-clips (configs/masa-lite-video.yaml): the chain of the model's own outputs that replaces a
sample's reference, checked against a loop written out by hand; a tiny run; and the augmentations it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refsr.data.degrade import make_lr, to_tensor
from refsr.errors import RefsrError
from refsr.train import load_config, run_training
from refsr.train.tasks.restoration import chained_references

CONFIG = Path(__file__).parents[2] / "configs" / "masa-lite-video.yaml"


class Blend(nn.Module):
    """Half the bicubic x4 of the LR, half the reference, plus a step: each output depends on the one before."""

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        assert not self.training  # the chain runs in eval mode
        return 0.5 * F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False) + 0.5 * ref + 0.013


def quantize(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().div(255)


def test_chained_references_match_the_loop_written_out() -> None:
    g = torch.Generator().manual_seed(0)
    batch = {"lr": torch.rand(3, 3, 8, 12, generator=g), "ref": quantize(torch.rand(3, 3, 32, 48, generator=g)),
             "chain_lr": quantize(torch.rand(3, 3, 3, 8, 12, generator=g)), "chain_length": torch.tensor([0, 1, 3])}
    batch["ref_down"] = torch.stack([to_tensor(make_lr(_uint8(r), 4)) for r in batch["ref"]])
    model = Blend().train()
    out = chained_references(model, batch)
    assert model.training  # put back
    with torch.no_grad():
        model.eval()
        for row, length in enumerate(batch["chain_length"].tolist()):
            ref = batch["ref"][row : row + 1]
            for place in range(3 - length, 3):  # from the still, each output the next reference
                ref = quantize(model(batch["chain_lr"][row : row + 1, place], ref))
            assert torch.equal(out["ref"][row], ref[0])
            assert torch.equal(out["ref_down"][row], to_tensor(make_lr(_uint8(ref[0]), 4)))
    assert torch.equal(out["ref"][0], batch["ref"][0]) and not torch.equal(out["ref"][2], batch["ref"][2])
    assert torch.equal(batch["ref"], batch["ref"].clone())  # the input batch is left as it was
    unchained = dict(batch, chain_length=torch.zeros(3, dtype=torch.int64))
    assert torch.equal(chained_references(model, unchained)["ref"], batch["ref"])


def _uint8(image: torch.Tensor):
    return image.mul(255).round().byte().permute(1, 2, 0).numpy()


def clip_run(tmp_path: Path, root: Path, name: str, *sets: str):
    """configs/masa-lite-video.yaml on 12 frames of bikes (ci subset), a tiny MASA, 3 iterations."""
    base = [
        f"data.train.sources=[{{dataset: open-clips, root: '{root}', split: eval, names: [bikes], frames: 12, "
        "max_gap: 4, chain_prob: 1.0, max_chain: 2}]",
        "model.init=null",
        "model.overrides={nf: 8, encoder_blocks: [1, 1, 1], unet_blocks: [1, 1, 1], fusion_blocks: [1, 1, 1]}",
        "data.val=null", "data.train.crop=32", "data.train.samples_per_epoch=null", "data.train.num_workers=0",
        "train.batch=2", "train.iterations=3", "train.time_budget=null", "train.tensorboard=false",
        "train.device=cpu", "train.precision=fp32", "train.channels_last=false",
    ]
    return run_training(load_config(CONFIG, [*base, *sets]), tmp_path / name, progress=False)


def test_a_tiny_run_on_clips_with_chains_trains(tmp_path: Path, ci_data, monkeypatch) -> None:
    calls = []
    real = chained_references

    def counting(model, batch):
        out = real(model, batch)
        calls.append(int((batch["chain_length"] > 0).sum()))
        return out

    monkeypatch.setattr("refsr.train.tasks.restoration.chained_references", counting)
    summary = clip_run(tmp_path, ci_data, "run")
    assert [r.iteration for r in summary.records] == [1, 2, 3]
    assert all(math.isfinite(r.total) for r in summary.records)
    assert len(calls) == 3 and sum(calls) > 0  # chains ran in the loop


@pytest.mark.parametrize("sets", [
    ("data.train.augment={name: masa, swap_prob: 0.5, jitter: false}",),
    ("data.train.augment={name: masa, swap_prob: 0.0, jitter: true}",),
    ("data.train.degradation=real",),
])
def test_augmentations_that_leave_the_chain_behind_are_refused(tmp_path: Path, ci_data, sets) -> None:
    with pytest.raises(RefsrError, match=r"data.train.sources\[0\]: its samples carry chains of LR frames"):
        clip_run(tmp_path, ci_data, "refused", *sets)
