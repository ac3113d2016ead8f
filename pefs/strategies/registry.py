"""Name -> strategy class, and parsing of composed specs such as ``"lora+norm"``."""

from __future__ import annotations

from typing import Any

from pefs.errors import PefsError, unknown
from pefs.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def list_strategies() -> dict[str, type[Strategy]]:
    return dict(sorted(STRATEGIES.items()))


def build(spec: str, **opts: Any) -> list[Strategy]:
    """Parse ``"a+b"`` and route options: ``key=value`` goes to every named strategy with that option,
    ``name.key=value`` to that one alone. An option no strategy takes is an error listing the valid ones."""
    if not isinstance(spec, str) or not spec.strip():
        raise PefsError(f"strategy must be a name such as 'lora' or 'lora+norm', got {spec!r}")
    names = [n.strip() for n in spec.split("+")]
    if len(set(names)) != len(names):
        raise PefsError(f"strategy {spec!r} names the same strategy twice")
    classes = []
    for n in names:
        cls = resolve(n)
        classes.append((n, cls))
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in opts.items():
        target, _, field = key.rpartition(".")
        if target:
            if target not in routed:
                raise PefsError(f"option {key!r} names strategy {target!r}, which is not in {spec!r}")
            routed[target][field] = value
            continue
        takers = [n for n, cls in classes if key in cls.config_class.options()]
        if not takers:
            valid = sorted({f"{n}: {k}" for n, cls in classes for k in cls.config_class.options()})
            raise PefsError(f"unknown option {key!r} for strategy {spec!r}; valid options: "
                            + (", ".join(valid) or "none (this strategy takes no options)"))
        for n in takers:
            routed[n][key] = value
    out = []
    for n, cls in classes:
        cfg = cls.config_class.from_options(n, **routed[n])
        out.append(cls(cfg) if not n.startswith("peft:") else cls(cfg, method=n.split(":", 1)[1]))
    return out


def default_lr(spec: str) -> float:
    """The learning rate ``spec`` trains at when ``--lr`` is not given: the smallest of its parts' defaults (a
    part that needs a small rate, such as full fine-tuning, would diverge at a larger one)."""
    return min(resolve(n.strip()).default_lr for n in spec.split("+"))


def resolve(name: str) -> type[Strategy]:
    if name.startswith("peft:") and "peft" in STRATEGIES:
        return STRATEGIES["peft"]
    if name not in STRATEGIES:
        raise unknown("strategy", name, list(STRATEGIES), extra="compose with '+', e.g. 'lora+norm'")
    return STRATEGIES[name]
