"""Registry, create_model and weight loading."""

from __future__ import annotations

import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import refsr
from conftest import load_photo
from refsr.errors import RefsrError
from refsr.hub import load_state_dict, read_checkpoint, save_safetensors
from refsr.models._registry import _REGISTRY, register_converter, register_model


class TinyNet(refsr.models.RefSRModel):
    def __init__(self, *, width: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, width, 3, padding=1)
        self.tail = torch.nn.Conv2d(width, 3, 1)

    def forward(self, lr, ref=None):
        return self.tail(self.body(lr))


@pytest.fixture
def tiny_registered():
    register_model("tiny-test")(lambda *, width=4: TinyNet(width=width))
    # An "official" layout that differs only by a prefix, as a converter would map it.
    register_converter("tiny-test")(lambda sd: {k.removeprefix("net."): v for k, v in sd.items()})
    yield "tiny-test"
    del _REGISTRY["tiny-test"]


def test_bicubic_is_registered_and_listed() -> None:
    assert "bicubic" in refsr.list_models()
    assert refsr.list_models("bic*") == ["bicubic"]
    assert refsr.list_models() == sorted(refsr.list_models())


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(RefsrError, match="did you mean 'bicubic'"):
        refsr.create_model("bicubc")


def test_unknown_option_is_named() -> None:
    with pytest.raises(RefsrError, match="no option 'depth'.*scale"):
        refsr.create_model("bicubic", depth=3)


def test_bicubic_model_matches_imresize() -> None:
    model = refsr.create_model("bicubic", weights="default")
    lr = torch.from_numpy(load_photo("coffee.png").copy()).permute(2, 0, 1)[None].float() / 255
    sr = model(lr, None)
    expected = refsr.imresize(load_photo("coffee.png"), size=(lr.shape[2] * 4, lr.shape[3] * 4))
    got = (sr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(got, expected)
    assert model.size_multiple == 1 and model.scale == 4


def test_safetensors_round_trip(tmp_path: Path, tiny_registered: str) -> None:
    a = refsr.create_model(tiny_registered)
    path = save_safetensors(a.state_dict(), tmp_path / "w.safetensors")
    b = refsr.create_model(tiny_registered, weights=path)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)
    assert not b.training


def test_official_pth_is_converted(tmp_path: Path, tiny_registered: str) -> None:
    a = refsr.create_model(tiny_registered)
    official = {f"module.net.{k}": v for k, v in a.state_dict().items()}  # DataParallel + another layout
    torch.save(official, tmp_path / "official.pth")
    b = refsr.create_model(tiny_registered, weights=tmp_path / "official.pth")
    torch.testing.assert_close(b.state_dict()["body.weight"], a.state_dict()["body.weight"], rtol=0, atol=0)


def test_basicsr_wrapper_is_unwrapped(tmp_path: Path) -> None:
    sd = {"w": torch.ones(2)}
    torch.save({"params": sd}, tmp_path / "basicsr.pth")
    assert set(read_checkpoint(tmp_path / "basicsr.pth")) == {"w"}


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"w": Evil()}, fh, protocol=2)
    with pytest.raises(RefsrError, match=r"holds pickled Python objects \(getattr\)") as raised:
        read_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    message = str(raised.value)
    assert "\x1b" not in message and "\n" not in message  # torch's coloured, multi-line advice is not passed on
    assert "weights_only=False" not in message


def test_torchscript_archive_is_named_without_a_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script itself is deprecated
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "scripted.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's UserWarning about dispatching to torch.jit.load must not escape
        with pytest.raises(RefsrError, match="TorchScript archive, not a checkpoint"):
            read_checkpoint(tmp_path / "scripted.pth")


def test_save_safetensors_failures_are_one_error_and_leave_nothing(tmp_path: Path, monkeypatch) -> None:
    state = {"w": torch.ones(3)}
    with pytest.raises(RefsrError, match="does not exist"):
        save_safetensors(state, tmp_path / "missing" / "w.safetensors")

    def no_temporary_file(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_temporary_file)
    with pytest.raises(RefsrError, match=r"w\.safetensors: .*No space left on device"):
        save_safetensors(state, tmp_path / "w.safetensors")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_mismatched_weights_list_the_keys(tmp_path: Path, tiny_registered: str) -> None:
    wide = refsr.create_model(tiny_registered, width=8)
    sd = dict(wide.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["tail.bias"]
    save_safetensors(sd, tmp_path / "w.safetensors")
    with pytest.raises(RefsrError) as err:
        refsr.create_model(tiny_registered, weights=tmp_path / "w.safetensors")
    msg = str(err.value)
    assert "missing keys: tail.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "wrong shapes: body.bias (8,) != (4,)" in msg


def test_no_default_weights_for_a_model_with_parameters(tiny_registered: str) -> None:
    with pytest.raises(RefsrError, match="no trained weights ship for model .tiny-test.*masa-lite"):
        refsr.create_model(tiny_registered, weights="default")


def test_convert_official_needs_a_converter() -> None:
    with pytest.raises(RefsrError, match="no official checkpoint format"):
        refsr.convert_official("bicubic", {})


def test_load_state_dict_strict_message_is_one_line() -> None:
    with pytest.raises(RefsrError) as err:
        load_state_dict(TinyNet(), {})
    assert "\n" not in str(err.value)


def test_model_scale_needs_no_weight_file() -> None:
    from refsr.models._registry import model_scale

    assert model_scale("refsrnet-lite", {"ccnet_weights": "no/such/file.safetensors"}) == 8
    assert model_scale("masa-lite") == 4
    assert model_scale("bicubic", {"scale": 2}) == 2  # an explicit builder's options are the model's own
