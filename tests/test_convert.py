"""timm <-> transformers ViT conversion: the same features (and logits) for the same image, both ways."""

from __future__ import annotations

import pytest
import torch

from pefs.backbones import load
from pefs.backbones.convert import timm_vit_to_transformers, transformers_vit_to_timm
from pefs.errors import PefsError
from tests.hf_models import build
from tests.strategy_battery import IMG, images, liven, one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_timm_vit_converts_to_transformers_with_the_same_features_and_logits():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=IMG, patch_size=8, num_classes=4).eval()
    liven(vit)
    hf = timm_vit_to_transformers(vit)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(load(hf).features(x), vit.forward_head(vit.forward_features(x), pre_logits=True),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hf(pixel_values=x).logits, vit(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "vit-base"])
def test_transformers_vit_converts_to_timm_with_the_same_features(kind):
    hf = build(kind)
    liven(hf)
    vit = transformers_vit_to_timm(hf)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_head(vit.forward_features(x), pre_logits=True), load(hf).features(x),
                                   atol=1e-5, rtol=1e-5)
        if kind == "vit":
            torch.testing.assert_close(vit(x), hf(pixel_values=x).logits, atol=1e-5, rtol=1e-5)
    assert timm_vit_to_transformers(vit).state_dict().keys() == hf.state_dict().keys() or kind == "vit-base"


def test_layouts_without_a_counterpart_are_refused():
    import timm

    reg = timm.create_model("vit_small_patch16_224", img_size=IMG, reg_tokens=4, no_embed_class=True, num_classes=0)
    with pytest.raises(PefsError, match="prefix tokens"):
        timm_vit_to_transformers(reg)
    with pytest.raises(PefsError, match="converts a transformers ViT"):
        transformers_vit_to_timm(build("clip"))


def test_a_converted_model_gets_timms_preprocessing(tmp_path):
    import json

    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=IMG, num_classes=0)
    timm_dc = load(vit).data_config
    d = tmp_path / "converted"
    timm_vit_to_transformers(vit).save_pretrained(d)
    from pefs.backbones.convert import processor_config

    (d / "preprocessor_config.json").write_text(json.dumps(processor_config(timm_dc)))
    hf_dc = load(f"hf:{d}").data_config
    for key in ("input_size", "mean", "std", "interpolation"):
        assert tuple(hf_dc[key]) == tuple(timm_dc[key]) if key != "interpolation" else hf_dc[key] == timm_dc[key]
    from PIL import Image

    from pefs.data import eval_transform

    img = Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy())
    assert torch.equal(eval_transform(hf_dc)(img), eval_transform(timm_dc)(img))  # the same resize + crop
