"""Sweep recipes: a YAML file of sweep settings (the same names as ``pefs sweep``'s flags), checked key by key.

A recipe is a flat mapping; ``strategies`` entries may be a name or a mapping with the strategy's own
``options`` and training settings (``{name: lora, epochs: 10, options: {r: 4}}``), which win over the
recipe's global ones for that strategy.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pefs.config import RUN_KEYS, TRAIN_KEYS
from pefs.errors import PefsError

#: grid axes (each a list; "1,2,4" and "0-2" strings are accepted too)
GRID_KEYS = ("models", "strategies", "shots", "seeds")
OTHER_KEYS = ("description", "options", "store", "output")
RECIPE_KEYS = (*GRID_KEYS, *RUN_KEYS, *TRAIN_KEYS, *OTHER_KEYS)
STRATEGY_ENTRY_KEYS = ("name", "options", *TRAIN_KEYS)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and check a recipe: malformed YAML names the file and line; an unknown key lists the valid ones."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PefsError(f"cannot read recipe {str(path)!r}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PefsError(f"recipe {str(path)!r} is not valid YAML at{where or ' an unknown place'}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PefsError(f"recipe {str(path)!r} must be a mapping of settings (key: value), got "
                        f"{type(data).__name__}; valid keys: {', '.join(RECIPE_KEYS)}")
    check_settings(data, f"recipe {str(path)!r}")
    return data


def check_settings(settings: dict[str, Any], where: str) -> None:
    """Every key known and every scalar of the right type; errors name ``where`` the setting came from."""
    for key, value in settings.items():
        if key not in RECIPE_KEYS:
            close = difflib.get_close_matches(str(key), RECIPE_KEYS, n=1)
            raise PefsError(f"unknown key {key!r} in {where}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                            f"valid keys: {', '.join(RECIPE_KEYS)}")
        types = RUN_KEYS.get(key) or TRAIN_KEYS.get(key)
        if types and value is not None:
            check_type(key, value, types, where)
    if not isinstance(settings.get("options") or {}, dict):
        raise PefsError(f"options in {where} must be a mapping such as {{r: 8}}, got {settings['options']!r}")
    for key in ("description", "store", "output"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise PefsError(f"{key} in {where} must be a string, got {settings[key]!r}")


def check_type(key: str, value: Any, types: tuple[type, ...], where: str) -> None:
    if object in types:
        return
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise PefsError(f"{key} in {where} must be {names}, got {value!r}")


def as_list(key: str, value: Any, item: type, where: str) -> list:
    """A grid axis as a list: a list, one value, or a comma string ("1,2,4"); integers also as "0-4"."""
    if isinstance(value, str):
        text = value.strip()
        if item is int and "-" in text.strip("-") and "," not in text:
            lo, _, hi = text.partition("-")
            value = list(range(_int(key, lo, where), _int(key, hi, where) + 1))
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out = [_int(key, v, where) if item is int else v for v in value]
    if not out:
        raise PefsError(f"{key} in {where} is empty; give at least one value")
    seen = [v for i, v in enumerate(out) if v in out[:i] and not isinstance(v, dict)]
    if seen:
        raise PefsError(f"{key} in {where} lists {seen[0]!r} twice")
    return out


def _int(key: str, value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PefsError(f"{key} in {where} must be whole numbers, got {value!r}")
    try:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise PefsError(f"{key} in {where} must be whole numbers (e.g. 1,2,4 or 0-2), got {value!r}") from None


def strategy_entry(entry: Any, where: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(spec, options, training overrides) of one ``strategies`` entry: a name or a mapping with ``name``."""
    if isinstance(entry, str):
        return entry.strip(), {}, {}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise PefsError(f"each strategies entry in {where} must be a name or a mapping with a name "
                        f"({{name: lora, epochs: 10, options: {{r: 4}}}}), got {entry!r}")
    for key in entry:
        if key not in STRATEGY_ENTRY_KEYS:
            raise PefsError(f"unknown key {key!r} in strategy {entry['name']!r} of {where}; valid keys: "
                            + ", ".join(STRATEGY_ENTRY_KEYS))
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise PefsError(f"options of strategy {entry['name']!r} in {where} must be a mapping, got {options!r}")
    train = {k: v for k, v in entry.items() if k in TRAIN_KEYS}
    for k, v in train.items():
        check_type(k, v, TRAIN_KEYS[k], f"strategy {entry['name']!r} of {where}")
    return entry["name"].strip(), dict(options), train
