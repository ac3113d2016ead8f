"""Strategy specs, the one place that reads them: ``"lora+norm"`` into its parts, options routed to the parts
that take them (``r=8`` to every part with an ``r``, ``lora.r=8`` to one), and the default learning rate.

Everything that accepts a spec (``wrap``, ``tune``, ``--search``, sweeps) asks here, so a spec means the same
thing everywhere.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

from pefs.errors import PefsError
from pefs.strategies.base import Strategy
from pefs.strategies.registry import resolve


def parts(spec: str) -> list[str]:
    """The strategy names of ``spec`` (``"lora+norm"`` -> ``["lora", "norm"]``), each a known strategy, none
    twice; a PefsError otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise PefsError(f"strategy must be a name such as 'lora' or 'lora+norm', got {spec!r}")
    names = [n.strip() for n in spec.split("+")]
    if len(set(names)) != len(names):
        raise PefsError(f"strategy {spec!r} names the same strategy twice")
    for n in names:
        resolve(n)  # an unknown name lists the valid ones
    return names


def option_hints(spec: str) -> dict[str, Any]:
    """Option name -> type hint of every option a part of ``spec`` takes (``key`` and ``part.key`` spellings)."""
    hints: dict[str, Any] = {}
    for name in parts(spec):
        for key, hint in typing.get_type_hints(resolve(name).config_class).items():
            hints.setdefault(key, hint)
            hints[f"{name}.{key}"] = hint
    return hints


def takes(spec: str, option: str) -> bool:
    """Whether a part of ``spec`` takes ``option`` (``key`` or ``part.key``)."""
    return option in option_hints(spec)


def valid_options(specs: list[str], none: str = "none (this strategy takes no options)") -> str:
    """``part: key`` of every option the parts of ``specs`` take, for an error message (``none`` when none)."""
    valid = sorted({f"{n}: {k}" for s in specs for n in parts(s) for k in resolve(n).config_class.options()})
    return ", ".join(valid) or none


def route(spec: str, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Part name -> its options: ``key=value`` goes to every part with that option, ``part.key=value`` to that
    part alone. An option no part takes is a PefsError listing the valid ones."""
    names = parts(spec)
    routed: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in options.items():
        target, _, field = key.rpartition(".")
        if target:
            if target not in routed:
                raise PefsError(f"option {key!r} names strategy {target!r}, which is not in {spec!r}")
            routed[target][field] = value
            continue
        takers = [n for n in names if key in resolve(n).config_class.options()]
        if not takers:
            raise PefsError(f"unknown option {key!r} for strategy {spec!r}; valid options: {valid_options([spec])}")
        for n in takers:
            routed[n][key] = value
    return routed


def applicable(spec: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options among ``options`` that apply to ``spec`` (``key`` some part takes, ``part.key`` naming one of
    its parts); the others are left out without an error (sweep-wide options over several strategies)."""
    names = parts(spec)
    return {k: v for k, v in options.items() if (k.split(".", 1)[0] in names if "." in k else takes(spec, k))}


def build(spec: str, **opts: Any) -> list[Strategy]:
    """The strategies of ``spec`` (``"a+b"``), each configured with the options routed to it
    (:func:`pefs.strategies.spec.route`)."""
    out = []
    for n, given in route(spec, opts).items():
        cfg = resolve(n).config_class.from_options(n, **given)
        out.append(resolve(n)(cfg) if not n.startswith("peft:") else resolve(n)(cfg, method=n.split(":", 1)[1]))
    return out


def default_lr(spec: str) -> float:
    """The learning rate ``spec`` trains at when ``--lr`` is not given: the smallest of its parts' defaults (a
    part that needs a small rate, such as full fine-tuning, would diverge at a larger one)."""
    return min(resolve(n).default_lr for n in parts(spec))


def typed_options(spec: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as their strategies' configs type them (``-o alpha=4`` gives the text "4", a recipe the number 4:
    one run, so one hash); list values as lists. Searched list values (``-o r=4,8``) stay as given."""
    try:
        strategies = build(spec, **options)
    except PefsError:
        return dict(options)  # a searched list (r=4,8) is no single value: --search types each setting
    typed = {}
    for key, value in options.items():
        target, _, name = key.rpartition(".")
        owners = [s for s in strategies if (not target or s.name == target) and hasattr(s.config, name)]
        value = getattr(owners[0].config, name) if owners else value
        typed[key] = list(value) if isinstance(value, tuple) else value
    return typed
