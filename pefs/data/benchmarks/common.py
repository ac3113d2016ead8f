"""What every benchmark source shares: the :class:`BenchmarkDataset` it returns, split-file checksums and the
checks that splits are disjoint.

A benchmark is read from the community's own on-disk layout and official split files under a local root; pefs
downloads nothing. Every problem with the layout is one :class:`~pefs.errors.PefsError` naming the file (and
line) and what was expected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pefs.data.sources import IMAGE_SUFFIXES, Dataset, ImageSet
from pefs.errors import PefsError


@dataclass
class BenchmarkDataset(Dataset):
    """A :class:`~pefs.data.sources.Dataset` read from a benchmark's layout. ``train`` and ``test`` are what the
    protocols sample (for an episodic benchmark ``train`` is the novel classes, so episodes never see a base
    class); every official split is in ``splits`` (:meth:`split`), and ``split_files`` maps each split file
    (relative to ``root``) to the SHA-256 of its bytes."""

    benchmark: str = ""
    root: str = ""
    splits: dict[str, ImageSet] = field(default_factory=dict)
    split_files: dict[str, str] = field(default_factory=dict)
    #: which official split ``train`` and ``test`` are (e.g. {"train": "train800val200", "test": "test"})
    roles: dict[str, str] = field(default_factory=dict)
    #: the benchmark's own K-shot draw, ``kshot(shots, seed)`` -> support indices into ``train`` (CoOp's), or None
    #: for pefs' draw (:func:`pefs.data.kshot_split`)
    kshot: Callable[[int, int], np.ndarray] | None = None
    #: what a ``--search`` tunes and scores settings on, ``select(support, shots, seed)`` -> (the images each
    #: setting trains on, None for the task's support; the validation images), from the benchmark's own
    #: validation split (VTAB-1k's train800 / val200, CoOp's val), or None for pefs' held-out images
    select: Callable[[ImageSet, int | None, int], tuple[ImageSet | None, ImageSet]] | None = None
    #: every class is novel and the benchmark is scored on episodes only (BSCD-FSL, Meta-Dataset): K-shot runs
    #: and ``--final`` are refused
    episodic_only: bool = False
    #: more the record says about the data (e.g. a Meta-Dataset source and its siblings)
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> ImageSet:
        """The official split ``name`` (its own name, e.g. ``val200`` / ``base``, or a role: ``train``, ``test``)."""
        key = self.roles.get(name, name)
        if key not in self.splits:
            raise PefsError(f"benchmark {self.benchmark!r} ({self.name}) has no split {name!r}; splits: "
                            f"{', '.join(self.splits)}")
        return self.splits[key]

    @property
    def base(self) -> ImageSet | None:
        """The base classes (for pretraining), or None when the benchmark has none."""
        return self.splits.get("base")

    def provenance(self) -> dict[str, Any]:
        """What a run record says about the data: benchmark, root, split files with their SHA-256, split sizes."""
        return {"benchmark": self.benchmark, "name": self.name, "root": self.root, "roles": dict(self.roles),
                "split_files": dict(self.split_files),
                "splits": {k: {"images": len(s), "classes": len(s.classes)} for k, s in self.splits.items()},
                **self.extra}


def without(images: ImageSet, names: list[str]) -> ImageSet:
    """``images`` less those named in ``names`` (a validation split less a task's support)."""
    drop = set(names)
    return images.subset([i for i, n in enumerate(images.names) if n not in drop])


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise PefsError(f"{what} {str(path)!r} does not exist; {hint}")
    return path


def require_files(root: Path, names: tuple[str, ...], what: str) -> dict[str, Path]:
    """``names`` under ``root``, all of them; a PefsError naming every missing one."""
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise PefsError(f"{what} {str(root)!r} lacks split file{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}; expected {', '.join(names)}")
    return {n: root / n for n in names}


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line of a UTF-8 split file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PefsError(f"cannot read split file {str(path)!r}: {e}") from e
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def image_set(classes: list[str], paths: list[Path], labels: list[int]) -> ImageSet:
    """An ImageSet over files; names are the paths (as image folders name theirs)."""
    return ImageSet(list(classes), np.array(labels, dtype=int), [str(p) for p in paths], lambda i: paths[i])


def class_images(folder: Path) -> list[Path]:
    """The images (by suffix) of one class folder; an error when it has none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PefsError(f"class folder {str(folder)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def check_disjoint(splits: dict[str, ImageSet], what: str, by_class: bool) -> None:
    """No image (by name) in two splits and, with ``by_class``, no class in two splits."""
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(splits[a].names) & set(splits[b].names)
            if shared:
                raise PefsError(f"{what}: splits {a!r} and {b!r} share {len(shared)} images "
                                f"(e.g. {sorted(shared)[0]!r}); official splits are disjoint")
            if by_class:
                both = set(splits[a].classes) & set(splits[b].classes)
                if both:
                    raise PefsError(f"{what}: splits {a!r} and {b!r} share {len(both)} classes "
                                    f"(e.g. {sorted(both)[0]!r}); base, val and novel classes must be disjoint")
