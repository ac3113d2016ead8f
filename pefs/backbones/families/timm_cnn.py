"""Any other timm CNN with a ``stages`` sequence (blocks ``stages.<i>.blocks.<j>``, or ``stages.<i>`` when a stage
has no ``blocks``) or a ``blocks`` sequence (``blocks.<i>``). Described, not run in pieces: pefs caches only its
pooled features."""

from __future__ import annotations

from torch import nn

from pefs.backbones.families.base import Family, children_names, is_block_list


class TimmCnn(Family):
    name = "cnn"

    def matches(self, model: nn.Module) -> bool:
        return hasattr(model, "stages") or is_block_list(getattr(model, "blocks", None))

    def block_names(self, model: nn.Module) -> list[str]:
        if not hasattr(model, "stages"):
            return children_names("blocks", model.blocks)
        names: list[str] = []
        for i, s in enumerate(model.stages):
            inner = getattr(s, "blocks", None)
            names += children_names(f"stages.{i}.blocks", inner) if inner is not None else [f"stages.{i}"]
        return names


FAMILY = TimmCnn()
