"""The ``transformers`` family from outside: headless timm, a user's transformers instance, ``hf:`` directories and
hub ids, the command line, saved adapters naming their base revision."""

from __future__ import annotations

import copy

import pytest
import torch

from pefs.backbones import load
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from tests.hf_models import HEADS, LAYERS, PATCH, D, build, hf_backbone
from tests.strategy_battery import IMG, check_strategy, images, one_thread, under

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:peft.*")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield

# -- headless timm, wrapping a user's transformers instance ---------------------------------------------------

def test_headless_timm_models_keep_their_family_and_every_strategy(tmp_path):
    import timm

    for make in (lambda: timm.create_model("vit_tiny_patch16_224", img_size=IMG, num_classes=0),
                 lambda: _reset(timm.create_model("vit_tiny_patch16_224", img_size=IMG))):
        torch.manual_seed(0)
        bb = load(make())
        assert bb.family == "vit" and bb.tokens is not None and bb.lora_targets == ("attn.qkv",)
        model = wrap(bb, "vpt", num_classes=3, mode="deep", tokens=2)
        assert model(images()).shape == (2, 3)
    torch.manual_seed(0)
    check_strategy("lora", load(timm.create_model("vit_tiny_patch16_224", img_size=IMG, num_classes=0)),
                   lambda m, o: under(m, [f"{b}.attn.qkv" for b in o.block_names], "lora_"), tmp_path)


def _reset(m):
    m.reset_classifier(0)
    return m


def test_wrap_a_transformers_instance_directly():
    import transformers as T

    vit = T.ViTForImageClassification(T.ViTConfig(image_size=IMG, patch_size=PATCH, hidden_size=D,
                                                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                                  intermediate_size=2 * D))
    model = wrap(vit, "lora", num_classes=5)
    assert model.backbone.family == "hf-vit" and model(images()).shape == (2, 5)
    assert vit.config.num_labels == 5 and vit.classifier.out_features == 5


# -- hf: on the command line / load -------------------------------------------------------------------------

def test_hf_local_directory_loads_offline_with_its_processor_config(tmp_path):
    import json

    vit = build("vit")
    vit.save_pretrained(tmp_path / "tiny-vit")
    (tmp_path / "tiny-vit" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7], "size": {"height": IMG, "width": IMG},
         "resample": 3, "image_processor_type": "ViTImageProcessor"}))
    bb = load(f"hf:{tmp_path / 'tiny-vit'}")
    assert bb.family == "hf-vit" and bb.source == "local"
    assert bb.data_config["mean"] == (0.1, 0.2, 0.3) and bb.data_config["interpolation"] == "bicubic"
    with torch.no_grad():
        torch.testing.assert_close(bb.model(images()), vit(images()).logits)


def test_hf_hub_id_without_network_says_what_to_do():
    with pytest.raises(PefsError, match="huggingface-cli download google/vit-base-patch16-224-in21k"):
        load("hf:google/vit-base-patch16-224-in21k")


def test_pefs_model_save_and_load_through_hf_directory(tmp_path):
    build("vit").save_pretrained(tmp_path / "base")
    model = wrap(f"hf:{tmp_path / 'base'}", "lora", num_classes=3)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.requires_grad:
                p.add_(0.1)
        y = model(images())
    model.save(tmp_path / "adapter")
    again = PefsModel.load(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(again(images()), y)
    assert copy.deepcopy(again).backbone.family == "hf-vit"


# -- the command line -----------------------------------------------------------------------------------------

def test_cli_tunes_a_transformers_model_from_a_local_directory(tmp_path, capsys):
    import json

    from pefs.cli.main import main

    build("vit").save_pretrained(tmp_path / "tiny-vit")
    assert main(["tune", "--model", f"hf:{tmp_path / 'tiny-vit'}", "--strategy", "lora", "--shots", "1",
                 "--epochs", "1", "-q", "--output", str(tmp_path / "runs")]) == 0
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["params"]["trainable"] - record["params"]["head"] == LAYERS * 2 * 2 * D * 8


def test_cli_lists_families_and_refuses_an_unreachable_hub_id_in_one_line(capsys):
    from pefs.cli.main import main

    assert main(["models", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "hf:<repo id or local directory>" in out and "timm" in out
    assert main(["tune", "--model", "hf:google/vit-base-patch16-224-in21k", "-q"]) == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download" in err and "Traceback" not in err


def test_img_size_runs_an_encoder_at_another_resolution():
    bb = load(build("vit"), img_size=48)
    assert bb.input_size == (3, 48, 48)
    with torch.no_grad():
        assert bb.model(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_a_saved_adapter_names_its_base_revision_and_refuses_another(tmp_path):
    bb = hf_backbone("vit")
    bb.revision = "1111111"
    model = wrap(bb, "lora", num_classes=3)
    model.save(tmp_path / "adapter")
    other = hf_backbone("vit")
    other.revision = "2222222"
    with pytest.raises(PefsError, match="revision 1111111.*revision 2222222"):
        PefsModel.load(tmp_path / "adapter", backbone=other)
    same = hf_backbone("vit")
    same.revision = "1111111"
    PefsModel.load(tmp_path / "adapter", backbone=same)


def test_a_missing_local_directory_is_named_as_such():
    with pytest.raises(PefsError, match="looks like a local path, but no such directory"):
        load("hf:./no/such/dir")


def test_patch_match_head_on_a_transformers_encoder(tmp_path, image_folder):
    import json

    from pefs.cli.main import main

    build("dinov2-reg").save_pretrained(tmp_path / "tiny")
    assert main(["tune", "--model", f"hf:{tmp_path / 'tiny'}", "--head", "patch-match", "--shots", "1",
                 "--data", str(image_folder), "-q", "--output", str(tmp_path / "runs")]) == 0
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["head"] == "patch-match" and 0 <= record["accuracy_mean"] <= 1


def test_a_custom_module_returning_a_model_output_is_refused_with_a_reason():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build("vit-base")

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(PefsError, match="returns a BaseModelOutput.*not a tensor"):
        load(Holder(), input_size=(3, IMG, IMG))


def test_a_full_clip_checkpoint_gives_its_vision_tower(tmp_path):
    import transformers as T

    vision = dict(image_size=IMG, patch_size=PATCH, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=2 * D)
    text = dict(hidden_size=D, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=2 * D)
    torch.manual_seed(0)
    clip = T.CLIPModel(T.CLIPConfig(vision_config=vision, text_config=text)).eval()
    clip.save_pretrained(tmp_path / "clip")
    bb = load(f"hf:{tmp_path / 'clip'}")
    assert bb.family == "hf-clip" and bb.data_config["mean"][0] == pytest.approx(0.4815, abs=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(bb.features(images()), clip.vision_model(pixel_values=images()).pooler_output)


def test_a_checkpoint_file_loads_into_a_transformers_instance(tmp_path):
    from safetensors.torch import save_file

    trained = build("vit")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    bb = load(build("vit"), checkpoint=tmp_path / "w.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(bb.model(images()), trained(images()).logits)
    with pytest.raises(PefsError, match="input_size= does not apply to a transformers model"):
        load(build("vit"), input_size=(3, 32, 32))
