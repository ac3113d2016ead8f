"""Which loader a ``--data`` folder needs, decided by its top-level layout only, and local-path typos.

A folder is a ``datasets`` table when its top level (or a top-level ``data/`` folder) holds a saved dataset
(``dataset_dict.json``, ``dataset_info.json``, ``state.json``) or table files (.arrow, .parquet, .csv, .jsonl,
.json); it is an image folder when its top level holds class sub-folders with images (or ``train/`` and
``test/`` or ``val/`` ones that do). A table file deeper down (``cat/labels.csv``) never changes the choice; a folder
that looks like both is refused, naming what was found, unless its tables are manifests (their rows name image files
by paths from the table's folder): then the tables are read.
"""

from __future__ import annotations

from pathlib import Path

from pefs.errors import PefsError

TABLE_SUFFIXES = (".arrow", ".parquet", ".csv", ".jsonl", ".json")
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
IMAGE_FOLDER = "image folder"
TABLE = "datasets table"
#: a table of image paths and labels (.csv / .jsonl) beside the images it names: read as a table
MANIFEST = "manifest"
#: split folder names of an image folder: the training split first, then the held-out ones in the order they are
#: taken (timm's and torchvision's ImageFolder layouts: ``train/`` with ``test/``, ``val/``, ``valid/``, ...)
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")


def _visible(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise PefsError(f"cannot list data folder {str(path)!r}: {e.strerror or e}") from e


def _table_files(root: Path) -> list[Path]:
    top = _visible(root)
    found = [p for p in top if p.is_file() and (p.suffix.lower() in TABLE_SUFFIXES or p.name in SAVED_MARKERS)]
    data = root / "data"
    if data.is_dir():
        found += [p for p in _visible(data) if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES]
    return found


def _has_class_images(root: Path, suffixes: tuple[str, ...]) -> bool:
    for d in _visible(root):
        if d.is_dir() and any(p.suffix.lower() in suffixes for p in _visible(d)):
            return True
    return False


def is_manifest(table: Path, image_suffixes: tuple[str, ...]) -> bool:
    """Whether ``table`` (.csv or .jsonl) is a manifest: its first row names an image file that exists, by a path
    relative to the table's folder (or absolute). Such a table beside its images says how to read them."""
    import csv
    import json

    try:
        with open(table, encoding="utf-8", newline="") as f:
            if table.suffix.lower() == ".csv":
                rows = csv.reader(f)
                next(rows, None)
                values = next(rows, [])
            elif table.suffix.lower() == ".jsonl":
                row = json.loads(f.readline() or "{}")
                values = list(row.values()) if isinstance(row, dict) else []
            else:
                return False
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return False
    return any(isinstance(v, str) and Path(v).suffix.lower() in image_suffixes and (table.parent / v).is_file()
               for v in values)


def data_layout(root: str | Path, image_suffixes: tuple[str, ...]) -> str:
    """``IMAGE_FOLDER`` or ``TABLE`` for the folder ``root``, ``MANIFEST`` for table files that name the images
beside them; a PefsError when it looks like both otherwise."""
    root = Path(root)
    tables = _table_files(root)
    images = _has_class_images(root, image_suffixes) or any(
        (root / s).is_dir() and _has_class_images(root / s, image_suffixes) for s in SPLIT_FOLDERS)
    if tables and images and all(is_manifest(t, image_suffixes) for t in tables):
        return MANIFEST
    if tables and images:
        shown = ", ".join(str(p.relative_to(root)) for p in tables[:3])
        raise PefsError(f"data folder {str(root)!r} is ambiguous: it has class sub-folders of images and also "
                        f"dataset table files at its top level ({shown}); move the table files out to use it as "
                        "an image folder, or point --data at a folder holding only the table")
    return TABLE if tables else IMAGE_FOLDER


def missing_local_path(spec: str) -> str | None:
    """Why ``spec`` (which does not exist) reads as a mistyped local path rather than a hub name
    ``user/name``, or None when it could be a hub name."""
    path = Path(spec)
    if spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") != 1 or spec.endswith("/"):
        reason = "no such folder"
    elif path.parent.is_dir():
        reason = f"no such folder, and {str(path.parent)!r} is a local folder"
    else:
        return None
    parent = next((p for p in path.parents if p.is_dir() and str(p) != "."), None)
    if parent is None:
        return reason
    near = [p.name for p in _visible(parent)][:8]
    return reason + f" ({str(parent)!r} holds: {', '.join(near) or 'nothing'})"
