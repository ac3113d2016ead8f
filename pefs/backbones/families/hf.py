"""The ``transformers`` family: ViT / DeiT / DINOv2 (with registers) / CLIP vision encoders, ConvNeXt and ResNet.

A ``transformers`` model is wrapped, unchanged, in :class:`HFVisionModel` (its weights under ``hf.``): the
wrapper takes images and returns logits (``ModelOutput``s never leave it), exposes timm's small interface
(``forward_features`` / ``forward_head`` / ``reset_classifier`` / ``set_grad_checkpointing``) and, for encoders,
runs stem -> blocks -> final norm -> pooling itself, exactly as the model's own forward does, so strategies
and the frozen-prefix cache can enter any block. :func:`describe_hf` fills the same
:class:`~pefs.backbones.Backbone` description the timm family does: blocks, q/k/v and MLP roles, token layout.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pefs.backbones.describe import IMAGENET_DATA_CONFIG, Backbone
from pefs.backbones.layout import BlockRoles, TokenLayout, enter_block
from pefs.errors import PefsError

#: encoder classes -> how their own forward pools the final tokens ("cls", "cls+mean", "pooler", "cls-postnorm")
ENCODERS = {
    "ViTModel": "cls", "ViTForImageClassification": "cls", "DeiTModel": "cls", "DeiTForImageClassification": "cls",
    "Dinov2Model": "cls", "Dinov2ForImageClassification": "cls+mean", "Dinov2WithRegistersModel": "cls",
    "Dinov2WithRegistersForImageClassification": "cls+mean", "CLIPVisionModel": "cls-postnorm",
}
#: CNN classes -> the attribute of their base model, if the class is a classifier around one
CNNS = ("ConvNextModel", "ConvNextForImageClassification", "ResNetModel", "ResNetForImageClassification")
SUPPORTED = tuple(ENCODERS) + CNNS
#: position embeddings of these are fixed to config.image_size (DINOv2 interpolates them)
FIXED_SIZE = ("vit", "deit", "clip_vision_model")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
#: names of each block role, matched against the end of a dotted name inside the block, first match wins: the
#: newest layout first, then the older ones. DINOv2 (with registers) kept ``attention.attention.query/key/value``
#: and ``attention.output.dense`` up to transformers 5.17 (``o_proj`` etc. from 5.18); ViT and DeiT moved from
#: that layout plus ``intermediate``/``output`` (an MLP split in two, the residual added inside) to ``mlp`` in 5.9.
ROLE_NAMES = {
    "attn": ("attention", "self_attn"), "mlp": ("mlp",), "norm1": ("layernorm_before", "norm1", "layer_norm1"),
    "norm2": ("layernorm_after", "norm2", "layer_norm2"), "q": ("q_proj", "query"), "k": ("k_proj", "key"),
    "v": ("v_proj", "value"), "out": ("o_proj", "out_proj", "attention.output.dense"), "fc1": ("fc1",),
    "fc2": ("fc2",), "ls1": ("layer_scale1",),
}
#: the oldest transformers whose ViT / DeiT layers pefs can describe (they have an ``mlp``; see ROLE_NAMES)
MIN_TRANSFORMERS = "5.9"


@dataclass(frozen=True)
class HFSpec:
    """Where things sit inside one ``transformers`` model (dotted names relative to the model)."""

    model_type: str
    cnn: bool
    base: str  #: the backbone inside a *ForImageClassification ("" when the model is the backbone)
    head: str | None  #: the model's own classifier, or None (the wrapper adds ``head``)
    width: int
    container: str = ""  #: block container, relative to base (encoders)
    pre_norm: str | None = None  #: norm right after the embeddings (CLIP's pre_layrnorm)
    final_norm: str | None = None  #: norm over all tokens after the last block
    pool: str = "cls"
    post_norm: str | None = None  #: norm on the pooled class token (CLIP's post_layernorm)
    num_prefix: int = 1
    image_size: tuple[int, int] | None = None  #: the only size the position embeddings accept
    interpolate: bool = False  #: resize the position embeddings to the input (asked for with img_size=)


class HFVisionModel(nn.Module):
    """A ``transformers`` vision model behind timm's interface: images in, logits (a tensor) out."""

    def __init__(self, hf: nn.Module, spec: HFSpec, num_classes: int = 0) -> None:
        super().__init__()
        self.hf = hf
        self.spec = spec
        self.num_features = spec.width
        self.layout: TokenLayout | None = None  # set by describe_hf
        if spec.head is None:
            self.head = nn.Linear(spec.width, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def head_name(self) -> str:
        return f"hf.{self.spec.head}" if self.spec.head else "head"

    def base(self) -> nn.Module:
        return self.hf.get_submodule(self.spec.base) if self.spec.base else self.hf

    def _module(self, name: str | None) -> nn.Module:
        return nn.Identity() if name is None else self.base().get_submodule(name)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the tokens that enter block 0 (embeddings, plus CLIP's pre-norm)."""
        size = self.spec.image_size
        if size is not None and tuple(x.shape[-2:]) != size:
            raise PefsError(f"this {self.spec.model_type} model takes {size[0]}x{size[1]} images (its position "
                            f"embeddings are fixed), got {x.shape[-2]}x{x.shape[-1]}; resize the images to "
                            f"{size[0]}x{size[1]} (pefs' data pipeline does so from the model's data config)")
        p = next(self.hf.parameters())
        x = x.to(p.dtype) if x.is_floating_point() and x.dtype != p.dtype else x  # as the model's own forward does
        emb = self.base().embeddings
        h = emb(x, interpolate_pos_encoding=True) if self.spec.interpolate else emb(x)
        return self._module(self.spec.pre_norm)(h)

    def token_drop_site(self) -> nn.Module | None:
        """The encoder's ``embeddings`` (class / distillation / register tokens + patch tokens, position embeddings
        added), where masked views drop patch tokens; None for CNNs."""
        return None if self.spec.cnn else self.base().embeddings

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """Tokens through every block: the model's own ModuleList, or whatever a strategy put in its place."""
        container = self.base().get_submodule(self.spec.container)
        if isinstance(container, nn.ModuleList):
            for layer in container:
                h = enter_block(layer, h, self.layout)
            return h
        return container(h)

    def forward_neck(self, h: torch.Tensor) -> torch.Tensor:
        """The last block's output -> the final tokens (the final norm where the model has one)."""
        return self._module(self.spec.final_norm)(h)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoders: final tokens (B, N, D); CNNs: pooled features (B, width)."""
        if self.spec.cnn:
            out = self.base()(x)
            return out.pooler_output.flatten(1)
        return self.forward_neck(self.run_blocks(self.forward_stem(x)))

    def forward_head(self, t: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the final tokens as the model's own forward does, then the classifier."""
        s = self.spec
        if s.cnn:
            pooled = t
        elif s.pool == "cls+mean":
            pooled = torch.cat([t[:, 0], t[:, s.num_prefix:].mean(dim=1)], dim=1)
        elif s.pool == "pooler":
            pooled = self.base().pooler(t)
        elif s.pool == "cls-postnorm":
            pooled = self._module(s.post_norm)(t[:, 0])
        else:
            pooled = t[:, 0]
        return pooled if pre_logits else self.get_submodule(self.head_name)(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``num_classes``-way linear classifier where the model keeps its own (0: none)."""
        new = nn.Linear(self.spec.width, num_classes) if num_classes > 0 else nn.Identity()
        parent, _, attr = self.head_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, attr, new)
        if self.spec.head is not None and num_classes > 0 and hasattr(self.hf, "config"):
            self.hf.config.num_labels = num_classes  # so that the base model saves with the right head size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """The model's own gradient-checkpointing switch (``gradient_checkpointing_enable``)."""
        if not getattr(self.hf, "supports_gradient_checkpointing", False):
            raise PefsError(f"{type(self.hf).__name__} does not support gradient checkpointing; train without it")
        if enable:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.hf.gradient_checkpointing_disable()


def is_hf_model(module: nn.Module) -> bool:
    """True for a ``transformers`` PreTrainedModel (without importing transformers when it is not loaded)."""
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(module).__mro__)


def _find(block: nn.Module, role: str) -> str | None:
    names = [n for n, _ in block.named_modules() if n]
    for tail in ROLE_NAMES[role]:
        hit = next((n for n in names if n == tail or n.endswith("." + tail)), None)
        if hit is not None:
            return hit
    return None


def _roles(block: nn.Module, config: Any, what: str) -> BlockRoles:
    found = {r: _find(block, r) for r in ROLE_NAMES}
    missing = [r for r in ("attn", "mlp", "norm1", "norm2", "q", "k", "v", "out") if found[r] is None]
    if missing == ["mlp"] and all(hasattr(block, n) for n in ("intermediate", "output")):
        raise PefsError(f"pefs cannot describe {what} under transformers {_version()}: its {type(block).__name__} "
                        "splits the MLP into intermediate/output (the layout before transformers "
                        f"{MIN_TRANSFORMERS}); upgrade transformers to {MIN_TRANSFORMERS} or newer")
    if missing:
        raise PefsError(f"pefs cannot describe {what}: its block {type(block).__name__} has children "
                        f"{', '.join(n for n, _ in block.named_children())}; expected an attention with separate "
                        f"q/k/v linears and an mlp, named one of {', '.join(ROLE_NAMES[missing[0]])} for "
                        f"{missing[0]!r}")
    heads = int(config.num_attention_heads)
    mlp = found["mlp"]
    return BlockRoles(attn=found["attn"], mlp=mlp, norm1=found["norm1"], norm2=found["norm2"], out=found["out"],
                      q=found["q"], k=found["k"], v=found["v"], num_heads=heads,
                      head_dim=block.get_submodule(found["q"]).out_features // heads,
                      fc1=found["fc1"] if found["fc1"] and found["fc1"].startswith(mlp + ".") else None,
                      fc2=found["fc2"] if found["fc2"] and found["fc2"].startswith(mlp + ".") else None,
                      ls1=found["ls1"])


def _version() -> str:
    import transformers

    return transformers.__version__


def _block_kwargs(block: nn.Module) -> tuple[tuple[str, object], ...]:
    """``attention_mask=None`` where the block's forward takes one (ViT, CLIP); DINOv2's layers up to transformers
    5.17 take the tokens alone."""
    try:
        params = inspect.signature(block.forward).parameters
    except (TypeError, ValueError):
        return ()
    return (("attention_mask", None),) if "attention_mask" in params else ()


def _head_of(model: nn.Module) -> str | None:
    c = getattr(model, "classifier", None)
    if c is None:
        return None
    if isinstance(c, nn.Sequential):
        lin = [i for i, m in enumerate(c) if isinstance(m, (nn.Linear, nn.Identity))]
        return f"classifier.{lin[-1]}" if lin else None
    return "classifier"


def _base_name(model: nn.Module) -> str:
    if hasattr(model, "embeddings") or hasattr(model, "embedder"):
        return ""
    for n, c in model.named_children():
        if hasattr(c, "embeddings") or hasattr(c, "embedder"):
            return n
    raise PefsError(f"pefs cannot describe {type(model).__name__}: no child with embeddings")


def spec_for(model: nn.Module) -> HFSpec:
    """Read an :class:`HFSpec` off a supported ``transformers`` model, or refuse saying what is supported."""
    cls = type(model).__name__
    if cls not in SUPPORTED:
        raise PefsError(f"pefs does not describe the transformers class {cls} (model_type "
                        f"{getattr(getattr(model, 'config', None), 'model_type', '?')!r}); supported: "
                        f"{', '.join(SUPPORTED)}; or pass your own feature extractor as an nn.Module")
    config = model.config
    base_name = _base_name(model)
    base = model.get_submodule(base_name) if base_name else model
    head = _head_of(model)
    if cls in CNNS:
        return HFSpec(config.model_type, True, base_name, head, int(config.hidden_sizes[-1]))
    if cls == "CLIPVisionModel" and hasattr(model, "vision_model"):  # transformers 4.x nests the tower
        base_name, base = "vision_model", model.vision_model
    container = next((n for n in ("layers", "encoder.layer", "encoder.layers")
                      if isinstance(_maybe(base, n), nn.ModuleList)), None)
    if container is None:
        raise PefsError(f"pefs cannot describe {cls}: found no block list at layers / encoder.layer / encoder.layers "
                        f"(children: {', '.join(n for n, _ in base.named_children())})")
    emb = base.embeddings
    regs = int(getattr(config, "num_register_tokens", 0) or 0)
    prefix = 1 + int(getattr(emb, "distillation_token", None) is not None) + regs
    pool = ENCODERS[cls]
    if pool == "cls" and cls == "ViTModel" and getattr(base, "pooler", None) is not None:
        pool = "pooler"
    width = int(config.hidden_size) * (2 if pool == "cls+mean" else 1)
    size = config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    clip = hasattr(base, "pre_layrnorm")
    return HFSpec(config.model_type, False, base_name, head, width, container=container,
                  pre_norm="pre_layrnorm" if clip else None, final_norm=None if clip else "layernorm",
                  pool=pool, post_norm="post_layernorm" if clip else None, num_prefix=prefix,
                  image_size=size if config.model_type in FIXED_SIZE else None)


def _maybe(m: nn.Module, name: str) -> nn.Module | None:
    try:
        return m.get_submodule(name)
    except AttributeError:
        return None


def data_config_for(model: nn.Module, processor: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean / std / size from the model's image-processor config when there is one, else its config's
    image size with the family's usual normalisation."""
    config = model.config
    mt = config.model_type
    size = getattr(config, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    dc = dict(IMAGENET_DATA_CONFIG, input_size=(3, *size))
    if mt == "vit":
        dc.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)
    elif mt.startswith("clip"):
        dc.update(mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0)
    if processor:
        if processor.get("image_mean"):
            dc["mean"] = tuple(float(v) for v in processor["image_mean"])
        if processor.get("image_std"):
            dc["std"] = tuple(float(v) for v in processor["image_std"])
        crop = _side(processor.get("crop_size")) if processor.get("do_center_crop") else None
        resize = _side(processor.get("size"))
        side = crop or resize
        if side and mt not in FIXED_SIZE:
            dc["input_size"] = (3, int(side[0]), int(side[1]))
        # resize then centre-crop = timm's crop_pct; resize alone = the whole image
        dc["crop_pct"] = crop[0] / resize[0] if crop and resize and crop[0] < resize[0] else 1.0
        dc["interpolation"] = {2: "bilinear", 3: "bicubic"}.get(processor.get("resample"), dc["interpolation"])
    return dc


def _side(size: Any) -> tuple[int, int] | None:
    """(height, width) of an image-processor size field (an int, or height/width or shortest_edge)."""
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, dict):
        if size.get("height") and size.get("width"):
            return (int(size["height"]), int(size["width"]))
        if size.get("shortest_edge"):
            return (int(size["shortest_edge"]),) * 2
    return None


def describe_hf(model: nn.Module, name: str | None = None, pretrained: str = "user",
                processor: dict[str, Any] | None = None, img_size: int | None = None) -> Backbone:
    """Describe a ``transformers`` vision model (wrapped in :class:`HFVisionModel`) as a Backbone.
    ``img_size`` runs an encoder at another resolution, interpolating its position embeddings (as
    ``interpolate_pos_encoding=True`` does in transformers)."""
    if isinstance(model, HFVisionModel):
        net, spec = model, model.spec
    else:
        spec = spec_for(model)
        if img_size is not None and not spec.cnn and spec.image_size not in (None, (img_size, img_size)):
            spec = dataclasses.replace(spec, image_size=None, interpolate=True)
        net = HFVisionModel(model, spec)
    hf = net.hf
    cls = type(hf).__name__
    prefix = "hf." + (spec.base + "." if spec.base else "")
    if spec.cnn:
        stages = net.base().encoder.stages
        blocks = [f"{prefix}encoder.stages.{i}.layers.{j}" for i, s in enumerate(stages) for j in range(len(s.layers))]
        extra: dict[str, Any] = {}
    else:
        container = net.base().get_submodule(spec.container)
        blocks = [f"{prefix}{spec.container}.{i}" for i in range(len(container))]
        emb = net.base().embeddings
        patch = getattr(hf.config, "patch_size", 16)
        proj = next((f"{prefix}embeddings.{n}" for n, m in emb.named_modules() if isinstance(m, nn.Conv2d)), None)
        outer = tuple(n for n in (proj, *(f"{prefix}{x}" for x in (spec.pre_norm, spec.final_norm) if x)) if n)
        extra = {"roles": _roles(container[0], hf.config, cls),
                 "tokens": TokenLayout(f"{prefix}{spec.container}", spec.num_prefix,
                                       int(getattr(hf.config, "num_register_tokens", 0) or 0),
                                       (patch, patch) if isinstance(patch, int) else tuple(patch),
                                       block_kwargs=_block_kwargs(container[0])),
                 "outer_layers": outer}
        net.layout = extra["tokens"]
    family = "hf-" + spec.model_type.replace("_vision_model", "").replace("_with_registers", "")
    data_config = data_config_for(hf, processor)
    if img_size is not None:
        data_config["input_size"] = (3, int(img_size), int(img_size))
    return Backbone(model=net, name=name or cls, family=family, kind="cnn" if spec.cnn else "transformer",
                    width=spec.width, head_name=net.head_name, data_config=data_config,
                    source=pretrained, block_names=blocks, **extra)

