"""The on-disk feature store: frozen pooled features shared by every run (and every cell of a sweep).

Pooled features of a frozen trunk depend only on the trunk's weights, the image, the eval transform and the
inference precision. A store namespace is keyed by everything but the image (weights fingerprint, model,
transform, precision, level); inside it each feature is keyed by the image's content (the file's bytes, or
the decoded pixels of an image that has no file). A changed checkpoint, image file, image size or precision is
therefore a different key: a miss, never a stale hit.

Entries are written in shards (``<namespace>/<id>.npz``: image keys + float32 features), each to a temporary
name, flushed, then renamed, so a run killed while writing leaves at most a ``*.tmp`` file, which readers
ignore and :func:`clear` removes. The directory: ``--feature-cache DIR`` or ``$PEFS_FEATURE_CACHE``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pefs.config.files import write_bytes
from pefs.data.sources import ImageSet
from pefs.errors import PefsError
from pefs.model.directory import weights_fingerprint

ENV = "PEFS_FEATURE_CACHE"
FORMAT = 1
SHARD = "{}.npz"


def cache_dir(option: str | None) -> Path | None:
    """The store's directory: ``option`` when given, else ``$PEFS_FEATURE_CACHE``, else None (no store)."""
    value = option or os.environ.get(ENV) or None
    return Path(value).expanduser() if value else None


def trunk_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of every tensor of ``model``'s state except its classifier head's: what pooled features
    depend on."""
    head = getattr(model, "head", None)
    skip = {p.data_ptr() for p in head.state_dict().values()} if isinstance(head, torch.nn.Module) else set()
    return weights_fingerprint([(k, v) for k, v in model.state_dict().items() if v.data_ptr() not in skip])


def image_key(images: ImageSet, i: int) -> str:
    """The content key of image ``i``: a hash of its file's bytes, or of its decoded RGB pixels when it has no
    file (arrays, Hugging Face datasets)."""
    name = images.names[i]
    h = hashlib.blake2b(digest_size=16)
    path = Path(name)
    if "[" not in name and path.is_file():
        h.update(b"file:")
        h.update(path.read_bytes())
    else:
        img = images.image(i)
        h.update(f"pixels:{img.mode}:{img.size}:".encode())
        h.update(img.tobytes())
    return h.hexdigest()


class FeatureStore:
    """Pooled features on disk for one (trunk weights, model, transform, precision, level) namespace."""

    def __init__(self, root: str | Path, facts: dict[str, Any]) -> None:
        self.root = Path(root)
        self.facts = {"format": FORMAT, **facts}
        key = hashlib.blake2b(json.dumps(self.facts, sort_keys=True, default=str).encode(), digest_size=12)
        self.dir = self.root / key.hexdigest()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "facts.json"
            if not meta.exists():
                write_bytes(meta, json.dumps(self.facts, indent=2, default=str).encode(), "feature-cache facts")
        except (OSError, PefsError) as e:
            cause = e if isinstance(e, OSError) else e.__cause__
            why = getattr(cause, "strerror", None) or cause or e
            raise PefsError(f"feature cache {str(self.root)!r} is not writable: {why}; choose another "
                            f"with --feature-cache DIR (or ${ENV})") from e
        self._index: dict[str, tuple[Path, int]] | None = None
        self.hits = self.misses = self.written = 0

    def _scan(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = {}
            for shard in sorted(self.dir.glob(SHARD.format("*"))):
                keys = _read(shard, "keys")
                for row, k in enumerate(keys if keys is not None else []):
                    self._index[str(k)] = (shard, row)
        return self._index

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stored features of those ``keys`` that are present (a shard that fails to read is a miss)."""
        index = self._scan()
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for k in keys:
            if k in index:
                shard, row = index[k]
                by_shard.setdefault(shard, []).append((k, row))
        found: dict[str, torch.Tensor] = {}
        for shard, rows in by_shard.items():
            feats = _read(shard, "features")
            if feats is None:
                continue
            for k, row in rows:
                found[k] = torch.from_numpy(np.array(feats[row], dtype=np.float32))
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put(self, keys: Sequence[str], features: torch.Tensor) -> None:
        """Write one shard: temporary name, flush, rename (a killed write leaves no entry)."""
        if not len(keys):
            return
        feats = features.detach().cpu().float().numpy()
        if feats.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for {feats.shape[0]} features")
        shard = self.dir / SHARD.format(uuid.uuid4().hex)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(list(keys), dtype="U32"), features=feats)
        try:
            write_bytes(shard, buf.getvalue(), "feature-cache shard")
        except PefsError as e:
            warnings.warn(f"could not write to the feature cache {str(self.dir)!r}: {e}", stacklevel=2)
            return
        index = self._scan()
        for row, k in enumerate(keys):
            index[k] = (shard, row)
        self.written += len(keys)


def _read(shard: Path, what: str) -> np.ndarray | None:
    try:
        with np.load(shard, allow_pickle=False) as z:
            return z[what]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"ignoring unreadable feature-cache shard {str(shard)!r}: {e}", stacklevel=3)
        return None


def clear(root: str | Path) -> int:
    """Delete every namespace (and leftover temporary file) under the store ``root``; the number removed."""
    root = Path(root)
    if not root.is_dir():
        return 0
    n = 0
    for d in root.iterdir():
        if d.is_dir() and (d / "facts.json").exists():
            shutil.rmtree(d)
            n += 1
    return n
