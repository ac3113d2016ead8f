"""``full``: full fine-tuning, the baseline every parameter-efficient strategy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from pefs.backbones import Backbone
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.registry import register


@dataclass
class FullConfig(StrategyConfig):
    """Full fine-tuning has no options."""


@register
class Full(Strategy):
    name = "full"
    summary = "every parameter trains (baseline)"
    config_class = FullConfig
    mergeable = True
    keeps_architecture = True
    #: chosen on validation images over 1e-3, at which full fine-tuning diverged or collapsed in several seeds
    #: (benchmarks/selection.md, "Default learning rates", has the figures)
    default_lr = 1e-4

    def apply(self, bb: Backbone) -> None:
        set_trainable(bb.model.parameters())
