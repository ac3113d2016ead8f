"""``pefs tune --search``: settings chosen on validation images outside the K shots, then one test score."""

from __future__ import annotations

import pytest

from pefs.cli import build_parser, config_from_args
from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.tune import tune


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
    with pytest.raises(PefsError, match="--search runs on K-shot transfer"):
        tune(search_cfg(image_folder, tmp_path, ways=2, seeds=(0,)))
