"""The base of every strategy that injects a ``peft`` tuner (``lora``, ``peft:<method>``): one injection that
touches only the tuner's own parameters, one merge through peft's own layer ``merge()``, one merged view.

A subclass says which peft config to inject (:meth:`PeftTuner.peft_config_for`); everything else is here.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import replace_module
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, set_trainable, tuner_layers_merged


def adapter_prefix(peft_type: str) -> str:
    """The parameter-name prefix of a peft tuner type's own tensors ("lora_", "hada_", "ia3_", ...)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    return PEFT_TYPE_TO_TUNER_MAPPING[PeftType(peft_type)].prefix


class PeftTuner(Strategy):
    """A peft tuner injected into the backbone (``peft.inject_adapter_in_model``)."""

    mergeable = True
    #: peft's PeftType value of the tuner this strategy injects
    peft_type: ClassVar[str] = ""

    def peft_config_for(self, bb: Backbone) -> tuple[Any, list[str]]:
        """The peft config to inject on ``bb`` and the full names of the layers it adapts."""
        raise NotImplementedError

    def describe_refusal(self, bb: Backbone, names: list[str], message: str) -> str:
        """What to tell the user when peft refuses the injection (subclasses say which layers fit)."""
        return f"peft refused {self.name} on {bb.name} ({len(names)} layers, e.g. {names[0]}): {message}"

    @property
    def prefix(self) -> str:
        return adapter_prefix(self.peft_type)

    def inject(self, cfg: Any, model: nn.Module) -> None:
        """Put the tuner's layers into ``model`` (peft's ``inject_adapter_in_model``; a tuner that keeps state
        beside its layers, AdaLoRA's rank allocator, keeps its tuner object)."""
        import peft

        peft.inject_adapter_in_model(cfg, model)

    def apply(self, bb: Backbone) -> None:
        cfg, names = self.peft_config_for(bb)
        before = {id(p): p.requires_grad for p in bb.model.parameters()}
        try:
            self.inject(cfg, bb.model)
        except (ValueError, TypeError, NotImplementedError, RuntimeError, KeyError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PefsError(self.describe_refusal(bb, names, message)) from None
        # peft marks only its adapters trainable, model-wide: put back what other strategies had set
        for p in bb.model.parameters():
            if id(p) in before:
                p.requires_grad_(before[id(p)])
        new = [(n, p) for n, p in bb.model.named_parameters() if id(p) not in before]
        for _, p in new:
            p.requires_grad_(False)
        set_trainable(p for n, p in new if self.prefix in n)
        self.target_names, self.peft_config = names, cfg  # what pefs.export.peft_format writes out for peft to load

    def frozen_base(self, bb: Backbone) -> set[str]:
        # only the adapted weights: biases (BitFit) may train alongside the update
        return {n for n, _ in bb.model.named_parameters() if n.endswith(".base_layer.weight")}

    def tuner_layers(self, bb: Backbone) -> list[tuple[str, nn.Module]]:
        """(name, layer) of every peft tuner layer of this strategy's type, outermost first."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [(n, m) for n, m in bb.model.named_modules()
                if isinstance(m, BaseTunerLayer) and m.adapter_layer_names[0].startswith(self.prefix)]

    def merged_view(self, bb: Backbone) -> contextlib.AbstractContextManager[None]:
        return tuner_layers_merged([m for _, m in self.tuner_layers(bb)])

    def merge(self, bb: Backbone) -> None:
        """peft's own ``merge()`` folds W + dW into the base layer, which then replaces the tuner layer."""
        for name, module in self.tuner_layers(bb):
            module.merge()
            replace_module(bb.model, name, module.base_layer)
