"""The fallback for a user's own module: matches anything; its blocks are the top-level children that hold
parameters. Described, not run in pieces."""

from __future__ import annotations

from torch import nn

from pefs.backbones.families.base import Family


class Custom(Family):
    name = "custom"

    def matches(self, model: nn.Module) -> bool:
        return True

    def block_names(self, model: nn.Module) -> list[str]:
        return [n for n, c in model.named_children() if any(True for _ in c.parameters())]


FAMILY = Custom()
