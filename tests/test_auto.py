"""``pefs tune --strategy auto --budget``: strategies that apply, chosen on validation within a time budget."""

from __future__ import annotations

import pytest

from pefs.cli.main import main
from pefs.config import TrainConfig, TuneConfig
from pefs.config.checks import parse_budget
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.protocols.selection.auto import CANDIDATES, grid


def auto_cfg(image_folder, tmp_path, **kw) -> TuneConfig:
    base = {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 32, "data": str(image_folder),
            "shots": 2, "val_per_class": 1, "seeds": (0,), "output": str(tmp_path), "strategy": "auto",
            "budget": "1h", "train": TrainConfig(epochs=1, batch_size=8, progress=False)}
    return TuneConfig(**{**base, **kw})


def test_budget_forms_and_bad_budgets():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    for bad in ("10", "abc", "-5m", "0s", "10 minutes", "", "infh"):
        with pytest.raises(PefsError, match=r"is not a time budget; give a positive number with a unit: 90s, 10m"):
            parse_budget(bad)


def test_budget_needs_auto_and_auto_needs_a_budget():
    with pytest.raises(PefsError, match=r"--budget 10m limits --strategy auto's search; the strategy is 'lora'"):
        TuneConfig(strategy="lora", budget="10m").validate()
    with pytest.raises(PefsError, match=r"--strategy auto searches within a time budget: give one"):
        TuneConfig(strategy="auto").validate()
    with pytest.raises(PefsError, match=r"--budget '5 min' is not a time budget"):
        TuneConfig(strategy="auto", budget="5 min").validate()
    with pytest.raises(PefsError, match=r"drop --search lr=1e-3,1e-2"):
        TuneConfig(strategy="auto", budget="5m", search={"lr": "1e-3,1e-2"}).validate()
    assert TuneConfig().hash() == TuneConfig(budget=None).hash()  # an existing run keeps its hash
    assert TuneConfig(strategy="auto", budget="5m").hash() != TuneConfig(strategy="auto", budget="10m").hash()


def test_cli_refuses_a_bad_budget_in_one_line(capsys):
    assert main(["tune", "--strategy", "lora", "--budget", "10m"]) == 2
    err = capsys.readouterr().err
    assert "--budget 10m limits --strategy auto's search" in err and "Traceback" not in err


def test_grid_tries_every_strategy_once_before_a_second_rate():
    g = grid(("linear", "lora"))
    assert g == [{"strategy": "linear", "head_lr": 1e-2}, {"strategy": "lora", "lr": 1e-3},
                 {"strategy": "linear", "head_lr": 1e-1}, {"strategy": "lora", "lr": 1e-2}]


def test_auto_chooses_on_validation_and_says_why(image_folder, tmp_path, capsys):
    rec = tune(auto_cfg(image_folder, tmp_path))
    sel, run = rec["selection"], rec["runs"][0]
    assert rec["status"] == "ok" and rec["strategy"] == "auto"
    assert set(sel["candidates"]) | set(sel["not_applicable"]) == set(CANDIDATES)
    assert all(reason for reason in sel["not_applicable"].values())
    ran = [r for r in run["search"] if r["status"] == "ok"]
    assert len(ran) == 2 * len(sel["candidates"])  # an hour is enough for the whole grid
    assert all(r["trainable"] > 0 and r["seconds"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in ran)
    best = max(r["val_accuracy"] for r in ran)
    tied = [r for r in ran if r["val_accuracy"] == best]
    fewest = min(r["trainable"] for r in tied)
    assert run["chosen"] in [r["setting"] for r in tied if r["trainable"] == fewest]  # ties: fewer parameters
    assert sel["why"][0].startswith(f"auto chose {run['chosen']['strategy']} (") and " over " in sel["why"][0]
    assert run["val_images"] == 3 and run["query"] == 6
    assert rec["params"]["trainable"] == next(r["trainable"] for r in ran if r["setting"] == run["chosen"])


def test_auto_skips_what_the_budget_cannot_fit(image_folder, tmp_path):
    rec = tune(auto_cfg(image_folder, tmp_path, budget="0.001s"))
    table = rec["runs"][0]["search"]
    assert table[0]["status"] == "ok"  # the first setting always runs
    assert all(r["status"].startswith("skipped (budget") for r in table[1:]) and len(table) > 1
    assert rec["runs"][0]["chosen"] == table[0]["setting"]
    assert "skipped for the budget:" in rec["selection"]["why"][0]


def test_auto_on_one_shot_episodes_runs_linear_defaults_and_says_so(image_folder, tmp_path):
    rec = tune(auto_cfg(image_folder, tmp_path, ways=2, shots=1, queries=2, episodes=2))
    assert rec["selection"]["on"] == "default (1-shot: no held-out support)"
    assert [r["chosen"] for r in rec["runs"]] == [{"strategy": "linear"}] * 2
    assert all("no image to validate on" in w for w in rec["selection"]["why"])


def test_cli_prints_what_auto_chose(image_folder, tmp_path, capsys):
    code = main(["tune", "--strategy", "auto", "--budget", "1h", "--model", "vit_tiny_patch16_224",
                 "--no-pretrained", "--img-size", "32", "--data", str(image_folder), "--shots", "2",
                 "--val-per-class", "1", "--epochs", "1", "--output", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "auto chose " in out and " over " in out and "val " in out and " trainable)" in out


def test_a_candidate_that_does_not_apply_is_skipped_with_its_reason(image_folder, tmp_path, monkeypatch):
    import pefs.protocols.selection.selector as selection

    real = selection.TaskRunner

    def runner(cfg, n):
        if cfg.strategy == "ssf":
            raise PefsError("ssf found no Linear or Conv layer inside the blocks of this model")
        return real(cfg, n)

    monkeypatch.setattr(selection, "TaskRunner", runner)
    rec = tune(auto_cfg(image_folder, tmp_path))
    sel = rec["selection"]
    assert sel["not_applicable"] == {"ssf": "ssf found no Linear or Conv layer inside the blocks of this model"}
    assert "ssf" not in sel["candidates"] and len(sel["candidates"]) == len(CANDIDATES) - 1
    assert all(r["setting"]["strategy"] != "ssf" for r in rec["runs"][0]["search"])
