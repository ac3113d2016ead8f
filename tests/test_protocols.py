"""Protocols: episode sampling, episodes from one frozen start, K-shot records, support views, bad inputs."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from pefs.backbones.describe import IMAGENET_DATA_CONFIG
from pefs.config import TrainConfig, TuneConfig
from pefs.data import (
    episodes,
    eval_transform,
    extra_views,
    kshot_split,
    load_dataset,
    mask_patches,
)
from pefs.errors import PefsError
from pefs.model.directory import weights_fingerprint
from pefs.protocols.loop import run_protocol
from pefs.protocols.run import tune
from pefs.results.stats import mean_ci
from pefs.runtime import engine, hardware
from pefs.runtime.start import changeable
from pefs.runtime.task import TaskRunner
from tests.conftest import decode, same

TINY = "vit_tiny_patch16_224"


@pytest.fixture
def folder(tmp_path):
    """4 classes x 8 images of 12x12 pixels, each class its own colour plus noise."""
    rng = np.random.default_rng(0)
    for c in range(4):
        d = tmp_path / "imgs" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            arr[..., c % 3] += 120 + 40 * (c // 3)
            Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path / "imgs"


def config(folder, tmp_path, **kw) -> TuneConfig:
    base = {"model": TINY, "pretrained": False, "img_size": 32, "data": str(folder), "output": str(tmp_path / "runs"),
            "train": TrainConfig(epochs=2, batch_size=8, progress=False)}
    return TuneConfig(**{**base, **kw})


def test_episodes_have_n_classes_k_support_q_query_disjoint():
    ds = load_dataset(None)
    eps = list(episodes(ds.train, ways=5, shots=3, queries=7, n_episodes=20, seed=4))
    assert len(eps) == 20 and len({tuple(e.classes) for e in eps}) > 1
    for e in eps:
        assert len(set(e.classes)) == 5
        assert (e.support.counts() == 3).all() and (e.query.counts() == 7).all()
        assert not set(e.support.names) & set(e.query.names)
        original = [ds.classes.index(e.support.classes[i]) for i in range(5)]
        assert original == e.classes  # labels 0..N-1 follow the order of the sampled classes
        assert all(n.startswith("train[") for n in e.support.names + e.query.names)
    again = list(episodes(ds.train, 5, 3, 7, 20, seed=4))
    assert [e.support.names for e in eps] == [e.support.names for e in again]


@pytest.mark.parametrize("ways, shots, queries, message", [
    (11, 1, 15, r"ways must lie in 2..10 \(the dataset has 10 classes\), got 11"),
    (1, 1, 15, "ways must lie in 2..10"),
    (5, 50, 15, r"shots=50 \(\+15 held out\) needs more images than class .* has \(60\); valid shots: 1..45"),
    (5, 1, 0, "queries must be a whole number >= 1, got 0"),
])
def test_bad_episode_settings(ways, shots, queries, message):
    with pytest.raises(PefsError, match=message):
        next(episodes(load_dataset(None).train, ways, shots, queries, 1))


def test_ci95_on_known_numbers():
    """The t interval, checked against scipy's t quantile (an independent computation): t(3) · std(ddof=1) / √4."""
    from scipy.stats import t

    s = mean_ci([0.5, 0.7, 0.6, 0.8])
    sd = math.sqrt((0.15**2 + 0.05**2) * 2 / 3)
    assert s.n == 4 and s.mean == pytest.approx(0.65) and s.sd == pytest.approx(sd) and s.method == "t"
    assert s.half_width == pytest.approx(t.ppf(0.975, 3) * sd / 2, rel=1e-9)
    one = mean_ci([0.3])
    assert (one.n, one.mean, one.sd, one.half_width) == (1, 0.3, None, None)  # one seed has no interval


def test_episodes_start_from_identical_weights(folder, tmp_path, monkeypatch):
    cfg = config(folder, tmp_path, strategy="lora", ways=3, shots=2, queries=2, episodes=3)
    ds = load_dataset(cfg.data)
    runner = TaskRunner(cfg, 3)
    seen = []
    real_fit = engine.fit

    def spy(model, *a, **kw):  # the trunk and adapter weights as each episode's training begins
        seen.append({n: p.detach().clone() for n, p in model.net.named_parameters() if not n.startswith("head.")})
        return real_fit(model, *a, **kw)

    monkeypatch.setattr(engine, "fit", spy)
    body, diverged = run_protocol(cfg, ds, runner)
    assert diverged is None and len(seen) == 3 and all(r.steps == 2 for r in body.runs)
    assert all(same(seen[0][n], seen[i][n]) for i in (1, 2) for n in seen[0])
    (start,) = {r.start_state for r in body.runs}  # what each episode could change was the same at its start
    assert [r.info["episode"] for r in body.runs] == [0, 1, 2]
    assert weights_fingerprint(list(changeable(runner.model).items())) != start  # the last episode did train
    assert weights_fingerprint(list(runner.model.state_dict().items())) != runner.start.model_fingerprint


def test_episodic_record(folder, tmp_path):
    rec = tune(config(folder, tmp_path, strategy="last-k", ways=3, shots=1, queries=3, episodes=4))
    assert rec["protocol"] == "episodic" and rec["status"] == "ok" and len(rec["accuracies"]) == 4
    from scipy.stats import t

    a = rec["accuracies"]
    sd = statistics.stdev(a)
    assert rec["accuracy_mean"] == pytest.approx(statistics.mean(a)) and rec["accuracy_sd"] == pytest.approx(sd)
    assert rec["accuracy_ci95"] == pytest.approx(t.ppf(0.975, 3) * sd / 2, rel=1e-9)  # t(3) over 4 episodes
    assert rec["accuracy_n"] == 4 and rec["ci_method"] == "t"
    assert all(r["cached"] and r["support"] == 3 and r["query"] == 9 for r in rec["runs"])
    assert rec["frozen_level"] == 1 + 10  # the input of block 10 of 12: last-k (k=2) caches blocks 0-9


def test_kshot_record_and_same_seed_same_result(folder, tmp_path):
    cfg = config(folder, tmp_path, strategy="last-k", shots=2, seeds=(0, 1), head="linear")
    a, b = tune(cfg), tune(config(folder, tmp_path, strategy="last-k", shots=2, seeds=(0, 1), head="linear"))
    assert a["accuracies"] == b["accuracies"] and [r["final_loss"] for r in a["runs"]] == [
        r["final_loss"] for r in b["runs"]]
    assert len(a["accuracies"]) == 2 and a["accuracy_mean"] == pytest.approx(np.mean(a["accuracies"]))
    assert set(a["time_s"]) == {"decode_s", "extract_s", "train_s", "eval_s"} and a["peak_memory_mb"] > 0
    assert a["params"]["trainable"] > a["params"]["head"] > 0 and a["wall_s"] > 0
    assert a["machine"]["inference_precision"] == ("bf16" if hardware.native_bf16("cpu") else "no")
    splits = [kshot_split(load_dataset(cfg.data), 2, seed=s) for s in (0, 1)]
    used = {n for sp in splits for n in sp.support.names + sp.query.names}
    assert sum(r["decoded"] for r in a["runs"]) == len(used) < sum(r["support"] + r["query"] for r in a["runs"])


def test_prototype_head_trains_nothing_on_a_frozen_trunk(folder, tmp_path):
    rec = tune(config(folder, tmp_path, head="prototype", ways=4, shots=2, queries=3, episodes=2))
    assert all(r["steps"] == 0 and r["train_s"] == 0 for r in rec["runs"]) and rec["accuracy_mean"] > 0.5
    rec = tune(config(folder, tmp_path, head="patch-match", strategy="last-k", shots=1, ways=2, queries=2,
                      episodes=1))
    assert rec["runs"][0]["steps"] > 0  # a training strategy tunes through a prototype-initialised head


def test_prototype_head_on_the_pretrained_offline_model(tmp_path):
    cfg = TuneConfig(head="prototype", ways=5, shots=1, queries=5, episodes=3, img_size=32, output=str(tmp_path),
                     train=TrainConfig(progress=False))
    rec = tune(cfg)
    assert rec["accuracy_mean"] > 0.4  # chance is 0.2: real ImageNet features separate Fashion-MNIST classes


def test_undecodable_image_is_an_error_naming_the_file(folder):
    bad = folder / "class1" / "broken.png"
    bad.write_bytes(b"not a png")
    ds = load_dataset(str(folder))
    i = ds.train.names.index(str(bad))
    with pytest.raises(PefsError, match=r"cannot decode image '.*class1/broken.png'"):
        decode(ds.train.subset([i]), eval_transform(dict(IMAGENET_DATA_CONFIG), 32))


def test_mask_patches_masks_the_asked_fraction_deterministically():
    x = torch.ones(3, 3, 32, 32)
    a = mask_patches(x, 0.5, 8, torch.Generator().manual_seed(0))
    b = mask_patches(x, 0.5, 8, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    patches = a[:, 0].unfold(1, 8, 8).unfold(2, 8, 8).reshape(3, 16, 64)
    assert ((patches == 0).all(-1).sum(-1) == 8).all() and ((patches == 1).all(-1).sum(-1) == 8).all()


def test_extra_views_once_per_task(folder):
    ds = load_dataset(str(folder))
    support = ds.train.subset([0, 8])
    tf = eval_transform(dict(IMAGENET_DATA_CONFIG), 32)
    clean, _ = decode(support, tf)
    x, y = extra_views(support, TuneConfig(views=3, mask_ratio=0.25, mask_patch=8), clean, None, seed=1)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 0, 1]
    assert torch.equal(x, extra_views(support, TuneConfig(views=3, augment=False, mask_ratio=0.25, mask_patch=8),
                                      clean, None, seed=1)[0])


def test_views_train_on_more_support_examples(folder, tmp_path):
    rec = tune(config(folder, tmp_path, shots=2, views=3, augment=True, mask_ratio=0.25, mask_patch=8))
    assert rec["runs"][0]["support"] == 4 * 2 * 3


@pytest.mark.parametrize("kw, message", [
    ({"views": 3}, "views=3 would only repeat each image"),
    ({"augment": True}, "set views >= 2"),
    ({"views": 2, "mask_ratio": 1.0}, r"mask_ratio must lie in \[0, 1\)"),
    ({"head": "knn"}, "unknown head 'knn'"),
    ({"ways": 5, "seeds": (0, 1)}, "episodes draw their own tasks from one seed"),
    ({"ways": 5, "episodes": 0}, "episodes must be a whole number >= 1, got 0"),
])
def test_bad_run_settings(kw, message):
    with pytest.raises(PefsError, match=message):
        TuneConfig(**kw).validate()


def test_patch_match_refuses_a_model_without_token_layout(tmp_path, folder):
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    cfg = config(folder, tmp_path, head="patch-match")
    cfg.model = body  # type: ignore[assignment]
    with pytest.raises(PefsError, match="cannot read its unpooled tokens"):
        TaskRunner(cfg, 4)


def test_cli_head_and_view_flags_reach_the_config(capsys):
    from pefs.cli.flags import config_from_args
    from pefs.cli.main import build_parser, main

    a = build_parser().parse_args(["tune", "--head", "prototype", "--views", "3", "--augment", "--mask-ratio", "0.3",
                                   "--mask-patch", "8", "--ways", "5", "--episodes", "7"])
    cfg = config_from_args(a)
    assert (cfg.head, cfg.views, cfg.augment, cfg.mask_ratio, cfg.mask_patch, cfg.protocol) == (
        "prototype", 3, True, 0.3, 8, "episodic")
    assert main(["tune", "-q", "--head", "knn"]) == 2
    assert "unknown head 'knn'" in capsys.readouterr().err
