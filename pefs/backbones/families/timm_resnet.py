"""timm ResNets (and any model with ``layer1`` .. ``layer4``): blocks ``layer<i>.<j>``; stem conv1/bn1/act1/maxpool,
no neck."""

from __future__ import annotations

from torch import nn

from pefs.backbones.families.base import Family, Stage, children_names, seq


class TimmResNet(Family):
    name = "resnet"
    split_classes = ("ResNet",)

    def matches(self, model: nn.Module) -> bool:
        return all(hasattr(model, f"layer{i}") for i in range(1, 5))

    def block_names(self, model: nn.Module) -> list[str]:
        return [n for i in range(1, 5) for n in children_names(f"layer{i}", getattr(model, f"layer{i}"))]

    def stem_and_neck(self, model: nn.Module) -> tuple[Stage, Stage]:
        return seq(model.conv1, model.bn1, model.act1, model.maxpool), nn.Identity()


FAMILY = TimmResNet()
