"""Backbones: load any timm model, an offline pretrained model, or a user's module, and describe it.

``load("vit_small_patch16_224")`` goes through timm's real hub path; ``load("efficientnet_lite0.offline")``
needs no network; ``load(my_module)`` wraps a user's ``nn.Module``; ``checkpoint=PATH`` loads local
weights. Every result is a :class:`Backbone` with the same small interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pefs.backbones.checkpoint import check_checkpoint_path, load_checkpoint, read_state_dict
from pefs.backbones.describe import Backbone, HeadedModule, describe_module, describe_timm
from pefs.backbones.offline import OFFLINE_MODELS, create_offline
from pefs.config import DEFAULT_MODEL
from pefs.errors import PefsError, unknown

__all__ = ["Backbone", "HeadedModule", "OFFLINE_MODELS", "DEFAULT_MODEL", "load", "list_models",
           "read_state_dict"]



def list_models(pattern: str = "*", offline_only: bool = False) -> list[str]:
    """Offline models first, then timm's model names matching ``pattern``."""
    import fnmatch

    import timm

    offline = [n for n in OFFLINE_MODELS if fnmatch.fnmatch(n, pattern)]
    return offline if offline_only else offline + timm.list_models(pattern)


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".", 1)[0])


def load(model: str | nn.Module, pretrained: bool = True, checkpoint: str | Path | None = None,
         **kwargs: Any) -> Backbone:
    """Load a backbone by timm name / offline name, or wrap a user's module.

    ``pretrained`` downloads weights through timm's hub path (ignored with ``checkpoint``);
    ``kwargs`` go to ``timm.create_model`` (e.g. ``img_size=``) or, for a module, to
    :func:`describe_module` (``head_name=``, ``input_size=``).
    """
    if isinstance(model, Backbone):
        return model
    if isinstance(model, nn.Module):
        bb = describe_module(model, name=kwargs.pop("name", type(model).__name__), **kwargs)
        if checkpoint is not None:
            load_checkpoint(bb.model, checkpoint, bb.head_name)
            bb.pretrained = f"checkpoint:{checkpoint}"
        return bb
    if not isinstance(model, str):
        raise PefsError(f"model must be a model name or an nn.Module, got {type(model).__name__}")
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # a folder, a missing file and a wrong suffix each say so
    if model in OFFLINE_MODELS:
        net = create_offline(model, **kwargs) if checkpoint is None else _timm_create(
            OFFLINE_MODELS[model].timm_name, False, model, **kwargs)
        source = "offline" if checkpoint is None else f"checkpoint:{checkpoint}"
    elif _is_timm_name(model):
        net = _timm_create(model, pretrained and checkpoint is None, model, **kwargs)
        source = "random" if not pretrained and checkpoint is None else ("hub" if checkpoint is None
                                                                          else f"checkpoint:{checkpoint}")
    else:
        raise unknown("model", model, list_models(),
                      extra="`pefs models` lists them; offline (no network) models: " + ", ".join(OFFLINE_MODELS))
    bb = describe_timm(net, model, source)
    if checkpoint is not None:
        load_checkpoint(net, checkpoint, bb.head_name)
    return bb


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
