"""The results store: one JSON line per finished sweep cell, keyed by the cell's config hash.

Append-only and crash-safe: each result is one ``write`` of a whole line followed by ``fsync``, so a kill
can at worst leave a torn last line, which :func:`load` detects, reports by line number and (for the file
this process writes) removes by rewriting the file atomically. Several processes each append to their own
shard (``results.<rank>.jsonl``); reading merges the main file and every shard and de-duplicates by hash.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pefs.errors import PefsError

ROW_VERSION = 1
STATUSES = ("ok", "failed")


@dataclass
class StoreContents:
    """What a store holds: the best row per cell hash, the files read, and any damage found (one line each)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0

    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["status"] == "ok"]

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if r["status"] == "failed"]


def shard_path(store: str | Path, rank: int = 0, world: int = 1) -> Path:
    """The file process ``rank`` of ``world`` appends to: the store itself alone, ``<stem>.<rank><suffix>`` else."""
    store = Path(store)
    return store if world <= 1 else store.with_name(f"{store.stem}.{rank}{store.suffix}")


def store_files(store: str | Path) -> list[Path]:
    """The store file and its rank shards that exist, main file first."""
    store = Path(store)
    shard = re.compile(re.escape(store.stem) + r"\.(\d+)" + re.escape(store.suffix) + "$")
    found = [store] if store.is_file() else []
    if store.parent.is_dir():
        shards = [p for p in store.parent.iterdir() if shard.match(p.name) and p.is_file()]
        found += sorted(shards, key=lambda p: int(shard.match(p.name).group(1)))
    return found


def check_store_path(store: str | Path) -> Path:
    """A usable store path: a ``.jsonl`` file name whose folder can be created; a clear error otherwise."""
    store = Path(store)
    if store.suffix != ".jsonl":
        raise PefsError(f"store {str(store)!r} must be a .jsonl file path (e.g. runs/sweep/results.jsonl)")
    if store.is_dir():
        raise PefsError(f"store {str(store)!r} is a folder; give a file path such as {store / 'results.jsonl'}")
    return store


def make_row(cell_hash: str, cell: dict[str, Any], status: str, record: dict[str, Any] | None,
             error: str | None = None, rank: int = 0) -> dict[str, Any]:
    """One store line: the cell's hash and settings, its status, the tune record (or the error message)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {"pefs_row": ROW_VERSION, "hash": cell_hash, "status": status, "cell": cell, "error": error,
            "record": record, "rank": rank, "written_at": time.time()}


def append(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one whole line (a single O_APPEND write, then fsync): a kill never splits two rows."""
    path = Path(path)
    data = (json.dumps(row, default=str, separators=(",", ":")) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise PefsError(f"cannot append to the results store {str(path)!r}: {e.strerror or e}") from e


def _valid(row: Any) -> bool:
    return isinstance(row, dict) and isinstance(row.get("hash"), str) and row.get("status") in STATUSES


def read_file(path: Path, repair: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of one file and a message per torn/corrupt line (dropped). ``repair`` rewrites the file without
    them, atomically (temp file + rename), so the next append starts on a clean line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PefsError(f"cannot read the results store {str(path)!r}: {e.strerror or e}") from e
    rows, problems, good = [], [], []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            row = None
        if not _valid(row):
            what = "torn last line (a run was killed while writing it)" if number == len(lines) else "corrupt line"
            shown = raw[:60].decode("utf-8", "replace")
            problems.append(f"{path} line {number}: {what}, dropped: {shown!r}{'...' if len(raw) > 60 else ''}; "
                            f"the {len(rows)} results before it are kept")
            continue
        rows.append(row)
        good.append(raw)
    if repair and (problems or (data and not data.endswith(b"\n"))):
        tmp = path.with_name(f".{path.name}.repair.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(g + b"\n" for g in good))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        except OSError as e:
            raise PefsError(f"cannot repair the results store {str(path)!r}: {e.strerror or e}") from e
        if problems:
            problems[-1] += f"; {path.name} rewritten without it"
    return rows, problems


def _better(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Which of two rows for one cell counts: a success over a failure, then the later one."""
    rank = {"ok": 1, "failed": 0}
    return (rank[new["status"]], new.get("written_at", 0)) >= (rank[old["status"]], old.get("written_at", 0))


def load(store: str | Path, repair: Path | None = None) -> StoreContents:
    """Read the store and all its shards, one row per cell hash. Damaged lines are reported in
    ``problems`` and skipped; only the file ``repair`` (the one this process appends to) is rewritten."""
    out = StoreContents()
    for path in store_files(store):
        rows, problems = read_file(path, repair=repair is not None and Path(repair) == path)
        out.files.append(path)
        out.problems += problems
        for row in rows:
            old = out.rows.get(row["hash"])
            if old is not None:
                out.duplicates += 1
            if old is None or _better(row, old):
                out.rows[row["hash"]] = row
    return out
