"""Training augmentation: geometry vs brute force, MASA's jitter by hand, flows kept consistent, seeding."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refsr.data.augment import (
    Compose,
    Dihedral,
    PairedRandomCrop,
    RandomBrightnessContrast,
    RandomDihedral,
    RandomRoleSwap,
    apply_dihedral,
    brightness_contrast,
    c2_augment,
    masa_augment,
    paired_random_crop,
    random_dihedral,
    swap_roles,
    transform_flow,
)
from refsr.data.cufed import CUFEDTrain
from refsr.data.degrade import make_lr, to_tensor
from refsr.errors import RefsrError

# tests/data has its own conftest.py, which shadows the top-level one for `from conftest import`.
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def load_photo(name: str) -> np.ndarray:
    """A real photo from tests/assets as HxWx3 uint8 RGB."""
    return np.asarray(Image.open(ASSETS / name).convert("RGB"))

ALL_DIHEDRALS = [Dihedral(v, h, k) for v, h, k in itertools.product((False, True), (False, True), range(4))]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tensor_patch(name: str, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return to_tensor(np.ascontiguousarray(load_photo(name)[top : top + h, left : left + w]))


def training_sample(size: int = 32) -> dict:
    """A sample as CUFEDTrain makes it: lr = make_lr(hr), ref_down = make_lr(ref)."""
    hr = load_photo("astronaut.png")[:size, :size]
    ref = load_photo("coffee.png")[40 : 40 + size, 50 : 50 + size]
    return {"hr": to_tensor(hr), "lr": to_tensor(make_lr(hr)), "ref": to_tensor(ref),
            "ref_down": to_tensor(make_lr(ref)), "name": "in", "ref_name": "rf"}


def u8(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.numpy() * 255).astype(np.uint8).transpose(1, 2, 0)


def degraded_then_transformed(hr: torch.Tensor, lr: torch.Tensor) -> bool:
    """True if ``lr == d(make_lr(d^-1(hr)))`` for some flip/rotation ``d``: the LR was made, then transformed.

    (Transforming first and degrading after is not the same: PIL resizes rows before columns, so a quarter
    turn changes the rounding. MASA, like these transforms, flips and rotates after degrading.)
    """
    for d, d_inv in itertools.product(ALL_DIHEDRALS, ALL_DIHEDRALS):
        original = apply_dihedral(hr, d_inv)
        if not torch.equal(apply_dihedral(original, d), hr):
            continue
        if torch.equal(apply_dihedral(to_tensor(make_lr(u8(original))), d), lr):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------


def brute_dihedral(x: np.ndarray, d: Dihedral) -> np.ndarray:
    """Element by element: vflip, hflip, then quarter turns out[i, j] = in[j, W - 1 - i]."""
    if d.vflip:
        x = x[::-1]
    if d.hflip:
        x = x[:, ::-1]
    for _ in range(d.k % 4):
        h, w = x.shape[:2]
        out = np.empty((w, h) + x.shape[2:], x.dtype)
        for i in range(w):
            for j in range(h):
                out[i, j] = x[j, w - 1 - i]
        x = out
    return x


@pytest.mark.parametrize("d", ALL_DIHEDRALS)
def test_apply_dihedral_matches_brute_force(d: Dihedral) -> None:
    x = torch.arange(3 * 4 * 6).reshape(3, 4, 6)
    got = apply_dihedral(x, d).numpy()
    expected = brute_dihedral(x.numpy().transpose(1, 2, 0), d).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expected)


def test_dihedrals_are_eight_distinct_maps() -> None:
    x = torch.arange(16).reshape(4, 4)
    assert len({tuple(apply_dihedral(x, d).flatten().tolist()) for d in ALL_DIHEDRALS}) == 8


@pytest.mark.parametrize("d", ALL_DIHEDRALS)
def test_transform_flow_keeps_the_correspondence(d: Dihedral) -> None:
    """Integer flows between frames of different sizes: the new flow must still link the same points."""
    hs, ws, ht, wt = 5, 7, 6, 9
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:hs, 0:ws]
    ty, tx = rng.integers(0, ht, (hs, ws)), rng.integers(0, wt, (hs, ws))  # each source pixel's target
    flow = torch.tensor(np.stack([tx - xs, ty - ys]), dtype=torch.float32)
    # Label every pixel by its original coordinates, transform the labels like the frames.
    src_labels = apply_dihedral(torch.tensor(np.stack([ys, xs])), d)
    tgt_y, tgt_x = np.mgrid[0:ht, 0:wt]
    tgt_labels = apply_dihedral(torch.tensor(np.stack([tgt_y, tgt_x])), d)
    new = transform_flow(flow, d, target_size=(ht, wt))
    assert new.shape[-2:] == src_labels.shape[-2:]
    for i, j in itertools.product(range(new.shape[1]), range(new.shape[2])):
        oy, ox = src_labels[:, i, j].tolist()
        u, v = new[:, i, j].tolist()
        ti, tj = i + int(round(v)), j + int(round(u))
        assert tgt_labels[:, ti, tj].tolist() == [ty[oy, ox], tx[oy, ox]]


def test_random_dihedral_is_seeded_and_uniform_with_rot_prob_1() -> None:
    g1, g2 = gen(3), gen(3)
    draws = [random_dihedral(g1, rot_prob=1.0) for _ in range(800)]
    assert draws == [random_dihedral(g2, rot_prob=1.0) for _ in range(800)]
    x = torch.arange(16).reshape(4, 4)
    counts = Counter(tuple(apply_dihedral(x, d).flatten().tolist()) for d in draws)
    assert len(counts) == 8 and min(counts.values()) > 60  # 100 expected each
    masa = [random_dihedral(gen(5), rot_prob=0.5)] + [random_dihedral(g1, rot_prob=0.5) for _ in range(800)]
    no_turn = sum(d.k == 0 for d in masa) / len(masa)
    assert 0.55 < no_turn < 0.70  # 1/2 + 1/2 * 1/4 = 0.625
    assert all(d == Dihedral(False, False, 0) for d in (random_dihedral(g1, flip=False, rotate=False)
                                                         for _ in range(20)))


def test_paired_random_crop_is_aligned() -> None:
    s = training_sample(32)
    hr_c, lr_c, (top, left) = paired_random_crop(s["hr"], s["lr"], 3, generator=gen(0))
    assert hr_c.shape == (3, 12, 12) and lr_c.shape == (3, 3, 3)
    expected_hr = s["hr"][:, 4 * top : 4 * top + 12, 4 * left : 4 * left + 12]
    torch.testing.assert_close(hr_c, expected_hr, rtol=0, atol=0)
    torch.testing.assert_close(lr_c, s["lr"][:, top : top + 3, left : left + 3], rtol=0, atol=0)
    positions = {paired_random_crop(s["hr"], s["lr"], 3, generator=gen(seed))[2] for seed in range(40)}
    assert len(positions) > 10 and all(0 <= t <= 5 and 0 <= lft <= 5 for t, lft in positions)
    with pytest.raises(RefsrError, match="does not fit"):
        paired_random_crop(s["hr"], s["lr"], 9, generator=gen(0))
    with pytest.raises(RefsrError, match="integer multiple"):
        paired_random_crop(s["hr"][:, :30], s["lr"], 3, generator=gen(0))


# ---------------------------------------------------------------------------------------------------------
# MASA's jitter
# ---------------------------------------------------------------------------------------------------------


def test_brightness_contrast_matches_hand_values() -> None:
    x = np.array([0, 10, 100, 200, 255], np.uint8)
    # |1.2 x - 20|: 20 (folded up by the absolute value), 8, 100, 220, 286 -> 255
    np.testing.assert_array_equal(brightness_contrast(x, 1.2, -20), [20, 8, 100, 220, 255])
    # ties round half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    np.testing.assert_array_equal(brightness_contrast(np.array([1, 3, 5, 7], np.uint8), 0.5, 0), [0, 2, 2, 4])
    t = torch.tensor([0, 10, 100, 200, 255], dtype=torch.uint8)
    assert brightness_contrast(t, 1.2, -20).tolist() == [20, 8, 100, 220, 255]
    f = brightness_contrast(t.float() / 255, 1.2, -20)
    assert f.dtype == torch.float32
    np.testing.assert_array_equal(np.rint(f.numpy() * 255), [20, 8, 100, 220, 255])
    with pytest.raises(RefsrError, match="uint8"):
        brightness_contrast(np.zeros(3, np.float32), 1.0, 0.0)


def test_jitter_changes_one_image_and_remakes_its_partner() -> None:
    s = training_sample(32)
    seen = set()
    for seed in range(12):
        out = RandomBrightnessContrast()(s, generator=gen(seed))
        changed_hr = not torch.equal(out["hr"], s["hr"])
        changed_ref = not torch.equal(out["ref"], s["ref"])
        assert changed_hr != changed_ref  # exactly one of the two
        seen.add(changed_ref)
        np.testing.assert_array_equal(u8(out["lr"]), make_lr(u8(out["hr"])))
        np.testing.assert_array_equal(u8(out["ref_down"]), make_lr(u8(out["ref"])))
    assert seen == {True, False}
    assert RandomBrightnessContrast(p=0.0)(s, generator=gen(0))["hr"] is s["hr"]


# ---------------------------------------------------------------------------------------------------------
# role swap, composition, seeding
# ---------------------------------------------------------------------------------------------------------


def test_swap_roles() -> None:
    s = training_sample(16)
    out = swap_roles(s)
    assert out["hr"] is s["ref"] and out["ref"] is s["hr"] and out["lr"] is s["ref_down"]
    assert out["ref_down"] is s["lr"] and (out["name"], out["ref_name"]) == ("rf", "in")
    assert RandomRoleSwap(p=1.0)(s)["swapped"] and RandomRoleSwap(p=0.0)(s)["hr"] is s["hr"]
    with pytest.raises(RefsrError, match="flow"):
        swap_roles({**s, "flow": torch.zeros(2, 16, 16)})


def test_joint_and_independent_reference_geometry() -> None:
    s = training_sample(16)
    same = {**s, "ref": s["hr"].clone(), "ref_down": s["lr"].clone()}
    for seed in range(10):
        out = RandomDihedral(ref="joint", rot_prob=1.0)(same, generator=gen(seed))
        assert torch.equal(out["hr"], out["ref"]) and torch.equal(out["lr"], out["ref_down"])
    differ = [not torch.equal(o["hr"], o["ref"]) for o in
              (RandomDihedral(ref="independent")(same, generator=gen(seed)) for seed in range(10))]
    assert any(differ)
    out = RandomDihedral(ref="independent")(s, generator=gen(1))
    assert degraded_then_transformed(out["hr"], out["lr"])
    assert degraded_then_transformed(out["ref"], out["ref_down"])
    with pytest.raises(RefsrError, match="ref='joint'"):
        RandomDihedral(ref="independent")({**s, "flow": torch.zeros(2, 16, 16)}, generator=gen(0))


def test_crop_keeps_flow_consistent() -> None:
    """Label pixels by their coordinates; after an independent crop the flow must link the same labels."""
    h = w = 16
    ys, xs = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(1)
    ty, tx = rng.integers(0, h, (h, w)), rng.integers(0, w, (h, w))
    ref_lab = torch.tensor(np.stack([ys, xs, ys * 0]), dtype=torch.float32)
    hr_lab = ref_lab.clone()
    sample = {"hr": hr_lab, "lr": hr_lab[:, ::4, ::4], "ref": ref_lab, "ref_down": ref_lab[:, ::4, ::4],
              "flow": torch.tensor(np.stack([tx - xs, ty - ys]), dtype=torch.float32)}
    for seed, mode in itertools.product(range(4), ("independent", "none")):
        out = PairedRandomCrop(2, ref=mode)(sample, generator=gen(seed))
        oh, ow = out["hr"].shape[-2:]
        for i, j in itertools.product(range(out["flow"].shape[1]), range(out["flow"].shape[2])):
            oy, ox = int(out["ref"][0, i, j]), int(out["ref"][1, i, j])
            ti, tj = i + int(out["flow"][1, i, j]), j + int(out["flow"][0, i, j])
            if 0 <= ti < oh and 0 <= tj < ow:
                assert (int(out["hr"][0, ti, tj]), int(out["hr"][1, ti, tj])) == (ty[oy, ox], tx[oy, ox])
    out = PairedRandomCrop(2, ref="aligned")(sample, generator=gen(0))
    top, left = int(out["hr"][0, 0, 0]), int(out["hr"][1, 0, 0])
    torch.testing.assert_close(out["flow"], sample["flow"][:, top : top + 8, left : left + 8], rtol=0, atol=0)


def test_aligned_crop_takes_the_same_window() -> None:
    s = training_sample(32)
    s = {**s, "ref": s["hr"] * 0.5, "ref_down": s["lr"] * 0.5}
    out = PairedRandomCrop(4, ref="aligned")(s, generator=gen(7))
    torch.testing.assert_close(out["ref"], out["hr"] * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(out["ref_down"], out["lr"] * 0.5, rtol=0, atol=0)
    with pytest.raises(RefsrError, match="Ref↓ of the LR's size"):
        PairedRandomCrop(2, ref="aligned")({**s, "ref_down": s["ref_down"][:, :4, :4],
                                            "ref": s["ref"][:, :16, :16]}, generator=gen(0))


def test_compose_same_seed_same_output() -> None:
    s = training_sample(32)
    pipeline = Compose(RandomRoleSwap(), RandomBrightnessContrast(), PairedRandomCrop(4), RandomDihedral())
    a, b = pipeline(s, generator=gen(11)), pipeline(s, generator=gen(11))
    for key in ("hr", "lr", "ref", "ref_down"):
        assert torch.equal(a[key], b[key])
    outs = [pipeline(s, generator=gen(seed))["hr"] for seed in range(6)]
    assert len({tuple(o.flatten()[:50].tolist()) + tuple(o.shape) for o in outs}) > 1
    own1, own2 = masa_augment(seed=4), masa_augment(seed=4)  # no generator: the transform's own, seeded
    x, y = own1(s), own2(s)
    assert all(torch.equal(x[k], y[k]) for k in ("hr", "lr", "ref", "ref_down"))
    assert c2_augment(seed=0)(s)["hr"].shape == (3, 32, 32)


def test_dataset_transform_is_seeded_per_item_and_epoch(tmp_path: Path) -> None:
    for i, name in enumerate(("a", "b")):
        for folder, photo in (("input", "astronaut.png"), ("ref", "chelsea.png")):
            path = tmp_path / folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(load_photo(photo)[10 * i : 10 * i + 32, :32])).save(path)
    ds = CUFEDTrain(tmp_path, transform=masa_augment(), seed=3)
    first = [ds[i] for i in range(2)]
    again = [ds[i] for i in (1, 0)][::-1]  # order does not matter
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in ("hr", "lr", "ref", "ref_down"))
    epochs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        epochs.append(ds[0])
    assert any(not torch.equal(e["hr"], epochs[0]["hr"]) for e in epochs[1:])
    for e in epochs:  # whatever the draw, the low-res images are the transformed make_lr of their partners
        assert degraded_then_transformed(e["hr"], e["lr"])
        assert degraded_then_transformed(e["ref"], e["ref_down"])
    assert not degraded_then_transformed(epochs[0]["hr"], epochs[0]["lr"] * 0.5)  # the check can fail
