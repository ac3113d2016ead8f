"""Data adapters and K-shot sampling."""

from __future__ import annotations

import numpy as np
import pytest

from pefs.data import from_arrays, kshot_split, load_dataset, load_default
from pefs.data.sources import Dataset
from pefs.errors import PefsError


def test_default_dataset_is_real_and_split():
    ds = load_default()
    assert len(ds.classes) == 10 and ds.classes[0] == "T-shirt/top"
    assert (ds.train.counts() == 60).all() and (ds.test.counts() == 40).all()
    img = ds.train.image(0)
    assert img.size == (28, 28) and img.mode == "RGB"
    assert np.asarray(img).std() > 10  # a real picture, not a blank


def test_kshot_is_deterministic_for_a_seed_and_varies_across_seeds():
    ds = load_default()
    a, b, c = (kshot_split(ds, 4, seed=s) for s in (3, 3, 4))
    assert a.support.names == b.support.names
    assert a.support.names != c.support.names
    assert (a.support.counts() == 4).all()


def test_kshot_never_leaks_between_support_and_query():
    ds = load_default()
    split = kshot_split(ds, 8, seed=1)
    assert not set(split.support.names) & set(split.query.names)
    # without a test split, pefs makes one; still no overlap, and it covers every class
    arr = from_arrays(np.random.default_rng(0).integers(0, 255, (60, 8, 8), dtype=np.uint8), np.arange(60) % 3)
    split = kshot_split(Dataset("arr", arr), 5, seed=2)
    assert not set(split.support.names) & set(split.query.names)
    assert (split.query.counts() > 0).all()


@pytest.mark.parametrize("shots", [0, -1, 61])
def test_bad_shots(shots):
    with pytest.raises(PefsError, match="shots"):
        kshot_split(load_default(), shots)


def test_too_many_shots_names_the_class_and_range():
    with pytest.raises(PefsError, match=r"class 'T-shirt/top' has \(60\); valid shots: 1..60"):
        kshot_split(load_default(), 61)


def test_image_folder(image_folder):
    ds = load_dataset(str(image_folder))
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) == 18 and ds.test is None


def test_empty_class_folder_is_an_error(image_folder):
    (image_folder / "empty").mkdir()
    with pytest.raises(PefsError, match="has no images"):
        load_dataset(str(image_folder))


def test_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(PefsError, match="has no images"):
        load_dataset(str(tmp_path))


def test_unknown_dataset_spec():
    with pytest.raises(PefsError, match="unknown dataset 'nosuchthing'"):
        load_dataset("nosuchthing")


def test_hf_local_dataset(tmp_path):
    import datasets

    imgs = np.random.default_rng(0).integers(0, 255, (12, 10, 10, 3), dtype=np.uint8)
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": list(imgs[:9]), "y": [0, 1, 2] * 3}, features=feats),
        "test": datasets.Dataset.from_dict({"img": list(imgs[9:]), "y": [0, 1, 2]}, features=feats)})
    dd.save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(str(tmp_path / "hf"))
    assert ds.classes == ["a", "b", "c"] and len(ds.train) == 9 and len(ds.test) == 3
    assert ds.train.image(0).size == (10, 10)
    with pytest.raises(PefsError, match="no column 'nope'"):
        load_dataset(str(tmp_path / "hf"), image_column="nope")


def test_kshot_draws_k_distinct_images_per_class():
    """The K shots of a class are K different images (drawn without replacement), for every seed; at K equal to
    the class size the support is the whole class, each image once."""
    ds = load_default()
    for seed in range(5):
        split = kshot_split(ds, 10, seed=seed)
        for c in range(len(ds.classes)):
            picked = split.support_index[ds.train.labels[split.support_index] == c]
            assert len(picked) == 10 and len(set(picked.tolist())) == 10, (seed, c)
    whole = kshot_split(ds, 60, seed=0)
    assert sorted(whole.support_index.tolist()) == list(range(len(ds.train)))


def test_episodes_draw_distinct_support_and_query_images():
    """In every episode each class gives K support and Q query images, all different images of the pool."""
    from pefs.data.sampling import episodes

    pool = load_default().train
    for ep in episodes(pool, ways=5, shots=5, queries=15, n_episodes=20, seed=3):
        names = list(ep.support.names) + list(ep.query.names)
        assert len(names) == 5 * 20 and len(set(names)) == len(names)
        assert (ep.support.counts() == 5).all() and (ep.query.counts() == 15).all()
