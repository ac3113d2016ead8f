"""Few-shot FGVC in CoOp's layout (KaiyangZhou/CoOp, DATASETS.md): ``coop:<root>/<dataset>``.

Each dataset folder holds its images and CoOp's fixed split ``split_zhou_<Name>.json``
(``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``, paths relative to the image
folder); FGVC-Aircraft has its own ``images_variant_{train,val,test}.txt`` and ``variants.txt`` instead. The
dataset's train is CoOp's train, its test CoOp's test, ``split("val")`` CoOp's val.

K shots per seed exactly as CoOp draws them (Dassl's ``generate_fewshot_dataset``, called right after
``random.seed(seed)``): a Python ``random.Random(seed)``; for each label in order of first appearance in the
train list, ``sample(items, K)`` of its items in file order (all of them when a class has fewer than K; Dassl's
default ``repeat=False``); then, continuing the same stream, ``min(K, 4)`` per label of the val list, which is
what ``--search`` scores settings on. CoOp saves its draw as ``split_fewshot/shot_K-seed_S.pkl``; when that file
is in the dataset folder pefs takes the subset from it (read by :mod:`.coop_pickle`, which builds only Dassl
``Datum`` records and refuses anything else) and it joins the record's split files. CoOp's seeds are 1, 2, 3.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from pefs.config.identity import sha256_file
from pefs.data.benchmarks import coop_pickle
from pefs.data.benchmarks.common import BenchmarkDataset, check_disjoint, image_set, read_lines, require_dir
from pefs.errors import PefsError

#: dataset folder -> (image folder inside it, CoOp's split file); "" is the dataset folder itself
DATASETS: dict[str, tuple[str, str]] = {
    "oxford_pets": ("images", "split_zhou_OxfordPets.json"),
    "oxford_flowers": ("jpg", "split_zhou_OxfordFlowers.json"),
    "fgvc_aircraft": ("images", "images_variant_{split}.txt"),
    "food-101": ("images", "split_zhou_Food101.json"),
    "stanford_cars": ("", "split_zhou_StanfordCars.json"),
    "dtd": ("images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("2750", "split_zhou_EuroSAT.json"),
    "caltech-101": ("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "sun397": ("SUN397", "split_zhou_SUN397.json"),
    "ucf101": ("UCF-101-midframes", "split_zhou_UCF101.json"),
}
SPLITS = ("train", "val", "test")
AIRCRAFT_FILES = ("variants.txt", *(f"images_variant_{s}.txt" for s in SPLITS))
LAYOUT = ("<root>/<dataset>/<image folder> + split_zhou_<Name>.json (CoOp's DATASETS.md; fgvc_aircraft: images/ + "
          "variants.txt, images_variant_{train,val,test}.txt)")
HINT = "see https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md for each dataset's files and split JSON"
Entries = dict[str, list[tuple[int, Any]]]


def dataset_folder(rest: str) -> Path:
    """The dataset folder a ``coop:<root>/<dataset>`` spec names, checked: one of CoOp's, and present."""
    folder = Path(rest).expanduser()
    if not rest or folder.name not in DATASETS:
        raise PefsError(f"coop:{rest} names no CoOp dataset: the last part of the path must be one of "
                        f"{', '.join(DATASETS)} (give coop:<root>/<dataset>; layout {LAYOUT})")
    return require_dir(folder, f"CoOp dataset folder for {folder.name!r}", HINT)


def _ws(text: str, i: int) -> int:
    return re.compile(r"\s*").match(text, i).end()  # type: ignore[union-attr]


def json_entries(path: Path) -> Entries:
    """split -> [(line, entry)] of a CoOp split JSON (already valid JSON: each entry's line for errors)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise PefsError(f"cannot read split file {str(path)!r}: {e}") from e
    except json.JSONDecodeError as e:
        raise PefsError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLITS):
        raise PefsError(f"{path}:1: expected an object with lists \"train\", \"val\", \"test\" (CoOp's split JSON)")
    decoder, out, i = json.JSONDecoder(), {}, _ws(text, 0) + 1  # valid JSON: walk it for each entry's line
    while (i := _ws(text, i)) < len(text) and text[i] != "}":
        key, i = decoder.raw_decode(text, i)
        i = _ws(text, _ws(text, i) + 1)  # past ':'
        if text[i] != "[":
            _, i = decoder.raw_decode(text, i)
        else:
            rows, i = [], i + 1
            while (i := _ws(text, i)) < len(text) and text[i] != "]":
                value, end = decoder.raw_decode(text, i)
                rows.append((text.count("\n", 0, i) + 1, value))
                i = _ws(text, end)
                i += text[i] == ","
            out[key], i = rows, i + 1
        i = _ws(text, i)
        i += i < len(text) and text[i] == ","
    return {s: out[s] for s in SPLITS}


def aircraft_entries(folder: Path) -> tuple[Entries, list[str]]:
    """FGVC-Aircraft's ``images_variant_*.txt`` rows as (line, [images/<id>.jpg, label, variant])."""
    missing = [n for n in AIRCRAFT_FILES if not (folder / n).is_file()]
    if missing:
        raise PefsError(f"CoOp dataset folder for 'fgvc_aircraft' {str(folder)!r} lacks {', '.join(missing)}; "
                        f"it is fgvc-aircraft-2013b's data/ folder renamed ({HINT})")
    variants = [line for _, line in read_lines(folder / "variants.txt")]
    index = {v: i for i, v in enumerate(variants)}
    out: Entries = {}
    for split in SPLITS:
        path, rows = folder / f"images_variant_{split}.txt", []
        for n, line in read_lines(path):
            name, _, variant = line.partition(" ")
            if variant not in index:
                raise PefsError(f"{path}:{n}: variant {variant!r} is not in variants.txt "
                                f"(expected '<image id> <variant>')")
            rows.append((n, [f"{name}.jpg", index[variant], variant]))
        out[split] = rows
    return out, variants


def _split_set(path: Path, images: Path, rows: list[tuple[int, Any]], names: dict[int, str]) -> tuple[list, list]:
    """(image paths, labels) of one split's rows, each checked: shape, a whole-number label, the image exists,
    one class name per label."""
    paths, labels = [], []
    for n, row in rows:
        if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str) or not row[0]
                or isinstance(row[1], bool) or not isinstance(row[1], int) or row[1] < 0
                or not isinstance(row[2], str)):
            raise PefsError(f"{path}:{n}: malformed entry {json.dumps(row)[:80]}; expected "
                            "[\"relative/path.jpg\", label (a whole number >= 0), \"classname\"]")
        rel, label, cname = row
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not (images / rel).is_file():
            raise PefsError(f"{path}:{n}: no image {rel!r} in {str(images)!r} (class {cname!r})")
        if names.setdefault(label, cname) != cname:
            raise PefsError(f"{path}:{n}: label {label} is {cname!r} here but {names[label]!r} before")
        paths.append(images / rel)
        labels.append(label)
    if not paths:
        raise PefsError(f"split file {str(path)!r} lists no images for one of its splits")
    return paths, labels


def load(spec: str, rest: str) -> BenchmarkDataset:
    """A CoOp dataset folder: its fixed train / val / test split, K-shot draws as CoOp makes them."""
    folder = dataset_folder(rest)
    image_dir, split_name = DATASETS[folder.name]
    images = require_dir(folder / image_dir, f"{folder.name} image folder", HINT) if image_dir else folder
    if folder.name == "fgvc_aircraft":
        entries, _ = aircraft_entries(folder)
        files = {n: folder / n for n in AIRCRAFT_FILES}
    else:
        if not (folder / split_name).is_file():
            raise PefsError(f"CoOp dataset folder {str(folder)!r} lacks split file {split_name} ({HINT})")
        entries, files = json_entries(folder / split_name), {split_name: folder / split_name}
    names: dict[int, str] = {}
    read = {s: _split_set(files.get(split_name.format(split=s), folder / split_name), images, entries[s], names)
            for s in SPLITS}
    n = max(names) + 1
    gaps = sorted(set(range(n)) - set(read["train"][1]))
    if gaps:
        raise PefsError(f"{folder.name}: train has no image of label {gaps[0]} (labels must be 0..{n - 1}, every "
                        "class in train)")
    classes = [names[c] for c in range(n)]
    if len(set(classes)) < n:
        raise PefsError(f"{folder.name}: two labels share the class name "
                        f"{next(c for c in classes if classes.count(c) > 1)!r}")
    splits = {s: image_set(classes, *read[s]) for s in SPLITS}
    check_disjoint(splits, f"CoOp {folder.name} ({folder})", by_class=False)
    ds = BenchmarkDataset(folder.name, splits["train"], splits["test"], source=f"benchmark {spec}",
                          benchmark=spec, root=str(folder), splits=splits, roles={"train": "train", "test": "test"},
                          split_files={name: sha256_file(p) for name, p in files.items()},
                          licence=f"CoOp split of {folder.name}: see the source dataset's licence")
    ds.kshot = lambda shots, seed: draw(ds, shots, seed)[0]
    ds.select = lambda support, shots, seed: (None, splits["val"] if shots is None else
                                              splits["val"].subset(draw(ds, shots, seed)[1]))
    return ds


def fewshot(labels: np.ndarray, shots: int, rng: random.Random) -> list[int]:
    """Dassl's ``generate_fewshot_dataset`` on indices: per label in order of first appearance, ``rng.sample``
    of its items in list order, or all of them when it has fewer than ``shots``."""
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(i)
    out: list[int] = []
    for items in by_label.values():
        out += rng.sample(items, shots) if len(items) >= shots else items
    return out


def draw(ds: BenchmarkDataset, shots: int, seed: int) -> tuple[list[int], list[int]]:
    """CoOp's K-shot train and min(K, 4)-shot val indices for ``seed``: from its saved
    ``split_fewshot/shot_K-seed_S.pkl`` when present (its SHA-256 joins the record), else drawn as CoOp draws."""
    saved = Path(ds.root) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    if saved.is_file():
        found = coop_pickle.read_subset(saved, {s: ds.splits[s] for s in ("train", "val")}, Path(ds.root))
        ds.split_files[f"split_fewshot/{saved.name}"] = sha256_file(saved)
        return found["train"], found["val"]
    rng = random.Random(seed)
    train = fewshot(ds.splits["train"].labels, shots, rng)
    return train, fewshot(ds.splits["val"].labels, min(shots, 4), rng)


def split_files(rest: str) -> list[Path]:
    """The files the data fingerprint hashes: the split file(s) and any saved CoOp K-shot draws."""
    folder = Path(rest).expanduser()
    if folder.name not in DATASETS:
        return []
    names = AIRCRAFT_FILES if folder.name == "fgvc_aircraft" else (DATASETS[folder.name][1],)
    saved = sorted((folder / "split_fewshot").glob("shot_*-seed_*.pkl")) if (folder / "split_fewshot").is_dir() else []
    return [folder / n for n in names if (folder / n).is_file()] + saved

