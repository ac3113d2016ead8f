"""The results store: one JSON line per finished sweep cell, keyed by the cell's config hash.

Append-only and safe for many writers: each result is one ``write`` of a whole line (O_APPEND) followed by
``fsync``, and starts with a newline when the file does not end with one, so a line torn by a kill never glues
onto the next writer's row. Reading recovers any whole row found after a torn fragment, and reports the
fragment by line number; no file is ever rewritten, since another process may be appending to it. Ranks of
one launch append to their own shard (``results.<rank>.jsonl``); separate sweeps may share one file (their
cells are split by claim files, :mod:`pefs.results.claims`). Reading merges every file and de-duplicates by hash.
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
from pefs.results.row_schema import row_problem

#: where ``pefs sweep`` writes and ``pefs report`` reads when no --store is given
DEFAULT_STORE = "runs/sweep/results.jsonl"
ROW_VERSION = 1
STATUSES = ("ok", "failed")


@dataclass
class StoreContents:
    """What a store holds: the best row per cell hash, the files read, and any damage found (one line each)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0
    #: bytes of each file read so far, up to its last whole line (where :func:`refresh` goes on reading)
    offsets: dict[Path, int] = field(default_factory=dict)
    #: row hash -> where its counted row was read (``<file> line N``), for messages about that row
    where: dict[str, str] = field(default_factory=dict)

    def add(self, row: dict[str, Any], where: str = "") -> None:
        """Count ``row`` in: it replaces the row of its hash when it is the better one (:func:`_better`)."""
        old = self.rows.get(row["hash"])
        if old is not None:
            self.duplicates += 1
        if old is None or _better(row, old):
            self.rows[row["hash"]] = row
            self.where[row["hash"]] = where

    def check_complete(self) -> None:
        """Refuse, naming the file, line and key, a counted row without what a report reads (its cell's model,
        strategy and shots, a finished row's record and accuracies)."""
        for h, row in self.rows.items():
            if (problem := row_problem(row, complete=True)) is not None:
                raise PefsError(f"{self.where.get(h) or 'results store'}: {problem}; {FIX}")

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
    """Append ``row`` as one whole line in a single O_APPEND write, then fsync; when the file ends in a torn
    line (a writer killed mid-write), the row starts on a fresh line instead of extending it."""
    path = Path(path)
    line = (json.dumps(row, default=str, separators=(",", ":")) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            data = line if size == 0 or os.pread(fd, 1, size - 1) == b"\n" else b"\n" + line
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


#: every row starts with this key (make_row puts it first): where a whole row begins inside a damaged line
ROW_START = b'{"pefs_row":'


def _parse(raw: bytes) -> tuple[list[dict[str, Any]], bytes | None]:
    """The rows in one line and the damaged fragment before them (None when the line is whole): a torn row
    followed by a whole one on the same line (an old writer did not start on a fresh line) keeps the whole one."""
    try:
        row = json.loads(raw)
        if _valid(row):
            return [row], None
    except (ValueError, UnicodeDecodeError):
        pass
    starts = [i for i in range(len(raw)) if raw.startswith(ROW_START, i)]
    for i in starts[1:] if starts[:1] == [0] else starts:
        try:
            row = json.loads(raw[i:])
        except (ValueError, UnicodeDecodeError):
            continue
        if _valid(row):
            return [row], raw[:i]
    return [], raw


#: the end of every message about a row that pefs never writes
FIX = "fix or delete that line (a row pefs wrote never looks like this; nothing was read or changed)"


def read_file(path: Path, offset: int = 0, places: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str],
                                                                                       int]:
    """Rows of one file from byte ``offset`` on, a message per torn/corrupt fragment (dropped; the file is left
    as it is), and the offset just past the last whole line (a torn tail is read again next time); ``places``
    collects each row's ``<file> line N``. A row whose keys have the wrong type or range is refused, naming
    the file, the line and the key (:func:`pefs.results.row_schema.row_problem`)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError as e:
        raise PefsError(f"cannot read the results store {str(path)!r}: {e.strerror or e}") from e
    rows: list[dict[str, Any]] = []
    problems = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        found, damaged = _parse(raw)
        if damaged is not None and damaged.strip():
            what = "torn last line (a run was killed while writing it)" if number == len(lines) else \
                "torn or corrupt line"
            shown = damaged[:60].decode("utf-8", "replace")
            where = f"line {number}" if offset == 0 else f"byte {offset + sum(len(x) + 1 for x in lines[:number - 1])}"
            problems.append(f"{path} {where}: {what}, dropped: {shown!r}{'...' if len(damaged) > 60 else ''}; "
                            f"the {len(rows)} results before it are kept"
                            + (", and the whole row after it on that line" if found else ""))
        for row in found:
            at = f"{path} line {number}" if offset == 0 else \
                f"{path} byte {offset + sum(len(x) + 1 for x in lines[:number - 1])}"
            if (problem := row_problem(row, complete=False)) is not None:
                raise PefsError(f"{at}: {problem}; {FIX}")
            if places is not None:
                places.append(at)
        rows += found
    return rows, problems, offset + data.rfind(b"\n") + 1


def _better(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Which of two rows for one cell counts: a success over a failure, then the later one."""
    rank = {"ok": 1, "failed": 0}
    return (rank[new["status"]], new.get("written_at", 0)) >= (rank[old["status"]], old.get("written_at", 0))


def load(store: str | Path) -> StoreContents:
    """Read the store and all its shards, one row per cell hash; damaged lines are reported in ``problems``."""
    out = StoreContents()
    for path in store_files(store):
        where: list[str] = []
        rows, problems, out.offsets[path] = read_file(path, places=where)
        out.files.append(path)
        out.problems += problems
        for row, at in zip(rows, where):
            out.add(row, at)
    return out


def refresh(contents: StoreContents, store: str | Path) -> StoreContents:
    """Read only what other writers appended since ``contents`` was read (new whole lines, new shards), so a
    long sweep can look again before each cell without re-reading the whole store."""
    for path in store_files(store):
        start = contents.offsets.get(path, 0)
        try:
            if path.stat().st_size <= start:
                continue
        except OSError:
            continue
        where: list[str] = []
        rows, problems, contents.offsets[path] = read_file(path, start, where)
        if path not in contents.files:
            contents.files.append(path)
        contents.problems += [m for m in problems if "torn last line" not in m]
        for row, at in zip(rows, where):
            contents.add(row, at)
    return contents
