"""The full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (70,000 28x28 images, MIT licence) as pefs data.

``dataset(n_test, per_class)``: a train split of the first ``per_class`` images of each class of the official
training set, and a test split of ``n_test`` images: the official 10,000 test images, then the rest of the
training set, so splits up to 69,000 images exist. ``write_folder`` writes such a split as PNG files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx(name: str) -> np.ndarray:
    path = ROOT / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: apt-get install -y dataset-fashion-mnist (as root)")
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def arrays(n_test: int, per_class: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8 / int arrays."""
    xtr, ytr = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz").astype(int)
    xte, yte = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz").astype(int)
    train = np.concatenate([np.flatnonzero(ytr == c)[:per_class] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(ytr)), train)
    pool_x, pool_y = np.concatenate([xte, xtr[rest]]), np.concatenate([yte, ytr[rest]])
    if n_test > len(pool_y):
        raise SystemExit(f"at most {len(pool_y)} test images, asked for {n_test}")
    return xtr[train], ytr[train], pool_x[:n_test], pool_y[:n_test]


def dataset(n_test: int, per_class: int = 20):
    """A pefs Dataset (arrays in memory, 28x28 grayscale decoded to RGB by pefs)."""
    from pefs.data import Dataset, from_arrays

    xtr, ytr, xte, yte = arrays(n_test, per_class)
    return Dataset(f"fashion-mnist-{n_test}", from_arrays(xtr, ytr, CLASSES, "train"),
                   from_arrays(xte, yte, CLASSES, "test"), licence="Fashion-MNIST (c) 2017 Zalando SE, MIT licence")


def write_folder(root: str | Path, n_test: int, per_class: int = 20) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``; kept if already complete."""
    from PIL import Image

    root = Path(root)
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{n_test} {per_class}":
        return root
    xtr, ytr, xte, yte = arrays(n_test, per_class)
    for split, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            d = root / split / f"{y}-{CLASSES[y].replace('/', '-')}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(d / f"{i:05d}.png")
    done.write_text(f"{n_test} {per_class}")
    return root
