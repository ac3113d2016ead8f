"""The content fingerprint of a ``--data`` spec: part of a run's key (:func:`pefs.config.identity.run_key`).

* an image folder or local dataset folder: :func:`~pefs.config.identity.tree_digest` (relative paths and the
  SHA-256 of every file's bytes; stats only cache those hashes);
* the embedded dataset (and any single file): the SHA-256 of its bytes;
* a dataset built in Python: its image names and labels;
* a benchmark spec (``vtab1k:PATH``, ...): its split files' SHA-256 and its root's tree digest
  (:func:`pefs.data.benchmarks.fingerprint`), so an edited split file is a new run key;
* a hub dataset name: the name itself (its content cannot be seen offline), marked ``"hub:"``.

Replacing, adding or removing any file, or changing its bytes, changes the fingerprint, so the cell runs again;
touching a file (new mtime, same bytes) does not, and old bytes restored with their old mtimes are the old data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pefs.config.identity import file_digest, tree_digest
from pefs.data.benchmarks import fingerprint as benchmark_fingerprint
from pefs.data.sources import ASSETS, DEFAULT_DATASET


def data_fingerprint(data: Any) -> str:
    """The fingerprint of a ``--data`` spec (see the module docstring)."""
    if data is None or data == DEFAULT_DATASET:
        return "embedded:" + file_digest(ASSETS / "fashion_mnist_small.npz")
    if not isinstance(data, (str, os.PathLike)):  # a Dataset built in Python: its image names and labels
        h = hashlib.sha256()
        for part in (data.train, data.test):
            if part is not None:
                h.update("\0".join(part.names).encode("utf-8", "surrogateescape"))
                h.update(bytes(str(list(part.labels)), "ascii"))
        return f"in-memory:{data.name}:{h.hexdigest()[:16]} (names and labels; pixels not read)"
    benchmark = benchmark_fingerprint(data)
    if benchmark is not None:
        return benchmark
    path = Path(data)
    if path.is_dir():
        return "folder:" + tree_digest(path)
    if path.is_file():
        return "file:" + file_digest(path)
    return f"hub:{data}"
