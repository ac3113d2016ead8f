"""``bias``: BitFit (Ben Zaken et al., 2022). Every bias term in the backbone trains, nothing else (plus the head).

The biases are the backbone's own parameters, so there is nothing to merge: the tuned model has the
original architecture and costs nothing extra at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.registry import register


@dataclass
class BiasConfig(StrategyConfig):
    """BitFit has no options: it trains every bias (Linear, Conv, norm layers)."""


def bias_parameters(bb: Backbone) -> dict:
    """Name -> parameter for every bias term outside the classifier head."""
    head = {id(p) for p in bb.head.parameters()}
    return {n: p for n, p in bb.model.named_parameters()
            if (n == "bias" or n.endswith(".bias")) and id(p) not in head}


@register
class Bias(Strategy):
    name = "bias"
    summary = "BitFit: every bias term (Linear, Conv, norm) trains"
    config_class = BiasConfig
    mergeable = True
    keeps_architecture = True

    def apply(self, bb: Backbone) -> None:
        found = bias_parameters(bb)
        if not found:
            raise PefsError(f"strategy 'bias' found no bias parameters in {bb.name} outside its head; it trains "
                            "the '.bias' of Linear, Conv and norm layers (try 'norm' or 'lora' instead)")
        set_trainable(found.values())
