"""What identifies a run's results (stdlib only): the config hash, the run key, and content digests of files.

A run's key is the hash of its resolved config (:func:`config_hash`: the schema version and every
result-changing field) and the content fingerprints of what it read, so a changed file under the same path
is a new run. Files are digested by their bytes (:func:`file_digest`); a folder by every non-hidden file's
relative path, size and modification time (:func:`tree_digest`: no file is read; 100k files in about a
second, ``benchmarks/fingerprint.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pefs.config.fields import result_fields
from pefs.errors import PefsError

if TYPE_CHECKING:
    from pefs.config.run import TuneConfig

#: bumped when the meaning of a hashed field changes; part of every hash, so old results never pass as new
SCHEMA_VERSION = 2

_CHUNK = 1 << 20
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (all 64 hex digits) of a file's bytes, read in chunks; the one file hash of pefs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes, cached per (path, size, mtime) within the process."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_CACHE:
            _FILE_CACHE[key] = sha256_file(path)[:16]
    except OSError as e:
        raise PefsError(f"cannot read {str(path)!r} to fingerprint it: {e.strerror or e}") from e
    return _FILE_CACHE[key]


def tree_digest(root: str | Path) -> str:
    """Hash of (relative path, size, mtime) of every non-hidden file under ``root``, in a stable order."""
    entries: list[str] = []
    stack = [(str(root), "")]
    seen: set[tuple[int, int]] = set()
    try:
        while stack:
            path, rel = stack.pop()
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        stack.append((e.path, f"{rel}{e.name}/"))
                    elif e.is_file():
                        s = e.stat()
                        entries.append(f"{rel}{e.name}\0{s.st_size}\0{s.st_mtime_ns}")
    except OSError as e:
        raise PefsError(f"cannot list data folder {str(root)!r} to fingerprint it: {e.strerror or e}") from e
    entries.sort()
    h = hashlib.sha256("\n".join(entries).encode("utf-8", "surrogateescape"))
    return f"{len(entries)} files:{h.hexdigest()[:16]}"


def config_hash(cfg: Any) -> str:
    """16 hex digits identifying a run's results: the schema version and every result-changing field.
    Sweeps key their store by it and records carry it, so a record's hash is its store key."""
    payload = {"schema": SCHEMA_VERSION, **result_fields(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(cfg: TuneConfig, fingerprints: dict[str, Any]) -> str:
    """A run's identity (a sweep cell's store key, a record's ``key``): the hash of its resolved config and the
    content fingerprints of what it reads (data, checkpoint), so changed files under the same path rerun."""
    blob = json.dumps({"config": cfg.hash(), **fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
