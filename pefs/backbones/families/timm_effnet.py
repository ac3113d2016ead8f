"""timm EfficientNet / MobileNet: blocks ``blocks.<i>.<j>`` (nested sequences); stem conv_stem/bn1, neck
conv_head/bn2 (the head convolution before pooling)."""

from __future__ import annotations

from torch import nn

from pefs.backbones.families.base import Family, Stage, seq


class TimmEfficientNet(Family):
    name = "efficientnet"
    split_classes = ("EfficientNet",)

    def matches(self, model: nn.Module) -> bool:
        cls = type(model).__name__.lower()
        return "efficientnet" in cls or "mobilenet" in cls

    def block_names(self, model: nn.Module) -> list[str]:
        return [f"blocks.{i}.{j}" for i, s in enumerate(model.blocks) for j in range(len(s))]

    def stem_and_neck(self, model: nn.Module) -> tuple[Stage, Stage]:
        return seq(model.conv_stem, model.bn1), seq(model.conv_head, model.bn2)


FAMILY = TimmEfficientNet()
