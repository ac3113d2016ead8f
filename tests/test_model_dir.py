"""Model directories are exact or refused: merged saves, BatchNorm statistics, strict tensor sets, the base
weights' fingerprint, damaged files, and folders that cannot be written (checked before any compute)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pefs
from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from pefs.protocols.run import tune
from tests.strategy_battery import images, perturb, tiny_backbone


@pytest.mark.parametrize("spec", ["lora", "ssf", "lora+norm", "peft:ia3"])
def test_merge_then_save_round_trips_exactly(spec, tmp_path):
    """merge() then save() then load(): the reloaded model is the merged one (it used to reload unmerged
    strategies with only the head restored, 0.05-0.29 off)."""
    original = tiny_backbone("vit")
    model = wrap(copy.deepcopy(original), spec, num_classes=3)
    perturb(model)
    x = images()
    model.merge().eval()
    with torch.no_grad():
        want = model(x)
    model.save(tmp_path / "m")
    again = PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(original)).eval()
    with torch.no_grad():
        assert torch.equal(again(x), want)
    config = json.loads((tmp_path / "m" / "pefs_config.json").read_text())
    assert again.merged and config["merged"] is True and config["tensors"]["file"] == "merged.safetensors"


def test_partial_adapter_file_is_refused(tmp_path):
    original = tiny_backbone("vit")
    model = wrap(copy.deepcopy(original), "lora", num_classes=3)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "adapter.safetensors"
    tensors = load_file(str(path))
    kept = dict(list(sorted(tensors.items()))[: len(tensors) // 3])
    save_file(kept, str(path))
    config = json.loads((tmp_path / "m" / "pefs_config.json").read_text())
    config.get("tensors", {}).pop("sha256", None)  # as if another tool wrote it: the key check must catch it
    (tmp_path / "m" / "pefs_config.json").write_text(json.dumps(config))
    with pytest.raises(PefsError, match=r"missing .* expected tensors; refusing a partial load"):
        PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(original))


class SmallCNN(nn.Module):
    """A user's own module with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


def test_batchnorm_running_stats_round_trip(tmp_path):
    """A library user who trains with BN in train mode gets the same model back (running stats are saved)."""
    model = wrap(pefs.load(_small_cnn(), input_size=(3, 16, 16)), "norm", num_classes=4)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16) * 3 + 2)  # moves running_mean / running_var
    model.eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    model.save(tmp_path / "m")
    again = PefsModel.load(tmp_path / "m", backbone=pefs.load(_small_cnn(), input_size=(3, 16, 16))).eval()
    with torch.no_grad():
        assert torch.equal(again(x), want)


def test_custom_module_without_its_backbone_says_so(tmp_path):
    wrap(pefs.load(_small_cnn(), input_size=(3, 16, 16)), "linear", num_classes=4).save(tmp_path / "m")
    with pytest.raises(PefsError, match=r"your own module 'SmallCNN'.*backbone="):
        PefsModel.load(tmp_path / "m")


def test_different_base_weights_are_refused_unless_allowed(tmp_path):
    original = tiny_backbone("vit")
    wrap(copy.deepcopy(original), "lora", num_classes=3).save(tmp_path / "m")
    other = copy.deepcopy(original)
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    with pytest.raises(PefsError, match=r"different weights of .*allow_different_base=True"):
        PefsModel.load(tmp_path / "m", backbone=copy.deepcopy(other))
    assert PefsModel.load(tmp_path / "m", backbone=other, allow_different_base=True).spec == "lora"


def test_random_weights_by_name_are_refused_with_the_reason(tmp_path, monkeypatch):
    """A random base saved without its weights (as pefs 0.2.0 saved it) is refused, saying why."""
    monkeypatch.setattr("pefs.model.directory.base_saved", lambda model: False)
    wrap("resnet18", "linear", num_classes=3, pretrained=False).save(tmp_path / "m")
    with pytest.raises(PefsError, match=r"random weights"):
        PefsModel.load(tmp_path / "m")


@pytest.fixture
def saved(tmp_path):
    original = tiny_backbone("vit")
    wrap(copy.deepcopy(original), "lora", num_classes=3).save(tmp_path / "m")
    return tmp_path / "m", original


def test_missing_tensor_file_is_one_clear_error(saved):
    d, original = saved
    (d / "adapter.safetensors").unlink()
    with pytest.raises(PefsError, match=r"incomplete: adapter.safetensors is missing"):
        PefsModel.load(d, backbone=original)


def test_truncated_tensor_file_is_one_clear_error(saved):
    d, original = saved
    data = (d / "adapter.safetensors").read_bytes()
    (d / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PefsError, match=r"adapter.safetensors.* is damaged"):
        PefsModel.load(d, backbone=original)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"format": 2, "spec": "lora"})])
def test_damaged_config_is_one_clear_error(saved, text):
    d, original = saved
    (d / "pefs_config.json").write_text(text)
    with pytest.raises(PefsError, match=r"pefs_config.json.* (is damaged|is not a pefs model config)"):
        PefsModel.load(d, backbone=original)


def test_old_format_is_refused_with_the_reason(saved):
    d, original = saved
    config = json.loads((d / "pefs_config.json").read_text())
    config["format"] = 1
    (d / "pefs_config.json").write_text(json.dumps(config))
    with pytest.raises(PefsError, match=r"format 1.*save the model again"):
        PefsModel.load(d, backbone=original)


def test_unwritable_save_adapter_is_found_before_compute(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = TuneConfig(strategy="linear", shots=1, img_size=32, output=str(tmp_path / "runs"),
                     save_adapter=str(tmp_path / "file" / "adapters"), train=TrainConfig(epochs=1, progress=False))
    with pytest.raises(PefsError, match=r"--save-adapter folder .* is not writable"):
        tune(cfg)
    assert not list((tmp_path / "runs").glob("*.json"))  # refused before any run, so no record


@pytest.mark.parametrize("key, value, message", [
    ("num_classes", 0, "num_classes is 0, out of range"),
    ("backbone.params", -1, "backbone.params is -1, out of range"),
    ("preprocessing.input_size", [3, 0, 0], "preprocessing.input_size is [3, 0, 0], not [channels, height, width]"),
])
def test_config_values_out_of_range_are_named_before_anything_loads(saved, key, value, message):
    """A model config whose class count, parameter count or input size is out of range is named by its key and
    value, before anything is built or read."""
    from pefs.model.directory import config_problem

    d, _ = saved
    cfg = json.loads((d / "pefs_config.json").read_text())
    assert config_problem(cfg) is None
    outer, _, inner = key.rpartition(".")
    (cfg[outer] if outer else cfg)[inner] = value
    assert config_problem(cfg).startswith(message)
