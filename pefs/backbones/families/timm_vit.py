"""timm Vision Transformers (ViT, DeiT, and any timm model with ``patch_embed`` and a sequence of ``blocks``).

Blocks: ``blocks.<i>``. A timm ``VisionTransformer`` runs in pieces (patch embedding + position embedding, the
blocks, the final norm), gets q/k/v/MLP roles and a token layout when its blocks are timm ``Block``s, and
supports MAE-style token masking.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pefs.backbones.families.base import Family, Stage, children_names, is_block_list
from pefs.backbones.layout import BlockRoles, TokenLayout, submodule_or_none
from pefs.errors import PefsError


def embed_tokens(model: nn.Module) -> Stage:
    """The stage ``image -> prefix tokens + patch tokens, position embeddings added`` of a timm ViT.

    This calls timm's private ``VisionTransformer._pos_embed``: timm (1.0) has no public API that stops after
    the position embedding (``forward_intermediates`` always runs at least one block, and ``_pos_embed`` also
    handles class/register tokens, ``no_embed_class`` and dynamic image sizes), so the one private call stays
    here, in the one file that knows timm ViTs.
    """
    return lambda x: model._pos_embed(model.patch_embed(x))


class TimmVit(Family):
    name = "vit"
    split_classes = ("VisionTransformer",)

    def matches(self, model: nn.Module) -> bool:
        return hasattr(model, "patch_embed") and is_block_list(getattr(model, "blocks", None))

    def block_names(self, model: nn.Module) -> list[str]:
        return children_names("blocks", model.blocks)

    def kind(self, model: nn.Module) -> str:
        return "transformer"

    def describe_extra(self, model: nn.Module, block_names: list[str]) -> dict[str, Any]:
        """roles / tokens / outer_layers of a timm VisionTransformer whose blocks are all timm ``Block``s."""
        first = model.get_submodule(block_names[0]) if block_names else None
        attn = getattr(first, "attn", None)
        out: dict[str, Any] = {"outer_layers": tuple(n for n in ("patch_embed.proj", "norm", "fc_norm")
                                                     if isinstance(submodule_or_none(model, n), nn.Module))}
        needed = ("qkv", "proj", "num_heads", "head_dim")
        if (attn is None or not all(hasattr(attn, a) for a in needed) or not hasattr(first, "norm1")
                or any(type(model.get_submodule(b)) is not type(first) for b in block_names)):
            return out
        mlp = getattr(first, "mlp", None)
        has = lambda m, a: isinstance(getattr(m, a, None), nn.Module)  # noqa: E731
        out["roles"] = BlockRoles(
            attn="attn", mlp="mlp", norm1="norm1", norm2="norm2", out="attn.proj", qkv="attn.qkv",
            num_heads=int(attn.num_heads), head_dim=int(attn.head_dim),
            fc1="mlp.fc1" if has(mlp, "fc1") else None, fc2="mlp.fc2" if has(mlp, "fc2") else None,
            ls1="ls1" if has(first, "ls1") else None, q_norm="attn.q_norm" if has(attn, "q_norm") else None,
            k_norm="attn.k_norm" if has(attn, "k_norm") else None,
            attn_norm="attn.norm" if has(attn, "norm") else None, gate="attn.gate" if has(attn, "gate") else None)
        if type(getattr(model, "blocks", None)) is nn.Sequential and hasattr(model, "num_prefix_tokens"):
            patch = tuple(getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16)))
            out["tokens"] = TokenLayout("blocks", int(model.num_prefix_tokens),
                                        int(getattr(model, "num_reg_tokens", 0)), patch)  # type: ignore[arg-type]
        return out

    def stem_and_neck(self, model: nn.Module) -> tuple[Stage, Stage]:
        embed = embed_tokens(model)
        return (lambda x: model.norm_pre(model.patch_drop(embed(x)))), model.norm

    def num_prefix_tokens(self, model: nn.Module) -> int | None:
        return getattr(model, "num_prefix_tokens", 1)

    def token_masks(self, model: nn.Module) -> bool:
        """A timm ``VisionTransformer`` at a fixed image size (patch embedding, position embedding and blocks
        pefs can run)."""
        return (type(model).__name__ == "VisionTransformer" and hasattr(model, "patch_embed")
                and not getattr(model, "dynamic_img_size", False))

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        return tuple(int(g) for g in model.patch_embed.grid_size)  # type: ignore[return-value]

    def masked_tokens(self, model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens (B, prefix + kept, D): the ``keep`` patch tokens (with the prefix tokens) enter the
        blocks; the dropped ones never do."""
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        t = embed_tokens(model)(x)  # prefix tokens + every patch token, position embeddings added
        if keep.shape[0] != t.shape[0] or int(keep.max()) >= t.shape[1] - prefix:
            raise PefsError(f"keep indices {tuple(keep.shape)} do not fit {t.shape[0]} images of "
                            f"{t.shape[1] - prefix} patches")
        patches = torch.gather(t[:, prefix:], 1, keep.to(t.device)[..., None].expand(-1, -1, t.shape[-1]))
        t = model.norm_pre(torch.cat([t[:, :prefix], patches], dim=1))
        return model.norm(model.blocks(t))

    def token_drop_site(self, model: nn.Module) -> nn.Module | None:
        """``patch_drop``: ``forward_features`` (and the stem pefs runs in pieces) calls it right after the
        position embeddings, before ``norm_pre`` and the blocks, with gradient checkpointing too. Only a timm
        ``VisionTransformer`` (whose forward is known to do so), without timm's own random patch dropout."""
        site = getattr(model, "patch_drop", None)
        if type(model).__name__ != "VisionTransformer" or not isinstance(site, nn.Identity):
            return None
        return site


FAMILY = TimmVit()
