"""A uniform view of any backbone: family, ordered blocks, feature width, head and data config.

timm models of every family expose the same few facts in different places (``blocks`` on ViTs,
``stages[i].blocks`` on ConvNeXt, ``layer1..4`` on ResNet, nested ``blocks`` on EfficientNet); the family registry
(:mod:`pefs.backbones.families`) knows where, and :class:`Backbone` gathers them so strategies never special-case
a model class themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pefs.backbones.families import family_for
from pefs.backbones.layout import (
    TIMM_LAYER_NAMES,
    BlockRoles,
    LayerNames,
    TokenLayout,
    replace_module,
    submodule_or_none,
)
from pefs.errors import PefsError

IMAGENET_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center",
}
HEAD_ATTRS = ("head", "fc", "classifier", "last_linear")


class HeadedModule(nn.Module):
    """A user's feature extractor (images -> (B, D) features) with a linear head added after it."""

    def __init__(self, body: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Backbone:
    """A model plus what pefs needs to know about it.

    ``family`` is one of vit, convnext, resnet, efficientnet, cnn, custom (timm and user modules) or
    hf-vit, hf-dinov2, hf-clip, hf-convnext, hf-resnet, ... (``transformers``); ``kind`` is transformer or
    cnn (what strategies dispatch on). ``blocks`` are the model's residual blocks in forward order;
    ``head_name`` the dotted name of the classifier module. ``roles`` (where q/k/v, the MLP and the norms
    sit inside each block) and ``tokens`` (the block container and the class/register/patch token layout)
    are set for transformer encoders pefs can reach into; ``outer_layers`` are the patch-embedding
    projection and final norm(s) outside the blocks.
    """

    model: nn.Module
    name: str
    family: str
    kind: str
    width: int
    head_name: str
    data_config: dict[str, Any]
    #: where the weights came from: "hub", "offline", "local", "checkpoint:<path>" or "random"
    source: str = "random"
    block_names: list[str] = field(default_factory=list)
    revision: str | None = None  #: the hub revision (commit) of ``hf:`` models, when known
    roles: BlockRoles | None = None
    tokens: TokenLayout | None = None
    outer_layers: tuple[str, ...] = ()

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Default LoRA targets relative to each block (empty: no convention for this backbone)."""
        return self.roles.lora_default() if self.roles else ()

    @property
    def layer_names(self) -> LayerNames | None:
        """Layer names by convention for a transformer without :attr:`roles` (strategies' fallback), else None."""
        return TIMM_LAYER_NAMES if self.kind == "transformer" else None

    @property
    def token_width(self) -> int:
        """Width of the tokens inside the blocks (``width`` is the pooled feature's, which may differ)."""
        if self.roles is not None and self.block_names:
            return int(self.blocks[0].get_submodule(self.roles.out).out_features)
        return self.width

    def block_container(self) -> nn.Module | None:
        """The module holding a token encoder's blocks (what prompt strategies replace), or None."""
        return self.model.get_submodule(self.tokens.container) if self.tokens else None

    def checkpointing_target(self) -> nn.Module | None:
        """The module whose ``set_grad_checkpointing(bool)`` switches gradient checkpointing for this model: the
        model's own switch (timm's; transformers models are wrapped to offer the same), or None."""
        return self.model if callable(getattr(self.model, "set_grad_checkpointing", None)) else None

    @property
    def blocks(self) -> list[nn.Module]:
        modules = dict(self.model.named_modules())
        return [modules[n] for n in self.block_names]

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self.head_name)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]

    def num_params(self, include_head: bool = False) -> int:
        """Parameters of the backbone (by default without the classifier head)."""
        head = {id(p) for p in self.head.parameters()}
        return sum(p.numel() for p in self.model.parameters() if include_head or id(p) not in head)

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier with a fresh ``num_classes``-way linear layer (0 = no head)."""
        if hasattr(self.model, "reset_classifier"):
            self.model.reset_classifier(num_classes)
        else:
            replace_module(self.model, self.head_name,
                           nn.Linear(self.width, num_classes) if num_classes > 0 else nn.Identity())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features, (B, width)."""
        m = self.model
        if hasattr(m, "forward_head"):
            return m.forward_head(m.forward_features(x), pre_logits=True)
        if isinstance(m, HeadedModule):
            return m.body(x)
        head = replace_module(m, self.head_name, nn.Identity())
        try:
            return m(x)
        finally:
            replace_module(m, self.head_name, head)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``pefs models --describe`` prints)."""
        return {
            "name": self.name, "family": self.family, "kind": self.kind, "width": self.width,
            "num_blocks": len(self.block_names), "blocks": self.block_names[:3] + (
                ["..."] if len(self.block_names) > 4 else []) + self.block_names[-1:] * (len(self.block_names) > 3),
            "head": self.head_name, "params": self.num_params(), "pretrained": self.source,
            "input_size": list(self.input_size),
            "lora_targets": list(self.lora_targets),
            "prefix_tokens": self.tokens.num_prefix if self.tokens else None,
            "registers": self.tokens.num_registers if self.tokens else None,
        }


def describe_timm(model: nn.Module, name: str, pretrained: str) -> Backbone:
    """Describe a timm model (any family)."""
    from timm.data import resolve_data_config

    family = family_for(model)
    blocks = family.block_names(model)
    head_name = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    if isinstance(head_name, (list, tuple)):  # distilled models have two heads; the first is the class head
        head_name = head_name[0]
    try:
        model.get_submodule(head_name)
    except AttributeError:
        head_name = next(a for a in HEAD_ATTRS if hasattr(model, a))
    data_config = dict(resolve_data_config({}, model=model))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size:  # a ViT built at another resolution (img_size=...) only accepts that size
        data_config["input_size"] = (3, *img_size)
    return Backbone(
        model=model, name=name, family=family.name, kind=family.kind(model), width=int(model.num_features),
        head_name=head_name, data_config=data_config, source=pretrained,
        block_names=blocks, **family.describe_extra(model, blocks),
    )


def is_timm_model(module: nn.Module) -> bool:
    """True for a model built by ``timm.create_model`` (headed or headless: it keeps its timm family)."""
    return (isinstance(getattr(module, "pretrained_cfg", None), dict)
            and callable(getattr(module, "reset_classifier", None))
            and callable(getattr(module, "forward_features", None)) and hasattr(module, "num_features"))


def describe_module(module: nn.Module, name: str = "custom", head_name: str | None = None,
                    input_size: tuple[int, int, int] = (3, 224, 224),
                    data_config: dict[str, Any] | None = None) -> Backbone:
    """Describe a user's own ``nn.Module``.

    If it ends in a linear classifier (attribute ``head``/``fc``/``classifier`` or ``head_name``),
    that is the head; otherwise the module is taken as a feature extractor and a head is added.
    """
    if head_name is None:
        head_name = next((a for a in HEAD_ATTRS if isinstance(getattr(module, a, None), nn.Linear)), None)
    elif not isinstance(submodule_or_none(module, head_name), nn.Linear):
        raise PefsError(f"head_name {head_name!r} is not an nn.Linear in {type(module).__name__}")
    config = dict(IMAGENET_DATA_CONFIG, input_size=tuple(input_size), **(data_config or {}))
    if head_name is None:
        with torch.no_grad():
            was_training = module.training
            out = module.eval()(torch.zeros(2, *input_size))
            module.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise PefsError(
                f"{type(module).__name__} returns a {type(out).__name__}, not a tensor; a custom backbone must return "
                "(batch, features). A transformers model (ModelOutput) can be passed itself: pefs describes "
                "ViT, DeiT, DINOv2, CLIP vision, ConvNeXt and ResNet")
        if out.ndim != 2:
            raise PefsError(
                f"{type(module).__name__} returns shape {tuple(out.shape)} for a {tuple(input_size)} image; "
                "a custom backbone must return (batch, features) or end in a Linear head named "
                f"one of {', '.join(HEAD_ATTRS)} (or pass head_name=)")
        model: nn.Module = HeadedModule(module, out.shape[1], 0)
        width, head_name = out.shape[1], "head"
        family = family_for(module)
        blocks = [f"body.{b}" for b in family.block_names(module)]
    else:
        model, width = module, submodule_or_none(module, head_name).in_features
        family = family_for(module)
        blocks = [b for b in family.block_names(module) if b != head_name]
    return Backbone(model=model, name=name, family=family.name, kind=family.kind(model), width=int(width),
                    head_name=head_name, data_config=config, source="user", block_names=blocks)
