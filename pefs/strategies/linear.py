"""``linear``: the linear probe. Only the classifier head trains; the frozen trunk's features can be cached."""

from __future__ import annotations

from dataclasses import dataclass

from pefs.backbones import Backbone
from pefs.strategies.base import Strategy, StrategyConfig
from pefs.strategies.registry import register


@dataclass
class LinearConfig(StrategyConfig):
    """The linear probe has no options of its own (head options live on the head)."""


@register
class Linear(Strategy):
    name = "linear"
    summary = "head only (linear probe); the backbone stays frozen and its features are cached"
    config_class = LinearConfig
    frozen_prefix = True
    mergeable = True
    keeps_architecture = True

    def apply(self, bb: Backbone) -> None:
        """Nothing beyond the head trains, and ``wrap`` always trains the head."""
