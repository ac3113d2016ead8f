"""The scale ladder: small timm architectures at chosen widths and depths, named so ``pefs pretrain`` and
``pefs tune`` reach them like any model (``--model vit_ladder_w96_d4``).

No hub weights exist for these shapes: a ladder model starts from random weights (``--no-pretrained``) and gets
its pretraining from ``pefs pretrain``, whose checkpoint ``pefs tune --checkpoint DIR`` then loads. The ViTs take
4-pixel patches at 28 pixels (Fashion-MNIST's own size: 49 patch tokens); the ResNets are ResNet-18's layout at
a chosen base width, their default input 28 pixels too. Each entry's timm name and keyword arguments are its
architecture, which a pretrain checkpoint records and ``pefs tune`` compares (:func:`architecture`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: the ViTs' patch side and input size (pixels): 7 x 7 = 49 patch tokens on a 28-pixel image
PATCH, IMG_SIZE = 4, 28


@dataclass(frozen=True)
class LadderModel:
    """A named architecture: a timm model built with fixed keyword arguments, never with hub weights."""

    name: str
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def _vit(width: int, depth: int) -> LadderModel:
    heads = width // 32
    return LadderModel(f"vit_ladder_w{width}_d{depth}", "vit_tiny_patch16_224",
                       {"embed_dim": width, "depth": depth, "num_heads": heads, "patch_size": PATCH,
                        "img_size": IMG_SIZE},
                       f"ViT, width {width}, depth {depth}, {heads} heads, {PATCH}-px patches at {IMG_SIZE} px")


def _resnet(width: int) -> LadderModel:
    channels = (width, 2 * width, 4 * width, 8 * width)
    return LadderModel(f"resnet_ladder_w{width}", "resnet18", {
        "channels": channels, "stem_width": width, "pretrained_cfg_overlay": {"input_size": (3, IMG_SIZE, IMG_SIZE)}},
        f"ResNet-18 layout at base width {width} (stages {'/'.join(map(str, channels))}) at {IMG_SIZE} px")


#: name -> architecture; the ViTs span about 47x in parameters, the ResNets about 36x
LADDER_MODELS: dict[str, LadderModel] = {m.name: m for m in (
    _vit(96, 4), _vit(192, 8), _vit(384, 12), _resnet(16), _resnet(32), _resnet(96))}


def architecture(name: str) -> dict[str, Any] | None:
    """What ladder model ``name`` is built as (``{"timm": ..., **kwargs}``, JSON-ready), or None for another name."""
    spec = LADDER_MODELS.get(name)
    if spec is None:
        return None
    return json.loads(json.dumps({"timm": spec.timm_name, **spec.kwargs}))  # as a checkpoint's JSON records it


def build_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments for ladder model ``name``: its own, then the caller's (``img_size=``
    wins: a ViT built for another input size)."""
    return {**LADDER_MODELS[name].kwargs, **kwargs}
