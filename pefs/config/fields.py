"""``setting()``: a config field with its documentation, and what reads those fields (stdlib only).

A field's default, type, help text, CLI spellings and hash behaviour are written once, in its ``setting()``;
the CLI generates its flags from them, recipes check their keys against them, searches cast values by their
types (:func:`cast`) and :func:`result_fields` decides what identifies a run's numbers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

from pefs.errors import PefsError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] = (),
            neutral: bool = False, added_later: bool = False, cli: bool = True, metavar: str | None = None,
            choices_from: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its documentation. ``neutral``: does not change a run's numbers (kept out of the
    hash, so a sweep resumes across it). ``added_later``: the field was added after results existed; it is
    left out of the hash while it holds its default (which must reproduce the behaviour from before it
    existed), so adding one changes no existing hash. ``flags``: the CLI spellings (default
    ``--field-name``); ``cli=False`` keeps a field off the command line. ``choices_from``: "module:NAME" of a
    registry (a dict or sequence of names) that lists the valid values, for settings whose choices live with their
    implementations (heads); read only when asked (:func:`choices`), so a config imports no registry."""
    meta = {"help": help, "flags": flags, "neutral": neutral, "added_later": added_later, "cli": cli,
            "metavar": metavar, "choices_from": choices_from}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_choice(cfg: Any, name: str) -> None:
    """A field with choices (a Literal, or ``choices_from`` a registry) holds one of them, or a PefsError listing
    them."""
    valid = choices(type(cfg), name) or ()
    if getattr(cfg, name) not in valid:
        raise PefsError(f"{name} must be one of {', '.join(valid)}; got {getattr(cfg, name)!r}")


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The valid values of field ``name`` of config class ``cls``: a Literal's arguments, the names of the registry
    its ``choices_from`` names, or None when any value of its type will do."""
    import importlib

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    where = f.metadata.get("choices_from")
    if where:
        module, _, attr = where.partition(":")
        return tuple(getattr(importlib.import_module(module), attr))
    hint = field_types(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # an optional choice: its Literal's values
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass."""
    return typing.get_type_hints(cls)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a config dataclass."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def result_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a config (nested configs included) that change its numbers, as JSON-able values:
    neutral fields are dropped, and so are later-added fields that still hold their default."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        meta, value = f.metadata, getattr(cfg, f.name)
        if meta.get("neutral"):
            continue
        if dataclasses.is_dataclass(value) and any("neutral" in g.metadata for g in dataclasses.fields(value)):
            # a nested config (its fields are settings)
            out[f.name] = result_fields(value)
            continue
        if not isinstance(value, (str, int, float, bool, list, tuple, dict, type(None))):
            # an object given in Python (a Dataset for ``data``): its name; its content is in the run's key
            value = f"<{type(value).__name__} {getattr(value, 'name', '')}>"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if meta.get("added_later") and value == default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def value_types(hint: Any) -> tuple[type, ...]:
    """The Python types a recipe value of a field with type ``hint`` may have."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return (str,)
    if hint is float:
        return (int, float)
    return (typing.get_origin(hint) or hint,)


def setting_types(cls: type, skip: tuple[str, ...]) -> dict[str, tuple[type, ...]]:
    """Field name -> the Python types a recipe value may have, for the CLI-visible fields of ``cls`` not in
    ``skip``."""
    hints = field_types(cls)
    return {f.name: value_types(hints[f.name]) for f in dataclasses.fields(cls)
            if f.name not in skip and f.metadata.get("cli", True)}
