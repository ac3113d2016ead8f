"""Name -> strategy class: ``@register`` adds one, :func:`resolve` finds one (specs: :mod:`pefs.strategies.spec`)."""

from __future__ import annotations

from pefs.errors import unknown
from pefs.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def list_strategies() -> dict[str, type[Strategy]]:
    return dict(sorted(STRATEGIES.items()))


def resolve(name: str) -> type[Strategy]:
    if name.startswith("peft:") and "peft" in STRATEGIES:
        return STRATEGIES["peft"]
    if name not in STRATEGIES:
        raise unknown("strategy", name, list(STRATEGIES), extra="compose with '+', e.g. 'lora+norm'")
    return STRATEGIES[name]
