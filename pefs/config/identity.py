"""What identifies a run's results (stdlib only): the config hash, the run key, and content digests of files.

A run's key is the hash of its resolved config (:func:`config_hash`: the schema version and every
result-changing field) and the content fingerprints of what it read, so a changed file under the same path
is a new run. Files are digested by their bytes (:func:`file_digest`); a folder by every non-hidden file's
relative path and the SHA-256 of its bytes (:func:`tree_digest`). Path, size, mtime, ctime and inode are only a
*cache* of a file's content hash (in this process, and in a small JSON file per folder under the user's cache
folder, :func:`digest_cache_dir`, never inside the data): any mismatch, a missing or damaged cache, or a file
changed within :data:`RACY_S` seconds of being hashed reads the bytes again, so restoring other bytes with the
old sizes and mtimes can never keep an old identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pefs.config.fields import result_fields
from pefs.config.files import write_text
from pefs.errors import PefsError

if TYPE_CHECKING:
    from pefs.config.run import TuneConfig

#: bumped when the meaning of a hashed field changes; part of every hash, so old results never pass as new
SCHEMA_VERSION = 2

_CHUNK = 1 << 20
_FILE_CACHE: dict[tuple, str] = {}
#: a file whose ctime or mtime is this close to the moment it was hashed is never cached (it may change again
#: within the file system's clock tick, leaving the same stat; git's "racily clean" rule)
RACY_S = 2.0
#: the cache file format; any other version, or any damage, is ignored and rewritten
DIGEST_CACHE_VERSION = 1


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (all 64 hex digits) of a file's bytes, read in chunks; the one file hash of pefs."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes, cached within the process per (path, size, mtime, ctime, inode);
    a file changed within :data:`RACY_S` of being hashed is hashed again next time."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), *_stamp(st))
        if key in _FILE_CACHE:
            return _FILE_CACHE[key]
        digest = sha256_file(path)[:16]
    except OSError as e:
        raise PefsError(f"cannot read {str(path)!r} to fingerprint it: {e.strerror or e}") from e
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_S * 1e9:
        _FILE_CACHE[key] = digest
    return digest


def digest_cache_dir() -> Path:
    """Where folder digest caches live: ``$PEFS_DIGEST_CACHE``, else ``$XDG_CACHE_HOME/pefs/digests`` (default
    ``~/.cache/pefs/digests``); never inside a data folder."""
    env = os.environ.get("PEFS_DIGEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "pefs" / "digests"


def _list_files(root: str | Path) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, path, stat) of every non-hidden file under ``root``, symlink loops skipped."""
    out: list[tuple[str, str, os.stat_result]] = []
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
                        out.append((f"{rel}{e.name}", e.path, e.stat()))
    except OSError as e:
        raise PefsError(f"cannot list data folder {str(root)!r} to fingerprint it: {e.strerror or e}") from e
    return out


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _cache_file(root: str | Path) -> Path:
    key = os.path.abspath(root).encode("utf-8", "surrogateescape")
    return digest_cache_dir() / f"{hashlib.sha256(key).hexdigest()[:24]}.json"


def _read_cache(path: Path, root: str) -> dict[str, list]:
    """The cached ``{relative path: [size, mtime_ns, ctime_ns, inode, sha256]}`` of a folder; {} when the cache
    is missing, of another folder or version, or damaged in any way (it is then rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != DIGEST_CACHE_VERSION or data.get("root") != root:
            return {}
        files = data["files"]
        return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 5
                and all(isinstance(x, int) for x in v[:4]) and isinstance(v[4], str) and len(v[4]) == 64}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_cache(path: Path, root: str, files: dict[str, list]) -> None:
    """Save the folder's cache atomically; a cache that cannot be written (read-only home) is simply skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"version": DIGEST_CACHE_VERSION, "root": root, "files": files}),
                   "digest cache")
    except (OSError, PefsError):
        pass


def _content(path: str, st: os.stat_result, cached: list | None, now_ns: int) -> tuple[str, bool]:
    """A file's SHA-256 from the cache when its stamp matches, else from its bytes; and whether it may be cached."""
    stamp = _stamp(st)
    if cached is not None and cached[:4] == stamp:
        return cached[4], True
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise PefsError(f"cannot read {path!r} to fingerprint it: {e.strerror or e}") from e
    racy = now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_S * 1e9
    return digest, not racy


def tree_digest(root: str | Path) -> str:
    """The content identity of a folder: the SHA-256 of every non-hidden file's relative path and the SHA-256 of
    its bytes, in a stable order (file stats are only a cache of each file's hash, see the module docstring)."""
    files = sorted(_list_files(root))
    root_s = os.path.abspath(root)
    cache_path = _cache_file(root)
    cache = _read_cache(cache_path, root_s)
    now_ns = time.time_ns()
    fresh: dict[str, list] = {}
    h = hashlib.sha256()
    for rel, path, st in files:
        digest, keep = _content(path, st, cache.get(rel), now_ns)
        if keep:
            fresh[rel] = [*_stamp(st), digest]
        h.update(f"{rel}\0{digest}\n".encode("utf-8", "surrogateescape"))
    if fresh != cache:
        _write_cache(cache_path, root_s, fresh)
    return f"{len(files)} files:{h.hexdigest()[:16]}"


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
