"""The contract every backbone family fulfils: :class:`Family`.

A family knows one kind of model from the outside: how to recognise it, where its residual blocks are, and
(when it can) how to run it in pieces. Everything else in pefs asks the family registry
(:mod:`pefs.backbones.families`) instead of testing class names or attributes itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pefs.errors import PefsError

#: one piece of a backbone run in pieces: the activation at one level -> the activation at the next
Stage = Callable[[torch.Tensor], torch.Tensor]


def seq(*mods: nn.Module) -> Stage:
    """A stage that runs ``mods`` one after the other."""
    def run(x: torch.Tensor) -> torch.Tensor:
        for m in mods:
            x = m(x)
        return x
    return run


def children_names(prefix: str, container: nn.Module) -> list[str]:
    """Dotted names of the direct children of ``container``, which sits at ``prefix``."""
    return [f"{prefix}.{n}" for n, _ in container.named_children()]


def is_block_list(obj: Any) -> bool:
    """True for an ``nn.Sequential`` or ``nn.ModuleList`` (a container of blocks run in order)."""
    return isinstance(obj, (nn.Sequential, nn.ModuleList))


class Family:
    """One backbone family. Subclass it in one file under ``pefs/backbones/families/`` and register one instance.

    The contract (``model`` is the ``nn.Module`` being described; names are dotted, relative to it):

    - :attr:`name` — the family name stored in ``Backbone.family`` (and in records and saved model
      directories: never rename one).
    - :meth:`matches` — whether this family describes ``model``. Families are tried in registry order and
      the first match wins, so a family may rely on the earlier ones having declined.
    - :meth:`block_names` — the model's residual blocks, in forward order.
    - :meth:`kind` — ``"transformer"``, ``"cnn"`` or ``"other"`` (what strategies dispatch on).
    - :meth:`describe_extra` — extra :class:`~pefs.backbones.Backbone` fields for a timm model of this
      family: ``roles`` (:class:`~pefs.backbones.layout.BlockRoles`), ``tokens``
      (:class:`~pefs.backbones.layout.TokenLayout`), ``outer_layers``.
    - :meth:`splits` — whether ``stem -> blocks -> neck`` reproduces the model's own ``forward_features``
      (by default: its class is one of :attr:`split_classes`). Only then are the next two asked:
    - :meth:`stem_and_neck` — the stage before the first block (image -> tokens / feature map) and the one
      after the last block (up to the unpooled features).
    - :meth:`block_stages` — one stage per block (default: the blocks themselves); a stage may carry work
      that sits between blocks, e.g. a downsample at the start of a stage.
    - :meth:`num_prefix_tokens` — for token encoders, the tokens before the patch tokens in the unpooled
      features (None: the features are a (B, C, H, W) map or unknown).
    - :meth:`token_masks` — whether MAE-style token masking can run on ``model``; then :meth:`patch_grid`
      and :meth:`masked_tokens` do it.
    - :meth:`token_drop_site` — the module whose output is the token sequence the blocks take (prefix + patch
      tokens, position embeddings added), where masked views drop patch tokens inside the model's own forward
      (None: not known).
    """

    name: str = ""
    #: class names (``type(model).__name__``) whose forward_features is exactly stem -> blocks -> neck
    split_classes: tuple[str, ...] = ()

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def block_names(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def kind(self, model: nn.Module) -> str:
        """By default: ``cnn`` if the model has a 2-d convolution, else ``transformer`` if it has multi-head
        attention, else ``other``."""
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return "cnn"
        if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            return "transformer"
        return "other"

    def describe_extra(self, model: nn.Module, block_names: list[str]) -> dict[str, Any]:
        return {}

    def splits(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.split_classes

    def stem_and_neck(self, model: nn.Module) -> tuple[Stage, Stage]:
        raise PefsError(f"the {self.name} family cannot run a model in pieces")

    def block_stages(self, model: nn.Module, names: list[str], blocks: list[nn.Module]) -> list[Stage]:
        return list(blocks)

    def num_prefix_tokens(self, model: nn.Module) -> int | None:
        return None

    def token_masks(self, model: nn.Module) -> bool:
        return False

    def patch_grid(self, model: nn.Module) -> tuple[int, int]:
        raise PefsError(f"the {self.name} family has no patch grid")

    def masked_tokens(self, model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        raise PefsError(f"the {self.name} family cannot mask tokens")

    def token_drop_site(self, model: nn.Module) -> nn.Module | None:
        return None

    def __repr__(self) -> str:
        return f"<family {self.name}>"
