"""timm <-> ``transformers`` ViT checkpoints: the same architecture, weights mapped exactly (same features for
the same image). The mapping reads both models' :class:`~pefs.backbones.Backbone` descriptions (block roles,
embeddings, final norm, head), so it needs no per-version table of ``transformers`` names.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from pefs.backbones.describe import Backbone, describe_timm
from pefs.backbones.families.hf import describe_hf
from pefs.errors import PefsError


def _check_timm(model: nn.Module) -> None:
    """Refuse a timm ViT whose layout the plain transformers ViT cannot express."""
    problems = []
    if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "cls_token", None) is None:
        problems.append(f"{getattr(model, 'num_prefix_tokens', '?')} prefix tokens (needs exactly one class token)")
    if getattr(model, "global_pool", "token") != "token":
        problems.append(f"global_pool={model.global_pool!r} (needs 'token')")
    for attr in ("norm_pre", "fc_norm"):
        if not isinstance(getattr(model, attr, nn.Identity()), nn.Identity):
            problems.append(f"a {attr} layer")
    if getattr(model, "no_embed_class", False) or getattr(model, "dynamic_img_size", False):
        problems.append("position embeddings without the class token / dynamic size")
    block = model.blocks[0]
    if not isinstance(block.ls1, nn.Identity) or not isinstance(block.attn.q_norm, nn.Identity):
        problems.append("layer scale or q/k norms")
    if not isinstance(block.mlp.act, nn.GELU):
        problems.append(f"MLP activation {type(block.mlp.act).__name__} (needs GELU)")
    if problems:
        raise PefsError(f"cannot convert this timm ViT to a transformers ViTForImageClassification: it has "
                        f"{'; '.join(problems)}")


def _pairs(timm_bb: Backbone, hf_bb: Backbone) -> list[tuple[str, str, str]]:
    """(timm parameter, transformers parameter, how) for every tensor; how is "copy", or "q"/"k"/"v" for one
    third of timm's fused qkv."""
    t, h = timm_bb.roles, hf_bb.roles
    emb = hf_bb.tokens.container.rsplit(".", 1)[0].removesuffix(".encoder") + ".embeddings"
    out = [("cls_token", f"{emb}.cls_token", "copy"), ("pos_embed", f"{emb}.position_embeddings", "copy")]
    out += [(f"{timm_bb.outer_layers[0]}.{p}", f"{hf_bb.outer_layers[0]}.{p}", "copy") for p in ("weight", "bias")]
    for tb, hb in zip(timm_bb.block_names, hf_bb.block_names):
        for tr, hr in ((t.norm1, h.norm1), (t.norm2, h.norm2), (t.out, h.out), (t.fc1, h.fc1), (t.fc2, h.fc2)):
            out += [(f"{tb}.{tr}.{p}", f"{hb}.{hr}.{p}", "copy") for p in ("weight", "bias")]
        for part, hr in zip("qkv", (h.q, h.k, h.v)):
            out += [(f"{tb}.{t.qkv}.{p}", f"{hb}.{hr}.{p}", part) for p in ("weight", "bias")]
    out += [(f"norm.{p}", f"{hf_bb.outer_layers[-1]}.{p}", "copy") for p in ("weight", "bias")]
    if isinstance(timm_bb.head, nn.Linear):
        out += [(f"{timm_bb.head_name}.{p}", f"{hf_bb.head_name}.{p}", "copy") for p in ("weight", "bias")]
    return out


def _copy(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor], pairs: list[tuple[str, str, str]],
          forward: bool) -> None:
    with torch.no_grad():
        for ts, hs, how in pairs:
            if how == "copy":
                a, b = (ts, hs) if forward else (hs, ts)
                dst[b].copy_(src[a])
            else:
                i = "qkv".index(how)
                if forward:
                    d = src[ts].shape[0] // 3
                    dst[hs].copy_(src[ts][i * d:(i + 1) * d])
                else:
                    d = dst[ts].shape[0] // 3
                    dst[ts][i * d:(i + 1) * d].copy_(src[hs])


def processor_config(data_config: dict) -> dict:
    """A ``preprocessor_config.json`` (ViTImageProcessor) doing what a timm data config does: resize the short
    side to size / crop_pct, centre-crop, normalise. Save it next to a converted model."""
    _, h, w = data_config["input_size"]
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "do_center_crop": crop_pct < 1.0,
            "size": {"shortest_edge": int(h / crop_pct)} if crop_pct < 1.0 else {"height": h, "width": w},
            "crop_size": {"height": h, "width": w}, "do_normalize": True, "do_rescale": True,
            "image_mean": list(data_config["mean"]), "image_std": list(data_config["std"]),
            "resample": 3 if data_config.get("interpolation") == "bicubic" else 2}


def timm_vit_to_transformers(model: nn.Module) -> nn.Module:
    """A ``transformers`` ViTForImageClassification with the timm VisionTransformer's weights (exactly)."""
    import transformers

    if type(model).__name__ != "VisionTransformer":
        raise PefsError(f"timm_vit_to_transformers converts a timm VisionTransformer, got {type(model).__name__}")
    _check_timm(model)
    timm_bb = describe_timm(model, "timm", "user")
    block = model.blocks[0]
    head = model.head if isinstance(model.head, nn.Linear) else None
    config = transformers.ViTConfig(
        image_size=int(model.patch_embed.img_size[0]), patch_size=int(model.patch_embed.patch_size[0]),
        num_channels=int(model.patch_embed.proj.in_channels), hidden_size=int(model.embed_dim),
        num_hidden_layers=len(model.blocks), num_attention_heads=int(block.attn.num_heads),
        intermediate_size=int(block.mlp.fc1.out_features), qkv_bias=block.attn.qkv.bias is not None,
        layer_norm_eps=float(block.norm1.eps), hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=head.out_features if head is not None else 0)
    hf = transformers.ViTForImageClassification(config).eval()
    hf_bb = describe_hf(hf)
    src = dict(timm_bb.model.named_parameters())
    dst = dict(hf_bb.model.named_parameters())
    _copy(src, dst, _pairs(timm_bb, hf_bb), forward=True)
    return hf


def transformers_vit_to_timm(model: nn.Module) -> nn.Module:
    """A timm VisionTransformer with a ``transformers`` ViT(ForImageClassification)'s weights (exactly)."""
    from timm.models.vision_transformer import VisionTransformer

    hf_bb = describe_hf(model)
    if hf_bb.family != "hf-vit" or hf_bb.tokens.num_prefix != 1:
        raise PefsError(f"transformers_vit_to_timm converts a transformers ViT; got {type(model).__name__} "
                        f"(family {hf_bb.family})")
    hf = hf_bb.model.hf
    c = hf.config
    if c.hidden_act != "gelu" or hf_bb.model.spec.pool == "pooler":
        raise PefsError(f"cannot convert: hidden_act={c.hidden_act!r} (needs 'gelu') or a tanh pooler, which a "
                        "timm ViT has no place for")
    head = hf_bb.head
    timm_model = VisionTransformer(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.num_channels, embed_dim=c.hidden_size,
        depth=c.num_hidden_layers, num_heads=c.num_attention_heads, mlp_ratio=c.intermediate_size / c.hidden_size,
        qkv_bias=c.qkv_bias, num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        norm_layer=functools.partial(nn.LayerNorm, eps=c.layer_norm_eps)).eval()
    timm_bb = describe_timm(timm_model, "timm", "user")
    src = dict(hf_bb.model.named_parameters())
    dst = dict(timm_model.named_parameters())
    _copy(src, dst, _pairs(timm_bb, hf_bb), forward=False)
    return timm_model
