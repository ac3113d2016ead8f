"""Search specs (``--search lr=..``, ``-o r=4,8``, ``strategy=..``): the grid, its order, and clear errors."""

from __future__ import annotations

import pytest

from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.selection.search import apply, parse_search, run_search


def test_grid_is_the_product_in_the_order_given():
    space = parse_search(["lr=1e-4,1e-3", "epochs=5,10"], strategy="lora")
    assert space.settings() == [{"lr": 1e-4, "epochs": 5}, {"lr": 1e-4, "epochs": 10},
                                {"lr": 1e-3, "epochs": 5}, {"lr": 1e-3, "epochs": 10}]
    assert isinstance(space.settings()[0]["epochs"], int)
    # an optional whole number (steps: int | None) is searched as its int
    assert parse_search(["steps=10,50"], strategy="lora").settings() == [{"steps": 10}, {"steps": 50}]


def test_option_lists_from_o_become_axes_and_fold_for_strategies_without_them():
    space = parse_search(["strategy=linear,bias,lora"], {"r": "4,8"}, strategy="linear")
    assert space.settings() == [{"strategy": "linear"}, {"strategy": "bias"},
                                {"strategy": "lora", "r": 4}, {"strategy": "lora", "r": 8}]
    # --search r=4,8 is the same axis; a list-valued option (targets) stays a fixed option
    assert parse_search(["r=4,8"], strategy="lora").settings() == [{"r": 4}, {"r": 8}]
    space = parse_search([], {"targets": "qkv,proj", "r": "2,4"}, strategy="lora")
    assert space.settings() == [{"r": 2}, {"r": 4}] and space.fixed_options == {"targets": "qkv,proj"}


def test_apply_builds_the_config_of_a_setting_and_leaves_the_base_alone():
    base = TuneConfig(strategy="linear", options={"alpha": 8}, train=TrainConfig(lr=1e-3))
    cfg = apply(base, {"strategy": "lora", "r": 4, "lr": 1e-2})
    assert cfg.strategy == "lora" and cfg.options == {"alpha": 8, "r": 4} and cfg.train.lr == 1e-2
    assert apply(base, {"strategy": "bias"}).options == {}  # bias takes no alpha: dropped, not an error
    assert base.options == {"alpha": 8} and base.train.lr == 1e-3 and base.strategy == "linear"


def test_search_is_deterministic_and_picks_the_best_validation_score():
    space = parse_search(["lr=1e-4,1e-3,1e-2", "strategy=linear,lora"])
    scores = {(s["strategy"], s["lr"]): 0.1 * i for i, s in enumerate(space.settings())}
    scores[("lora", 1e-3)] = 0.95
    res = run_search(space, lambda s: scores[(s["strategy"], s["lr"])])
    assert res.chosen == {"lr": 1e-3, "strategy": "lora"}
    assert [r["setting"] for r in res.table] == space.settings()
    assert all(r["seconds"] >= 0 and r["status"] == "ok" for r in res.table)
    assert run_search(space, lambda s: scores[(s["strategy"], s["lr"])]).chosen == res.chosen
    # ties go to the earlier setting; a diverged (NaN) setting never wins
    assert run_search(space, lambda s: float("nan") if s["lr"] == 1e-4 else 0.5).chosen == {"lr": 1e-3,
                                                                                           "strategy": "linear"}


def test_budget_skips_the_settings_it_has_no_time_for():
    res = run_search(parse_search(["lr=1e-4,1e-3,1e-2"]), lambda s: s["lr"], budget_s=0.0)
    assert [r["status"] for r in res.table] == ["ok", "skipped (budget)", "skipped (budget)"]
    assert res.chosen == {"lr": 1e-4}


@pytest.mark.parametrize("items, options, strategy, message", [
    (["lr=abc"], {}, "linear", r"search lr='abc': not a valid value; lr takes float"),
    (["lr=1e-3,-1"], {}, "linear", r"lr must be > 0 and finite, got -1.0"),
    (["lr="], {}, "linear", r"search lr='' has an empty value"),
    (["lr=1e-3,"], {}, "linear", r"has an empty value"),
    (["lr"], {}, "linear", r"search items look like KEY=V1,V2 .*got 'lr'"),
    (["epochs=2.5"], {}, "linear", r"search epochs='2.5': not a valid value; epochs takes int"),
    (["steps=0,10"], {}, "linear", r"steps must be a whole number >= 1 .*got 0"),
    (["bn_stats=thawed"], {}, "linear", r"bn_stats='thawed'.*takes frozen \| update"),
    (["lr=1e-3,1e-3"], {}, "linear", r"search lr lists 0.001 twice"),
    (["lr=1e-3", "lr=1e-2"], {}, "linear", r"search names 'lr' twice"),
    (["r=4,8"], {}, "bias", r"cannot search 'r': not a training setting \(epochs, .*\) nor an option of strategy bias "
                            r"\(its options: none\)"),
    (["momentum=0.9,0.99"], {}, "lora",
     r"cannot search 'momentum'.*its options: alpha, dropout, quantize, r, targets, use_dora"),
    (["r=4,x"], {}, "lora", r"option r='x' of strategy 'lora' must be int"),
    (["r=0,4"], {}, "lora", r"option r=0 of strategy 'lora' must be >= 1"),
    (["strategy=linear,lorra"], {}, "linear", r"unknown strategy 'lorra'; .*lora"),
    (["head=linear,knn"], {}, "linear", r"search head='knn': unknown head; valid choices: linear, linear-proto"),
    (["targets=qkv,proj"], {}, "lora", r"option targets takes a list itself"),
    ([], {"rank": "4,8"}, "lora", r"cannot search 'rank'.*its options: alpha, dropout, quantize, r, targets, use_dora"),
    ([], {"rank": "4"}, "lora", r"unknown option 'rank' for strategy 'lora'"),
])
def test_bad_search_specs_are_clear_errors(items, options, strategy, message):
    with pytest.raises(PefsError, match=message):
        parse_search(items, options, strategy=strategy)
