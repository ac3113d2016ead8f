"""What a results-store row must hold before anything reads it (stdlib only): every key's type and range.

A row written by pefs always passes; a hand-edited or foreign one (a null, string or NaN accuracy, 150%, string
shots, a null seed, a missing key) is named by :func:`row_problem` as ``<key> <problem>``, and
:mod:`pefs.results.store` turns that into one line with the file and line number, before a report pools a
number or a sweep trusts a stored cell. Accuracies are stored as fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

_REQUIRED = object()


def _kind(value: Any) -> str:
    """``null``, or the type and value: ``str '5'``."""
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _number(value: Any, low: float | None = None, high: float | None = None) -> str | None:
    """Why ``value`` is not a finite number in [low, high] (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"is {_kind(value)}, not a number"
    if not math.isfinite(value):
        return f"is {value!r}, not a finite number"
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            return f"is {value!r}, below {low:g}"
        hint = " (accuracies are stored as fractions)" if high == 1.0 else ""
        return f"is {value!r} ({100 * value:g}%), outside [{low:g}, {high:g}]{hint}"
    return None


def _integer(value: Any, low: int | None = None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"is {_kind(value)}, not an integer"
    if low is not None and value < low:
        return f"is {value}, below {low}"
    return None


def _of(kind: type | tuple[type, ...], name: str, optional: bool = True):
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        return None if isinstance(value, kind) else f"is {_kind(value)}, not {name}"
    return check


def _fraction(value: Any) -> str | None:
    return None if value is None else _number(value, 0.0, 1.0)


#: cell key -> (check, required)
CELL = {
    "model": (_of(str, "a model name", False), True),
    "strategy": (_of(str, "a strategy spec", False), True),
    "shots": (lambda v: _integer(v, 0), True),
    "seed": (lambda v: _integer(v, 0), False),
    "options": (_of(dict, "a mapping"), False),
    "ways": (lambda v: None if v is None else _integer(v, 2), False),
    "config_hash": (_of(str, "a hash"), False),
    "fingerprints": (_of(dict, "a mapping"), False),
    "config": (_of(dict, "a mapping"), False),
}
#: record key -> check (all optional: records of older pefs lack some)
RECORD = {
    "accuracy_mean": _fraction,
    "accuracy_ci95": lambda v: None if v is None else _number(v, 0.0),
    "wall_s": lambda v: None if v is None else _number(v, 0.0),
    "accuracies": _of(list, "a list"),
    "runs": _of(list, "a list"),
    "params": _of(dict, "a mapping"),
    "dataset": _of(dict, "a mapping"),
    "backbone": _of(dict, "a mapping"),
    "resolved": _of(dict, "a mapping"),
    "config": _of(dict, "a mapping"),
}


def row_problem(row: dict[str, Any], complete: bool = True) -> str | None:
    """``"<key> <problem>"`` for the first key of ``row`` that a reader cannot trust, or None for a good row.
    Every read of a store checks the keys a row has (``complete=False``: the store itself needs only the hash and
    status); a report, which reads the cell and record, also requires theirs."""
    written = row.get("written_at", 0.0)
    if (problem := _number(written)) is not None:
        return f"written_at {problem}"
    if row.get("error") is not None and not isinstance(row["error"], str):
        return f"error is {_kind(row['error'])}, not a message"
    cell = row.get("cell", _REQUIRED)
    if cell is _REQUIRED and not complete:
        cell = {}
    if not isinstance(cell, dict):
        return "cell is missing" if cell is _REQUIRED else f"cell is {_kind(cell)}, not a mapping"
    for key, (check, required) in CELL.items():
        if key not in cell:
            if required and complete:
                return f"cell.{key} is missing"
            continue
        if (problem := check(cell[key])) is not None:
            return f"cell.{key} {problem}"
    record = row.get("record")
    if record is None:
        return "record is missing (a finished row carries its run's record)" if row["status"] == "ok" and \
            complete else None
    if not isinstance(record, dict):
        return f"record is {_kind(record)}, not a mapping"
    for key, check in RECORD.items():
        if key in record and (problem := check(record[key])) is not None:
            return f"record.{key} {problem}"
    for i, acc in enumerate(record.get("accuracies") or []):
        if (problem := _number(acc, 0.0, 1.0)) is not None:
            return f"record.accuracies[{i}] {problem}"
    for i, run in enumerate(record.get("runs") or []):
        if not isinstance(run, dict):
            return f"record.runs[{i}] is {_kind(run)}, not a mapping"
        if (problem := _fraction(run.get("accuracy"))) is not None:
            return f"record.runs[{i}].accuracy {problem}"
    if complete and row["status"] == "ok" and not record.get("accuracies") and record.get("accuracy_mean") is None:
        return "record.accuracies is missing or empty in a finished row"
    return None
