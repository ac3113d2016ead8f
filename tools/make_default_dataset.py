"""Rebuild pefs' embedded default dataset from Debian's ``dataset-fashion-mnist`` package.

Run as ``python tools/make_default_dataset.py`` after ``apt-get install dataset-fashion-mnist``.
Takes the first ``--train-per-class`` images of each class from the official train split and the
first ``--test-per-class`` of each class from the official test split, and writes them (uint8,
28x28, grayscale) with labels and class names to ``pefs/data/assets/fashion_mnist_small.npz``.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SRC = Path("/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parents[1] / "pefs" / "data" / "assets" / "fashion_mnist_small.npz"


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST container format)."""
    data = gzip.open(path, "rb").read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(len(CLASSES))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-per-class", type=int, default=60)
    ap.add_argument("--test-per-class", type=int, default=40)
    args = ap.parse_args()
    xtr, ytr = read_idx(SRC / "train-images-idx3-ubyte.gz"), read_idx(SRC / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(SRC / "t10k-images-idx3-ubyte.gz"), read_idx(SRC / "t10k-labels-idx1-ubyte.gz")
    itr, ite = first_per_class(ytr, args.train_per_class), first_per_class(yte, args.test_per_class)
    np.savez_compressed(DST, train_images=xtr[itr], train_labels=ytr[itr], test_images=xte[ite],
                        test_labels=yte[ite], classes=np.array(CLASSES))
    print(f"wrote {DST} ({DST.stat().st_size} bytes): train {len(itr)}, test {len(ite)}")


if __name__ == "__main__":
    main()
