"""The standard benchmark layouts on tiny fake trees: pairing, size rules, seeding, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refsr.data.benchmarks import Manga109, Sun80, Urban100
from refsr.data.cufed import CUFED5, CUFEDTrain
from refsr.data.degrade import make_lr
from refsr.data.lightfield import LightFieldGrid
from refsr.data.standard import prepare_test_sample, stack_references
from refsr.errors import RefsrError
from refsr.io import read_image

# tests/data has its own conftest.py, which shadows the top-level one for `from conftest import`.
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def load_photo(name: str) -> np.ndarray:
    """A real photo from tests/assets as HxWx3 uint8 RGB."""
    return np.asarray(Image.open(ASSETS / name).convert("RGB"))


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def patch(name: str, top: int, left: int, h: int, w: int) -> np.ndarray:
    """A real-photo crop of the given size."""
    img = load_photo(name)
    out = img[top : top + h, left : left + w]
    assert out.shape[:2] == (h, w), "the crop must fit the test photo"
    return np.ascontiguousarray(out)


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def as_u8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float tensor -> HxWx3 uint8, checking the values are exact k/255 levels."""
    assert t.dtype == torch.float32 and t.ndim == 3 and t.shape[0] == 3
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    levels = t.double().numpy() * 255
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    return np.rint(levels).astype(np.uint8).transpose(1, 2, 0)


def pil_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """The official repos' resize (Pillow <= 12: horizontal pass, then vertical), as an independent oracle.

    Two one-axis resizes, because Pillow 13 may run the vertical pass first when both sides change.
    """
    wide = Image.fromarray(img).resize((w, img.shape[0]), Image.BICUBIC)
    return np.asarray(wide.resize((w, h), Image.BICUBIC))


def edge_pad(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    return np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="edge")


def centred_split(size: int, multiple: int) -> tuple[int, int]:
    """MASA's centred split of the padding: (before, after), the odd pixel after."""
    total = -size % multiple
    return total // 2, total - total // 2


# ---------------------------------------------------------------------------------------------------------
# CUFED train
# ---------------------------------------------------------------------------------------------------------


def make_cufed_train(root: Path, *, ref_names: list[str] | None = None) -> list[np.ndarray]:
    """input/{a,b,c}.png with ref/ partners; the images differ so that pairing mistakes show."""
    inputs = [patch("astronaut.png", 0, 0, 36, 44), patch("coffee.png", 10, 20, 36, 44),
              patch("chelsea.png", 5, 5, 36, 44)]
    refs = [patch("coffee.png", 50, 60, 40, 40), patch("chelsea.png", 30, 30, 40, 40),
            patch("astronaut.png", 60, 90, 40, 40)]
    names = ["a.png", "b.png", "c.png"]
    for name, img in zip(names, inputs):
        save(root / "input" / name, img)
    for name, img in zip(ref_names or names, refs):
        save(root / "ref" / name, img)
    return inputs + refs


def test_cufed_train_masa_pairs_by_index_and_pads_to_16(tmp_path: Path) -> None:
    root = tmp_path / "CUFED" / "train"
    imgs = make_cufed_train(root, ref_names=["x.png", "y.png", "z.png"])  # names differ: index pairing
    ds = CUFEDTrain(tmp_path, protocol="masa")  # the parent of CUFED/train is accepted
    assert len(ds) == 3 and ds.pairing == "index"
    s = ds[1]
    hr_expected = edge_pad(imgs[1], 0, 48 - 36, 0, 48 - 44)  # bottom/right replicate to 16
    ref_expected = edge_pad(imgs[4], 0, 48 - 40, 0, 48 - 40)
    np.testing.assert_array_equal(as_u8(s["hr"]), hr_expected)
    np.testing.assert_array_equal(as_u8(s["ref"]), ref_expected)
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr_expected))
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(ref_expected))
    np.testing.assert_array_equal(as_u8(s["lr"]), pil_resize(hr_expected, 12, 12))
    assert (s["name"], s["ref_name"]) == ("b", "y")


def test_cufed_train_basename_pairing_and_c2_reference_resize(tmp_path: Path) -> None:
    imgs = make_cufed_train(tmp_path)
    ds = CUFEDTrain(tmp_path, protocol="c2")
    assert ds.pairing == "basename"
    s = ds[2]
    hr = imgs[2][:36, :44]  # mod-crop 4: already a multiple
    np.testing.assert_array_equal(as_u8(s["hr"]), hr)
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr))
    # C2 resizes the reference to the input's size with PIL bicubic.
    np.testing.assert_array_equal(as_u8(s["ref"]), pil_resize(imgs[5], 36, 44))
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(pil_resize(imgs[5], 36, 44)))
    assert s["hr"].shape == (3, 36, 44) and s["lr"].shape == (3, 9, 11)


def test_cufed_train_ttsr_zero_pads_reference_top_left(tmp_path: Path) -> None:
    save(tmp_path / "input" / "a.png", patch("coffee.png", 0, 0, 40, 40))
    ref = patch("astronaut.png", 0, 0, 30, 26)
    save(tmp_path / "ref" / "a.png", ref)
    s = CUFEDTrain(tmp_path, protocol="ttsr")[0]
    got = as_u8(s["ref"])
    np.testing.assert_array_equal(got[:30, :26], ref)
    assert not got[30:].any() and not got[:, 26:].any()
    down = as_u8(s["ref_down"])
    np.testing.assert_array_equal(down[:7, :6], make_lr(ref[:28, :24]))
    assert down.shape == (10, 10, 3) and not down[7:].any() and not down[:, 6:].any()


def test_cufed_train_errors(tmp_path: Path) -> None:
    with pytest.raises(RefsrError, match="does not exist"):
        CUFEDTrain(tmp_path / "nowhere")
    with pytest.raises(RefsrError, match="input/ and ref/"):
        CUFEDTrain(tmp_path)
    (tmp_path / "input").mkdir()
    (tmp_path / "ref").mkdir()
    with pytest.raises(RefsrError, match="has no images"):
        CUFEDTrain(tmp_path)


def test_cufed_train_mismatches(tmp_path: Path) -> None:
    make_cufed_train(tmp_path, ref_names=["a.png", "b.png", "q.png"])
    with pytest.raises(RefsrError, match=r"no partner of the same name in ref/ \(c.png\)"):
        CUFEDTrain(tmp_path, pairing="basename")
    assert len(CUFEDTrain(tmp_path, pairing="index")) == 3  # by index the names do not matter
    save(tmp_path / "ref" / "r.png", patch("coffee.png", 0, 0, 40, 40))
    with pytest.raises(RefsrError, match="3 input images but 4 references"):
        CUFEDTrain(tmp_path, pairing="index")
    with pytest.raises(RefsrError, match="unknown pairing"):
        CUFEDTrain(tmp_path, pairing="random")
    with pytest.raises(RefsrError, match="unknown protocol"):
        CUFEDTrain(tmp_path, protocol="srntt")


# ---------------------------------------------------------------------------------------------------------
# CUFED5
# ---------------------------------------------------------------------------------------------------------

# Per set: the HR and five references of different sizes (h, w), none a multiple of 16.
CUFED5_HR = {"000": ("astronaut.png", 3, 5, 75, 98), "001": ("coffee.png", 20, 30, 70, 101)}
CUFED5_REF_SIZES = [(61, 77), (50, 90), (83, 40), (47, 47), (90, 70)]


def make_cufed5(folder: Path) -> dict[str, list[np.ndarray]]:
    photos = ["astronaut.png", "coffee.png", "chelsea.png"]
    out = {}
    for i, (prefix, (photo, top, left, h, w)) in enumerate(CUFED5_HR.items()):
        imgs = [save(folder / f"{prefix}_0.png", patch(photo, top, left, h, w))]
        for k, (rh, rw) in enumerate(CUFED5_REF_SIZES, start=1):
            imgs.append(save(folder / f"{prefix}_{k}.png", patch(photos[(i + k) % 3], 7 * k, 9 * k, rh, rw)))
        out[prefix] = [read_image(p) for p in imgs]
    return out


def test_cufed5_masa_single_reference(tmp_path: Path) -> None:
    sets = make_cufed5(tmp_path / "CUFED" / "test" / "CUFED5")
    ds = CUFED5(tmp_path, level=3, protocol="masa")
    assert len(ds) == 2
    s = ds[1]
    hr, ref = sets["001"][0], sets["001"][3]
    (t, b), (lft, r) = centred_split(70, 32), centred_split(101, 32)
    hr_padded = edge_pad(hr, t, b, lft, r)
    assert hr_padded.shape[:2] == (96, 128)
    np.testing.assert_array_equal(as_u8(s["hr"]), hr)  # the metric target is never padded
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr_padded))
    assert s["pad"] == (t, lft) and s["hr_size"] == (70, 101) and s["name"] == "001"
    ref_padded = edge_pad(ref, 0, 96 - 83, 0, 48 - 40)  # bottom/right to 16
    np.testing.assert_array_equal(as_u8(s["ref"]), ref_padded)
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(ref_padded))
    # Cropping the padded frame at `pad` gives back the HR.
    np.testing.assert_array_equal(hr_padded[t : t + 70, lft : lft + 101], as_u8(s["hr"]))


def test_cufed5_masa_stacked_references(tmp_path: Path) -> None:
    sets = make_cufed5(tmp_path)
    s = CUFED5(tmp_path, level="stacked", protocol="masa")[0]
    assert s["ref"].shape == (3, 2560, 512) and s["ref_down"].shape == (3, 640, 128)
    stacked = as_u8(s["ref"])
    for k, ref in enumerate(sets["000"][1:]):
        h, w = ref.shape[:2]
        t, lft = (512 - h) // 2, (512 - w) // 2
        b, r = 512 - h - t, 512 - w - lft
        np.testing.assert_array_equal(stacked[512 * k : 512 * (k + 1)], edge_pad(ref, t, b, lft, r))
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(stacked))
    assert s["lr"].shape == (3, 96 // 4, 128 // 4)  # 75x98 -> 96x128


def test_cufed5_other_protocols(tmp_path: Path) -> None:
    sets = make_cufed5(tmp_path)
    hr, ref = sets["000"][0], sets["000"][1]  # 75x98 and 61x77

    s = CUFED5(tmp_path, level=1, protocol="ttsr")[0]
    np.testing.assert_array_equal(as_u8(s["hr"]), hr[:72, :96])
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr[:72, :96]))
    np.testing.assert_array_equal(as_u8(s["ref"]), ref[:60, :76])
    assert s["pad"] == (0, 0)

    for protocol, m in (("c2", 4), ("amsa", 32)):
        s = CUFED5(tmp_path, level=1, protocol=protocol)[0]
        hr_c, ref_c = hr[: 75 // m * m, : 98 // m * m], ref[: 61 // m * m, : 77 // m * m]
        common = (max(hr_c.shape[0], ref_c.shape[0]), max(hr_c.shape[1], ref_c.shape[1]))
        hr_in, ref_in = np.zeros((*common, 3), np.uint8), np.zeros((*common, 3), np.uint8)
        hr_in[: hr_c.shape[0], : hr_c.shape[1]] = hr_c
        ref_in[: ref_c.shape[0], : ref_c.shape[1]] = ref_c
        np.testing.assert_array_equal(as_u8(s["hr"]), hr_c)
        np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr_in))
        np.testing.assert_array_equal(as_u8(s["ref"]), ref_in)
        np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(ref_in))
        assert s["hr_size"] == hr_c.shape[:2] and s["pad"] == (0, 0)


def test_cufed5_lr_as_reference(tmp_path: Path) -> None:
    sets = make_cufed5(tmp_path)
    hr = sets["001"][0]  # 70x101
    s = CUFED5(tmp_path, level="lr", protocol="masa")[1]
    lr = as_u8(s["lr"])  # from the HR padded to 96x128: 24x32
    assert lr.shape == (24, 32, 3)
    np.testing.assert_array_equal(as_u8(s["ref"]), edge_pad(lr, 0, 8, 0, 0))  # the LR, padded to 16
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(edge_pad(lr, 0, 8, 0, 0)))

    s = CUFED5(tmp_path, level="lr", protocol="c2")[1]  # default "up": the PIL-bicubic LR↑
    hr_c = hr[:68, :100]
    lr = make_lr(hr_c)
    np.testing.assert_array_equal(as_u8(s["lr"]), lr)
    np.testing.assert_array_equal(as_u8(s["ref"]), pil_resize(lr, 68, 100))

    s = CUFED5(tmp_path, level="lr", protocol="c2", self_ref_mode="lr")[1]
    ref = as_u8(s["ref"])  # the LR in the top-left corner of an HR-size canvas
    assert ref.shape == (68, 100, 3)
    np.testing.assert_array_equal(ref[:17, :25], lr)
    assert not ref[17:].any() and not ref[:, 25:].any()


def test_cufed5_pairs_file(tmp_path: Path) -> None:
    folder = tmp_path / "CUFED5"
    sets = make_cufed5(folder)
    (tmp_path / "CUFED5_pairs.txt").write_text("001_0.png 001_4.png\n\n000_0.png 000_1.png\n")
    ds = CUFED5(folder, pairs_file="auto", protocol="ttsr")
    assert len(ds) == 2
    s = ds[0]  # the file's order
    assert s["name"] == "001"
    np.testing.assert_array_equal(as_u8(s["ref"]), sets["001"][4][:44, :44])
    with pytest.raises(RefsrError, match="leave level at 1"):
        CUFED5(folder, pairs_file="auto", level=2)
    (tmp_path / "bad.txt").write_text("000_0.png 000_1.png\n000_0.png\n")
    with pytest.raises(RefsrError, match=r"bad.txt:2: expected two file names"):
        CUFED5(folder, pairs_file=tmp_path / "bad.txt")
    (tmp_path / "gone.txt").write_text("000_0.png 000_9.png\n")
    with pytest.raises(RefsrError, match=r"gone.txt:1: .*000_9.png does not exist"):
        CUFED5(folder, pairs_file=tmp_path / "gone.txt")
    with pytest.raises(RefsrError, match="does not exist"):
        CUFED5(folder, pairs_file=tmp_path / "missing.txt")


def test_cufed5_errors(tmp_path: Path) -> None:
    with pytest.raises(RefsrError, match="does not exist"):
        CUFED5(tmp_path / "nope")
    save(tmp_path / "000_0.png", patch("coffee.png", 0, 0, 20, 20))
    save(tmp_path / "000_1.png", patch("coffee.png", 0, 0, 20, 20))
    with pytest.raises(RefsrError, match="no reference 000_2"):
        CUFED5(tmp_path, level=2)
    with pytest.raises(RefsrError, match="no reference 000_2"):
        CUFED5(tmp_path, level="stacked")
    with pytest.raises(RefsrError, match="unknown CUFED5 level"):
        CUFED5(tmp_path, level=6)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RefsrError, match="XXX_0.png"):
        CUFED5(empty)
    big = tmp_path / "big"
    save(big / "000_0.png", patch("coffee.png", 0, 0, 20, 20))
    for k in range(1, 6):
        save(big / f"000_{k}.png", patch("coffee.png", 0, 0, 20, 30))
    with pytest.raises(RefsrError, match="stack_size"):
        CUFED5(big, level="stacked", stack_size=24)[0]


def test_stack_references_zero_topleft() -> None:
    a, b = patch("coffee.png", 0, 0, 3, 5), patch("chelsea.png", 0, 0, 6, 2)
    out = stack_references([a, b], 6, mode="zero-topleft")
    expected = np.zeros((12, 6, 3), np.uint8)
    expected[:3, :5], expected[6:12, :2] = a, b
    np.testing.assert_array_equal(out, expected)


def test_prepare_test_sample_masa_multiples_scale_with_the_factor() -> None:
    hr, ref = patch("astronaut.png", 0, 0, 70, 90), patch("coffee.png", 0, 0, 33, 33)
    s = prepare_test_sample(hr, ref, protocol="masa", scale=2)  # HR multiple 16, Ref multiple 8
    assert s["lr"].shape[:2] == (40, 48) and s["ref"].shape[:2] == (40, 40)
    assert s["ref_down"].shape[:2] == (20, 20)


# ---------------------------------------------------------------------------------------------------------
# Sun80, Urban100, Manga109
# ---------------------------------------------------------------------------------------------------------


def make_sun80(root: Path) -> None:
    gt, matches = root / "Sun_Hays_SR_groundtruth", root / "Sun_Hays_SR_scenematches"
    photos = ["astronaut.png", "coffee.png", "chelsea.png"]
    for i in range(4):
        save(gt / f"Image_{i:03d}.jpg", patch(photos[i % 3], 3 * i, 4 * i, 50 + i, 70 - i))
        # MASA names the folder after the full file name; the stem is accepted too.
        folder = matches / (f"Image_{i:03d}.jpg" if i % 2 == 0 else f"Image_{i:03d}")
        for j in range(5):
            save(folder / f"match_{j}.jpg", patch(photos[(i + j) % 3], 5 * j, 6 * j, 30 + j, 41))


def test_sun80_layout_and_masa_rule(tmp_path: Path) -> None:
    make_sun80(tmp_path / "Sun80")
    ds = Sun80(tmp_path, protocol="masa", seed=0)
    assert len(ds) == 4
    s = ds[1]
    ref_path = ds.reference_for(1)
    assert ref_path.parent.name == "Image_001" and s["ref_name"] == ref_path.name
    hr, ref = read_image(ds.inputs[1]), read_image(ref_path)  # 51x69
    (t, b), (lft, r) = centred_split(51, 64), centred_split(69, 64)
    np.testing.assert_array_equal(as_u8(s["hr"]), hr)
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(edge_pad(hr, t, b, lft, r)))
    assert s["pad"] == (t, lft)
    (rt, rb), (rl, rr) = centred_split(ref.shape[0], 16), centred_split(41, 16)  # Sun80: ref centred
    np.testing.assert_array_equal(as_u8(s["ref"]), edge_pad(ref, rt, rb, rl, rr))


def test_sun80_sampling_is_seeded(tmp_path: Path) -> None:
    make_sun80(tmp_path)
    choices = {s: [Sun80(tmp_path, seed=s).reference_for(i).name for i in range(4)] for s in range(8)}
    again = Sun80(tmp_path, seed=5)
    assert [again.reference_for(i).name for i in (3, 2, 1, 0)][::-1] == choices[5]  # order-independent
    assert len({tuple(c) for c in choices.values()}) > 1  # the seed matters
    assert len({name for c in choices.values() for name in c}) >= 3  # several candidates get drawn
    ds = Sun80(tmp_path, seed=5)
    ds.set_epoch(7)  # a test set's references never change with the epoch
    assert [ds.reference_for(i).name for i in range(4)] == choices[5]
    torch.testing.assert_close(Sun80(tmp_path, seed=5)[2]["ref"], again[2]["ref"], rtol=0, atol=0)


def test_sun80_errors(tmp_path: Path) -> None:
    with pytest.raises(RefsrError, match="Sun_Hays_SR_groundtruth"):
        Sun80(tmp_path)
    make_sun80(tmp_path)
    for p in (tmp_path / "Sun_Hays_SR_scenematches" / "Image_001").iterdir():
        p.unlink()
    with pytest.raises(RefsrError, match="Image_001 has no images"):
        Sun80(tmp_path)
    (tmp_path / "Sun_Hays_SR_scenematches" / "Image_001").rmdir()
    with pytest.raises(RefsrError, match="no reference folder"):
        Sun80(tmp_path)


def make_flat(root: Path, n: int) -> list[np.ndarray]:
    photos = ["astronaut.png", "coffee.png", "chelsea.png"]
    imgs = [patch(photos[i % 3], 2 * i, 3 * i, 45 + i, 60 + 2 * i) for i in range(n)]
    for i, img in enumerate(imgs):
        save(root / f"img_{i:03d}.png", img)
    return imgs


def test_urban100_lr_as_its_own_reference(tmp_path: Path) -> None:
    imgs = make_flat(tmp_path / "HR", 2)
    hr = imgs[1]  # 46x62
    s = Urban100(tmp_path, protocol="masa")[1]
    (t, b), (lft, r) = centred_split(46, 64), centred_split(62, 64)
    lr = make_lr(edge_pad(hr, t, b, lft, r))  # 16x16, already a multiple of 16
    np.testing.assert_array_equal(as_u8(s["lr"]), lr)
    np.testing.assert_array_equal(as_u8(s["ref"]), lr)  # MASA: Ref = LR_pad
    np.testing.assert_array_equal(as_u8(s["ref_down"]), make_lr(lr))

    s = Urban100(tmp_path, protocol="amsa")[1]
    hr_c = hr[:32, :32]
    np.testing.assert_array_equal(as_u8(s["hr"]), hr_c)
    np.testing.assert_array_equal(as_u8(s["ref"]), pil_resize(make_lr(hr_c), 32, 32))
    with pytest.raises(RefsrError, match="self_ref_mode"):
        Urban100(tmp_path, self_ref_mode="hr")


def test_manga109_seeded_other_image(tmp_path: Path) -> None:
    imgs = make_flat(tmp_path, 5)
    picks = {seed: [Manga109(tmp_path, seed=seed).reference_index(i) for i in range(5)] for seed in range(10)}
    for seed, refs in picks.items():
        assert all(j != i and 0 <= j < 5 for i, j in enumerate(refs))
        assert refs == [Manga109(tmp_path, seed=seed).reference_index(i) for i in range(5)]
    assert len({tuple(p) for p in picks.values()}) > 1
    assert {j for p in picks.values() for j in p} == set(range(5))
    ds = Manga109(tmp_path, seed=4, protocol="ttsr")
    s = ds[3]
    j = ds.reference_index(3)
    h, w = imgs[j].shape[:2]
    np.testing.assert_array_equal(as_u8(s["ref"]), imgs[j][: h // 4 * 4, : w // 4 * 4])
    assert s["ref_name"] == f"img_{j:03d}"


def test_manga109_needs_two_images(tmp_path: Path) -> None:
    make_flat(tmp_path, 1)
    with pytest.raises(RefsrError, match="at least 2"):
        Manga109(tmp_path)
    void = tmp_path / "void"
    void.mkdir()
    with pytest.raises(RefsrError, match="a folder of HR images"):
        Manga109(void)


# ---------------------------------------------------------------------------------------------------------
# Light field
# ---------------------------------------------------------------------------------------------------------


def view_image(r: int, c: int) -> np.ndarray:
    """A distinct 20x27 view per grid position (a shifted crop, like a small parallax)."""
    return patch("astronaut.png", 10 + 3 * r, 12 + 4 * c, 20, 27)


def make_lightfield(root: Path, layout: str, grid: int = 8) -> None:
    for r in range(grid):
        for c in range(grid):
            name = f"{r:02d}_{c:02d}.png" if layout == "rowcol" else f"input_Cam{r * grid + c:03d}.png"
            save(root / name, view_image(r, c))


@pytest.mark.parametrize("layout", ["rowcol", "hci"])
def test_lightfield_fixed_views(tmp_path: Path, layout: str) -> None:
    make_lightfield(tmp_path / "sceneA", layout)
    ds = LightFieldGrid(tmp_path)
    assert len(ds) == 1
    s = ds[0]
    assert s["lr_view"] == (3, 3) and s["ref_view"] == (0, 0) and s["layout"] == layout
    hr = view_image(3, 3)[:16, :24]  # mod-crop 8
    np.testing.assert_array_equal(as_u8(s["hr"]), hr)
    np.testing.assert_array_equal(as_u8(s["lr"]), make_lr(hr, 8))
    np.testing.assert_array_equal(as_u8(s["ref"]), view_image(0, 0)[:16, :24])
    assert s["lr"].shape == (3, 2, 3) and s["name"] == "sceneA"


def test_lightfield_random_views_are_seeded(tmp_path: Path) -> None:
    make_lightfield(tmp_path / "s", "rowcol", grid=3)
    ds = LightFieldGrid(tmp_path, grid=3, lr_view="random", ref_view="random", scale=4, seed=1)
    draws = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        lr_rc, ref_rc = ds.views_for(0)
        assert lr_rc != ref_rc
        assert ds.views_for(0) == (lr_rc, ref_rc)
        draws.append((lr_rc, ref_rc))
    assert len(set(draws)) > 3  # new positions each epoch
    other = LightFieldGrid(tmp_path, grid=3, lr_view="random", ref_view="random", scale=4, seed=1)
    other.set_epoch(5)
    assert other.views_for(0) == draws[5]
    fixed_ref = LightFieldGrid(tmp_path, grid=3, lr_view="random", ref_view=(1, 1), scale=4)
    for epoch in range(6):
        fixed_ref.set_epoch(epoch)
        lr_rc, ref_rc = fixed_ref.views_for(0)
        assert ref_rc == (1, 1) and lr_rc != (1, 1)


def test_lightfield_errors(tmp_path: Path) -> None:
    make_lightfield(tmp_path / "s", "rowcol", grid=3)
    with pytest.raises(RefsrError, match="missing"):
        LightFieldGrid(tmp_path)  # an 8x8 grid expected
    with pytest.raises(RefsrError, match="outside the 2x2 grid"):
        LightFieldGrid(tmp_path, grid=2)
    with pytest.raises(RefsrError, match="two different views"):
        LightFieldGrid(tmp_path, grid=3, lr_view=(1, 1), ref_view=(1, 1))
    with pytest.raises(RefsrError, match="outside"):
        LightFieldGrid(tmp_path, grid=3, lr_view=(3, 0))
    save(tmp_path / "s" / "input_Cam000.png", view_image(0, 0))
    with pytest.raises(RefsrError, match="mixes"):
        LightFieldGrid(tmp_path, grid=3, lr_view=(1, 1))
    empty = tmp_path / "empty_lf"
    empty.mkdir()
    with pytest.raises(RefsrError, match="no dataset found"):
        LightFieldGrid(empty)


# ---------------------------------------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CUFEDTrain, CUFED5, Sun80, Urban100, Manga109, LightFieldGrid])
def test_missing_root_says_what_was_expected(tmp_path: Path, cls) -> None:
    with pytest.raises(RefsrError, match="does not exist; expected"):
        cls(tmp_path / "missing")


def test_dataloader_collates_test_samples(tmp_path: Path) -> None:
    make_cufed5(tmp_path)
    loader = torch.utils.data.DataLoader(CUFED5(tmp_path, level=2), batch_size=1)
    batch = next(iter(loader))
    assert batch["lr"].shape[0] == 1 and batch["name"] == ["000"]
    top, left = (int(v) for v in batch["pad"])
    assert (top, left) == (centred_split(75, 32)[0], centred_split(98, 32)[0])
