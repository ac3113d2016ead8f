"""``pefs tune --search``: settings chosen on validation images outside the K shots, then one test score."""

from __future__ import annotations

import pytest

from pefs.cli.flags import config_from_args
from pefs.cli.main import build_parser
from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.run import tune


def test_cli_search_and_list_options_reach_the_config():
    a = build_parser().parse_args(["tune", "--search", "lr=1e-4,1e-3", "--search", "strategy=linear,lora",
                                   "-o", "r=4,8", "--val-per-class", "3"])
    cfg = config_from_args(a)
    assert cfg.search == {"lr": "1e-4,1e-3", "strategy": "linear,lora"} and cfg.options == {"r": "4,8"}
    assert cfg.val_per_class == 3
    assert TuneConfig().hash() != TuneConfig(search={"lr": "1e-4,1e-3"}).hash()  # a searched run is its own cell


def search_cfg(image_folder, tmp_path, **kw) -> TuneConfig:
    base = {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 32, "data": str(image_folder),
            "shots": 2, "val_per_class": 1, "seeds": (0, 1), "output": str(tmp_path),
            "search": {"strategy": "linear,bias", "lr": "1e-3,1e-1"}, "options": {},
            "train": TrainConfig(epochs=2, batch_size=8, progress=False)}
    return TuneConfig(**{**base, **kw})


def test_tune_with_search_records_the_choice_and_the_table(image_folder, tmp_path):
    rec = tune(search_cfg(image_folder, tmp_path))
    settings = [{"strategy": s, "lr": lr} for s in ("linear", "bias") for lr in (1e-3, 1e-1)]
    assert rec["selection"]["on"] == "validation" and len(rec["runs"]) == 2
    for run in rec["runs"]:
        assert [r["setting"] for r in run["search"]] == settings
        assert all(0 <= r["val_accuracy"] <= 1 and r["seconds"] > 0 for r in run["search"])
        best = max(r["val_accuracy"] for r in run["search"])
        assert run["chosen"] in settings and next(r for r in run["search"] if r["setting"] == run["chosen"])[
            "val_accuracy"] == best
        assert run["val_images"] == 3 and run["query"] == 6  # 1 validation image per class; the test split
    again = tune(search_cfg(image_folder, tmp_path))
    assert [r["chosen"] for r in again["runs"]] == [r["chosen"] for r in rec["runs"]]
    assert again["accuracies"] == rec["accuracies"] and again["config_hash"] == rec["config_hash"]


def test_bad_search_fails_before_any_training(image_folder, tmp_path):
    with pytest.raises(PefsError, match="search lr='abc': not a valid value"):
        tune(search_cfg(image_folder, tmp_path, search={"lr": "abc"}))
    with pytest.raises(PefsError, match=r"val_per_class=3 needs 5 train images per class"):
        tune(search_cfg(image_folder, tmp_path, val_per_class=3))
    with pytest.raises(PefsError, match="--final trains on every labelled image, leaving none to validate"):
        tune(search_cfg(image_folder, tmp_path, final=True, save_adapter=str(tmp_path / "m"), seeds=(0,)))


def episode_cfg(image_folder, tmp_path, **kw) -> TuneConfig:
    return search_cfg(image_folder, tmp_path, **{"ways": 2, "shots": 2, "queries": 2, "episodes": 2, "seeds": (0,),
                                                 "search": {"lr": "1e-3,1e-1"}, **kw})


def test_episode_search_validates_on_held_out_support_never_on_queries(image_folder, tmp_path):
    rec = tune(episode_cfg(image_folder, tmp_path))
    assert rec["protocol"] == "episodic" and rec["status"] == "ok" and len(rec["runs"]) == 2
    assert rec["selection"]["on"] == "held-out support" and rec["selection"]["val_per_class"] == 1
    for run in rec["runs"]:
        assert [r["setting"] for r in run["search"]] == [{"lr": 1e-3}, {"lr": 1e-1}]
        assert run["val_images"] == 2 and run["support"] == 4 and run["query"] == 4  # retrained on all 2 shots
        assert run["chosen"] in ({"lr": 1e-3}, {"lr": 1e-1})
        assert len(run["val_names"]) == 2
    again = tune(episode_cfg(image_folder, tmp_path))
    assert [r["chosen"] for r in again["runs"]] == [r["chosen"] for r in rec["runs"]]
    assert [[r["val_accuracy"] for r in run["search"]] for run in again["runs"]] == \
        [[r["val_accuracy"] for r in run["search"]] for run in rec["runs"]]
    assert again["accuracies"] == rec["accuracies"] and [r["val_names"] for r in again["runs"]] == \
        [r["val_names"] for r in rec["runs"]]


def test_held_out_support_is_disjoint_from_the_episode_queries(image_folder, tmp_path):
    from pefs.data import load_dataset
    from pefs.protocols.loop import tasks
    from pefs.protocols.selection.search import parse_search
    from pefs.protocols.selection.selector import Selector

    cfg = episode_cfg(image_folder, tmp_path, episodes=3)
    selector = Selector(cfg, 2, parse_search(["lr=1e-3"], {}, "linear"))
    picked = []
    selector.runners.get = lambda c: picked.append(c) or _Scorer()  # score without training
    for task in tasks(cfg, load_dataset(cfg.data), validate=True):
        info = selector(task).info
        held = set(info["val_names"])
        assert len(held) == 2 and held <= set(task.support.names) and not held & set(task.query.names)


class _Scorer:
    """A runner stand-in that records the images it was asked to train on and score."""

    def run(self, support, query, seed, train=None):
        from types import SimpleNamespace
        assert not set(support.names) & set(query.names)  # the held-out images never train the scored setting
        return SimpleNamespace(accuracy=0.5)


def test_one_shot_episodes_run_the_default_setting_and_say_so(image_folder, tmp_path):
    rec = tune(episode_cfg(image_folder, tmp_path, shots=1, search={"lr": "1e-3,1e-1"}))
    assert rec["selection"]["on"] == "default (1-shot: no held-out support)"
    assert rec["selection"]["val_per_class"] == 0
    for run in rec["runs"]:
        assert run["chosen"] == {} and run["search"] == [] and run["val_images"] == 0
        assert "val_names" not in run
    plain = tune(search_cfg(image_folder, tmp_path, ways=2, shots=1, queries=2, episodes=2, seeds=(0,), search={}))
    assert plain["accuracies"] == rec["accuracies"]  # the TrainConfig default lr, not the first searched value


def test_search_saves_each_seeds_chosen_model(image_folder, tmp_path):
    import json

    rec = tune(search_cfg(image_folder, tmp_path, save_adapter=str(tmp_path / "models"),
                          search={"strategy": "linear,bias"}))
    for run in rec["runs"]:
        saved = json.loads((tmp_path / "models" / f"seed{run['seed']}" / "pefs_config.json").read_text())
        assert saved["spec"] == run["chosen"]["strategy"] == saved["tune_config"]["strategy"]
        assert saved["class_names"] == ["cat", "dog", "fox"]  # the run's data describes each chosen model
