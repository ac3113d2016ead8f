"""``--track``: a tune's config, per-step loss and learning rates, per-task accuracy and summary, read back from
the tracker's own files (TensorBoard event files, the CSV tracker's log)."""

from __future__ import annotations

import csv
import importlib.machinery
import json
import math
import sys
import types
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


def fake_package(name: str, **attrs) -> types.ModuleType:
    """A stand-in for an optional tracker package (wandb, mlflow are not installed here), recording its calls."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def test_wandb_runs_offline_into_the_tracking_folder(tmp_path, monkeypatch):
    """--track wandb starts an offline W&B run (unless WANDB_MODE says otherwise) in OUTPUT/tracking, named as
    the run, with the config and one log per step and task, and finishes it."""
    calls: list[tuple] = []

    class Run:
        def log(self, values, step=None):
            calls.append(("log", step, dict(values)))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    config = types.SimpleNamespace(update=lambda values, **k: calls.append(("config", dict(values))))
    monkeypatch.setitem(sys.modules, "wandb", fake_package("wandb", init=init, config=config))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    record = tune(tmp_path, "--track", "wandb")
    assert calls[0] == ("init", {"project": record["tracking"]["run"], "dir": str(tmp_path / "out" / "tracking"),
                                 "mode": "offline"})
    assert calls[1][0] == "config" and calls[1][1]["strategy"] == "linear" and calls[-1] == ("finish",)
    steps = [c[1] for c in calls if c[0] == "log" and "train/loss" in c[2]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [c[2]["task/accuracy"] for c in calls if c[0] == "log" and "task/accuracy" in c[2]] == [
        r["accuracy"] for r in record["runs"]]


def test_mlflow_logs_to_a_file_store_in_the_tracking_folder(tmp_path, monkeypatch):
    """--track mlflow points MLflow at a file store in OUTPUT/tracking (unless MLFLOW_TRACKING_URI names one),
    in experiment "pefs", run named as the run: the config as params, one metrics log per step, then ends."""
    calls: list[tuple] = []
    mlflow = fake_package(
        "mlflow", set_tracking_uri=lambda uri: calls.append(("uri", uri)), search_experiments=lambda **k: [],
        create_experiment=lambda name, **k: calls.append(("experiment", name)) or "1",
        start_run=lambda **k: calls.append(("run", k["run_name"])), end_run=lambda: calls.append(("end",)),
        log_params=lambda d: calls.append(("params", dict(d))),
        log_metrics=lambda d, step=None: calls.append(("metrics", step, dict(d))),
        utils=types.SimpleNamespace(validation=types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000,
                                                                    MAX_PARAMS_TAGS_PER_BATCH=100)))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    record = tune(tmp_path, "--track", "mlflow")
    assert calls[:3] == [("uri", (tmp_path / "out" / "tracking" / "mlruns").resolve().as_uri()),
                         ("experiment", "pefs"), ("run", record["tracking"]["run"])]
    params = {k: v for c in calls if c[0] == "params" for k, v in c[1].items()}
    assert params["strategy"] == "linear" and calls[-1] == ("end",)
    assert [c[1] for c in calls if c[0] == "metrics" and "train/loss" in c[2]] == [1, 2, 3, 4, 5, 6]


def test_the_same_run_twice_in_a_second_gets_its_own_folder(tmp_path, monkeypatch):
    """Two runs whose names coincide (same config, same second) are tracked in two folders, neither overwritten."""
    monkeypatch.setattr(tracking.time, "strftime", lambda fmt: "20260101-000000")
    cfg = TuneConfig(track="csv", output=str(tmp_path))
    with tracking.tracked(cfg) as first, tracking.tracked(cfg) as second:
        first.log({"x": 1.0}, step=1)
        second.log({"x": 2.0}, step=1)
    assert second.name == first.name + "-2"
    assert (tmp_path / "tracking" / first.name / "metrics.csv").read_text().endswith("1,x,1.0\n")
    assert (tmp_path / "tracking" / second.name / "metrics.csv").read_text().endswith("1,x,2.0\n")


@pytest.mark.parametrize("every_process", [True, False])
def test_a_run_split_over_processes_is_tracked_by_the_main_process_alone(tmp_path, monkeypatch, every_process):
    """On a process that is not the main one, a run's own tracker writes (sweep cells: each process tracks its
    runs); a run split over processes (--final under a multi-process launch) is left to the main process."""
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "is_main_process", property(lambda self: False))
    monkeypatch.setattr(PartialState, "use_distributed", property(lambda self: True))
    cfg = TuneConfig(track="csv", output=str(tmp_path))
    with tracking.tracked(cfg, every_process=every_process) as track:
        track.log({"x": 1.0}, step=1)
    written = tmp_path / "tracking" / track.name / "metrics.csv"
    assert written.exists() == every_process
    if every_process:
        assert written.read_text().endswith("1,x,1.0\n")
