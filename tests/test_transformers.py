"""The ``transformers`` family: tiny random ViT, DINOv2 with registers, CLIP vision, ConvNeXt and ResNet models
built from configs offline, described like timm's, and every strategy through the strategy battery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pefs.backbones import load
from pefs.backbones.split import patch_tokens, stages
from pefs.config import TrainConfig
from pefs.errors import PefsError
from pefs.model.wrap import wrap
from pefs.runtime.engine import fit, frozen_level, level_of, outputs
from tests.hf_models import HEADS, LAYERS, PATCH, REGISTERS, D, build, hf_backbone
from tests.strategy_battery import (
    IMG,
    check_strategy,
    head_names,
    images,
    liven,
    names_with,
    one_thread,
    param_names,
    under,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:peft.*")
ENCODERS = ("vit", "dinov2-reg", "clip")
CNNS = ("convnext", "resnet")
NORMS = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def own_output(kind: str, x: torch.Tensor) -> torch.Tensor:
    """What the unwrapped transformers model itself gives: logits, or pooled features for a base model."""
    ref = build(kind)
    liven(ref)
    with torch.no_grad():
        out = ref(x)
    if getattr(out, "logits", None) is not None:
        return out.logits
    return (out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]).flatten(1)


# -- description --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vit", "vit-base", "dinov2-reg", "clip", "convnext", "resnet"])
def test_wrapper_equals_the_models_own_forward_and_returns_a_tensor(kind):
    bb = hf_backbone(kind)
    x = images()
    with torch.no_grad():
        mine = bb.model(x) if bb.head_name.startswith("hf.") else bb.features(x)
    assert isinstance(mine, torch.Tensor)
    torch.testing.assert_close(mine, own_output(kind, x), atol=1e-5, rtol=1e-5)


def test_vit_description():
    bb = hf_backbone("vit")
    assert (bb.family, bb.kind, bb.width, bb.head_name) == ("hf-vit", "transformer", D, "hf.classifier")
    assert bb.block_names == [f"hf.vit.layers.{i}" for i in range(LAYERS)]
    assert bb.lora_targets == ("attention.q_proj", "attention.v_proj")
    assert bb.tokens.num_prefix == 1 and bb.tokens.patch_size == (PATCH, PATCH)
    assert bb.input_size == (3, IMG, IMG)  # from the config, not 224
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)  # ViT's image-processor default


def test_dinov2_registers_layout_and_patch_tokens():
    bb = hf_backbone("dinov2-reg")
    assert bb.tokens.num_prefix == 1 + REGISTERS and bb.tokens.num_registers == REGISTERS
    assert bb.width == 2 * D and bb.token_width == D  # its classifier reads [CLS, mean of patches]
    model = wrap(hf_backbone("dinov2-reg"), "linear", num_classes=3)
    cfg = TrainConfig(progress=False)
    tokens = outputs(model, images(), cfg, 0, "tokens")
    assert patch_tokens(bb, tokens).shape == (2, (IMG // PATCH) ** 2, D)


def test_stages_run_block_by_block_to_the_same_logits():
    for kind in ENCODERS:
        bb = hf_backbone(kind)
        st = stages(bb)
        assert st.n_blocks == LAYERS
        x = images()
        with torch.no_grad():
            torch.testing.assert_close(st.run(x, 0, st.logits), bb.model(x), atol=1e-5, rtol=1e-5)


def test_unsupported_model_and_wrong_size_are_refused_with_reasons():
    import transformers as T

    swin = T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[1]))
    with pytest.raises(PefsError, match="SwinModel.*supported: ViTModel"):
        load(swin)
    bb = hf_backbone("vit")
    with pytest.raises(PefsError, match="takes 32x32 images"):
        bb.model(torch.zeros(1, 3, 224, 224))


# -- every strategy through the battery ---------------------------------------------------------------------

def q_and_v(original):
    return [f"{b}.{r}" for b in original.block_names for r in original.lora_targets]


def expect_lora(model, original):
    return under(model, q_and_v(original), "lora_")


def expect_bias(model, original):
    return {n for n in param_names(model) - head_names(model) if n.endswith(".bias")}


def expect_norm(model, original):
    head = original.head_name
    return {f"{n}.{p}" for n, m in original.model.named_modules() if isinstance(m, NORMS) and n != head
            for p in ("weight", "bias") if getattr(m, p, None) is not None}


def expect_last_k(model, original):
    blocks = original.block_names[-1:]
    norms = [n for n, m in original.model.named_modules() if isinstance(m, nn.LayerNorm)
             and n.split(".")[-1] in ("layernorm", "post_layernorm")]
    return {n for n in param_names(model) - head_names(model) if any(n.startswith(p + ".") for p in blocks + norms)}


def expect_adapter(model, original):
    mlp = "mlp" if original.kind == "transformer" else None
    layers = [f"{b}.{mlp}" for b in original.block_names] if mlp else original.block_names
    return under(model, layers, ".adapter.")


def expect_ssf(model, original):
    if original.kind == "cnn":
        mods = dict(original.model.named_modules())
        layers = [n for n in mods if isinstance(mods[n], (nn.Linear, nn.Conv2d))
                  and any(n.startswith(b + ".") for b in original.block_names)]
        return under(model, layers, ".ssf.")
    # the SSF paper's layers under every layout the describer knows: transformers' newest names, and DINOv2's
    # attention.attention.query/key/value + attention.output.dense up to transformers 5.17
    tails = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2", "layernorm_before", "layernorm_after",
             "norm1", "norm2", "layer_norm1", "layer_norm2", "attention.query", "attention.key", "attention.value",
             "attention.output.dense")
    layers = [n for n, _ in original.model.named_modules()
              if any(n.startswith(b + ".") for b in original.block_names) and any(n.endswith("." + t) for t in tails)]
    outer = [n for n, m in original.model.named_modules() if isinstance(m, nn.Conv2d)]  # the patch embedding
    outer += [n for n, _ in original.model.named_modules() if n.rsplit(".", 1)[-1] in ("layernorm", "pre_layrnorm")]
    return under(model, layers + outer, ".ssf.")


def expect_vpt_tokens(model, original):
    return {f"{original.tokens.container}.prompts"}


def expect_self_prompt(model, original):
    c = original.tokens.container
    return names_with(model, f"{c}.generator.") | {f"{c}.gates"}


def expect_ia3(model, original):
    # keys, values and fc2: attention.k_proj / v_proj, or DINOv2's attention.attention.key / value up to 5.17
    tails = ("attention.k_proj", "attention.v_proj", "attention.attention.key", "attention.attention.value", "mlp.fc2")
    layers = [n for n, _ in original.model.named_modules()
              if any(n.startswith(b + ".") for b in original.block_names) and any(n.endswith("." + t) for t in tails)]
    assert len(layers) == 3 * len(original.block_names), layers
    return under(model, layers, "ia3_l")


def expect_adapter_attn(model, original):
    attn = "attention" if original.family == "hf-vit" else "self_attn"
    return under(model, [f"{b}.{s}" for b in original.block_names for s in ("mlp", attn)], ".adapter.")


def expect_vpt_pixel(model, original):
    """The first layer that sees the image: the encoder's embeddings, or a CNN's base model as a whole."""
    stem = "hf.vit.embeddings" if original.kind == "transformer" else "hf." + original.block_names[0].split(".")[1]
    return {f"{stem}.pad_{side}" for side in ("top", "bottom", "left", "right")}


def expect_cnn_lora(model, original):
    mods = dict(original.model.named_modules())
    layers = [n for n, m in mods.items() if any(n.startswith(b + ".") for b in original.block_names)
              and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))]
    return under(model, layers, "lora_")


def expect_cnn_self_prompt(model, original):
    n = len(original.block_names)
    src, tgt = original.block_names[n // 4], original.block_names[n // 4 + 1:]
    return under(model, [src], ".generator.") | under(model, tgt, ".film.") | {f"{t}.mix" for t in tgt}


CASES = [
    ("linear", {}, lambda m, o: set(), ENCODERS + CNNS),
    ("lora", {}, expect_lora, ENCODERS),
    ("bias", {}, expect_bias, ENCODERS + CNNS),
    ("norm", {}, expect_norm, ENCODERS + CNNS),
    ("last-k", {"k": 1}, expect_last_k, ENCODERS),
    ("adapter", {}, expect_adapter, ENCODERS + CNNS),
    ("ssf", {}, expect_ssf, ENCODERS + CNNS),
    ("vpt", {"mode": "deep", "tokens": 3}, expect_vpt_tokens, ENCODERS),
    ("vpt", {"mode": "shallow", "tokens": 3}, expect_vpt_tokens, ("vit",)),
    ("self-prompt", {"prompts": 2, "dim": 8}, expect_self_prompt, ENCODERS),
    ("peft:ia3", {}, expect_ia3, ("vit", "dinov2-reg")),
    ("lora+norm", {}, lambda m, o: expect_lora(m, o) | expect_norm(m, o), ("vit",)),
    ("full", {}, lambda m, o: param_names(m), ("vit",)),
    ("adapter", {"attn": True, "mode": "sequential"}, expect_adapter_attn, ("vit", "clip")),
    ("vpt", {"mode": "pixel"}, expect_vpt_pixel, ("vit", "convnext")),
    ("lora", {}, expect_cnn_lora, CNNS),
    ("self-prompt", {"prompts": 2, "dim": 8}, expect_cnn_self_prompt, ("resnet",)),
]


@pytest.mark.parametrize("spec, options, expected, kind",
                         [(s, o, e, k) for s, o, e, kinds in CASES for k in kinds],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_strategy_battery_on_transformers_models(spec, options, expected, kind, tmp_path):
    check_strategy(spec, hf_backbone(kind), expected, tmp_path, **options)


def test_lora_count_is_the_published_formula():
    """LoRA r on query + value: layers x 2 x 2*d*r (peft's image-classification recipe)."""
    r = 4
    model = wrap(hf_backbone("vit"), "lora", num_classes=3, r=r)
    assert model.param_report()["trainable_without_head"] == LAYERS * 2 * 2 * D * r
    model = wrap(hf_backbone("vit"), "lora", num_classes=3, r=r, targets="q_proj,k_proj,v_proj,o_proj")
    assert model.param_report()["trainable_without_head"] == LAYERS * 4 * 2 * D * r


def test_vpt_and_self_prompt_counts():
    m = 3
    deep = wrap(hf_backbone("dinov2-reg"), "vpt", num_classes=3, mode="deep", tokens=m)
    assert deep.param_report()["trainable_without_head"] == LAYERS * m * D
    sp = wrap(hf_backbone("clip"), "self-prompt", num_classes=3, prompts=2, dim=8)
    gen = D + D + 2 * 8 + (D * 2 * 8 + 2 * 8) + (8 * D + D)  # norm, queries, kv, out
    assert sp.param_report()["trainable_without_head"] == gen + (LAYERS - 1) * HEADS


def test_prompts_sit_after_the_register_tokens():
    """VPT tokens go after CLS + registers, so the registers stay where the model expects them."""
    bb = hf_backbone("dinov2-reg")
    model = wrap(bb, "vpt", num_classes=3, mode="shallow", tokens=2)
    seen = []
    block = model.backbone.blocks[0]
    block.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    with torch.no_grad():
        model(images())
    assert seen == [1 + REGISTERS + 2 + (IMG // PATCH) ** 2]
    assert model.backbone.block_container().num_prefix_tokens == 1 + REGISTERS


# -- engine: frozen-prefix cache, training, checkpointing -----------------------------------------------------

def test_last_k_caches_the_frozen_prefix_and_trains_as_uncached():
    x, y = images(6, seed=3), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = []
    for cache in (True, False):
        bb = hf_backbone("vit")
        torch.manual_seed(0)  # the same fresh head both times
        model = wrap(bb, "last-k", num_classes=3, k=1)
        cfg = TrainConfig(epochs=2, batch_size=3, progress=False, cache_features=cache, inference_precision="no",
                          deterministic=True)
        if cache:
            assert frozen_level(model, cfg) == stages(model.backbone).block(LAYERS - 1)
        stats = fit(model, x, y, cfg)
        assert stats.cached == cache
        losses.append(stats.losses)
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spec", ["lora", "vpt"])
def test_training_lowers_the_loss_and_checkpointing_changes_nothing(spec):
    x, y = images(6, seed=4), torch.tensor([0, 1, 2, 0, 1, 2])
    runs = []
    for ckpt in (False, True):
        bb = hf_backbone("vit")
        torch.manual_seed(0)  # the same fresh head and prompts both times
        model = wrap(bb, spec, num_classes=3)
        cfg = TrainConfig(epochs=8, batch_size=6, lr=1e-2, progress=False, grad_checkpointing=ckpt, deterministic=True)
        runs.append(fit(model, x, y, cfg).losses)
    assert runs[0][-1] < runs[0][0]
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), atol=1e-5, rtol=1e-4)


def test_checkpointing_goes_through_the_models_own_switch():
    from pefs.runtime.engine import grad_checkpointing

    model = wrap(hf_backbone("vit"), "lora", num_classes=3)
    layers = model.backbone.blocks
    with grad_checkpointing(model, True):
        assert all(layer.gradient_checkpointing for layer in layers)
    assert not any(layer.gradient_checkpointing for layer in layers)
    prompted = wrap(hf_backbone("vit"), "vpt", num_classes=3)  # vpt reruns the blocks: it checkpoints them itself
    with grad_checkpointing(prompted, True):
        assert prompted.backbone.block_container().use_checkpoint


def test_patch_tokens_level_for_patch_matching():
    model = wrap(hf_backbone("clip"), "linear", num_classes=3)
    assert level_of(model, "tokens") == stages(model.backbone).tokens


class _OldDinov2Layer(nn.Module):
    """A DINOv2 layer as transformers up to 5.17 lays it out: attention.attention.query/key/value,
    attention.output.dense, an mlp with fc1/fc2, layer scales, and a forward that takes the tokens alone."""

    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = nn.Module()
        self.attention.attention = nn.Module()
        for n in ("query", "key", "value"):
            setattr(self.attention.attention, n, nn.Linear(d, d))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.layer_scale1, self.layer_scale2 = nn.Identity(), nn.Identity()
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, hidden_states):
        return hidden_states


class _OldViTLayer(nn.Module):
    """A ViT layer as transformers up to 5.8 lays it out: the MLP split into intermediate/output."""

    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.attention = _OldDinov2Layer(d).attention
        self.intermediate, self.output = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.layernorm_before, self.layernorm_after = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        return hidden_states


def test_describer_reads_the_older_dinov2_layout_and_names_the_transformers_it_needs_for_old_vits():
    """Whatever transformers is installed: the block layouts of older releases (checked against 5.9, 5.17, 4.57)."""
    from types import SimpleNamespace

    from pefs.backbones.families import hf

    roles = hf._roles(_OldDinov2Layer(), SimpleNamespace(num_attention_heads=HEADS), "old DINOv2")
    assert (roles.q, roles.k, roles.v, roles.out) == ("attention.attention.query", "attention.attention.key",
                                                      "attention.attention.value", "attention.output.dense")
    assert (roles.attn, roles.mlp, roles.fc1, roles.fc2, roles.ls1) == ("attention", "mlp", "mlp.fc1", "mlp.fc2",
                                                                       "layer_scale1")
    assert roles.head_dim == D // HEADS
    assert hf._block_kwargs(_OldDinov2Layer()) == ()  # its forward takes no attention_mask
    assert hf._block_kwargs(hf_backbone("vit").blocks[0]) == (("attention_mask", None),)
    with pytest.raises(PefsError, match=f"splits the MLP into intermediate/output .* upgrade transformers to "
                                        f"{hf.MIN_TRANSFORMERS} or newer"):
        hf._roles(_OldViTLayer(), SimpleNamespace(num_attention_heads=HEADS), "old ViT")
