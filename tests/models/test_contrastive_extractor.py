"""C2-Matching's contrastive extractor: architecture against a literal VGG16 transcription, conversion of
``feature_extraction.pth``, the two-branch API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.models.contrastive_extractor import (
    EXTRACTOR_PARAMETERS,
    ContrastiveExtractor,
    convert_official_contrastive_extractor,
)

KEYS = Path(__file__).resolve().parents[1] / "assets" / "keys" / "AMSA_ContrasExtractorSep.txt"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# (name, in, out) of VGG16's convolutions up to conv3_1, the official ``model.<name>`` keys.
CONVS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256),
)


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A ``feature_extraction.pth``-like state_dict with the official names and shapes, random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for image in (1, 2):
        prefix = f"feature_extraction_image{image}."
        state[prefix + "mean"] = MEAN.clone()
        state[prefix + "std"] = STD.clone()
        for name, cin, cout in CONVS:
            state[f"{prefix}model.{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.1
            state[f"{prefix}model.{name}.bias"] = torch.randn(cout, generator=gen) * 0.1
    return state


def official_branch(state: dict[str, torch.Tensor], prefix: str, image: torch.Tensor) -> torch.Tensor:
    """ContrasExtractorLayer.forward, written out: normalise, VGG16 to conv3_1 (no ReLU after it)."""
    def conv(x, name):
        weight, bias = state[f"{prefix}model.{name}.weight"], state[f"{prefix}model.{name}.bias"]
        return F.conv2d(x, weight, bias, padding=1)

    x = (image - state[prefix + "mean"]) / state[prefix + "std"]
    x = F.relu(conv(x, "conv1_1"))
    x = F.max_pool2d(F.relu(conv(x, "conv1_2")), 2)
    x = F.relu(conv(x, "conv2_1"))
    x = F.max_pool2d(F.relu(conv(x, "conv2_2")), 2)
    return conv(x, "conv3_1")


def test_parameter_count_and_official_key_layout() -> None:
    model = ContrastiveExtractor()
    assert sum(p.numel() for p in model.parameters()) == EXTRACTOR_PARAMETERS == 1_110_656
    assert len(model.state_dict()) == 20  # the normalisation constants are not saved
    listed = {}
    for line in KEYS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            listed[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    assert {k: tuple(v.shape) for k, v in official_state().items()} == listed


def test_converted_weights_reproduce_both_official_branches() -> None:
    state = official_state()
    model = ContrastiveExtractor().load_weights(state)
    gen = torch.Generator().manual_seed(1)
    lr_up = torch.rand(2, 3, 20, 28, generator=gen)
    ref = torch.rand(1, 3, 33, 17, generator=gen)  # odd sizes: both poolings floor
    with torch.no_grad():
        feat_lr, feat_ref = model(lr_up, ref)
    assert feat_lr.shape == (2, 256, 5, 7) and feat_ref.shape == (1, 256, 8, 4)
    assert torch.allclose(feat_lr, official_branch(state, "feature_extraction_image1.", lr_up), atol=1e-5)
    assert torch.allclose(feat_ref, official_branch(state, "feature_extraction_image2.", ref), atol=1e-5)
    # Features stop before conv3_1's ReLU: some are negative.
    assert float(feat_lr.min()) < 0
    # One branch at a time, and the LR-only call.
    assert torch.equal(model.branch("lr")(lr_up), feat_lr)
    assert torch.equal(model.branch("ref")(ref), feat_ref)
    assert model(lr_up)[1] is None


def test_conversion_mapping_and_module_prefix() -> None:
    state = official_state(seed=2)
    converted = convert_official_contrastive_extractor({"module." + k: v for k, v in state.items()})
    assert set(converted) == set(ContrastiveExtractor().state_dict())
    image1, image2 = "feature_extraction_image1.model.", "feature_extraction_image2.model."
    assert torch.equal(converted["lr_branch.conv2_2.weight"], state[image1 + "conv2_2.weight"])
    assert torch.equal(converted["ref_branch.conv3_1.bias"], state[image2 + "conv3_1.bias"])


def test_weights_from_a_file(tmp_path) -> None:
    state = official_state(seed=3)
    path = tmp_path / "feature_extraction.pth"
    torch.save(state, path)
    model = ContrastiveExtractor(trainable=False).load_weights(str(path))
    official = state["feature_extraction_image1.model.conv1_1.weight"]
    assert torch.equal(model.lr_branch.conv1_1.weight, official)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # refsr's own layout loads too.
    again = ContrastiveExtractor().load_weights(model.state_dict())
    assert torch.equal(again.ref_branch.conv3_1.weight, model.ref_branch.conv3_1.weight)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("feature_extraction_image2.model.conv1_2.bias"),
         "missing keys: feature_extraction_image2"),
        (lambda s: s.update({"feature_extraction_image1.model.conv3_2.weight": torch.zeros(1)}),
         "unexpected keys"),
        (lambda s: s.update({"feature_extraction_image1.model.conv1_1.weight": torch.zeros(64, 3, 1, 1)}),
         "wrong shapes"),
        (lambda s: s["feature_extraction_image2.std"].mul_(255), "ImageNet std"),
    ],
)
def test_bad_checkpoints_are_rejected(edit, message) -> None:
    state = official_state()
    edit(state)
    with pytest.raises(RefsrError, match=message):
        convert_official_contrastive_extractor(state)


def test_bad_inputs() -> None:
    model = ContrastiveExtractor()
    with pytest.raises(RefsrError, match="RGB"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(RefsrError, match="branch"):
        model.branch("hr")


def test_gradients_flow_when_trainable() -> None:
    model = ContrastiveExtractor()
    feat_lr, feat_ref = model(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    (feat_lr.square().mean() + feat_ref.square().mean()).backward()
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.parameters())
