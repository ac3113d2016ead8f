"""BSCD-FSL's four cross-domain sets (IBM/cdfsl-benchmark, ``datasets/*_few_shot.py``), read as its loaders read
them; every class is novel, so these are episodes only (``--ways N``, the benchmark's 5-way, 600 episodes).

* ``bscd-eurosat:<root>``: ``<root>/2750/<class>/*.jpg`` (EuroSAT RGB, 10 classes; torchvision ImageFolder).
* ``bscd-isic:<root>``: ``<root>/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``
  (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` one-hot rows) and ``<root>/ISIC2018_Task3_Training_Input/<image>.jpg``.
* ``bscd-chestx:<root>``: ``<root>/Data_Entry_2017.csv`` and ``<root>/images/``; as BSCD-FSL, only rows with a
  single finding among Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumothorax (7 classes;
  "No Finding", Pneumonia and multi-label rows are left out).
* ``bscd-cropdisease:<root>``: ``<root>/dataset/train/<class>/*.jpg`` (38 classes; ImageFolder).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pefs.config.identity import sha256_file
from pefs.data.benchmarks.common import BenchmarkDataset, image_set, require_dir
from pefs.data.benchmarks.episodic import folder_split
from pefs.errors import PefsError

ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
ISIC_IMAGES = "ISIC2018_Task3_Training_Input"
CHESTX_CSV = "Data_Entry_2017.csv"
#: BSCD-FSL's ChestX labels, in its label order
CHESTX_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
SETS: dict[str, tuple[str, str]] = {  # spec -> (layout, where to get it)
    "bscd-eurosat": ("<root>/2750/<class>/*.jpg", "http://madm.dfki.de/files/sentinel/EuroSAT.zip (RGB)"),
    "bscd-isic": (f"<root>/{ISIC_CSV} + <root>/{ISIC_IMAGES}/*.jpg",
                  "https://challenge.isic-archive.com/data#2018 (Task 3 training input and ground truth)"),
    "bscd-chestx": (f"<root>/{CHESTX_CSV} + <root>/images/*.png (all images in one folder)",
                    "https://www.kaggle.com/nih-chest-xrays/data"),
    "bscd-cropdisease": ("<root>/dataset/train/<class>/*.jpg", "https://www.kaggle.com/saroz014/plant-disease/"),
}
#: the folder of class folders, for the two ImageFolder sets
FOLDERS = {"bscd-eurosat": "2750", "bscd-cropdisease": "dataset/train"}


def _where(spec: str) -> str:
    layout, url = SETS[spec]
    return f"expected {layout} (BSCD-FSL's layout; get it from {url})"


def _rows(path: Path, header: tuple[str, ...], spec: str) -> list[tuple[int, list[str]]]:
    """(line, cells) of a CSV whose first row starts with ``header``; a PefsError naming file and line."""
    if not path.is_file():
        raise PefsError(f"{spec}: no {path.name} at {str(path)!r}; {_where(spec)}")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PefsError(f"cannot read {str(path)!r}: {e}") from e
    if not rows or tuple(c.strip() for c in rows[0][:len(header)]) != header:
        raise PefsError(f"{path}:1: expected a header starting {','.join(header)!r}, got "
                        f"{','.join(rows[0])[:80] if rows else ''!r}")
    return [(n, row) for n, row in enumerate(rows[1:], 2) if any(c.strip() for c in row)]


def _image(path: Path, n: int, folder: Path, name: str) -> Path:
    image = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not image.is_file():
        raise PefsError(f"{path}:{n}: no image {name!r} in {str(folder)!r}")
    return image


def _classes_present(spec: str, classes: list[str], labels: list[int], where: Path) -> None:
    empty = [c for i, c in enumerate(classes) if i not in set(labels)]
    if empty:
        raise PefsError(f"{spec}: class {empty[0]!r} has no images in {str(where)!r}; {_where(spec)}")


def _isic(spec: str, root: Path) -> tuple[list[str], list[Path], list[int], dict[str, Path]]:
    path, images = root / ISIC_CSV, require_dir(root / ISIC_IMAGES, "ISIC image folder", _where(spec))
    rows = _rows(path, ("image",), spec)
    classes = next(csv.reader([path.read_text(encoding="utf-8").splitlines()[0]]))[1:]
    paths, labels = [], []
    for n, row in rows:
        try:
            hot = [float(v) for v in row[1:]]
        except ValueError:
            hot = []
        if len(hot) != len(classes) or sum(v != 0 for v in hot) != 1:
            raise PefsError(f"{path}:{n}: malformed row {','.join(row)[:80]!r}; expected the image name and one "
                            f"1.0 among {len(classes)} class columns ({','.join(classes)})")
        paths.append(_image(path, n, images, row[0].strip() + ".jpg"))
        labels.append(next(i for i, v in enumerate(hot) if v != 0))
    return classes, paths, labels, {ISIC_CSV: path}


def _chestx(spec: str, root: Path) -> tuple[list[str], list[Path], list[int], dict[str, Path]]:
    path, images = root / CHESTX_CSV, require_dir(root / "images", "ChestX image folder", _where(spec))
    paths, labels = [], []
    for n, row in _rows(path, ("Image Index", "Finding Labels"), spec):
        if len(row) < 2 or not row[0].strip():
            raise PefsError(f"{path}:{n}: malformed row {','.join(row)[:80]!r}; expected 'Image Index,Finding "
                            "Labels,...'")
        found = row[1].strip().split("|")
        if len(found) == 1 and found[0] in CHESTX_LABELS:  # BSCD-FSL: single-finding rows of its 7 labels
            paths.append(_image(path, n, images, row[0].strip()))
            labels.append(CHESTX_LABELS.index(found[0]))
    return list(CHESTX_LABELS), paths, labels, {CHESTX_CSV: path}


def load(spec: str, rest: str) -> BenchmarkDataset:
    """One BSCD-FSL target set under ``rest``; all its classes novel (episodes only)."""
    root = require_dir(Path(rest).expanduser(), f"{spec} root", _where(spec))
    if spec in FOLDERS:
        folder = require_dir(root / FOLDERS[spec], f"{spec} class folder", _where(spec))
        novel, listing = folder_split(folder)
        split_files = {f"{FOLDERS[spec]}/ (listing)": listing}
    else:
        classes, paths, labels, files = (_isic if spec == "bscd-isic" else _chestx)(spec, root)
        _classes_present(spec, classes, labels, root)
        novel = image_set(classes, paths, labels)
        split_files = {name: sha256_file(p) for name, p in files.items()}
    return BenchmarkDataset(root.name, novel, None, source=f"benchmark {spec}", benchmark=spec, root=str(root),
                            splits={"novel": novel}, split_files=split_files, roles={"train": "novel"},
                            episodic_only=True, licence=f"BSCD-FSL {spec}: see the source dataset's licence")


def split_files(spec: str, rest: str) -> list[Path]:
    """The label files the data fingerprint hashes (the tree digest covers the images)."""
    root = Path(rest).expanduser()
    name = {"bscd-isic": ISIC_CSV, "bscd-chestx": CHESTX_CSV}.get(spec)
    return [root / name] if name and (root / name).is_file() else []
