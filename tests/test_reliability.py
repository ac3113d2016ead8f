"""Reliability: bad input at every entry point, real signals mid-run, determinism, divergence, disk faults.

User errors must reach the user as one clear line (the bad value and what was expected), exit code 2 on the CLI,
and never a traceback; an interrupted run must leave every finished result valid and resumable.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pefs
from pefs.config import TrainConfig, TuneConfig
from pefs.errors import PefsError
from pefs.protocols.run import tune
from pefs.runtime.engine import NonFiniteLoss
from tests.conftest import FAST, assert_user_error, cli, subprocess_env


@pytest.mark.parametrize("args, fragments", [
    (["tune", "--ways", "20"], ["ways must lie in 2..10"]),
    (["tune", "--ways", "5", "--shots", "50", "--queries", "15"], ["shots=50", "60"]),
    (["tune", "--shots", "-3"], ["shots must be a whole number >= 1, got -3"]),
    (["tune", "--head", "nearest"], ["unknown head 'nearest'"]),
    (["tune", "--strategy", "lora", "-o", "r=zero"], ["option r='zero'", "must be int"]),
    (["tune", "--strategy", "vpt", "-o", "mode=deep"], ["needs a transformer", "mode=pixel"]),
    (["sweep", "--models", "efficientnet_lite0.offline,resnet_9000", "--dry-run"], ["resnet_9000"]),
])
def test_cli_bad_input(tmp_path, args, fragments):
    assert_user_error(cli(*args, *FAST, "--output", str(tmp_path)), *fragments)


def test_library_bad_input_names_value_and_choices():
    with pytest.raises(PefsError, match=r"num_classes must be a whole number >= 1, got 0"):
        pefs.wrap("resnet18", "linear", num_classes=0, pretrained=False)
    with pytest.raises(PefsError, match=r"unknown strategy 'lorra'.*did you mean|unknown strategy 'lorra'.*lora"):
        pefs.wrap("resnet18", "lorra", num_classes=3, pretrained=False)
    with pytest.raises(PefsError, match=r"option r=-1 of strategy 'lora' must be >= 1"):
        pefs.wrap("resnet18", "lora", num_classes=3, pretrained=False, r=-1)


def test_truncated_and_non_image_files_are_named(image_folder, tmp_path):
    import shutil

    root = tmp_path / "split"
    shutil.copytree(image_folder, root / "train")
    shutil.copytree(image_folder, root / "test")  # the whole test split is decoded, so the bad file is reached
    good = next((image_folder / "cat").glob("*.png"))
    args = ["tune", "--data", str(root), "--shots", "2", *FAST, "--output", str(tmp_path / "out"),
            "--no-pretrained", "--model", "resnet18"]
    (root / "test" / "cat" / "broken.png").write_bytes(good.read_bytes()[:40])  # truncated PNG
    assert_user_error(cli(*args), "broken.png", "cannot decode")
    (root / "test" / "cat" / "broken.png").write_text("this is not an image")
    assert_user_error(cli(*args), "broken.png", "cannot decode")


def test_unwritable_output_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = cli("tune", *FAST, "--output", str(blocker / "records"), "--strategy", "lora")  # -q: no progress bars
    assert_user_error(r, "is not writable", str(blocker / "records"))
    assert r.stdout == ""  # refused before any result; no model was built (below, without a subprocess)
    import pefs.runtime.task

    built = []
    real = pefs.runtime.task.TaskRunner.__init__
    monkeypatch.setattr(pefs.runtime.task.TaskRunner, "__init__",
                        lambda self, *a, **k: (built.append(1), real(self, *a, **k))[1])
    with pytest.raises(PefsError, match="is not writable"):
        tune(TuneConfig(strategy="lora", img_size=32, output=str(blocker / "records"),
                        train=TrainConfig(epochs=1, progress=False)))
    assert built == []  # no model loaded, no task run


def test_disk_full_leaves_no_partial_record(tmp_path, monkeypatch):
    import pefs.protocols.run as tune_mod

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", full)  # the one atomic writer (pefs.config.files) fsyncs before renaming
    with pytest.raises(PefsError, match="cannot write the result record.*No space left on device"):
        tune_mod.write_record({"model": "m", "strategy": "s", "shots": 1, "config_hash": "0" * 16}, out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(out.iterdir()) == []  # neither a record nor a temp file


def test_same_seed_same_accuracy_and_seed_changes_it(tmp_path):
    def run(seed: int) -> list[float]:
        cfg = TuneConfig(strategy="linear", shots=2, seeds=(seed,), img_size=32, output=str(tmp_path),
                         train=TrainConfig(epochs=5, progress=False))
        return tune(cfg)["accuracies"]

    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a != c


def test_divergence_stops_with_the_step_and_the_record_says_so(tmp_path):
    r = cli("tune", *FAST, "--strategy", "lora", "--lr", "1e9", "--head-lr", "1e9", "--output", str(tmp_path))
    assert_user_error(r, "training loss became", "at step")
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(records) == 1
    assert records[0]["status"] == "diverged" and records[0]["accuracy_mean"] is None
    assert "at step" in records[0]["error"]


def test_divergence_in_the_library_raises(tmp_path):
    cfg = TuneConfig(strategy="linear", head="linear", shots=1, img_size=32, output=str(tmp_path),  # a trained head
                     train=TrainConfig(epochs=3, lr=1e30, head_lr=1e30, progress=False))
    with pytest.raises(NonFiniteLoss) as e:
        tune(cfg)
    assert e.value.step >= 1 and e.value.record["status"] == "diverged"


def test_adapter_on_another_backbone_is_refused(tmp_path):
    model = pefs.wrap("resnet18", "lora", num_classes=3, pretrained=False)
    model.save(tmp_path / "adapter")
    with pytest.raises(PefsError, match=r"trained on resnet18.*cannot load onto resnet34"):
        pefs.PefsModel.load(tmp_path / "adapter", backbone=pefs.load("resnet34", pretrained=False))


def _store_rows(store: Path) -> list[dict]:
    rows = []
    for f in sorted(store.parent.glob(store.stem + "*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sweep_killed_by_a_signal_then_resumed(tmp_path, sig):
    store = tmp_path / "results.jsonl"
    args = ["sweep", "--models", "resnet18", "--strategies", "linear", "--shots", "1,2", "--seeds", "0-2",
            "--no-pretrained", "--img-size", "32", "--epochs", "1", "-q", "--store", str(store),
            "--output", str(tmp_path / "records")]
    from tests import held_cli

    proc = held_cli.start(2, *args, env={"OMP_NUM_THREADS": "1"})  # held inside its second cell
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    done = _store_rows(store)  # every line whole and valid JSON
    assert len(done) == 1  # the finished first cell, nothing of the interrupted second
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    rows = _store_rows(store)
    hashes = [row["hash"] for row in rows]
    assert len(hashes) == 6 and len(set(hashes)) == 6  # nothing lost, nothing duplicated
    assert {row["hash"] for row in done} <= set(hashes)
    finished = {row["hash"]: row["written_at"] for row in done}
    assert all(row["written_at"] == finished[row["hash"]] for row in rows if row["hash"] in finished)


def test_tune_killed_leaves_no_partial_record(tmp_path):
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pefs.cli", "tune", "--strategy", "lora", "--epochs", "200",
                             "--img-size", "32", "--output", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    seen, ready = bytearray(), threading.Event()

    def read() -> None:  # ready once its training progress bar is drawn, or at EOF (it exited: fails below)
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            seen.extend(chunk)
            if b"train:" in seen:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait()  # blocks on the signal itself: no polling, no sleep
    assert proc.poll() is None, f"tune exited ({proc.returncode}) before training: {seen.decode(errors='replace')}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    reader.join(timeout=60)
    err = seen.decode(errors="replace")
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".pefs-write-test")] == []
