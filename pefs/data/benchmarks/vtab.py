"""VTAB-1k in the layout the VPT / NOAH / SSF repositories use: one folder per task holding its images and the
split files ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt``, each line
``relative/path.jpg label`` (the path relative to the task folder, or to its ``images/`` folder).

``vtab1k:<root>/<task>``: train = train800val200, test = test (the reported protocol). A ``--search`` on it
follows the protocol: each setting trains on train800 and is scored on val200, then the chosen one trains on
train800val200 and is scored on test (``--final``; K-shot seeds: each setting trains on the seed's K shots and is
scored on val200 less those shots).
``vtab1k-val:<root>/<task>``: train = train800, test = val200 (the protocol's hyper-parameter search by hand).

A folder named after none of the 19 tasks is read as a custom task in the same layout when it holds all four split
files (a report lists it apart from the 19 and keeps it out of VTAB-1k's means); otherwise the name is refused.
"""

from __future__ import annotations

from pathlib import Path

from pefs.config.identity import sha256_file
from pefs.data.benchmarks.common import (
    BenchmarkDataset,
    check_disjoint,
    image_set,
    read_lines,
    require_dir,
    require_files,
    without,
)
from pefs.data.sources import ImageSet
from pefs.errors import PefsError
from pefs.results import benchmark_tasks

#: the 19 tasks by group and task -> group (one list, in pefs.results so reports order their columns by it)
GROUPS, TASKS = benchmark_tasks.GROUPS, benchmark_tasks.TASKS
SPLIT_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
#: which split each spec trains and tests on
ROLES = {"vtab1k": {"train": "train800val200", "test": "test"},
         "vtab1k-val": {"train": "train800", "test": "val200"}}
LAYOUT = "<root>/<task>/{train800,val200,train800val200,test}.txt + the images they name"


def task_folder(rest: str) -> Path:
    """The task folder a ``vtab1k:<root>/<task>`` spec names, checked: it exists and is one of the 19 tasks (or a
    custom task: any name, all four split files present)."""
    folder = Path(rest).expanduser()
    custom = bool(rest) and folder.is_dir() and all((folder / n).is_file() for n in SPLIT_FILES)
    if not rest or (folder.name not in TASKS and not custom):
        raise PefsError(f"vtab1k:{rest} names no VTAB-1k task: the last part of the path must be one of "
                        f"{', '.join(TASKS)}, or a folder holding all four split files (give "
                        f"vtab1k:<root>/<task>; layout {LAYOUT})")
    return require_dir(folder, f"VTAB-1k task folder for {folder.name!r}", f"expected {LAYOUT}")


def _resolve(folder: Path, rel: str) -> Path | None:
    for base in (folder, folder / "images"):
        p = base / rel
        if p.is_file():
            return p
    return None


def read_split(folder: Path, name: str) -> tuple[list[Path], list[int]]:
    """One split file's (image paths, labels); a malformed line or a path with no image names the file and line."""
    path = folder / name
    paths, labels = [], []
    for n, line in read_lines(path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise PefsError(f"{path}:{n}: malformed line {line[:80]!r}; expected 'relative/path.jpg label' "
                            "(label a whole number)")
        if Path(parts[0]).is_absolute() or ".." in Path(parts[0]).parts:
            raise PefsError(f"{path}:{n}: path {parts[0]!r} must be relative to the task folder")
        image = _resolve(folder, parts[0])
        if image is None:
            raise PefsError(f"{path}:{n}: no image {parts[0]!r} under {str(folder)!r} (nor under its images/)")
        paths.append(image)
        labels.append(int(parts[1]))
    if not paths:
        raise PefsError(f"split file {str(path)!r} lists no images")
    return paths, labels


def _check_labels(files: dict[str, tuple[list[Path], list[int]]], folder: Path) -> int:
    """The class count C: the train800val200 labels must be exactly 0..C-1 and every other split's lie in it."""
    train = sorted(set(files["train800val200.txt"][1]))
    n = max(train) + 1
    missing = sorted(set(range(n)) - set(train))
    if train[0] < 0 or missing:
        bad = f"negative label {train[0]}" if train[0] < 0 else f"no image of label {', '.join(map(str, missing[:5]))}"
        raise PefsError(f"labels of {folder / 'train800val200.txt'} must be 0..C-1 with every class present; "
                        f"{bad} (labels {train[0]}..{train[-1]})")
    for name, (_, labels) in files.items():
        out = [v for v in labels if not 0 <= v < n]
        if out:
            raise PefsError(f"{folder / name} has label {out[0]}, outside train800val200's 0..{n - 1}")
    return n


def load(spec: str, rest: str) -> BenchmarkDataset:
    """A VTAB-1k task (``spec`` is ``vtab1k`` or ``vtab1k-val``; ``rest`` its ``<root>/<task>``), checked whole."""
    folder = task_folder(rest)
    paths = require_files(folder, SPLIT_FILES, f"VTAB-1k task folder for {folder.name!r}")
    files = {name: read_split(folder, name) for name in SPLIT_FILES}
    n = _check_labels(files, folder)
    classes = [str(c) for c in range(n)]
    splits: dict[str, ImageSet] = {name.removesuffix(".txt"): image_set(classes, *files[name]) for name in SPLIT_FILES}
    what = f"VTAB-1k {folder.name} ({folder})"
    check_disjoint({k: splits[k] for k in ("train800", "val200")}, what, by_class=False)
    check_disjoint({k: splits[k] for k in ("train800val200", "test")}, what, by_class=False)
    if sorted(splits["train800"].names + splits["val200"].names) != sorted(splits["train800val200"].names):
        raise PefsError(f"{what}: train800val200.txt is not train800.txt + val200.txt (the official files are)")
    roles = ROLES[spec]
    ds = BenchmarkDataset(
        folder.name, splits[roles["train"]], splits[roles["test"]], source=f"benchmark {spec}", benchmark=spec,
        root=str(folder), splits=splits, roles=dict(roles),
        split_files={name: sha256_file(p) for name, p in paths.items()},
        licence=f"VTAB-1k {TASKS.get(folder.name, 'custom')} task {folder.name}: see the source dataset's licence")
    if spec == "vtab1k":  # the protocol's selection: train800 -> val200 (a K-shot support is left out of val200)
        ds.select = lambda support, shots, seed: ((splits["train800"], splits["val200"]) if shots is None else
                                                  (None, _val_outside(splits["val200"], support, shots, what)))
    return ds


def _val_outside(val200: ImageSet, support: ImageSet, shots: int, what: str) -> ImageSet:
    """val200 less a K-shot support's images: what a K-shot ``--search`` scores; an error when nothing is left."""
    val = without(val200, support.names)
    if not len(val):
        raise PefsError(f"{what}: every val200 image is among the {shots} shots per class, leaving none to score "
                        f"a --search on; give fewer --shots (or use --final, which searches train800 -> val200)")
    return val


def split_files(rest: str) -> list[Path]:
    """The split files the data fingerprint hashes (whatever exists; loading says what is missing)."""
    folder = Path(rest).expanduser()
    return [folder / n for n in SPLIT_FILES if (folder / n).is_file()]
