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
    trains_backbone_weights = True
    #: on validation images (10 seeds, EfficientNet-Lite0): +10.0 ± 9.5 points over 1e-3 at 5 shots, +0.6 ± 4.1
    #: at 1 shot; 1e-3 diverged or collapsed in several seeds (benchmarks/selection.md, "Default learning rates")
    default_lr = 1e-4

    def apply(self, bb: Backbone) -> None:
        set_trainable(bb.model.parameters())
