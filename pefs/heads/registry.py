"""Head name -> where its class lives: the one list of ``--head`` names (stdlib only, so configs, searches and
the CLI can check a name without importing torch; the class loads when a run builds it)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pefs.errors import unknown

if TYPE_CHECKING:
    from pefs.heads.base import Head

#: ``--head`` name -> "module:class"; adding a head is one module plus one line here
HEADS: dict[str, str] = {
    "linear": "pefs.heads.linear:LinearHead",
    "linear-proto": "pefs.heads.linear:LinearProtoHead",
    "prototype": "pefs.heads.prototype:PrototypeHead",
    "patch-match": "pefs.heads.patch_match:PatchMatchHead",
    "logistic": "pefs.heads.logistic:LogisticHead",
    "matching": "pefs.heads.matching:MatchingHead",
    "dn4": "pefs.heads.dn4:DN4Head",
    "bd-cspn": "pefs.heads.bd_cspn:BDCSPNHead",
    "tim": "pefs.heads.tim:TIMHead",
}


def check(name: str) -> None:
    """A PefsError naming ``name`` and the valid heads unless ``name`` is one."""
    if name not in HEADS:
        raise unknown("head", name, list(HEADS))


def head_class(name: str) -> type[Head]:
    """The class of head ``name``."""
    check(name)
    module, _, cls = HEADS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build(name: str) -> Head:
    """A new head called ``name``; an unknown name is a PefsError listing the valid ones."""
    return head_class(name)()
