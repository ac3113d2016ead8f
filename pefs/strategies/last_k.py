"""``last-k``: the last ``k`` blocks, the final norm after them, and the head train; everything before stays frozen.

Because the first ``n - k`` blocks never change, the engine runs them once per image and trains the last
blocks on the cached activations (see :func:`pefs.runtime.engine.frozen_level`): partial fine-tuning at the cost
of a few blocks per step. The "final norm" is every norm layer that follows the last block outside the
classifier (ViT ``norm``/``fc_norm``, EfficientNet ``bn2``, ConvNeXt ``head.norm``; ResNet has none).
"""

from __future__ import annotations

from dataclasses import dataclass

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import norm_types
from pefs.strategies.registry import register


@dataclass
class LastKConfig(StrategyConfig):
    #: how many of the backbone's last blocks train
    k: int = 2

    def validate(self, strategy: str) -> None:
        if self.k < 1:
            raise PefsError(f"option k={self.k} of strategy {strategy!r} must be >= 1")


def final_norms(bb: Backbone) -> list[str]:
    """Names of the norm layers (with parameters) after the last block and outside the head."""
    names = [n for n, _ in bb.model.named_modules()]
    last = bb.block_names[-1]
    after = names[names.index(last) + 1:]
    modules = dict(bb.model.named_modules())
    return [n for n in after if not n.startswith(last + ".") and not (n + ".").startswith(bb.head_name + ".")
            and isinstance(modules[n], norm_types()) and any(True for _ in modules[n].parameters())]


@register
class LastK(Strategy):
    name = "last-k"
    summary = "the last k blocks + final norm train (partial fine-tuning); the frozen prefix is cached"
    config_class = LastKConfig
    mergeable = True
    keeps_architecture = True

    def check(self, bb: Backbone) -> None:
        super().check(bb)
        k, n = self.config.k, len(bb.block_names)  # type: ignore[attr-defined]
        if not n:
            raise PefsError(f"strategy 'last-k' needs a backbone with blocks; pefs found none in {bb.name}")
        if k > n:
            raise PefsError(f"option k={k} of strategy 'last-k' must lie in 1..{n}: {bb.name} has {n} blocks")

    def frozen_blocks(self, bb: Backbone) -> int:
        """How many leading blocks this strategy leaves untouched (the engine caches their output)."""
        return len(bb.block_names) - self.config.k  # type: ignore[attr-defined]

    def apply(self, bb: Backbone) -> None:
        for block in bb.blocks[self.frozen_blocks(bb):]:
            set_trainable(block.parameters())
        for name in final_norms(bb):
            set_trainable(bb.model.get_submodule(name).parameters())
