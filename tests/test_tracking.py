"""``--track``: a tune's config, per-step loss and learning rates, per-task accuracy and summary, read back from
the tracker's own files (TensorBoard event files, the CSV tracker's log)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pefs.cli.main import main
from pefs.config import TuneConfig
from pefs.errors import PefsError
from pefs.runtime import tracking

#: two 2-way 1-shot episodes of 3 head-training steps each on the embedded model and data: 6 steps, 2 tasks
RUN = ["tune", "--strategy", "linear", "--head", "linear", "--ways", "2", "--shots", "1", "--queries", "2",
       "--episodes", "2", "--steps", "3", "--head-lr", "0.01", "-q"]


def tune(tmp_path: Path, *extra: str) -> dict:
    assert main([*RUN, "--output", str(tmp_path / "out"), *extra]) == 0
    return json.loads(next((tmp_path / "out").glob("*.json")).read_text())


def cosine(step: int, total: int = 3) -> float:
    """The head's rate at 0-based ``step`` of a 3-step cosine from 0.01 (no warmup)."""
    return 0.01 * 0.5 * (1 + math.cos(math.pi * step / total))


def test_tensorboard_events_hold_each_step_each_task_and_the_record_summary(tmp_path):
    """A --track tensorboard run writes event files whose loss / lr scalars have one value per optimizer step
    (numbered on across tasks), whose per-task accuracy and mean equal the record's, and hparams of the config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = tune(tmp_path, "--track", "tensorboard")
    where = record["tracking"]
    assert where["with"] == "tensorboard" and Path(where["dir"]) == tmp_path / "out" / "tracking"
    events = EventAccumulator(str(Path(where["dir"]) / where["run"]))
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert [e.step for e in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in scalars["train/lr"]] == [1, 2, 3, 4, 5, 6]
    head_lr = [e.value for e in scalars["train/head_lr"]]
    assert head_lr == pytest.approx([cosine(s) for s in (0, 1, 2)] * 2, rel=1e-5)  # each task from the start
    runs = record["runs"]
    assert [e.value for e in scalars["train/loss"]][2::3] == pytest.approx([r["final_loss"] for r in runs], rel=1e-5)
    assert [(e.step, e.value) for e in scalars["task/accuracy"]] == [
        (1, pytest.approx(runs[0]["accuracy"], rel=1e-6)), (2, pytest.approx(runs[1]["accuracy"], rel=1e-6))]
    assert scalars["run/accuracy_mean"][0].value == pytest.approx(record["accuracy_mean"], rel=1e-6)
    assert scalars["run/trainable_params"][0].value == record["params"]["trainable"]
    hparams = next(Path(where["dir"], where["run"]).glob("*/hparams.yml")).read_text()
    assert "strategy: linear" in hparams and "train.steps: 3" in hparams


def test_csv_tracker_log_reads_back(tmp_path):
    """--track csv with --track-dir writes DIR/RUN/config.json (the resolved config) and a metrics.csv of
    (step, name, value) rows: 6 losses, and each task's accuracy as the record's."""
    record = tune(tmp_path, "--track", "csv", "--track-dir", str(tmp_path / "logs"))
    run = tmp_path / "logs" / record["tracking"]["run"]
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "linear" and config["ways"] == 2 and config["train.head_lr"] == 0.01
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "train/loss"]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in losses][2::3] == [r["final_loss"] for r in record["runs"]]
    accs = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "task/accuracy"]
    assert accs == [(i + 1, r["accuracy"]) for i, r in enumerate(record["runs"])]
    mean = [float(r["value"]) for r in rows if r["name"] == "run/accuracy_mean"]
    assert mean == [record["accuracy_mean"]]


@pytest.mark.parametrize("args, message", [
    (["--track", "wandb"], "--track wandb needs the wandb package, which is not installed: pip install wandb"),
    (["--track-dir", "logs"], "track_dir='logs' names where --track logs go; add --track"),
])
def test_tracking_refusals_write_nothing(tmp_path, monkeypatch, capsys, args, message):
    """A tracker whose package is missing (or a --track-dir without --track) is refused in one line, before
    anything runs or is written."""
    find = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else find(n))
    out = tmp_path / "out"
    assert main([*RUN, "--output", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_tracking_leaves_the_run_key_alone_and_names_its_choices():
    """--track and --track-dir change how a run is logged, not its numbers: its config hash is the same; an
    unknown tracker (from a recipe) is refused naming the four."""
    plain = TuneConfig(strategy="lora")
    assert TuneConfig(strategy="lora", track="csv", track_dir="x").hash() == plain.hash()
    with pytest.raises(PefsError, match="track must be one of tensorboard, wandb, mlflow, csv; got 'nope'"):
        TuneConfig(track="nope").validate()
