"""Labelled image sources: the embedded default set, image folders, Hugging Face datasets, arrays.

Every source becomes a :class:`Dataset` holding a ``train`` and (when the data has one) a ``test``
:class:`ImageSet`. An ImageSet decodes lazily: only the images a protocol samples are ever opened.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pefs.data import layout
from pefs.data.decoding import decode_image
from pefs.data.layout import (
    IMAGE_FOLDER,
    MANIFEST,
    SAVED_MARKERS,
    SPLIT_FOLDERS,
    TABLE,
    data_layout,
    missing_local_path,
)
from pefs.errors import PefsError

DEFAULT_DATASET = "fashion-mnist-small"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ASSETS = Path(__file__).parent / "assets"
#: ``NAME:PATH`` data specs read by other loaders: NAME -> loader(NAME, PATH) (:mod:`pefs.data.benchmarks` fills it)
SPEC_LOADERS: dict[str, Callable[[str, str], Dataset]] = {}


@dataclass
class ImageSet:
    """Labelled images with lazy decoding. ``names[i]`` identifies image ``i`` (path or split/index).
    ``loader(i)`` returns what :func:`pefs.data.decoding.decode_image` takes: a path, bytes, a PIL image or an array."""

    classes: list[str]
    labels: np.ndarray
    names: list[str]
    loader: Callable[[int], Any]

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Decode image ``i`` as 8-bit RGB (:mod:`pefs.data.decoding`); a failure is a PefsError naming it."""
        name = self.names[int(i)]
        try:
            source = self.loader(int(i))
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise PefsError(f"cannot read image {name!r}: {type(e).__name__}: {e}") from e
        return decode_image(source, name)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = np.asarray(indices, dtype=int)
        return ImageSet(self.classes, self.labels[idx], [self.names[i] for i in idx],
                        lambda j, _idx=idx, _load=self.loader: _load(int(_idx[j])))

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


@dataclass
class Dataset:
    """A named dataset: a train ImageSet and, when the source defines one, a test ImageSet."""

    name: str
    train: ImageSet
    test: ImageSet | None = None
    licence: str = ""
    #: input resolution to use when the user gives none (small native images gain nothing from 224 px)
    suggested_img_size: int | None = None
    #: how it was read: "embedded", "image folder", "datasets table" or "arrays"
    source: str = ""

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def from_arrays(images: np.ndarray, labels: Sequence[int], classes: Sequence[str] | None = None,
                prefix: str = "array") -> ImageSet:
    """Images as an (N, H, W) or (N, H, W, C) array (uint8, or any depth :mod:`pefs.data.decoding` scales)."""
    images, labels = np.asarray(images), np.asarray(labels, dtype=int)
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise PefsError(f"arrays must be (N, H, W[, C]) images with N labels; got images {images.shape}, "
                        f"{len(labels)} labels")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise PefsError(f"labels must lie in 0..{len(classes) - 1}; got {labels.min()}..{labels.max()}")
    return ImageSet(list(classes), labels, [f"{prefix}[{i}]" for i in range(len(labels))],
                    lambda i: images[i])


def load_default() -> Dataset:
    """Fashion-MNIST subset shipped with pefs (60 train + 40 test per class, 10 classes, MIT licence)."""
    z = np.load(ASSETS / "fashion_mnist_small.npz")
    classes = [str(c) for c in z["classes"]]
    return Dataset(DEFAULT_DATASET, from_arrays(z["train_images"], z["train_labels"], classes, "train"),
                   from_arrays(z["test_images"], z["test_labels"], classes, "test"),
                   licence="Fashion-MNIST (c) 2017 Zalando SE, MIT licence", suggested_img_size=128,
                   source="embedded")


TRAIN_SPLIT, HELD_OUT_SPLITS = SPLIT_FOLDERS[0], SPLIT_FOLDERS[1:]


def load_folder(root: str | Path) -> Dataset:
    """An image folder ``root/<class>/*.jpg``, or split folders: ``root/train/<class>`` with an optional held-out
    split beside it, ``test/`` (else ``val/``, ``valid/``, ``validation/``; with several, ``test/`` is scored and
    the others are not read). ``train/`` alone has no held-out split. Files that are not images by suffix are
    ignored; empty classes are errors; a ``train/`` beside other folders that are not split names is refused."""
    root = Path(root)
    if not root.is_dir():
        raise PefsError(f"data folder {str(root)!r} does not exist")
    if not (root / TRAIN_SPLIT).is_dir():
        return Dataset(root.name, _folder_set(root), source=IMAGE_FOLDER)
    other = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in SPLIT_FOLDERS)
    if other:
        raise PefsError(f"data folder {str(root)!r} has a train/ split folder beside other folders "
                        f"({', '.join(other[:5])}); give either split folders only (train/ and one of "
                        f"{', '.join(HELD_OUT_SPLITS)}/, each holding <class>/<image>) or class folders only "
                        "(<class>/<image>)")
    train = _folder_set(root / TRAIN_SPLIT)
    held = next((root / s for s in HELD_OUT_SPLITS if (root / s).is_dir()), None)
    test = _folder_set(held, classes=train.classes) if held is not None else None
    return Dataset(root.name, train, test, source=IMAGE_FOLDER)


def _folder_set(root: Path, classes: list[str] | None = None) -> ImageSet:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise PefsError(f"data folder {str(root)!r} has no class sub-folders; expected {root}/<class>/<image>.jpg")
    found = [d.name for d in dirs]
    classes = classes or found
    if sorted(found) != sorted(classes):
        raise PefsError(f"class folders of {str(root)!r} ({', '.join(found)}) differ from the train split's "
                        f"({', '.join(classes)})")
    paths, labels = [], []
    for d in dirs:
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PefsError(f"class folder {str(d)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        paths += files
        labels += [classes.index(d.name)] * len(files)
    return ImageSet(classes, np.array(labels), [str(p) for p in paths], lambda i: paths[i])


def load_hf(name: str, image_column: str | None = None, label_column: str | None = None,
            train_split: str = "train", test_split: str | None = "test") -> Dataset:
    """A Hugging Face ``datasets`` dataset by hub name or local path (offline needs a local copy).

    Every split's labels are read by class NAME against one class list, the train split's (a ClassLabel's names
    in its order, else the sorted distinct values): a split class-encoded on its own (other names, another
    order) still scores against the right classes. Classes of a ClassLabel with no training image (a dataset
    filtered to some classes) are dropped, with a note; a test class the train split lacks is refused."""
    import datasets

    try:
        dd = datasets.load_dataset(name) if not Path(name).is_dir() else _load_local_hf(name)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as e:
        raise PefsError(f"cannot load dataset {name!r} with Hugging Face datasets: {type(e).__name__}: {e}") from e
    if not isinstance(dd, datasets.DatasetDict):
        dd = datasets.DatasetDict({train_split: dd})
    if train_split not in dd:
        raise PefsError(f"dataset {name!r} has no split {train_split!r}; splits: {', '.join(dd)}")
    train = dd[train_split]
    test = dd[test_split] if test_split and test_split in dd else None
    image_column = image_column or _detect(train, name, "image", datasets.Image)
    label_column = label_column or _detect_label(train, name)
    for split, ds in ((train_split, train), (test_split, test)):
        for col in (image_column, label_column) if ds is not None else ():
            if col not in ds.column_names:
                raise PefsError(f"split {split!r} of dataset {name!r} has no column {col!r}; columns: "
                                f"{', '.join(ds.column_names)}")
    train_keys = _label_keys(train, label_column, train_split, name)
    classes = _classes(train, label_column, train_keys, name)
    return Dataset(Path(name).name, _hf_set(train, image_column, classes, train_split, train_keys, name),
                   _hf_set(test, image_column, classes, test_split or "test",
                           _label_keys(test, label_column, test_split or "test", name), name)
                   if test is not None else None, source=TABLE)


def _manifest_folder(name: str) -> Path | None:
    """The folder relative image paths of a local table (a manifest: ``path,label`` rows) are read against: the
    folder holding the table files (``data/`` when they sit there), never the working directory."""
    root = Path(name)
    if not root.is_dir():
        return None
    data = root / "data"
    top = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in layout.TABLE_SUFFIXES]
    return data if data.is_dir() and not top else root


def _load_local_hf(path: str):
    import datasets

    if any((Path(path) / m).exists() for m in SAVED_MARKERS):
        return datasets.load_from_disk(path)
    if data_layout(path, IMAGE_SUFFIXES) == MANIFEST:  # tables beside their images: read the tables only
        builder, files = _manifest_files(Path(path))
        return datasets.load_dataset(builder, data_files=files)
    return datasets.load_dataset(path)


def _manifest_files(root: Path) -> tuple[str, dict[str, list[str]]]:
    """The builder and split files of manifests beside their images: ``test.csv`` is the test split (else
    ``val``/``valid``/``validation``), any other table the train split."""
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"))
    kinds = {p.suffix.lower() for p in files}
    if len(kinds) > 1:
        names = ", ".join(p.name for p in files)
        raise PefsError(f"data folder {str(root)!r} mixes .csv and .jsonl manifests ({names}); give one kind")
    stems = {p: p.stem.lower() for p in files}
    held = "test" if "test" in stems.values() else next((s for s in HELD_OUT_SPLITS if s in stems.values()), None)
    splits: dict[str, list[str]] = {}
    for p, stem in stems.items():
        split = "test" if stem == held else None if stem in HELD_OUT_SPLITS else "train"
        if split is not None:
            splits.setdefault(split, []).append(str(p))
    return ("csv" if kinds == {".csv"} else "json"), splits


def _detect(ds, name: str, what: str, feature_type) -> str:
    cols = [c for c, f in ds.features.items() if isinstance(f, feature_type)]
    if cols:
        return cols[0]
    if what in ds.column_names:
        return what
    kind = "a datasets.Image feature" if what == "image" else "a datasets.ClassLabel feature"
    raise PefsError(f"cannot find the {what} column of dataset {name!r}; columns: {', '.join(ds.column_names)}. "
                    f"pefs takes the column with {kind}, else one named {what!r}: rename yours to {what!r} "
                    f"(Dataset.rename_column), or pass {what}_column= to pefs.data.load_hf")


def _detect_label(ds, name: str) -> str:
    """The one label column: the ClassLabel column, else the column named ``label``; several candidates (a
    fine and a coarse ClassLabel, a ClassLabel beside a ``label`` column) are refused, listing them."""
    import datasets

    candidates = [c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
    candidates += [c for c in ("label", "labels") if c in ds.column_names and c not in candidates]
    if len(candidates) > 1:
        raise PefsError(f"dataset {name!r} has several label columns ({', '.join(candidates)}); name the one to "
                        f"classify by with --label-column (label_column= in pefs.data.load_hf)")
    return candidates[0] if candidates else _detect(ds, name, "label", datasets.ClassLabel)


def _label_keys(ds, column: str, split: str, name: str) -> list:
    """Each image's class as a key: its ClassLabel NAME (so splits encoded apart still agree), else its value."""
    import datasets

    feat, raw = ds.features[column], ds[column]
    if isinstance(feat, datasets.ClassLabel):
        bad = [v for v in raw if v is None or not 0 <= v < len(feat.names)]
        if bad:
            raise PefsError(f"split {split!r} of dataset {name!r} has label {bad[0]} in column {column!r}, outside its "
                            f"ClassLabel's 0..{len(feat.names) - 1} (-1 marks an unlabelled image)")
        return [feat.names[v] for v in raw]
    bad = next((v for v in raw if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool)), None)
    if bad is not None or any(v is None for v in raw):
        raise PefsError(f"label column {column!r} of dataset {name!r} holds {bad!r} ({type(bad).__name__}); "
                        "labels must be class names (str) or integers")
    if len({type(v) for v in raw}) > 1:
        raise PefsError(f"label column {column!r} of dataset {name!r} mixes strings and integers")
    return list(raw)


def _classes(train, column: str, keys: list, name: str) -> list:
    """The class list: the train split's ClassLabel names in their order, less those with no training image
    (said in a note), else the sorted distinct training values."""
    import datasets

    feat, present = train.features[column], set(keys)
    if not isinstance(feat, datasets.ClassLabel):
        return sorted(present)
    dropped = [c for c in feat.names if c not in present]
    if dropped:
        print(f"note: {len(dropped)} of the {len(feat.names)} classes of dataset {name!r} have no training image "
              f"and are left out ({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''}); "
              f"{len(feat.names) - len(dropped)} classes remain", file=sys.stderr)
    return [c for c in feat.names if c in present]


def _hf_set(ds, image_column: str, classes: list, split: str, keys: list, name: str) -> ImageSet:
    """One split; ``keys`` (class names or values) become indices into ``classes``, or a split with a class
    the train split lacks is refused, naming it."""
    import datasets

    index = {v: i for i, v in enumerate(classes)}
    unknown = sorted({str(v) for v in keys if v not in index})
    if unknown:
        raise PefsError(f"split {split!r} of dataset {name!r} has images of {len(unknown)} class(es) the train "
                        f"split has no image of ({', '.join(unknown[:5])}); train classes: "
                        f"{', '.join(map(str, classes[:20]))}{', ...' if len(classes) > 20 else ''}")
    labels = np.array([index[v] for v in keys], dtype=int)
    base = None
    if isinstance(ds.features[image_column], datasets.Image):  # pefs decodes: one decoder for every source
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    else:  # image paths in a manifest: relative ones are read against the manifest's folder
        base = _manifest_folder(name)
    column = ds.with_format(None)

    def loader(i: int) -> Any:
        value = column[i][image_column]
        if base is not None and isinstance(value, str) and not Path(value).is_absolute():
            return base / value
        return value

    return ImageSet([str(c) for c in classes], labels, [f"{split}[{i}]" for i in range(len(labels))], loader)


def benchmark_spec(spec: object) -> tuple[str, str] | None:
    """(NAME, PATH) of a ``NAME:PATH`` benchmark spec (a name in :data:`SPEC_LOADERS`), or None for any other
    spec: the one parser of that form."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    name, rest = spec.split(":", 1)
    return (name, rest) if name in SPEC_LOADERS else None


def local_path(spec: object) -> Path | None:
    """The local file or folder a ``--data`` spec reads (a ``NAME:PATH`` benchmark's PATH), or None (the
    embedded set, a hub name, a Dataset built in Python): what no output may be or sit inside."""
    if not isinstance(spec, (str, Path)) or spec == DEFAULT_DATASET:
        return None
    parsed = benchmark_spec(str(spec))
    text = parsed[1] if parsed else str(spec)
    return Path(text) if Path(text).exists() else None


def load_dataset(spec: str | Dataset | None = None, label_column: str | None = None, **hf_kwargs) -> Dataset:
    """Resolve a data spec: None or ``fashion-mnist-small`` (embedded), an image folder
    (``root/<class>/*.jpg``), a saved/local Hugging Face dataset folder, a hub name ``user/name``, or a
    benchmark layout ``NAME:PATH`` (:data:`SPEC_LOADERS`, e.g. ``vtab1k:<root>/<task>``).
    A folder's loader is chosen by its top-level layout (:mod:`pefs.data.layout`); ``Dataset.source`` says which.
    ``label_column`` (``--label-column``) names a Hugging Face dataset's label column."""
    if isinstance(spec, Dataset):
        return spec
    if label_column is not None:
        hf_kwargs["label_column"] = label_column
    if spec is None or spec == DEFAULT_DATASET:
        if label_column is not None:
            raise PefsError(f"--label-column {label_column} names a column of a Hugging Face dataset; the embedded "
                            f"{DEFAULT_DATASET} has none (give --data a dataset)")
        return load_default()
    parsed = benchmark_spec(spec)
    if parsed is not None:  # pefs.data.benchmarks
        if label_column is not None:
            raise PefsError(f"--label-column {label_column} names a column of a Hugging Face dataset; {spec!r} is a "
                            "benchmark whose split files give the labels (drop --label-column)")
        return SPEC_LOADERS[parsed[0]](*parsed)
    path = Path(spec)
    if path.is_dir():
        layout = data_layout(path, IMAGE_SUFFIXES)
        if label_column is not None and layout not in (TABLE, MANIFEST):
            raise PefsError(f"--label-column {label_column} names a column of a Hugging Face dataset; {spec!r} is an "
                            "image folder, whose class folders are the labels (drop --label-column)")
        if hf_kwargs or layout in (TABLE, MANIFEST):
            return load_hf(spec, **hf_kwargs)
        return load_folder(path)
    if path.exists():
        raise PefsError(f"data {spec!r} is a file; give a folder (<root>/<class>/*.jpg) or a dataset name")
    typo = missing_local_path(spec)
    if typo is None:
        return load_hf(spec, **hf_kwargs)
    raise PefsError(f"unknown dataset {spec!r}: {typo}; give {DEFAULT_DATASET!r} (embedded), an image "
                    f"folder (<root>/<class>/*.jpg), or a Hugging Face dataset name ('user/name') or local path")
