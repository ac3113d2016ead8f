"""timm ConvNeXt: ``stages.<i>.blocks.<j>``; each stage's downsample runs with that stage's first block."""

from __future__ import annotations

from torch import nn

from pefs.backbones.families.base import Family, Stage, seq


class TimmConvNext(Family):
    name = "convnext"
    split_classes = ("ConvNeXt",)

    def matches(self, model: nn.Module) -> bool:
        return "convnext" in type(model).__name__.lower() and hasattr(model, "stages")

    def block_names(self, model: nn.Module) -> list[str]:
        return [f"stages.{i}.blocks.{j}" for i, s in enumerate(model.stages) for j in range(len(s.blocks))]

    def stem_and_neck(self, model: nn.Module) -> tuple[Stage, Stage]:
        return model.stem, model.norm_pre

    def block_stages(self, model: nn.Module, names: list[str], blocks: list[nn.Module]) -> list[Stage]:
        """A stage's downsample (identity in the first stage) runs with the stage's first block."""
        out: list[Stage] = []
        for name, block in zip(names, blocks):
            parts = name.split(".")
            out.append(seq(model.stages[int(parts[1])].downsample, block) if parts[-1] == "0" else block)
        return out


FAMILY = TimmConvNext()
