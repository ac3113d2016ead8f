"""Where the parts of a transformer backbone are, whatever library built it.

A timm ViT block keeps its attention in ``attn`` with one fused ``qkv`` linear; a ``transformers`` ViT layer keeps
it in ``attention`` with separate ``q_proj``/``k_proj``/``v_proj``; CLIP calls it ``self_attn``. Strategies read
:class:`BlockRoles` and :class:`TokenLayout` from the :class:`~pefs.backbones.Backbone` description instead of
any of these names, so adding a backbone family touches only ``pefs/backbones/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerNames:
    """Layer names by convention, relative to each block, for a transformer whose blocks pefs cannot describe role
    by role (timm's Swin, EVA, ...): what strategies fall back to when a Backbone has no :class:`BlockRoles`."""

    qkv: str
    out: str
    fc1: str
    fc2: str
    norm1: str
    norm2: str
    #: outside the blocks: the patch embedding and the final norms
    outer: tuple[str, ...]

    def ssf_default(self) -> tuple[str, ...]:
        return (self.qkv, self.out, self.fc1, self.fc2, self.norm1, self.norm2)


#: timm's naming inside transformer blocks (the convention most timm transformers share)
TIMM_LAYER_NAMES = LayerNames("qkv", "proj", "fc1", "fc2", "norm1", "norm2", ("patch_embed.proj", "norm", "fc_norm"))


@dataclass(frozen=True)
class BlockRoles:
    """Names, relative to each transformer block, of the layers strategies reach into (None: absent)."""

    attn: str  #: the attention sub-layer (its output may be a tensor or a tuple whose first item is one)
    mlp: str  #: the MLP sub-layer
    norm1: str  #: the norm before attention
    norm2: str  #: the norm before the MLP
    out: str  #: attention output projection
    num_heads: int
    head_dim: int
    qkv: str | None = None  #: one fused q/k/v linear (timm) ...
    q: str | None = None  #: ... or three separate ones (transformers)
    k: str | None = None
    v: str | None = None
    fc1: str | None = None
    fc2: str | None = None
    ls1: str | None = None  #: layer scale after attention
    q_norm: str | None = None  #: per-head norms of q and k (timm's qk_norm option)
    k_norm: str | None = None
    attn_norm: str | None = None  #: norm on the attention output before the projection (timm)
    gate: str | None = None  #: timm's optional sigmoid output gate

    def projections(self) -> tuple[str, ...]:
        """The q/k/v linears: ``(qkv,)`` when fused, else ``(q, k, v)``."""
        return (self.qkv,) if self.qkv else tuple(n for n in (self.q, self.k, self.v) if n)

    def lora_default(self) -> tuple[str, ...]:
        """LoRA's conventional targets: the fused ``qkv`` (LoRA-for-ViT papers), or query and value (peft's
        image-classification recipe for ``transformers`` ViTs)."""
        return (self.qkv,) if self.qkv else tuple(n for n in (self.q, self.v) if n)

    def ssf_default(self) -> tuple[str, ...]:
        """The layers SSF follows in each block (the SSF paper's ViT choice)."""
        return tuple(n for n in (*self.projections(), self.out, self.fc1, self.fc2, self.norm1, self.norm2) if n)


@dataclass(frozen=True)
class TokenLayout:
    """How tokens flow through a ViT-style encoder: one container of blocks, each entered as
    ``block(tokens, **block_kwargs)`` with (B, N, D) tokens (the class/distillation/register tokens first, the
    patch tokens after them); see :func:`enter_block`."""

    container: str  #: dotted name of the nn.Sequential / nn.ModuleList holding the blocks, in order
    num_prefix: int  #: tokens before the patches (class + distillation + registers)
    num_registers: int
    patch_size: tuple[int, int]
    #: keyword arguments every block call needs (transformers layers: ``attention_mask=None``)
    block_kwargs: tuple[tuple[str, object], ...] = ()


def enter_block(block: nn.Module, x: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
    """Run one encoder block on tokens ``x`` the way its model does; return the output tokens."""
    return first_tensor(block(x, **dict(layout.block_kwargs)) if layout is not None else block(x))


def submodule_or_none(module: nn.Module, dotted: str) -> nn.Module | None:
    """``module.get_submodule(dotted)``, or None where there is no such submodule."""
    try:
        return module.get_submodule(dotted)
    except AttributeError:
        return None


def replace_module(model: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the module at ``dotted`` was inside ``model``; the module it replaced."""
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def sub(block: nn.Module, name: str | None) -> nn.Module:
    """The submodule ``name`` of ``block`` (nn.Identity for None)."""
    return nn.Identity() if name is None else block.get_submodule(name)


def first_tensor(out: object) -> torch.Tensor:
    """A layer's main output: the tensor itself, or the first item of a tuple / ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(out).__name__}")


def qkv_weights(block: nn.Module, roles: BlockRoles) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of q, k and v in this block, sliced out of a fused qkv linear where there is one.
    A peft- or pefs-wrapped linear exposes its frozen base weight under the same names."""
    if roles.qkv:
        lin = block.get_submodule(roles.qkv)
        w, b = lin.weight, lin.bias
        d = w.shape[0] // 3
        return [(w[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d]) for i in range(3)]
    return [(block.get_submodule(n).weight, block.get_submodule(n).bias) for n in (roles.q, roles.k, roles.v)]


def attend_to(block: nn.Module, roles: BlockRoles, x: torch.Tensor, extra: torch.Tensor,
              gate: torch.Tensor) -> torch.Tensor:
    """The block's own (frozen) attention from its tokens ``x`` to other tokens ``extra``, gated per head and
    passed through the output projection without its bias (zero gate: exactly zero), then the layer scale."""
    h = sub(block, roles.norm1)
    (wq, bq), (wk, bk), (wv, bv) = qkv_weights(block, roles)
    heads, hd = roles.num_heads, roles.head_dim
    b, n, m = x.shape[0], x.shape[1], extra.shape[1]
    hx, he = h(x), h(extra)
    q = sub(block, roles.q_norm)(F.linear(hx, wq, bq).reshape(b, n, heads, hd).transpose(1, 2))
    k = sub(block, roles.k_norm)(F.linear(he, wk, bk).reshape(b, m, heads, hd).transpose(1, 2))
    v = F.linear(he, wv, bv).reshape(b, m, heads, hd).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, heads * hd)
    out = sub(block, roles.attn_norm)(out)
    out = (out.reshape(b, n, heads, hd) * gate.to(x.dtype).view(1, 1, heads, 1)).reshape(b, n, heads * hd)
    if roles.gate is not None:
        out = out * block.get_submodule(roles.gate)(hx).sigmoid()
    out = F.linear(out, block.get_submodule(roles.out).weight)
    return sub(block, roles.ls1)(out)
