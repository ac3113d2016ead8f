"""``norm``: only the affine parameters (scale and shift) of the normalisation layers train, plus the head.

Covers LayerNorm (timm's LayerNorm2d too), BatchNorm (and timm's BatchNormAct2d), GroupNorm, InstanceNorm
and RMSNorm; ``types`` narrows that. BatchNorm running statistics are buffers, not parameters: whether they
move while training is the engine's ``TrainConfig.bn_stats`` ("frozen", the default, keeps BN layers in eval
mode so only gamma/beta adapt; "update" re-estimates the statistics on the few-shot batches). Note that
``PefsModel.save`` stores parameters only, so statistics re-estimated under "update" are not saved.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import NORM_TYPES, norm_types
from pefs.strategies.registry import register


@dataclass
class NormConfig(StrategyConfig):
    #: which norm kinds train (layer, batch, group, instance, rms); empty = all of them
    types: tuple[str, ...] = ()

    def validate(self, strategy: str) -> None:
        bad = [t for t in self.types if t not in NORM_TYPES]
        if bad:
            raise PefsError(f"option types={','.join(self.types)} of strategy {strategy!r} names unknown norm kind "
                            f"{bad[0]!r}; valid kinds: {', '.join(NORM_TYPES)}")


def norm_parameters(bb: Backbone, kinds: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """Name -> parameter for the affine weights of every matching norm layer outside the head."""
    types = norm_types(kinds)
    head = {id(p) for p in bb.head.parameters()}
    out = {}
    for name, m in bb.model.named_modules():
        if isinstance(m, types):
            for pn, p in m.named_parameters(recurse=False):
                if id(p) not in head:
                    out[f"{name}.{pn}" if name else pn] = p
    return out


@register
class Norm(Strategy):
    name = "norm"
    summary = "affine scale/shift of LayerNorm / BatchNorm / GroupNorm layers train"
    config_class = NormConfig
    mergeable = True
    keeps_architecture = True

    def apply(self, bb: Backbone) -> None:
        c: NormConfig = self.config  # type: ignore[assignment]
        found = norm_parameters(bb, c.types)
        if not found:
            kinds = ", ".join(c.types or tuple(NORM_TYPES))
            raise PefsError(f"strategy 'norm' found no norm layer with affine parameters ({kinds}) in {bb.name}; "
                            "try 'bias' or 'ssf', which also train per-channel shifts/scales")
        set_trainable(found.values())
