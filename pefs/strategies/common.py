"""What strategies share: one list of norm-layer types, one target matcher, module replacement and wrapping,
block selection, and shape probing. Strategy modules import from here, never from each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import TokenLayout, enter_block
from pefs.errors import PefsError

#: side of the dummy image used to learn a CNN's block shapes (small = cheap; falls back to the model's size)
PROBE_SIDE = 64


def _rms_types() -> tuple[type, ...]:
    import timm.layers as tl

    timm_rms = tuple(getattr(tl, n) for n in ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d") if hasattr(tl, n))
    return ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()) + timm_rms


#: norm kind -> module types (subclasses count: timm's LayerNorm2d, BatchNormAct2d, GroupNorm1, ...)
NORM_TYPES: dict[str, tuple[type, ...] | None] = {
    "layer": (nn.LayerNorm,),
    "batch": (nn.modules.batchnorm._BatchNorm,),
    "group": (nn.GroupNorm,),
    "instance": (nn.modules.instancenorm._InstanceNorm,),
    "rms": None,  # resolved lazily (needs timm)
}


def norm_types(kinds: tuple[str, ...] = ()) -> tuple[type, ...]:
    """The module types of the given norm kinds (all kinds when empty)."""
    out: tuple[type, ...] = ()
    for k in kinds or tuple(NORM_TYPES):
        out += NORM_TYPES[k] if NORM_TYPES[k] is not None else _rms_types()
    return out


def target_matches(name: str, pattern: str) -> bool:
    """Whether module ``name`` matches one target ``pattern``, as peft's ``check_target_module_exists`` does:
    ``re:<regex>`` must match the whole name; otherwise the name itself or a dotted suffix of it
    (``qkv`` matches ``blocks.0.attn.qkv``, ``attn.qkv`` too)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def match_targets(names: Iterable[str], targets: Iterable[str]) -> list[str]:
    """The ``names`` that match any target (see :func:`target_matches`) and no exclusion (a target written
    ``!pattern``), in their original order."""
    targets = list(targets)
    include = [t for t in targets if not t.startswith("!")]
    exclude = [t[1:] for t in targets if t.startswith("!")]
    return [n for n in names if (not include or any(target_matches(n, t) for t in include))
            and not any(target_matches(n, t) for t in exclude)]


def default_targets(bb: Backbone, suffixes: tuple[str, ...] = (), what: str = "LoRA") -> list[str]:
    """Full module names LoRA (or ``what``, another adapter) should adapt on this backbone."""
    modules = dict(bb.model.named_modules())
    in_blocks = [n for b in bb.block_names for n, _ in modules[b].named_modules(prefix=b)]
    adaptable = [n for n in in_blocks if isinstance(modules[n], nn.Linear)
                 or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)]
    if suffixes:
        chosen = match_targets(adaptable, suffixes)
        if not chosen:
            names = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
            raise PefsError(f"{what} targets {', '.join(suffixes)} match no Linear/Conv2d in the blocks of {bb.name}; "
                            f"module names there: {', '.join(names[:20])}")
        return chosen
    if bb.lora_targets:
        wanted = {f"{b}.{t}" for b in bb.block_names for t in bb.lora_targets}
        # a layer inside another strategy's wrapper sits under ``.base_layer``; it keeps its role
        chosen = [n for n in adaptable if n.replace(".base_layer", "") in wanted]
        if chosen:
            return chosen
    if bb.layer_names is not None:
        chosen = [n for n in adaptable if n.endswith("." + bb.layer_names.qkv)]
        if chosen:
            return chosen
    if not adaptable:
        raise PefsError(f"{what} found no Linear or non-grouped Conv2d inside the blocks of {bb.name}; "
                        "pass targets= naming the layers to adapt")
    return adaptable


class Wrapped(nn.Module):
    """A backbone layer wrapped peft-style as ``base_layer``; attributes the wrapper lacks are read from it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base_layer")
            if base is None or name == "base_layer":
                raise
            return getattr(base, name)


def select_blocks(bb: Backbone, indices: tuple[int, ...], strategy: str, option: str = "blocks") -> list[int]:
    """Resolve block indices (negative counts from the end; empty = all) to sorted positions."""
    n = len(bb.block_names)
    if n == 0:
        raise PefsError(f"strategy {strategy!r} needs the blocks of {bb.name}, and pefs found none")
    if not indices:
        return list(range(n))
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise PefsError(f"option {option}={','.join(map(str, indices))} of strategy {strategy!r} names block "
                        f"{bad[0]}, but {bb.name} has {n} blocks; valid indices: 0..{n - 1} (or -{n}..-1)")
    return sorted({i % n for i in indices})


def reference_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of ``model``'s first parameter (CPU float32 without any): where new modules go."""
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def probe_shapes(bb: Backbone, names: list[str]) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shapes of the named modules on one dummy image (small first, then full size)."""
    modules = dict(bb.model.named_modules())
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}

    def record(name: str, module: nn.Module, args: tuple, out: Any) -> None:
        if name not in shapes and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            shapes[name] = (args[0].shape, out.shape)

    c, h, w = bb.input_size
    device, dtype = reference_device_dtype(bb.model)
    hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: record(n, m, a, o)) for n in names]
    was_training = bb.model.training
    bb.model.eval()
    try:
        for side in ((min(h, PROBE_SIDE), min(w, PROBE_SIDE)), (h, w)):
            try:
                bb.model(torch.zeros(1, c, *side, device=device, dtype=dtype))
                break
            except RuntimeError:
                shapes.clear()
        else:
            raise PefsError(f"could not run {bb.name} on a dummy {c}x{h}x{w} image to learn its block shapes")
    finally:
        for hk in hooks:
            hk.remove()
        bb.model.train(was_training)
    return shapes


class RerunBlocks(nn.Module):
    """Holds a ViT's blocks (timm's Sequential or a transformers ModuleList) under their own names ("0", "1",
    ...), so their parameter names do not change, and runs them itself."""

    def __init__(self, blocks: nn.Module, layout: TokenLayout | None = None) -> None:
        super().__init__()
        self.layout = layout  # how each block is entered
        for name, block in blocks.named_children():
            self.add_module(name, block)
        self.num_blocks = len(blocks)

    def block_list(self) -> list[nn.Module]:
        return [self._modules[str(i)] for i in range(self.num_blocks)]

    #: timm's own checkpointing (``checkpoint_seq``) needs a Sequential: the strategies that install these blocks
    #: name them as their ``checkpointing_target``, so the engine turns it on here instead
    use_checkpoint = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.use_checkpoint = enable

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``; under gradient checkpointing only ``x`` is kept and the block reruns in backward."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(enter_block, block, x, self.layout, use_reentrant=False)
        return enter_block(block, x, self.layout)


def vit_blocks(bb: Backbone, strategy: str, alternative: str) -> nn.Module:
    """The container of a ViT's blocks (from the backbone's token layout), or a PefsError saying what to use
    instead."""
    if bb.kind != "transformer":
        raise PefsError(f"{strategy} needs a transformer backbone; {bb.name} is a {bb.kind} backbone: use "
                        f"{alternative} instead")
    blocks = bb.block_container()
    if isinstance(blocks, RerunBlocks):
        raise PefsError(f"{strategy} cannot be combined with another strategy that also reruns the ViT's blocks "
                        "(vpt token modes, self-prompt); use one of them")
    if blocks is None or not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise PefsError(f"{strategy} needs a ViT whose token layout pefs knows (timm VisionTransformer, or a "
                        f"transformers ViT/DeiT/DINOv2/CLIP encoder); {bb.name} ({type(bb.model).__name__}) has "
                        f"none: use {alternative}")
    return blocks
