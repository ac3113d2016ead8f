"""``adapter``: bottleneck adapters (down-projection, GELU, zero-initialised up-projection) inside the blocks.

Transformers (timm ViT blocks): ``mode=parallel`` is AdaptFormer, ``mlp(h) + scale * A(h)`` beside each MLP
(``h`` the MLP's normalised input); ``mode=sequential`` is Houlsby/Pfeiffer, ``y + scale * A(y)`` on the MLP's
output. ``attn=true`` adds the same beside/after each attention sub-layer. CNNs: 1x1-conv bottleneck residual
adapters around each block, ``block(x) + scale * A(x)`` (parallel, the down-projection strided to match the
block's output) or ``y + scale * A(y)`` on the block output (sequential); the hidden width there is
``min(bottleneck, channels // 4)`` so narrow early stages get narrow adapters. The up-projection starts at
zero, so the wrapped model starts equal to the backbone. Not mergeable: the GELU between the projections
has no equivalent in the backbone's weights.

The wrapping helpers it uses live in :mod:`pefs.strategies.common`, shared with the other strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import first_tensor, replace_module, submodule_or_none
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import Wrapped, probe_shapes, reference_device_dtype, select_blocks
from pefs.strategies.registry import register

#: on CNNs the adapter's hidden width is at most a quarter of the block's output channels
CNN_REDUCTION = 4


class TokenAdapter(nn.Module):
    """Linear bottleneck ``up(GELU(down(x)))`` over the last dimension; ``up`` starts at zero."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class ConvAdapter(nn.Module):
    """1x1-conv bottleneck on (B, C, H, W) maps; ``stride`` lets a parallel branch follow a downsampling block."""

    def __init__(self, c_in: int, bottleneck: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.down = nn.Conv2d(c_in, bottleneck, 1, stride=stride)
        self.act = nn.GELU()
        self.up = nn.Conv2d(bottleneck, c_out, 1)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class Adapted(Wrapped):
    """``base_layer`` plus a scaled adapter: beside it (parallel, fed its input) or after it (sequential)."""

    def __init__(self, base_layer: nn.Module, adapter: nn.Module, mode: str, scale: float) -> None:
        super().__init__(base_layer)
        self.adapter = adapter
        self.mode = mode
        self.scale = scale

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(*args, **kwargs)
        # the layer's input: positional (timm), or a keyword such as hidden_states= (transformers' CLIP)
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        y = first_tensor(out)  # attention layers of transformers models return (output, weights)
        y = y + self.scale * self.adapter(x if self.mode == "parallel" else y)
        return y if isinstance(out, torch.Tensor) else (y, *out[1:])


@dataclass
class AdapterConfig(StrategyConfig):
    #: hidden width (transformers); on CNNs the cap, with min(bottleneck, channels // 4) used per block
    bottleneck: int = 64
    #: parallel (AdaptFormer / Conv-Adapter) or sequential (Houlsby / Pfeiffer)
    mode: Literal["parallel", "sequential"] = "parallel"
    #: multiplies the adapter's output (AdaptFormer's s)
    scale: float = 0.1
    #: transformers: also adapt the attention sub-layer (Houlsby)
    attn: bool = False
    #: block indices to adapt (negative from the end); empty = all
    blocks: tuple[int, ...] = ()

    def validate(self, strategy: str) -> None:
        if self.bottleneck < 1:
            raise PefsError(f"option bottleneck={self.bottleneck} of strategy {strategy!r} must be >= 1")
        if self.mode not in ("parallel", "sequential"):
            raise PefsError(f"option mode={self.mode!r} of strategy {strategy!r} must be 'parallel' or 'sequential'")
        if not self.scale > 0:
            raise PefsError(f"option scale={self.scale} of strategy {strategy!r} must be > 0")


@register
class Adapter(Strategy):
    name = "adapter"
    summary = "bottleneck adapters, parallel (AdaptFormer) or sequential (Houlsby); 1x1-conv adapters on CNNs"
    config_class = AdapterConfig
    kinds = ("transformer", "cnn")
    mergeable = False  # the nonlinearity inside the adapter has no equivalent in the backbone's weights

    def apply(self, bb: Backbone) -> None:
        c: AdapterConfig = self.config  # type: ignore[assignment]
        names = [bb.block_names[i] for i in select_blocks(bb, c.blocks, self.name)]
        device, dtype = reference_device_dtype(bb.model)
        new: list[nn.Module] = []
        if bb.kind == "transformer":
            mlp, attn = (bb.roles.mlp, bb.roles.attn) if bb.roles else ("mlp", "attn")
            for b in names:
                block = bb.model.get_submodule(b)
                subs = [mlp] + ([attn] if c.attn else [])
                missing = [s for s in subs if not isinstance(submodule_or_none(block, s), nn.Module)]
                if missing:
                    raise PefsError(f"strategy 'adapter' expects ViT blocks with {' and '.join(subs)} sub-layers; "
                                    f"block {b} of {bb.name} ({type(block).__name__}) has no {missing[0]!r}")
                for s in subs:
                    adapter = TokenAdapter(bb.token_width, c.bottleneck).to(device=device, dtype=dtype)
                    replace_module(bb.model, f"{b}.{s}", Adapted(block.get_submodule(s), adapter, c.mode, c.scale))
                    new.append(adapter)
        else:
            if c.attn:
                raise PefsError(f"option attn=true of strategy 'adapter' applies to transformer blocks; {bb.name} is a "
                                "CNN, where each adapter wraps a whole block: drop attn")
            shapes = probe_shapes(bb, names)
            for b in names:
                if b not in shapes or len(shapes[b][0]) != 4 or len(shapes[b][1]) != 4:
                    got = tuple(shapes[b][1]) if b in shapes else "nothing"
                    raise PefsError(f"strategy 'adapter' needs CNN blocks that map (B, C, H, W) feature maps; "
                                    f"block {b} of {bb.name} gave {got}")
                (_, c_in, h_in, _), (_, c_out, h_out, _) = shapes[b]
                hidden = max(1, min(c.bottleneck, c_out // CNN_REDUCTION))
                if c.mode == "parallel":
                    adapter = ConvAdapter(c_in, hidden, c_out, stride=max(1, round(h_in / h_out)))
                else:
                    adapter = ConvAdapter(c_out, hidden, c_out)
                adapter = adapter.to(device=device, dtype=dtype)
                replace_module(bb.model, b, Adapted(bb.model.get_submodule(b), adapter, c.mode, c.scale))
                new.append(adapter)
        set_trainable(p for m in new for p in m.parameters())
