"""``lora``: low-rank updates W + (alpha/r)·B·A through the ``peft`` library.

Default targets: what the backbone description names as LoRA's convention for the family, the fused ``qkv``
projections on timm ViTs (as in the LoRA-for-ViT literature) or ``query``/``value`` on ``transformers``
encoders (peft's image-classification recipe); add others (``proj``, ``fc1``, ``fc2``) through ``targets``.
On CNNs every non-grouped Conv2d and Linear inside
the blocks (pointwise and full convs, MLP linears), never a depthwise conv, which peft refuses unless
the rank divides its groups.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, tuner_layers_merged
from pefs.strategies.registry import register


@dataclass
class LoraConfig(StrategyConfig):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    #: module-name suffixes to adapt (e.g. "qkv,proj"); empty = the family default
    targets: tuple[str, ...] = ()

    def validate(self, strategy: str) -> None:
        if self.r < 1:
            raise PefsError(f"option r={self.r} of strategy {strategy!r} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise PefsError(f"option dropout={self.dropout} of strategy {strategy!r} must lie in [0, 1)")


def default_targets(bb: Backbone, suffixes: tuple[str, ...] = (), what: str = "LoRA") -> list[str]:
    """Full module names LoRA (or ``what``, another adapter) should adapt on this backbone."""
    modules = dict(bb.model.named_modules())
    in_blocks = [n for b in bb.block_names for n, _ in modules[b].named_modules(prefix=b)]
    adaptable = [n for n in in_blocks if isinstance(modules[n], nn.Linear)
                 or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)]
    if suffixes:
        chosen = [n for n in adaptable if any(n == s or n.endswith("." + s) for s in suffixes)]
        if not chosen:
            names = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
            raise PefsError(f"{what} targets {', '.join(suffixes)} match no Linear/Conv2d in the blocks of {bb.name}; "
                            f"module names there: {', '.join(names[:20])}")
        return chosen
    if bb.lora_targets:
        wanted = {f"{b}.{t}" for b in bb.block_names for t in bb.lora_targets}
        # a layer inside another strategy's wrapper sits under ``.base_layer``; it keeps its role
        chosen = [n for n in adaptable if n.replace(".base_layer", "") in wanted]
        if chosen:
            return chosen
    if bb.kind == "transformer":
        chosen = [n for n in adaptable if n.endswith(".qkv")]
        if chosen:
            return chosen
    if not adaptable:
        raise PefsError(f"{what} found no Linear or non-grouped Conv2d inside the blocks of {bb.name}; "
                        "pass targets= naming the layers to adapt")
    return adaptable


@register
class Lora(Strategy):
    name = "lora"
    summary = "low-rank updates (peft) on qkv (timm ViT), query+value (transformers) or pointwise convs (CNN)"
    config_class = LoraConfig
    mergeable = True

    def apply(self, bb: Backbone) -> None:
        import peft

        c: LoraConfig = self.config  # type: ignore[assignment]
        self.target_names = default_targets(bb, c.targets)
        cfg = peft.LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=self.target_names)
        peft.inject_adapter_in_model(cfg, bb.model)
        self.peft_config = cfg  # what pefs.peft_format writes out for peft to load
        for n, p in bb.model.named_parameters():
            p.requires_grad_("lora_" in n)

    def frozen_base(self, bb: Backbone) -> set[str]:
        # only the adapted weights: biases (BitFit) may train alongside the low-rank update
        return {n for n, _ in bb.model.named_parameters() if n.endswith(".base_layer.weight")}

    def merged_view(self, bb: Backbone):
        from peft.tuners.lora import LoraLayer

        return tuner_layers_merged([m for m in bb.model.modules() if isinstance(m, LoraLayer)])

    def merge(self, bb: Backbone) -> None:
        from peft.tuners.lora import LoraLayer

        for name, module in list(bb.model.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, attr = name.rpartition(".")
                parent = bb.model.get_submodule(parent_name) if parent_name else bb.model
                setattr(parent, attr, module.get_base_layer())
