"""Run a backbone in pieces, so a frozen prefix runs once and only the trainable suffix runs every step.

A backbone is a list of stages: ``stem``, one stage per block (``Backbone.block_names`` order), ``neck``
(what follows the last block up to the feature map: the final norm, EfficientNet's head conv), ``pool``
(pooled pre-logit features) and ``head``. *Level* ``L`` is the activation after the first ``L`` stages:
0 is the image, :attr:`Stages.tokens` the feature map / token sequence, :attr:`Stages.pooled` the pooled
features and :attr:`Stages.logits` the output. ``run(h, a, b)`` maps level ``a`` to level ``b``.

Families that can run a model in pieces (``Family.splits``; see :mod:`pefs.backbones.families`) and
``transformers`` encoders (whose wrapper exposes ``forward_stem`` / ``forward_neck``) get one stage per block;
any other model gets only ``[features, head]``, enough to cache pooled features for a linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pefs.backbones.describe import Backbone
from pefs.backbones.families import Stage, family_of
from pefs.backbones.layout import enter_block
from pefs.errors import PefsError


@dataclass
class Stages:
    """The ordered stages of one backbone and the levels that matter between them."""

    fns: list[Stage]
    n_blocks: int  # 0 when the family has no known layout (only features -> head)

    @property
    def logits(self) -> int:
        return len(self.fns)

    @property
    def pooled(self) -> int:
        return len(self.fns) - 1

    @property
    def tokens(self) -> int | None:
        """Level of the unpooled feature map / tokens (None when the layout is unknown)."""
        return len(self.fns) - 2 if self.n_blocks else None

    def block(self, i: int) -> int:
        """Level of the input of block ``i`` (``i == n_blocks``: the output of the last block)."""
        if not self.n_blocks:
            raise PefsError("this backbone's layout is unknown to pefs, so it cannot be cut between blocks")
        if not 0 <= i <= self.n_blocks:
            raise PefsError(f"block index must lie in 0..{self.n_blocks}, got {i}")
        return 1 + i

    def run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Map the activation at level ``start`` to level ``stop``."""
        if not 0 <= start <= stop <= self.logits:
            raise PefsError(f"cannot run from level {start} to level {stop}; levels lie in 0..{self.logits}")
        for fn in self.fns[start:stop]:
            h = fn(h)
        return h


def _stem_and_neck(bb: Backbone) -> tuple[Stage, Stage]:
    if _staged(bb):
        return bb.model.forward_stem, bb.model.forward_neck
    return family_of(bb).stem_and_neck(bb.model)


def _block_stages(bb: Backbone) -> list[Stage]:
    """One callable per block, as the family lays them out (or, for a model that runs itself in pieces, each
    block entered the way its model does)."""
    if _staged(bb):
        return [lambda h, b=block: enter_block(b, h, bb.tokens) for block in bb.blocks]
    return family_of(bb).block_stages(bb.model, bb.block_names, bb.blocks)


def _staged(bb: Backbone) -> bool:
    """A model that runs stem -> its token encoder's blocks -> neck itself and says so (``transformers`` encoders)."""
    return bb.tokens is not None and callable(getattr(bb.model, "forward_stem", None)) and callable(
        getattr(bb.model, "forward_neck", None))


def supports_blocks(bb: Backbone) -> bool:
    """True when pefs knows how to run this backbone block by block."""
    family = family_of(bb)
    known = (family is not None and family.splits(bb.model)) or _staged(bb)
    return known and bool(bb.block_names)


def stages(bb: Backbone) -> Stages:
    """The stages of ``bb`` (see the module docstring)."""
    head = bb.head
    if not supports_blocks(bb):
        return Stages([bb.features, head], n_blocks=0)
    stem, neck = _stem_and_neck(bb)
    m = bb.model
    pool: Stage = lambda t: m.forward_head(t, pre_logits=True)  # noqa: E731
    blocks = _block_stages(bb)
    return Stages([stem, *blocks, neck, pool, head], n_blocks=len(blocks))


def patch_tokens(bb: Backbone, t: torch.Tensor) -> torch.Tensor:
    """Per-position features (B, P, D) from the unpooled output: ViT patch tokens (class/register tokens
    dropped) or, for CNNs, one token per feature-map position."""
    if bb.tokens is not None:
        return t[:, bb.tokens.num_prefix:]
    family = family_of(bb)
    prefix = family.num_prefix_tokens(bb.model) if family is not None else None
    if prefix is not None:
        return t[:, prefix:]
    if t.ndim == 4:
        return t.flatten(2).transpose(1, 2)
    raise PefsError(f"cannot read patch tokens from {bb.name}: its feature output has shape {tuple(t.shape)}; "
                    "expected (B, tokens, D) from a ViT or a (B, C, H, W) feature map")
