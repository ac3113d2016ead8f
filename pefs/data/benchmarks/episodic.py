"""Episodic benchmarks with disjoint base / val / novel classes.

* ``miniimagenet:<root>``: Ravi & Larochelle's layout, ``<root>/images/*.jpg`` and ``train.csv``, ``val.csv``,
  ``test.csv`` with ``filename,label`` rows (label = the WordNet id): base = train.csv, val = val.csv,
  novel = test.csv.
* ``fewshot:<root>``: ``<root>/{base,val,novel}/<class>/*.jpg`` (CUB, CIFAR-FS, tieredImageNet-style splits;
  ``train`` / ``test`` are read as ``base`` / ``novel``; ``val`` may be absent).

The dataset's ``train`` is the novel split, so episodes (and K-shot tasks) are drawn from novel classes only;
the base classes are ``dataset.base`` (for pretraining) and every split is ``dataset.split(name)``. Splits are
checked disjoint by class and by image.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pefs.config.identity import sha256_file
from pefs.data.benchmarks.common import (
    BenchmarkDataset,
    check_disjoint,
    class_images,
    image_set,
    require_dir,
    require_files,
    sha256_text,
)
from pefs.data.sources import ImageSet
from pefs.errors import PefsError

MINI_FILES = {"base": "train.csv", "val": "val.csv", "novel": "test.csv"}
MINI_LAYOUT = "<root>/images/*.jpg + <root>/{train,val,test}.csv with filename,label rows"
#: split -> the folder names read as it, in order of preference
FOLDER_SPLITS = {"base": ("base", "train"), "val": ("val",), "novel": ("novel", "test")}
FOLDER_LAYOUT = "<root>/{base,val,novel}/<class>/*.jpg"
ROLES = {"train": "novel"}


def _read_csv(path: Path, images: Path) -> tuple[list[Path], list[str]]:
    """(image paths, wnid labels) of one Ravi & Larochelle CSV, every row checked."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PefsError(f"cannot read split file {str(path)!r}: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise PefsError(f"{path}:1: expected the header 'filename,label', got {','.join(rows[0]) if rows else ''!r}")
    paths, labels, seen = [], [], set()
    for n, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise PefsError(f"{path}:{n}: malformed row {','.join(row)[:80]!r}; expected 'filename,label'")
        name = row[0].strip()
        if name in seen:
            raise PefsError(f"{path}:{n}: image {name!r} is listed twice")
        seen.add(name)
        image = images / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not image.is_file():
            raise PefsError(f"{path}:{n}: no image {name!r} in {str(images)!r}")
        paths.append(image)
        labels.append(row[1].strip())
    if not paths:
        raise PefsError(f"split file {str(path)!r} lists no images")
    return paths, labels


def _by_wnid(paths: list[Path], wnids: list[str]) -> ImageSet:
    classes = sorted(set(wnids))
    index = {c: i for i, c in enumerate(classes)}
    return image_set(classes, paths, [index[w] for w in wnids])


def _dataset(benchmark: str, root: Path, splits: dict[str, ImageSet], split_files: dict[str, str]) -> BenchmarkDataset:
    check_disjoint(splits, f"{benchmark} ({root})", by_class=True)
    return BenchmarkDataset(root.name, splits["novel"], None, source=f"benchmark {benchmark}", benchmark=benchmark,
                            root=str(root), splits=splits, split_files=split_files, roles=dict(ROLES))


def load_mini(spec: str, rest: str) -> BenchmarkDataset:
    """miniImageNet from Ravi & Larochelle's CSV layout under ``rest``."""
    root = require_dir(Path(rest).expanduser(), "miniImageNet root", f"expected {MINI_LAYOUT}")
    images = require_dir(root / "images", "miniImageNet image folder", f"expected {MINI_LAYOUT}")
    files = require_files(root, tuple(MINI_FILES.values()), "miniImageNet root")
    splits = {split: _by_wnid(*_read_csv(files[name], images)) for split, name in MINI_FILES.items()}
    return _dataset(spec, root, splits, {name: sha256_file(p) for name, p in files.items()})


def split_folders(root: Path) -> dict[str, Path]:
    """split -> its folder under ``root``; base and novel are required, two spellings of one split are refused."""
    found: dict[str, Path] = {}
    for split, names in FOLDER_SPLITS.items():
        present = [root / n for n in names if (root / n).is_dir()]
        if len(present) > 1:
            raise PefsError(f"few-shot root {str(root)!r} has both {' and '.join(p.name for p in present)}/: "
                            f"which is the {split} split? keep one")
        if present:
            found[split] = present[0]
        elif split != "val":
            raise PefsError(f"few-shot root {str(root)!r} has no {split} split: expected a "
                            f"{' or '.join(n + '/' for n in names)} folder ({FOLDER_LAYOUT})")
    return found


def folder_split(folder: Path) -> tuple[ImageSet, str]:
    """One split folder's classes and images, and the SHA-256 of its listing (class/file per line)."""
    dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise PefsError(f"split folder {str(folder)!r} has no class sub-folders; expected {FOLDER_LAYOUT}")
    paths, labels = [], []
    for c, d in enumerate(dirs):
        files = class_images(d)
        paths += files
        labels += [c] * len(files)
    listing = "\n".join(f"{p.parent.name}/{p.name}" for p in paths)
    return image_set([d.name for d in dirs], paths, labels), sha256_text(listing)


def load_folders(spec: str, rest: str) -> BenchmarkDataset:
    """A base / val / novel class-folder layout under ``rest``."""
    root = require_dir(Path(rest).expanduser(), "few-shot root", f"expected {FOLDER_LAYOUT}")
    splits, listings = {}, {}
    for split, folder in split_folders(root).items():
        splits[split], listings[f"{folder.name}/ (listing)"] = folder_split(folder)
    return _dataset(spec, root, splits, listings)


def mini_split_files(rest: str) -> list[Path]:
    """The split files the data fingerprint hashes (whatever exists; loading says what is missing)."""
    root = Path(rest).expanduser()
    return [root / n for n in MINI_FILES.values() if (root / n).is_file()]
