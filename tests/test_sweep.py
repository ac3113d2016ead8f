"""Sweeps: a real 2×2×2 grid end to end, kill + resume without recomputing or duplicating, torn store lines,
failed cells, sharding over simulated processes, and errors for bad grids and recipes before any cell runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pefs.protocols.run
from pefs.cli.main import main
from pefs.config import TrainConfig, run_key
from pefs.data import load_dataset
from pefs.errors import PefsError
from pefs.protocols.run import resolve
from pefs.results import store
from pefs.runtime.engine import NonFiniteLoss
from pefs.sweep import run as sweep
from pefs.sweep.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = ["--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On a shared, oversubscribed CPU, two spinning OpenMP threads per process run these tiny models ~3x slower
    than one (measured: the 2×2×2 grid 97 s vs 32 s); the tests measure behaviour, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def counting_tune(monkeypatch) -> list[str]:
    """Wrap the real tune: record the hash of each call."""
    calls, real = [], pefs.protocols.run.tune

    def tune(cfg):
        calls.append(cfg.hash())
        return real(cfg)

    monkeypatch.setattr(pefs.protocols.run, "tune", tune)
    return calls


def fake_runner(calls: list[str], diverge: set[tuple[str, int]] = frozenset()):
    """A stand-in for tune: accuracy from the seed, or a NonFiniteLoss for the (strategy, shots) in ``diverge``."""
    def run(cfg):
        calls.append(cfg.hash())
        if (cfg.strategy, cfg.shots) in diverge:
            raise NonFiniteLoss(3, 1, float("nan"), cfg.train)
        acc = 0.5 + 0.01 * cfg.seeds[0] + 0.02 * cfg.shots
        return {"config": cfg.to_dict(), "accuracy_mean": acc, "accuracy_ci95": 0.0, "accuracies": [acc],
                "wall_s": 0.1, "dataset": {"name": "fake", "classes": 10},
                "backbone": {"params": 1000, "pretrained": "offline"},
                "params": {"trainable": 10, "percent_of_backbone": 1.0, "backbone_params": 1000, "head": 10}}
    return run


def offline_cells(**settings) -> list[sweep.Cell]:
    base = {"models": "efficientnet_lite0.offline", "strategies": "linear,lora", "shots": "1,2", "seeds": "0-1"}
    return sweep.plan(sweep.spec_from_settings({**base, **settings}))


def test_grid_2x2x2_end_to_end_then_torn_line_is_reported(tmp_path, image_folder, monkeypatch, capsys):
    st = tmp_path / "results.jsonl"
    args = ["sweep", "--models", "vit_tiny_patch16_224,resnet18", "--strategies", "linear,lora", "--shots", "1,2",
            "--seeds", "0", "--data", str(image_folder), "--store", str(st), *TINY]
    calls = counting_tune(monkeypatch)
    assert main(args) == 0
    rows = lines(st)
    assert len(calls) == 8 and len(rows) == 8 and len({r["hash"] for r in rows}) == 8
    assert {(r["cell"]["model"], r["cell"]["strategy"], r["cell"]["shots"]) for r in rows} == {
        (m, s, k) for m in ("vit_tiny_patch16_224", "resnet18") for s in ("linear", "lora") for k in (1, 2)}
    assert all(r["status"] == "ok" and 0 <= r["record"]["accuracy_mean"] <= 1 for r in rows)
    assert all(r["record"]["backbone"]["pretrained"] == "random" for r in rows)
    assert all(r["record"]["key"] == r["hash"] for r in rows)  # a record's key is its store key
    assert "8 cells; this process ran 8" in capsys.readouterr().out

    with open(st, "ab") as f:  # a kill in the middle of writing a 9th line
        f.write(b'{"pefs_row": 1, "hash": "abc", "sta')
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "line 9: torn last line" in captured.err and "the 8 results before it are kept" in captured.err
    assert len(calls) == 8  # nothing recomputed
    assert len(store.load(st).rows) == 8 and st.read_bytes().endswith(b'"sta')  # never rewritten: others may append
    assert main([*args, "--dry-run"]) == 0 and "8 cells, 8 already in" in capsys.readouterr().out

    assert main(["report", "--store", str(st), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    for strategy in ("linear", "lora"):
        table = md.split(f"### {strategy}\n")[1].split("###")[0]
        for model in ("vit_tiny_patch16_224", "resnet18"):
            row = next(x for x in table.splitlines() if x.startswith(f"| {model}"))
            assert row.count(" (one seed, no CI)") == 2  # a number for 1-shot and 2-shot, and no fake interval
    assert "random (not pretrained)" in md


def test_kill_after_first_cell_then_resume(tmp_path, image_folder, monkeypatch):
    """A real SIGKILL (no handler runs) of a ``pefs sweep`` process held inside its second cell: the first cell's
    line survives whole, and the rerun runs the other three only."""
    import signal

    from tests import held_cli

    st = tmp_path / "results.jsonl"
    args = ["sweep", "--models", "vit_tiny_patch16_224", "--strategies", "linear,lora", "--shots", "1,2",
            "--data", str(image_folder), "--store", str(st), *TINY]
    proc = held_cli.start(2, *args, env={"OMP_NUM_THREADS": "1"})
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (first,) = lines(st)  # exactly the finished cell, whole
    resumed = counting_tune(monkeypatch)
    assert main(args) == 0
    assert len(resumed) == 3 and first["hash"] not in resumed  # the finished cell is not run again
    again = counting_tune(monkeypatch)
    assert main(args) == 0 and again == []
    rows = lines(st)
    assert len(rows) == 4 and len({r["hash"] for r in rows}) == 4 and rows[0] == first


def test_failed_cell_is_recorded_with_its_message_and_retried_on_request(tmp_path):
    cells, calls, st = offline_cells(), [], tmp_path / "results.jsonl"
    summary = sweep.run_sweep(cells, st, runner=fake_runner(calls, diverge={("lora", 2)}))
    assert (summary.ran, summary.failed) == (6, 2)
    failed = [r for r in lines(st) if r["status"] == "failed"]
    assert len(failed) == 2 and all("training loss became nan" in r["error"] for r in failed)
    assert all(r["record"] is None for r in failed)
    calls.clear()
    assert sweep.run_sweep(cells, st, runner=fake_runner(calls)).skipped == 8 and calls == []
    summary = sweep.run_sweep(cells, st, retry_failed=True, runner=fake_runner(calls))
    assert summary.ran == 2 and len(calls) == 2
    assert len(store.load(st).ok()) == 8  # the success supersedes the stored failure


def test_sharding_over_simulated_processes_then_merge(tmp_path):
    cells, st = offline_cells(), tmp_path / "results.jsonl"
    assert [c.index for c in sweep.my_cells(cells, 1, 3)] == [1, 4, 7]
    ran = {}
    for rank in (0, 1):
        ran[rank] = []
        summary = sweep.run_sweep(cells, st, rank=rank, world=2, runner=fake_runner(ran[rank]))
        assert summary.shard == tmp_path / f"results.{rank}.jsonl" and summary.ran == 4
    assert set(ran[0]).isdisjoint(ran[1]) and set(ran[0]) | set(ran[1]) == {c.config.hash() for c in cells}
    assert not st.exists()
    merged = store.load(st)
    assert len(merged.rows) == 8 and merged.files == [tmp_path / "results.0.jsonl", tmp_path / "results.1.jsonl"]
    calls = []
    assert sweep.run_sweep(cells, st, runner=fake_runner(calls)).skipped == 8 and calls == []  # one process now
    assert sweep.run_sweep(cells, st, rank=2, world=3, runner=fake_runner(calls)).skipped == 2 and calls == []
    dup = lines(tmp_path / "results.0.jsonl")[0]
    store.append(tmp_path / "results.1.jsonl", dup)  # the same cell written by two processes
    merged = store.load(st)
    assert len(merged.rows) == 8 and merged.duplicates == 1
    with pytest.raises(PefsError, match="rank must lie in 0..1"):
        sweep.my_cells(cells, 2, 2)


def test_torn_line_is_reported_never_rewritten_and_next_row_starts_fresh(tmp_path):
    cells, st = offline_cells(), tmp_path / "results.jsonl"
    sweep.run_sweep(cells[:3], st, runner=fake_runner([]))
    torn = st.read_bytes() + b'{"hash": "x", "status": "o'
    st.write_bytes(torn)
    contents = store.load(st)  # a reader (report) reports but does not rewrite
    assert len(contents.rows) == 3 and "line 4: torn last line" in contents.problems[0]
    assert st.read_bytes() == torn
    row = store.make_row("y" * 16, {"seed": 9}, "ok", {})
    store.append(st, row)  # the next writer starts on a fresh line instead of extending the torn one
    assert st.read_bytes() == torn + b"\n" + json.dumps(row, separators=(",", ":")).encode() + b"\n"
    contents = store.load(st)
    assert len(contents.rows) == 4 and "y" * 16 in contents.rows and "line 4: torn or corrupt line" in \
        contents.problems[0]


def test_hash_is_the_config_hash_and_grid_order(tmp_path):
    cells = offline_cells(seeds="0")
    assert [(c.config.strategy, c.config.shots) for c in cells] == [("linear", 1), ("linear", 2), ("lora", 1),
                                                                    ("lora", 2)]
    # the key is the resolved config (image size from the data, precision) with the content fingerprints of
    # what it reads: what tune() records as its key
    dataset = load_dataset(cells[0].config.data)
    assert all(c.hash == run_key(resolve(c.config, dataset), c.fingerprints)
               and c.config.seeds == (c.describe()["seed"],) for c in cells)
    assert all(c.fingerprints["data"].startswith("embedded:") and c.fingerprints["checkpoint"] is None
               for c in cells)
    assert len({c.hash for c in cells}) == 4
    # --img-size 128 is the same cell as the default that the embedded data resolves to 128
    default, explicit = (sweep.plan(sweep.spec_from_settings({"models": "efficientnet_lite0.offline", **s}))[0]
                         for s in ({}, {"img_size": 128}))
    assert default.hash == explicit.hash and default.config.img_size is None


def test_options_route_to_the_strategies_that_take_them():
    cells = offline_cells(seeds="0", shots="1", options={"r": 4})
    assert [c.config.options for c in cells] == [{}, {"r": 4}]
    recipe = {"strategies": ["linear", {"name": "lora", "epochs": 3, "options": {"alpha": 8}}]}
    cells = offline_cells(seeds="0", shots="1", epochs=7, **recipe)
    assert [(c.config.train.epochs, c.config.options) for c in cells] == [(7, {}), (3, {"alpha": 8})]


@pytest.mark.parametrize("args, message", [
    (["--models", "efficientnet_lite0.offline,no_such_net"], "unknown model 'no_such_net'"),
    (["--strategies", "linear,nope"], "unknown strategy 'nope'"),
    (["--strategies", "lora", "-o", "rank=4"], "unknown option 'rank'"),
    (["--strategies", "linear", "-o", "r=4"], "unknown option 'r': none of the strategies linear takes it"),
    (["--shots", "1,0"], "shots must be whole numbers >= 1, got 0"),
    (["--shots", "1,x"], "shots in the flags must be whole numbers"),
    (["--shots", "1,500"], "valid shots: 1..60"),
    (["--shots", "2,2"], "shots in the flags lists 2 twice"),
    (["--seeds", "a-b"], "seeds in the flags must be whole numbers"),
    (["--epochs", "0"], "epochs must be >= 1, got 0"),
    (["--store", "results.txt"], "must be a .jsonl file path"),
])
def test_bad_grid_fails_before_any_cell(tmp_path, monkeypatch, capsys, args, message):
    calls = counting_tune(monkeypatch)
    assert main(["sweep", "--store", str(tmp_path / "r.jsonl"), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert calls == [] and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("text, messages", [
    ("models: [efficientnet_lite0.offline]\nepoch: 3\n",
     ["unknown key 'epoch' in recipe '{}'", "valid keys: models, strategies, shots, seeds, data"]),
    ("models: [efficientnet_lite0.offline\nshots: 1\n", ["recipe '{}' is not valid YAML at line 2"]),
    ("models: [efficientnet_lite0.offline, vit_nope]\n", ["unknown model 'vit_nope'"]),
    ("epochs: ten\n", ["epochs in recipe '{}' must be int, got 'ten'"]),
    ("strategies: [{name: lora, rank: 4}]\n", ["unknown key 'rank' in strategy 'lora'", "valid keys: name, options"]),
    ("- linear\n- lora\n", ["recipe '{}' must be a mapping of settings"]),
])
def test_bad_recipe_fails_before_any_cell(tmp_path, monkeypatch, capsys, text, messages):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    calls = counting_tune(monkeypatch)
    assert main(["sweep", "--recipe", str(recipe), "--store", str(tmp_path / "r.jsonl"), "-q"]) == 2
    err = capsys.readouterr().err
    assert all(m.format(recipe) in err for m in messages), err
    assert "Traceback" not in err and calls == []


def test_flags_override_the_recipe(tmp_path, monkeypatch, capsys):
    """Through ``pefs sweep --recipe``: a flag replaces the recipe's key (shots), keys without a flag keep the
    recipe's value (epochs), and ``-o`` options merge with the recipe's (r from the recipe, alpha from the flag);
    checked on the config each cell's tune is actually called with."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("models: [efficientnet_lite0.offline]\nshots: [1, 2]\nepochs: 4\noptions: {r: 2}\n"
                      "strategies: [lora]\n")
    ran, fake = [], fake_runner([])

    def tune(cfg):
        ran.append(cfg)
        return fake(cfg)

    monkeypatch.setattr(pefs.protocols.run, "tune", tune)
    assert main(["sweep", "--recipe", str(recipe), "--shots", "8", "-o", "alpha=4", "-q",
                 "--store", str(tmp_path / "s.jsonl")]) == 0
    assert [(c.shots, c.train.epochs) for c in ran] == [(8, 4)]
    assert ran[0].options["r"] == 2 and int(ran[0].options["alpha"]) == 4  # the flag's value arrives as text
    assert "1 cells; this process ran 1" in capsys.readouterr().out


def test_an_option_from_a_flag_or_a_recipe_is_one_cell():
    """-o alpha=4 gives the text "4", a recipe the number 4: the resolved config types both, so one key."""
    from pefs.config import TuneConfig

    text, number = (resolve(TuneConfig(strategy="lora", options={"alpha": v}), None) for v in ("4", 4))
    assert text.options == number.options == {"alpha": 4} and text.hash() == number.hash()
    flags = offline_cells(seeds="0", shots="1", options={"alpha": "4"})
    recipe = offline_cells(seeds="0", shots="1", options={"alpha": 4})
    assert [c.hash for c in flags] == [c.hash for c in recipe]


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    spec = sweep.spec_from_settings(load_recipe(recipe), f"recipe {recipe.name}")
    offline = all(m.endswith(".offline") for m in spec.models)
    cells = sweep.plan(spec, check_data=offline)  # hub recipes: names and options only, nothing fetched
    assert cells and all(isinstance(c.config.train, TrainConfig) for c in cells)
    assert spec.store.endswith(".jsonl")


def test_recipes_directory_has_the_documented_recipes():
    names = {p.name for p in RECIPES.glob("*.yaml")}
    assert {"kshot-transfer.yaml", "episodic-5way.yaml", "offline-small.yaml", "offline-scale.yaml"} <= names
