"""Every cell of every committed benchmark store keeps its key: a change to a config's fields, defaults, resolution
or hashing that would silently orphan stored results (and rerun them under a new key) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pefs.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
#: the recipes whose store is committed under benchmarks/
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml") if "store: benchmarks/" in p.read_text())


def test_some_recipes_have_committed_stores():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("recipe", RECIPES)
def test_dry_run_finds_every_cell_stored(recipe, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["sweep", "--recipe", f"recipes/{recipe}", "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out
    total, stored = map(int, re.search(r"^(\d+) cells, (\d+) already in ", out, re.M).groups())
    assert total > 0 and stored == total, out[-2000:]
