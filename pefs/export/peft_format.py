"""Adapters in ``peft``'s own format, so the peft ecosystem can load what pefs trained (and the reverse).

``save_peft_adapter(model, dir)`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` such that
``peft.PeftModel.from_pretrained(base_model, dir)`` on the untouched base model gives the same logits: the
LoRA (or other peft tuner) weights under peft's names, and the classifier saved the way peft's
``modules_to_save`` expects. The config names the base model (``base_model_name_or_path``) and its hub
revision where pefs knows them. ``load_peft_adapter(dir, base_model)`` reads such a LoRA directory back
into a :class:`~pefs.model.wrap.PefsModel`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pefs.backbones.families.hf import HFVisionModel
from pefs.backbones.layout import replace_module
from pefs.config.files import atomic_dir, write_text
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def _base_and_prefix(model: PefsModel) -> tuple[nn.Module, str]:
    """The module peft sees as the base model, and the prefix of its names inside pefs' model."""
    net = model.backbone.model
    return (net.hf, "hf.") if isinstance(net, HFVisionModel) else (net, "")


def _without_tuners(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every peft tuner layer replaced by the layer it wraps (its base, unmerged)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    clean = copy.deepcopy(module)
    for name, m in list(clean.named_modules()):
        if isinstance(m, BaseTunerLayer):
            replace_module(clean, name, m.get_base_layer())
    for p in clean.parameters():
        p.requires_grad_(False)
    return clean


def save_peft_adapter(model: PefsModel, directory: str | Path) -> Path:
    """Write ``model``'s peft tuner and classifier as a peft adapter directory (see the module docstring)."""
    import peft

    tuners = [s for s in model.strategies if getattr(s, "peft_config", None) is not None]
    others = [s.name for s in model.strategies if s not in tuners and s.name != "linear"]
    if len(tuners) != 1 or others:
        raise PefsError(f"a peft adapter holds one peft tuner (lora or peft:<method>) and the classifier; "
                        f"{model.spec!r} has {', '.join(others) or 'none'} besides, which peft cannot load: save it "
                        "with PefsModel.save instead")
    if model.merged:
        raise PefsError("this model's adapter was merged into the weights; save the peft adapter before merge()")
    base, prefix = _base_and_prefix(model)
    head = model.backbone.head_name
    if not head.startswith(prefix):
        raise PefsError(f"the classifier of {model.backbone.name} is pefs' own ({head}), outside the "
                        f"{type(base).__name__} that peft would load onto; build the model from a "
                        "*ForImageClassification class so peft keeps the classifier in modules_to_save")
    tuner = tuners[0]
    cfg = copy.deepcopy(tuner.peft_config)
    cfg.target_modules = sorted(n[len(prefix):] for n in tuner.target_names)
    if getattr(cfg, "rank_pattern", None):  # AdaLoRA's kept ranks per layer, named as the layers are
        cfg.rank_pattern = {k.removeprefix(prefix): v for k, v in cfg.rank_pattern.items()}
    cfg.modules_to_save = [head[len(prefix):]]
    cfg.base_model_name_or_path = model.backbone.name.removeprefix("hf:")
    cfg.revision = model.backbone.revision
    cfg.inference_mode = True
    peft_model = peft.get_peft_model(_without_tuners(base), cfg)
    ours = dict(model.net.named_parameters())
    copied = set()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            key = name.removeprefix(PEFT_PREFIX)
            if ".original_module." in key:
                continue
            key = prefix + key.replace(f".modules_to_save.{ADAPTER}.", ".")
            if key in ours and ours[key].requires_grad:
                if ours[key].shape != p.shape:
                    raise PefsError(f"peft's {name} {tuple(p.shape)} does not fit {key} {tuple(ours[key].shape)}")
                p.copy_(ours[key])
                copied.add(key)
    missing = [n for n, p in ours.items() if p.requires_grad and n not in copied]
    if missing:
        raise PefsError(f"{len(missing)} trained tensors have no place in peft's format (e.g. {missing[0]})")
    d = Path(directory)
    if d.is_dir() and any(d.iterdir()) and not (d / "adapter_config.json").is_file():
        raise PefsError(f"{str(d)!r} holds files that are not a peft adapter; the export replaces the folder whole: "
                        "choose a new or empty folder (--out)")
    with atomic_dir(d, "peft adapter") as new:  # the previous adapter stays until the new one is whole
        peft_model.save_pretrained(str(new))
        written = json.loads((new / "adapter_config.json").read_text())
        written["base_model_name_or_path"] = written.get("base_model_name_or_path") or cfg.base_model_name_or_path
        written["revision"] = written.get("revision") or cfg.revision
        write_text(new / "adapter_config.json", json.dumps(written, indent=2, sort_keys=True), "peft adapter config")
    return d


def load_peft_adapter(directory: str | Path, base_model: nn.Module) -> PefsModel:
    """A peft LoRA adapter directory (e.g. from :func:`save_peft_adapter` or peft's own training) as a
    :class:`PefsModel` on ``base_model`` (a transformers model; it is described and wrapped, not copied)."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "adapter_config.json").is_file():
        raise PefsError(f"{str(d)!r} holds no peft adapter (adapter_config.json missing)")
    cfg: dict[str, Any] = json.loads((d / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise PefsError(f"{str(d)!r} holds a {cfg.get('peft_type')} adapter; pefs reads LoRA adapters back "
                        "(other tuners: peft.PeftModel.from_pretrained)")
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    files = [d / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise PefsError(f"{str(d)!r} has no adapter_model.safetensors")
    tensors = load_file(str(files[0]))
    heads = cfg.get("modules_to_save") or []
    head_w = next((v for k, v in tensors.items() if heads and k.endswith(f"{heads[0]}.weight")), None)
    if head_w is None:
        raise PefsError(f"{str(d)!r} saves no classifier (modules_to_save); pefs needs the trained head")
    model = wrap(base_model, "lora", num_classes=int(head_w.shape[0]), r=int(cfg["r"]),
                 alpha=int(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout") or 0.0), targets=targets)
    _, prefix = _base_and_prefix(model)
    own = model.net.state_dict()
    state = {}
    for k, v in tensors.items():
        key = prefix + k.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            key = key.replace(f".{part}.weight", f".{part}.{ADAPTER}.weight")
        if key not in own or own[key].shape != v.shape:
            raise PefsError(f"adapter tensor {k} does not fit {model.backbone.name} "
                            f"(no {key} of shape {tuple(v.shape)})")
        state[key] = v
    model.net.load_state_dict(state, strict=False)
    return model
