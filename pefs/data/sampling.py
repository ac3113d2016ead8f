"""Few-shot sampling, kept apart from models (as easyfsl does): K-shot splits and N-way K-shot episodes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pefs.data.sources import Dataset, ImageSet
from pefs.errors import PefsError


@dataclass
class FewShotSplit:
    """Support (K per class) and query images; ``support_index`` / ``query_index`` say which images of the
    train split and of the test split (or of the held-out part of train) they are."""

    support: ImageSet
    query: ImageSet
    support_index: np.ndarray
    query_index: np.ndarray
    #: ``val_per_class`` images per class from the train split, outside the support (None when not asked for)
    val: ImageSet | None = None
    val_index: np.ndarray | None = None


def _check_shots(shots: int, counts: np.ndarray, classes: list[str], need_extra: int = 0, what: str = "shots") -> None:
    if not isinstance(shots, (int, np.integer)) or shots < 1:
        raise PefsError(f"{what} must be a whole number >= 1, got {shots!r}")
    short = [(classes[c], int(n)) for c, n in enumerate(counts) if n < shots + need_extra]
    if short:
        cls, n = min(short, key=lambda t: t[1])
        limit = int(counts.min()) - need_extra
        if need_extra and limit < 1:  # the queries alone leave no image for the shots
            fix = f"valid queries with shots={shots}: 1..{n - shots}" if n > shots else \
                f"shots + queries must be <= {n}"
            raise PefsError(f"queries={need_extra} with {what}={shots} needs {shots + need_extra} images per class, "
                            f"but class {cls!r} has {n}; {fix}")
        raise PefsError(f"{what}={shots}{f' (+{need_extra} held out)' if need_extra else ''} needs more images "
                        f"than class {cls!r} has ({n}); valid {what}: 1..{max(limit, 0)}")


def kshot_split(dataset: Dataset, shots: int, seed: int = 0, test_fraction: float = 0.3,
                val_per_class: int = 0) -> FewShotSplit:
    """K training images per class from the train split; the query set is the whole test split.

    A dataset without a test split is first split per class, seeded, ``test_fraction`` held out,
    so no image can land in both sets. ``val_per_class`` > 0 also draws that many validation images per class
    from the train split outside the K shots (for choosing hyper-parameters, never the test split); the K shots
    are the same whatever ``val_per_class`` is. A dataset with its own ``kshot(shots, seed)`` draw (a benchmark
    that defines its K-shot subsets, e.g. CoOp's) gives the support indices itself.
    """
    rng = np.random.default_rng(seed)
    train, test = dataset.train, dataset.test
    if test is None:
        train_idx, test_idx = stratified_split(train.labels, test_fraction, seed=seed + 10_007)
        train, test = train.subset(train_idx), train.subset(test_idx)
    own = getattr(dataset, "kshot", None)  # a benchmark that defines its K-shot subsets (CoOp) draws its own
    if own is not None and train is dataset.train:
        if not isinstance(shots, (int, np.integer)) or isinstance(shots, bool) or shots < 1:
            raise PefsError(f"shots must be a whole number >= 1, got {shots!r}")
        support = np.asarray(own(int(shots), int(seed)), dtype=int)
    else:
        _check_shots(shots, train.counts(), train.classes)
        support = np.concatenate([rng.choice(np.flatnonzero(train.labels == c), shots, replace=False)
                                  for c in range(len(train.classes))])
    split = FewShotSplit(train.subset(support), test, support, np.arange(len(test)))
    if val_per_class:
        split.val_index = validation_index(train, support, shots, val_per_class, seed)
        split.val = train.subset(split.val_index)
    return split


def validation_index(train: ImageSet, support: np.ndarray, shots: int, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` images of every class of ``train`` outside ``support`` (its K-shot indices), seeded."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise PefsError(f"val_per_class must be a whole number >= 0, got {per_class!r}")
    counts = train.counts()
    short = [(train.classes[c], int(n)) for c, n in enumerate(counts) if n < shots + per_class]
    if short:
        cls, n = min(short, key=lambda t: t[1])
        most = max(int(counts.min()) - shots, 0)
        raise PefsError(f"shots={shots} + val_per_class={per_class} needs {shots + per_class} train images per "
                        f"class, but class {cls!r} has {n}; valid val_per_class: 0..{most}")
    rng = np.random.default_rng([seed, 0x5A1])  # its own stream: the K shots never depend on the validation draw
    outside = np.setdiff1d(np.arange(len(train)), support)
    return np.concatenate([rng.choice(outside[train.labels[outside] == c], per_class, replace=False)
                           for c in range(len(train.classes))])


def hold_out(images: ImageSet, per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split a support set (an episode's) into what trains and ``per_class`` held-out images per class, seeded.
    Every class must keep at least one image: with 1 shot nothing can be held out, and that is an error that
    says so (use fixed settings there)."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise PefsError(f"images held out per class must be a whole number >= 1, got {per_class!r}")
    counts = images.counts()
    present = counts[counts > 0]
    if not len(present) or int(present.min()) <= per_class:
        k = int(present.min()) if len(present) else 0
        raise PefsError(f"holding out {per_class} per class from a {k}-shot support leaves nothing to train on; "
                        f"valid: 1..{max(k - 1, 0)} (a 1-shot support leaves nothing to validate on: use fixed "
                        "settings there)")
    rng = np.random.default_rng([seed, 0x401D])
    held = np.concatenate([rng.choice(np.flatnonzero(images.labels == c), per_class, replace=False)
                           for c in np.flatnonzero(counts)])
    kept = np.setdiff1d(np.arange(len(images)), held)
    return images.subset(kept), images.subset(np.sort(held))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded split; every class keeps at least one image on each side."""
    if not 0 < test_fraction < 1:
        raise PefsError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise PefsError(f"class {c} has {len(idx)} image; a held-out split needs at least 2 per class")
        n_test = min(max(1, round(len(idx) * test_fraction)), len(idx) - 1)
        te.append(idx[:n_test])
        tr.append(idx[n_test:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te))


@dataclass
class Episode:
    """One N-way K-shot task: labels are re-indexed 0..N-1 in the order of ``classes``."""

    support: ImageSet
    query: ImageSet
    classes: list[int]


def episodes(pool: ImageSet, ways: int, shots: int, queries: int, n_episodes: int, seed: int = 0) -> Iterator[Episode]:
    """Sample ``n_episodes`` N-way K-shot tasks with ``queries`` query images per class, disjoint."""
    n_classes = len(pool.classes)
    if not isinstance(ways, (int, np.integer)) or not 2 <= ways <= n_classes:
        raise PefsError(f"ways must lie in 2..{n_classes} (the dataset has {n_classes} classes), got {ways!r}")
    if not isinstance(queries, (int, np.integer)) or queries < 1:
        raise PefsError(f"queries must be a whole number >= 1, got {queries!r}")
    if not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
        raise PefsError(f"episodes must be a whole number >= 1, got {n_episodes!r}")
    counts = pool.counts()
    eligible = np.flatnonzero(counts >= shots + queries) if isinstance(shots, (int, np.integer)) and shots >= 1 else []
    if len(eligible) < ways:
        _check_shots(shots, counts, pool.classes, need_extra=queries)
        raise PefsError(f"only {len(eligible)} classes have shots+queries={shots + queries} images; ways must be "
                        f"<= {len(eligible)}")
    rng = np.random.default_rng(seed)
    for _ in range(n_episodes):
        chosen = rng.choice(eligible, ways, replace=False)
        sup, qry = [], []
        for c in chosen:
            idx = rng.choice(np.flatnonzero(pool.labels == c), shots + queries, replace=False)
            sup.append(idx[:shots])
            qry.append(idx[shots:])
        yield Episode(_relabel(pool, np.concatenate(sup), chosen), _relabel(pool, np.concatenate(qry), chosen),
                      [int(c) for c in chosen])


def _relabel(pool: ImageSet, idx: np.ndarray, chosen: np.ndarray) -> ImageSet:
    sub = pool.subset(idx)
    remap = {int(c): i for i, c in enumerate(chosen)}
    return ImageSet([pool.classes[c] for c in chosen], np.array([remap[int(v)] for v in sub.labels]),
                    sub.names, sub.loader)
