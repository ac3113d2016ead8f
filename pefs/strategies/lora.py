"""``lora``: low-rank updates W + (alpha/r)·B·A through the ``peft`` library.

Default targets: what the backbone description names as LoRA's convention for the family, the fused ``qkv``
projections on timm ViTs (as in the LoRA-for-ViT literature) or ``query``/``value`` on ``transformers``
encoders (peft's image-classification recipe); add others (``proj``, ``fc1``, ``fc2``) through ``targets``.
On CNNs every non-grouped Conv2d and Linear inside
the blocks (pointwise and full convs, MLP linears), never a depthwise conv, which peft refuses unless
the rank divides its groups.

``use_dora=true``: DoRA (Liu et al. 2024, peft's ``use_dora``) splits each adapted weight into a magnitude per
output channel (trained, initialised to the weight's column norms) and a direction that LoRA updates; on Linear
and Conv2d targets alike, merged like LoRA.

``quantize=4bit|8bit``: QLoRA, the base Linear weights held in k-bit by bitsandbytes (:mod:`pefs.strategies.kbit`;
a CUDA GPU only, refused elsewhere before any model is built), evaluated unmerged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import StrategyConfig
from pefs.strategies.common import default_targets
from pefs.strategies.kbit import check_kbit, quantize_linears
from pefs.strategies.peft_tuner import PeftTuner
from pefs.strategies.registry import register


@dataclass
class LoraStrategyConfig(StrategyConfig):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    #: module-name suffixes to adapt (e.g. "qkv,proj"); empty = the family default
    targets: tuple[str, ...] = ()
    #: DoRA (weight-decomposed LoRA): a trained magnitude per output channel beside the low-rank direction update
    use_dora: bool = False
    #: QLoRA: hold the base Linear weights in 4bit (NF4) or 8bit through bitsandbytes (a CUDA GPU only)
    quantize: Literal["none", "4bit", "8bit"] = "none"

    def validate(self, strategy: str) -> None:
        check_kbit(self.quantize, strategy)
        if self.r < 1:
            raise PefsError(f"option r={self.r} of strategy {strategy!r} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise PefsError(f"option dropout={self.dropout} of strategy {strategy!r} must lie in [0, 1)")


@register
class Lora(PeftTuner):
    name = "lora"
    summary = ("low-rank updates (peft) on attention q/k/v (fused in timm, query+value in transformers) or pointwise "
               "convs (CNN)")
    config_class = LoraStrategyConfig
    peft_type = "LORA"

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        if self.config.quantize != "none":  # type: ignore[attr-defined]
            self.mergeable = False  # W + dW cannot be folded back into k-bit weights exactly

    def check(self, bb: Backbone) -> None:
        super().check(bb)
        c: LoraStrategyConfig = self.config  # type: ignore[assignment]
        if c.quantize != "none" and bb.kind != "transformer":
            raise PefsError(f"quantize={c.quantize} holds Linear layers in k-bit (bitsandbytes quantises no "
                            f"convolution); {bb.name} is a {bb.kind}: use lora without quantize")

    def apply(self, bb: Backbone) -> None:
        if self.config.quantize != "none":  # type: ignore[attr-defined]
            quantize_linears(bb, self.config.quantize)  # type: ignore[attr-defined]
        super().apply(bb)

    def merged_view(self, bb: Backbone) -> contextlib.AbstractContextManager[None]:
        if self.config.quantize != "none":  # type: ignore[attr-defined]
            return contextlib.nullcontext()  # evaluated unmerged: merging would requantise the base weights
        return super().merged_view(bb)

    def peft_config_for(self, bb: Backbone) -> tuple[Any, list[str]]:
        import peft

        c: LoraStrategyConfig = self.config  # type: ignore[assignment]
        names = default_targets(bb, c.targets)
        return peft.LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=names,
                               use_dora=c.use_dora), names
