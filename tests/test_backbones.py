"""Backbone layer: offline pretrained weights, the uniform description of every family, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pefs
from pefs.backbones import load
from pefs.errors import PefsError
from tests.conftest import TINY_MODELS


def _classify(bb, img) -> list[int]:
    from PIL import Image

    from pefs.data import eval_transform

    x = eval_transform(bb.data_config)(Image.fromarray(img)).unsqueeze(0)
    with torch.no_grad():
        return bb.model.eval()(x).topk(3).indices[0].tolist()


def test_offline_model_is_really_pretrained():
    """The embedded EfficientNet-Lite0 recognises real photos: a cat as a cat, coffee as espresso."""
    from skimage import data

    bb = load("efficientnet_lite0.offline")
    assert bb.source == "offline"
    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert _classify(bb, data.chelsea())[0] in cats
    assert _classify(bb, data.coffee())[0] == 967  # espresso


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_family_description(family):
    name, kwargs = TINY_MODELS[family]
    bb = load(name, pretrained=False, **kwargs)
    assert bb.family == family
    assert bb.kind == ("transformer" if family == "vit" else "cnn")
    expected_blocks = {"vit": 12, "convnext": 2 + 2 + 6 + 2, "resnet": 2 * 4, "efficientnet": 16}[family]
    assert len(bb.blocks) == expected_blocks
    assert bb.width == {"vit": 192, "convnext": 320, "resnet": 512, "efficientnet": 1280}[family]
    assert isinstance(bb.head, nn.Linear) and bb.head.in_features == bb.width
    x = torch.randn(2, *bb.input_size)
    assert bb.features(x).shape == (2, bb.width)
    bb.reset_head(7)
    assert bb.model(x).shape == (2, 7)
    assert bb.head.out_features == 7


def test_data_config_comes_from_timm():
    bb = load("efficientnet_lite0.offline")
    assert bb.data_config["input_size"] == (3, 224, 224)
    assert tuple(bb.data_config["mean"]) == (0.5, 0.5, 0.5)
    assert bb.data_config["interpolation"] == "bicubic"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


class FeaturesOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_user_module_with_head():
    bb = load(Tiny(), input_size=(3, 16, 16))
    assert bb.family == "custom" and bb.head_name == "fc" and bb.width == 8
    bb.reset_head(3)
    assert bb.model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert bb.features(torch.randn(2, 3, 16, 16)).shape == (2, 8)


def test_user_feature_extractor_gets_a_head():
    bb = load(FeaturesOnly(), input_size=(3, 16, 16))
    assert bb.width == 6
    bb.reset_head(5)
    assert bb.model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_user_module_with_bad_output_is_refused():
    with pytest.raises(PefsError, match="must return"):
        load(nn.Conv2d(3, 4, 3), input_size=(3, 16, 16))


def test_unknown_model_names_close_matches():
    with pytest.raises(PefsError, match="unknown model 'vit_tiny_patch16_22'.*vit_tiny_patch16_224"):
        load("vit_tiny_patch16_22")


def test_offline_hub_failure_is_explained(monkeypatch):
    import timm

    def boom(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", boom)
    with pytest.raises(PefsError, match="could not fetch pretrained weights.*--checkpoint"):
        load("resnet18", pretrained=True)


def test_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    src = load("resnet18", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    torch.save({"state_dict": src.model.state_dict()}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    ref = src.model.eval()(x)
    for p in (path, tmp_path / "w.pth"):
        bb = load("resnet18", checkpoint=p)
        assert bb.source.startswith("checkpoint:")
        assert torch.allclose(bb.model.eval()(x), ref)


def test_checkpoint_mismatch_counts_keys(tmp_path):
    sd = load("resnet18", pretrained=False).model.state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    with pytest.raises(PefsError, match=r"keys mismatched.*missing"):
        load("resnet34", checkpoint=tmp_path / "r18.pth")


def test_missing_checkpoint_path():
    with pytest.raises(PefsError, match="does not exist"):
        load("resnet18", checkpoint="/nope/weights.safetensors")


def test_public_api_lists_offline_models():
    assert pefs.list_models("efficientnet_lite*", offline_only=True) == [
        "efficientnet_lite0.offline", "efficientnet_lite1.offline", "efficientnet_lite2.offline"]
