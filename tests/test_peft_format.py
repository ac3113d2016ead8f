"""Adapters trained by pefs load in peft (same logits), and peft LoRA directories load back into pefs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pefs.errors import PefsError
from pefs.export.peft_format import load_peft_adapter, save_peft_adapter
from pefs.model.wrap import wrap
from tests.hf_models import build
from tests.strategy_battery import images, liven, one_thread, perturb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def base(kind: str = "vit") -> torch.nn.Module:
    m = build(kind)
    liven(m)
    return m


@pytest.mark.parametrize("kind, spec, options", [
    ("vit", "lora", {"r": 4}),
    ("dinov2-reg", "lora", {}),
    ("vit", "peft:loha", {"r": 2}),
    ("vit", "adalora", {"init_r": 4, "target_r": 2}),
    ("resnet", "lora", {"r": 2}),
])
def test_peft_loads_a_pefs_adapter_with_the_same_logits(kind, spec, options, tmp_path):
    import peft

    model = wrap(base(kind), spec, num_classes=3, **options).eval()
    perturb(model)  # trained-looking weights: a zero LoRA B or an untouched head would prove nothing
    x = images()
    with torch.no_grad():
        expected = model(x)
    save_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [model.backbone.head_name.removeprefix("hf.")]
    loaded = peft.PeftModel.from_pretrained(base(kind), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = loaded(pixel_values=x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_trained_adalora_exports_its_kept_ranks_and_peft_loads_the_same_logits(tmp_path):
    """After AdaLoRA prunes ranks, the peft adapter records the kept ranks under peft's layer names (rank_pattern)
    and peft loads it, resized to them, with the same logits."""
    import peft

    from pefs.config import TrainConfig
    from pefs.runtime import engine

    model = wrap(base(), "adalora", num_classes=3, init_r=4, target_r=2)
    x = images(12)
    engine.fit(model, x, torch.arange(12) % 3, TrainConfig(steps=6, batch_size=4, progress=False, cache_features=False))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    save_peft_adapter(model, tmp_path / "adapter")
    pattern = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    kept = model.strategies[0].ranks(model.backbone)
    assert {k.removesuffix(".lora_E"): sum(v) for k, v in pattern.items()} == {
        k.removeprefix("hf."): r for k, r in kept.items()}
    loaded = peft.PeftModel.from_pretrained(base(), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, atol=1e-5, rtol=1e-5)


def test_a_peft_lora_directory_loads_back_into_pefs(tmp_path):
    model = wrap(base(), "lora", num_classes=3, r=4).eval()
    perturb(model)
    save_peft_adapter(model, tmp_path / "adapter")
    back = load_peft_adapter(tmp_path / "adapter", base()).eval()
    assert back.param_report()["trainable"] == model.param_report()["trainable"]
    with torch.no_grad():
        torch.testing.assert_close(back(images()), model(images()))


def test_what_peft_cannot_hold_is_refused(tmp_path):
    with pytest.raises(PefsError, match="vpt.*PefsModel.save"):
        save_peft_adapter(wrap(base(), "vpt", num_classes=3), tmp_path / "a")
    with pytest.raises(PefsError, match="pefs' own.*ForImageClassification"):
        save_peft_adapter(wrap(base("clip"), "lora", num_classes=3), tmp_path / "b")
    merged = wrap(base(), "lora", num_classes=3).merge()
    with pytest.raises(PefsError, match="merged"):
        save_peft_adapter(merged, tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(PefsError, match="adapter_config.json missing"):
        load_peft_adapter(tmp_path / "d", base())


def test_peft_config_names_the_base_model(tmp_path):
    d = tmp_path / "tiny-vit"
    build("vit").save_pretrained(d)
    model = wrap(f"hf:{d}", "lora", num_classes=3)
    save_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(d)
    assert copy.deepcopy(config)["target_modules"] == sorted(
        f"vit.layers.{i}.attention.{p}_proj" for i in range(2) for p in "qv")


def test_a_peft_directory_without_its_tensors_or_of_another_tuner_is_refused(tmp_path):
    """A peft directory whose adapter_model.safetensors is missing, or that holds a tuner other than LoRA, is one
    PefsError naming the folder and what is wrong, before any model is wrapped."""
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["query"]}))
    with pytest.raises(PefsError, match=r"^'.*adapter' has no adapter_model\.safetensors$"):
        load_peft_adapter(d, base())
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA", "target_modules": ["query"]}))
    with pytest.raises(PefsError, match=r"^'.*adapter' holds a LOHA adapter; pefs reads LoRA adapters back"):
        load_peft_adapter(d, base())
