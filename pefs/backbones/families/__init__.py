"""Backbone families: one file each, one line each in :data:`FAMILIES`.

timm and user-module families, tried in this order (the first whose ``matches`` is true describes the model):

- ``vit`` (:mod:`.timm_vit`): timm Vision Transformers; run in pieces, q/k/v roles, token layout, token masks.
- ``convnext`` (:mod:`.timm_convnext`): timm ConvNeXt; run in pieces.
- ``resnet`` (:mod:`.timm_resnet`): timm ResNets; run in pieces.
- ``efficientnet`` (:mod:`.timm_effnet`): timm EfficientNet and MobileNet; run in pieces.
- ``cnn`` (:mod:`.timm_cnn`): any other timm model with ``stages`` or ``blocks``; described, not split.
- ``custom`` (:mod:`.custom`): a user's own module (anything else); described, not split.

``transformers`` models (``hf-vit``, ``hf-dinov2``, ``hf-clip``, ...) are described by :mod:`.hf`, whose wrapper
runs itself in pieces (``forward_stem`` / ``forward_neck``); they are not in :data:`FAMILIES`.

Adding a family = one file here (a :class:`~pefs.backbones.families.base.Family` subclass and its instance, see
that class for the contract) + one line in :data:`FAMILIES`, before any family that would also match its models.
Nothing outside ``pefs/backbones/families/`` changes: ``describe``, ``split`` and ``token_mask`` ask the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from pefs.backbones.families import custom, timm_cnn, timm_convnext, timm_effnet, timm_resnet, timm_vit
from pefs.backbones.families.base import Family, Stage

if TYPE_CHECKING:
    from pefs.backbones.describe import Backbone

__all__ = ["FAMILIES", "Family", "Stage", "family_for", "family_of"]

#: every registered family in match order; the last one (custom) matches any module
FAMILIES: tuple[Family, ...] = (
    timm_vit.FAMILY,
    timm_convnext.FAMILY,
    timm_resnet.FAMILY,
    timm_effnet.FAMILY,
    timm_cnn.FAMILY,
    custom.FAMILY,
)
_BY_NAME = {f.name: f for f in FAMILIES}
assert len(_BY_NAME) == len(FAMILIES), "two registered families share a name"


def family_for(model: nn.Module) -> Family:
    """The first registered family that matches ``model`` (custom, the last, matches anything)."""
    return next(f for f in FAMILIES if f.matches(model))


def family_of(bb: Backbone) -> Family | None:
    """The registered family a described backbone belongs to (by ``bb.family``), or None (``transformers``
    models, which describe and split themselves)."""
    return _BY_NAME.get(bb.family)
