"""``--search`` on a VTAB-1k source follows the VTAB protocol: each setting trains on train800 and is scored on
val200; the chosen setting then trains on train800val200 and is scored once on test (``--final``); K-shot seeds
score val200 less the seed's shots. Test images never take part in the choice."""

from __future__ import annotations

import json

import pytest

from pefs.cli.main import main
from pefs.data import kshot_split, load_dataset
from pefs.runtime.task import TaskRunner
from tests.test_benchmark_sources import make_vtab

RUN = ["--model", "resnet18", "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q"]


@pytest.fixture
def calls(monkeypatch):
    """(support names, query names) of every training run, in order."""
    seen: list[tuple[list[str], list[str]]] = []
    real = TaskRunner.run

    def spy(self, support, query, seed, train=None):
        seen.append((list(support.names), list(query.names)))
        return real(self, support, query, seed, train)

    monkeypatch.setattr(TaskRunner, "run", spy)
    return seen


def test_final_search_selects_on_val200_then_trains_on_all_1000(tmp_path, calls):
    """pefs tune --data vtab1k:... --final DIR --search lr=a,b: two runs train800 -> val200, then the chosen
    lr trains on train800val200 and scores test; the model directory is saved and the record says so."""
    folder = make_vtab(tmp_path / "vtab-1k", "dtd")
    ds = load_dataset(f"vtab1k:{folder}")
    out, model = tmp_path / "out", tmp_path / "model"
    assert main(["tune", "--data", f"vtab1k:{folder}", *RUN, "--final", str(model), "--search", "lr=1e-3,1e-2",
                 "--output", str(out)]) == 0
    train800, val200 = ds.split("train800").names, ds.split("val200").names
    assert calls == [(train800, val200), (train800, val200), (ds.train.names, ds.test.names)]
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["selection"]["on"] == "vtab1k's own validation split"
    assert rec["runs"][0]["val_images"] == 3 and len(rec["runs"][0]["search"]) == 2
    assert rec["runs"][0]["chosen"]["lr"] in (1e-3, 1e-2) and rec["test_images"] == 6 and rec["trained_on"] == 9
    saved = json.loads((model / "pefs_config.json").read_text())  # the chosen setting's model, saved
    assert rec["model_dir"] == str(model) and saved["tune_config"]["train"]["lr"] == rec["runs"][0]["chosen"]["lr"]


def test_kshot_search_scores_val200_without_the_shots(tmp_path, calls):
    """K-shot seeds with --search: every setting trains on the seed's K shots (the same shots as without
    --search) and is scored on val200 less any of them; the chosen one is scored on test."""
    folder = make_vtab(tmp_path / "vtab-1k", "dtd")
    ds = load_dataset(f"vtab1k:{folder}")
    assert main(["tune", "--data", f"vtab1k:{folder}", *RUN, "--shots", "1", "--seeds", "2", "--search",
                 "lr=1e-3,1e-2", "--output", str(tmp_path / "out")]) == 0
    support = kshot_split(ds, 1, seed=2).support.names
    val = [n for n in ds.split("val200").names if n not in support]
    assert calls == [(support, val), (support, val), (support, ds.test.names)]
    assert not set(ds.test.names) & set(val) and set(support) & set(ds.split("val200").names)  # some left out


def test_kshot_search_with_no_val200_left_is_one_error(tmp_path, capsys):
    """When the K shots take every val200 image there is nothing to score a search on: one line says so."""
    folder = make_vtab(tmp_path / "vtab-1k", "dtd")  # 3 train800val200 images per class
    assert main(["tune", "--data", f"vtab1k:{folder}", *RUN, "--shots", "3", "--search", "lr=1e-3,1e-2",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "every val200 image is among the 3 shots per class" in err, err


def test_final_search_elsewhere_still_refused(tmp_path, capsys):
    """--final --search on data without its own validation split is refused as before (nothing to validate on)."""
    folder = make_vtab(tmp_path / "vtab-1k", "dtd")
    assert main(["tune", "--data", f"vtab1k-val:{folder}", *RUN, "--final", str(tmp_path / "m"), "--search",
                 "lr=1e-3,1e-2", "--output", str(tmp_path / "out")]) == 2
    assert "leaving none to validate a --search on" in capsys.readouterr().err
