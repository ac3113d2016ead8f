"""Content fingerprints of a run's inputs, so a sweep cell is identified by what it read, not by a path.

* an image folder or local dataset folder: every non-hidden file's relative path, size and modification
  time (nanoseconds), hashed (no file is read; 100k files took 0.4-1.2 s on a shared 2-core machine,
  ``benchmarks/fingerprint.md``);
* the embedded dataset (and any single file, such as a ``--checkpoint``): the SHA-256 of its bytes;
* a hub dataset name: the name itself (its content cannot be seen offline), marked ``"hub:"``.

Replacing, adding, removing or touching any file changes the fingerprint, so the cell runs again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pefs.errors import PefsError

_CHUNK = 1 << 20
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes, cached per (path, size, mtime) within the process."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FILE_CACHE:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
            _FILE_CACHE[key] = h.hexdigest()[:16]
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


def data_fingerprint(data: Any) -> str:
    """The fingerprint of a ``--data`` spec (see the module docstring)."""
    from pefs.data.sources import ASSETS, DEFAULT_DATASET

    if data is None or data == DEFAULT_DATASET:
        return "embedded:" + file_digest(ASSETS / "fashion_mnist_small.npz")
    if not isinstance(data, (str, os.PathLike)):  # a Dataset built in Python: its image names and labels
        h = hashlib.sha256()
        for part in (data.train, data.test):
            if part is not None:
                h.update("\0".join(part.names).encode("utf-8", "surrogateescape"))
                h.update(bytes(str(list(part.labels)), "ascii"))
        return f"in-memory:{data.name}:{h.hexdigest()[:16]} (names and labels; pixels not read)"
    path = Path(data)
    if path.is_dir():
        return "folder:" + tree_digest(path)
    if path.is_file():
        return "file:" + file_digest(path)
    return f"hub:{data}"


def run_fingerprints(data: str | None, checkpoint: str | None) -> dict[str, Any]:
    """The fingerprints of a run's data and checkpoint (None without one): part of a sweep cell's key."""
    from pefs.backbones.sources.checkpoint import check_checkpoint_path

    ckpt = file_digest(check_checkpoint_path(checkpoint)) if checkpoint else None
    return {"data": data_fingerprint(data), "checkpoint": ckpt}
