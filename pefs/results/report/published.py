"""Published reference numbers, quoted beside pefs' rows by ``pefs report --published``: ``published.json`` (beside
this module) holds each number with the source it was copied from; every quoted row is labelled "quoted, <source>"
and its table names the source's address and table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("published.json")


@dataclass(frozen=True)
class Quoted:
    """One published row: the method, the model it ran, its accuracy per VTAB-1k task (%), where it comes from."""

    method: str
    model: str
    tasks: tuple[tuple[str, float], ...]
    stated_mean: float
    label: str  #: the source's short name, as the row is labelled


@lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    return json.loads(PUBLISHED.read_text(encoding="utf-8"))


def quoted_rows() -> list[Quoted]:
    """The quoted VTAB-1k rows, in the file's order."""
    d = _data()
    return [Quoted(r["method"], d["model"], tuple((t, float(v)) for t, v in r["tasks"].items()),
                   float(r["stated_mean"]), r["source"]) for r in d["vtab1k"]]


def source_note(label: str) -> str:
    """One line naming a quoted source: its address and table, and that the numbers are quoted, not run here."""
    s = _data()["sources"][label]
    return (f"Quoted, {label}: {s['table']}, {s['url']} — numbers copied from the source, not run by pefs; "
            f"model {_data()['model']}. {s.get('cross_check', '')}").rstrip()
