"""``ssf``: Scale-and-Shift Features (Lian et al., NeurIPS 2022). A learned per-channel ``y * scale + shift``
follows chosen layers; scale starts at 1 and shift at 0, so the model is unchanged at init.

ViTs: after ``qkv``, ``proj``, ``fc1``, ``fc2``, ``norm1`` and ``norm2`` in every block, the patch embedding and
the final norm, as in the paper's code (0.21M parameters on ViT-B/16); the backbone description says where
those are (separate q/k/v on ``transformers`` models, the same count). CNNs (and other
models): after every Conv and Linear inside the blocks (channel dim 1 on feature maps, the last dim on
tokens or channels-last maps). Because the scale/shift is linear and per output channel, ``merge`` folds it
into the preceding layer's weight and bias, leaving the original architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import match_targets, norm_types
from pefs.strategies.registry import register


class ScaleShift(nn.Module):
    """Per-channel ``x * scale + shift`` along dimension ``dim`` (1 for NCHW maps, -1 for channels-last)."""

    def __init__(self, channels: int, dim: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self.shift = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.dim] = -1
        return x * self.scale.view(shape) + self.shift.view(shape)

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}, dim={self.dim}"


def _ssf_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.ssf(output)


def target_info(m: nn.Module) -> tuple[int, int] | str:
    """(channels, channel dim) of a layer SSF can follow and merge into, or why it cannot."""
    if isinstance(m, nn.Linear):
        return m.out_features, -1
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        return m.out_channels, 1
    if isinstance(m, norm_types(("layer", "batch", "group"))):  # the norms whose affine a scale folds into
        if getattr(m, "weight", None) is None:
            return "it has no affine weight to merge the scale into"
        act = [getattr(m, a) for a in ("act", "drop") if isinstance(getattr(m, a, None), nn.Module)]
        if any(not isinstance(a, (nn.Identity, nn.Dropout)) for a in act):
            return "an activation follows its affine inside the layer, so a scale/shift after it cannot merge"
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                return f"it normalises over {tuple(m.normalized_shape)}, not one channel dimension"
            channels_first = "2d" in type(m).__name__.lower()  # timm's LayerNorm2d & co. normalise NCHW maps
            return m.normalized_shape[0], 1 if channels_first else -1
        return (m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features), 1
    return f"SSF follows Linear, Conv and LayerNorm/BatchNorm/GroupNorm layers, not {type(m).__name__}"


def _candidates(bb: Backbone) -> dict[str, nn.Module]:
    """Every module SSF could follow, by name: outside the head and other strategies' modules; a wrapped layer
    (peft's and pefs' wrappers keep it as ``base_layer``) stands under the wrapper's name, the layers inside it
    under their own; never a submodule whose forward its parent bypasses."""
    skip: list[str] = [bb.head_name]
    wrappers: dict[str, str] = {}  # wrapper name -> its innermost base layer's name
    out: dict[str, nn.Module] = {}
    for name, m in bb.model.named_modules():
        if not name or isinstance(m, ScaleShift) or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if any(name.startswith(w + ".") and not name.startswith(b + ".") for w, b in wrappers.items()):
            continue  # the wrapper's own modules (adapter, LoRA factors) or its base layer itself
        if isinstance(m, nn.MultiheadAttention):  # calls its projections' weights, never their forward
            skip.append(name)
            continue
        base, base_name = m, name
        while isinstance(getattr(base, "base_layer", None), nn.Module):
            base, base_name = base.base_layer, base_name + ".base_layer"
        if base is not m:
            wrappers[name] = base_name
        out[name] = base
    return out


def ssf_targets(bb: Backbone, suffixes: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Name -> layer that SSF follows on this backbone (``suffixes`` empty: the family default)."""
    cands = _candidates(bb)
    in_blocks = {n: m for n, m in cands.items() if any(n == b or n.startswith(b + ".") for b in bb.block_names)}
    if suffixes:
        matched = {n: cands[n] for n in match_targets(cands, suffixes)}
        for n, m in matched.items():
            info = target_info(m)
            if isinstance(info, str) and any(True for _ in m.parameters(recurse=False)):
                raise PefsError(f"ssf cannot follow {n} ({type(m).__name__}): {info}")
        chosen = {n: m for n, m in matched.items() if not isinstance(target_info(m), str)}
        if not chosen:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in in_blocks.items() if not isinstance(target_info(m), str)})
            raise PefsError(f"ssf targets {', '.join(suffixes)} match no Linear, Conv or norm layer in {bb.name}; "
                            f"layer names in its blocks: {', '.join(names[:20]) or 'none'}")
        return chosen
    if bb.roles is not None:
        wanted = {f"{b}.{r}" for b in bb.block_names for r in bb.roles.ssf_default()}
        # a layer inside another strategy's wrapper sits under ``.base_layer``; it keeps its role
        chosen = {n: m for n, m in in_blocks.items() if n.replace(".base_layer", "") in wanted
                  and not isinstance(target_info(m), str)}
        if chosen:
            outer = {n: cands[n] for n in bb.outer_layers if n in cands and not isinstance(target_info(cands[n]), str)}
            return {**outer, **chosen}
    if bb.layer_names is not None:  # the paper's targets, by the family's naming convention
        names = bb.layer_names
        chosen = {n: m for n, m in in_blocks.items() if n.rsplit(".", 1)[-1] in names.ssf_default()
                  and not isinstance(target_info(m), str)}
        if chosen:
            outer = {n: cands[n] for n in names.outer if n in cands and not isinstance(target_info(cands[n]), str)}
            return {**outer, **chosen}
    chosen = {n: m for n, m in in_blocks.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
              and not isinstance(target_info(m), str)}
    if not chosen:
        raise PefsError(f"ssf found no Linear or Conv layer inside the blocks of {bb.name} "
                        f"(blocks: {', '.join(bb.block_names[:5]) or 'none'}); pass targets= naming layers to follow")
    return chosen


@dataclass
class SSFConfig(StrategyConfig):
    #: module-name suffixes to follow (e.g. "qkv,fc1", "conv_dw"); empty = the family default
    targets: tuple[str, ...] = ()


@register
class Ssf(Strategy):
    name = "ssf"
    summary = "per-channel scale and shift after attention, MLP and norm layers (transformers) or convs (CNN); merges"
    config_class = SSFConfig
    mergeable = True
    #: folds into the layer it follows, so it merges before strategies that rewrite that layer's weights
    merge_order = -1

    def apply(self, bb: Backbone) -> None:
        c: SSFConfig = self.config  # type: ignore[assignment]
        targets = ssf_targets(bb, c.targets)
        for m in targets.values():
            if isinstance(getattr(m, "ssf", None), ScaleShift):
                continue
            channels, dim = target_info(m)  # type: ignore[misc]
            w = m.weight
            m.ssf = ScaleShift(channels, dim, device=w.device, dtype=w.dtype)
            m.register_forward_hook(_ssf_hook)
            set_trainable(m.ssf.parameters())
        self.target_names = list(targets)

    def merge(self, bb: Backbone) -> None:
        """Fold each scale/shift into the preceding layer: W <- s*W, b <- s*b + t; then drop the SSF modules."""
        for m in list(bb.model.modules()):
            ssf = getattr(m, "ssf", None)
            if not isinstance(ssf, ScaleShift):
                continue
            with torch.no_grad():
                s, t = ssf.scale.detach(), ssf.shift.detach()
                m.weight.mul_(s.view(-1, *[1] * (m.weight.ndim - 1)))
                if m.bias is None:
                    m.bias = nn.Parameter(t.clone(), requires_grad=False)
                else:
                    m.bias.mul_(s).add_(t)
            del m.ssf
            keys = [k for k, fn in m._forward_hooks.items() if fn is _ssf_hook]
            for hooks in (m._forward_hooks, m._forward_hooks_with_kwargs, m._forward_hooks_always_called):
                for key in keys:
                    hooks.pop(key, None)
