"""VGG19 feature extractor: layer names and shapes, torchvision-layout loading, against a plain VGG19."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refsr.errors import RefsrError
from refsr.models.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_FEATURE_INDEX,
    VGG19_CONVS,
    VGG19Features,
    load_vgg19_weights,
)

# torchvision's vgg19().features, written out: channel counts with "M" for max pooling.
TORCHVISION_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512, 512, 512, 512, "M"] * 2


def torchvision_layout_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fake ``vgg19-dcbb9e9d.pth``: ``features.<i>.weight/bias`` at torchvision's indices, plus the
    classifier, with random values."""
    gen = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for item in TORCHVISION_CFG:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(item, generator=gen) * 0.01
        channels = item
        index += 2  # the conv and its ReLU
    # The classifier is ignored by the loader; tiny stand-ins keep the file small (the real one is 400 MB).
    state["classifier.0.weight"] = torch.zeros(4, 8)
    state["classifier.0.bias"] = torch.zeros(4)
    state["classifier.6.weight"] = torch.zeros(2, 4)
    return state


def plain_vgg19(x: torch.Tensor, state: dict[str, torch.Tensor], stop_after_conv: int) -> torch.Tensor:
    """VGG19 from the config list and torchvision keys, up to the ``stop_after_conv``-th conv (pre-ReLU)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    index, convs = 0, 0
    for item in TORCHVISION_CFG:
        if item == "M":
            x = F.max_pool2d(x, 2)
            index += 1
            continue
        x = F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
        convs += 1
        if convs == stop_after_conv:
            return x
        x = F.relu(x)
        index += 2
    raise AssertionError("not reached")


def test_layer_names_and_torchvision_indices() -> None:
    assert len(VGG19_CONVS) == 16
    assert VGG19_CONVS[0] == "conv1_1" and VGG19_CONVS[-1] == "conv5_4"
    assert TORCHVISION_FEATURE_INDEX["conv1_1"] == 0
    assert TORCHVISION_FEATURE_INDEX["conv2_1"] == 5
    assert TORCHVISION_FEATURE_INDEX["conv3_1"] == 10
    assert TORCHVISION_FEATURE_INDEX["conv4_1"] == 19
    assert TORCHVISION_FEATURE_INDEX["conv5_4"] == 34


def test_truncation_and_output_shapes() -> None:
    torch.manual_seed(0)
    vgg = VGG19Features(("relu1_1", "relu3_1", "conv5_4"))
    assert vgg.convs == VGG19_CONVS  # conv5_4 is the last conv
    out = vgg(torch.rand(1, 3, 48, 64))
    assert list(out) == ["relu1_1", "relu3_1", "conv5_4"]
    assert out["relu1_1"].shape == (1, 64, 48, 64)
    assert out["relu3_1"].shape == (1, 256, 12, 16)
    assert out["conv5_4"].shape == (1, 512, 3, 4)
    assert (out["relu3_1"] >= 0).all() and (out["conv5_4"] < 0).any()  # conv5_4 is before its ReLU
    short = VGG19Features(("relu3_1",))
    assert short.convs[-1] == "conv3_1" and len(short.state_dict()) == 10
    assert not any(p.requires_grad for p in short.parameters()) and not short.training


def test_torchvision_file_loads_and_matches_a_plain_vgg(tmp_path) -> None:
    state = torchvision_layout_state_dict()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    vgg = load_vgg19_weights(VGG19Features(("conv5_4", "conv3_2")), path)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    out = vgg(x)
    torch.testing.assert_close(out["conv5_4"], plain_vgg19(x, state, 16), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["conv3_2"], plain_vgg19(x, state, 6), rtol=1e-4, atol=1e-5)


def test_our_layout_round_trips_through_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = VGG19Features(("relu2_2",))
    save_file(source.state_dict(), str(tmp_path / "vgg.safetensors"))
    loaded = load_vgg19_weights(VGG19Features(("relu2_2",)), tmp_path / "vgg.safetensors")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_bad_weight_files_get_clear_errors(tmp_path) -> None:
    state = torchvision_layout_state_dict()
    del state["features.34.weight"]
    with pytest.raises(RefsrError, match="missing keys: conv5_4.weight"):
        load_vgg19_weights(VGG19Features(("conv5_4",)), state)
    # A truncated network does not need the missing layer.
    load_vgg19_weights(VGG19Features(("relu4_1",)), state)
    state = torchvision_layout_state_dict()
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(RefsrError, match="wrong shapes: conv1_1.weight"):
        load_vgg19_weights(VGG19Features(("relu1_1",)), state)
    with pytest.raises(RefsrError, match="unexpected keys: enc.conv_L1.weight"):
        load_vgg19_weights(VGG19Features(("relu1_1",)), {"enc.conv_L1.weight": torch.zeros(1)})
    with pytest.raises(RefsrError, match="unknown VGG19 layer"):
        VGG19Features(("conv6_1",))
    with pytest.raises(RefsrError, match="no such weights file"):
        load_vgg19_weights(VGG19Features(("relu1_1",)), tmp_path / "absent.pth")


def test_gradients_flow_to_the_input_only() -> None:
    torch.manual_seed(0)
    vgg = VGG19Features(("relu2_1",))
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    vgg(x)["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    assert all(p.grad is None for p in vgg.parameters())
