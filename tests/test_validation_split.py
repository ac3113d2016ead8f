"""Validation data for choosing hyper-parameters: never the K shots, never the test split."""

from __future__ import annotations

import numpy as np
import pytest

from pefs.data import episodes, hold_out, kshot_split, load_dataset
from pefs.errors import PefsError


@pytest.mark.parametrize("shots, per_class", [(1, 5), (5, 3), (10, 50)])
def test_kshot_validation_is_outside_the_shots_and_the_test_split(shots, per_class):
    ds = load_dataset(None)
    for seed in range(3):
        split = kshot_split(ds, shots, seed=seed, val_per_class=per_class)
        val, sup, test = set(split.val.names), set(split.support.names), set(split.query.names)
        assert len(val) == per_class * len(ds.classes) and (split.val.counts() == per_class).all()
        assert not val & sup and not val & test
        assert all(n.startswith("train[") for n in val)
        # the K shots do not depend on whether validation images are drawn
        assert split.support.names == kshot_split(ds, shots, seed=seed).support.names


def test_kshot_validation_is_deterministic_under_a_seed():
    ds = load_dataset(None)
    a, b = (kshot_split(ds, 5, seed=3, val_per_class=4) for _ in range(2))
    assert a.val.names == b.val.names and (a.val_index == b.val_index).all()
    assert kshot_split(ds, 5, seed=4, val_per_class=4).val.names != a.val.names
    assert kshot_split(ds, 5, seed=3).val is None  # nothing drawn unless asked


def test_validation_without_a_test_split_stays_out_of_the_held_out_test(image_folder):
    ds = load_dataset(str(image_folder))  # 3 classes x 6 images, no test split: one is carved from train
    assert ds.test is None
    split = kshot_split(ds, 2, seed=1, val_per_class=2)
    names = [set(split.support.names), set(split.val.names), set(split.query.names)]
    assert all(not (names[i] & names[j]) for i in range(3) for j in range(i + 1, 3))
    assert (split.val.counts() == 2).all()


def test_too_few_images_for_shots_plus_validation_names_the_class_and_range(image_folder):
    ds = load_dataset(str(image_folder))  # 4 train images per class after the held-out test
    with pytest.raises(PefsError, match=r"shots=2 \+ val_per_class=3 needs 5 train images per class, but class "
                                        r"'\w+' has 4; valid val_per_class: 0..2"):
        kshot_split(ds, 2, seed=0, val_per_class=3)
    with pytest.raises(PefsError, match="val_per_class must be a whole number >= 0, got -1"):
        kshot_split(ds, 2, seed=0, val_per_class=-1)


def test_episode_support_holds_out_validation_disjointly():
    ds = load_dataset(None)
    ep = next(episodes(ds.train, ways=5, shots=5, queries=3, n_episodes=1, seed=2))
    kept, held = hold_out(ep.support, 2, seed=7)
    assert (kept.counts() == 3).all() and (held.counts() == 2).all()
    assert not set(kept.names) & set(held.names) and set(kept.names) | set(held.names) == set(ep.support.names)
    assert not set(held.names) & set(ep.query.names)
    again = hold_out(ep.support, 2, seed=7)[1]
    assert again.names == held.names and np.array_equal(again.labels, held.labels)
    assert hold_out(ep.support, 2, seed=8)[1].names != held.names


def test_one_shot_episode_leaves_nothing_to_validate_on():
    ds = load_dataset(None)
    ep = next(episodes(ds.train, ways=3, shots=1, queries=2, n_episodes=1, seed=0))
    with pytest.raises(PefsError, match="from a 1-shot support leaves nothing to train on; valid: 1..0 .*fixed "
                                        "settings"):
        hold_out(ep.support, 1, seed=0)


def test_kshot_held_out_split_keeps_a_test_image_of_every_class():
    """A held-out test split keeps at least one image per class on each side, even at a tiny test fraction."""
    from pefs.data.sampling import stratified_split

    labels = np.repeat(np.arange(3), 4)
    train, test = stratified_split(labels, 0.05, seed=0)
    assert np.bincount(labels[test], minlength=3).tolist() == [1, 1, 1]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(12))


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_bad_episode_count_is_refused(n):
    """A number of episodes that is not a whole number >= 1 is refused naming it."""
    with pytest.raises(PefsError, match=rf"^episodes must be a whole number >= 1, got {n}$"):
        next(episodes(load_dataset(None).train, 5, 1, 1, n))
