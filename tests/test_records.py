"""The typed run record: ``RunRecord.to_dict()`` is the JSON record stores and reports have always read."""

from __future__ import annotations

import json
from pathlib import Path

from pefs.config import TrainConfig, TuneConfig
from pefs.protocols.run import tune
from pefs.results import store
from pefs.results.report.markdown import build_report

#: the record's keys, in order, as ``finish`` wrote them before the record was typed (K-shot, no search), with the
#: interval's n, sd and method after ``accuracy_ci95`` since intervals are Student-t
KEYS = ["pefs_record", "config", "resolved", "config_hash", "schema", "protocol", "model", "strategy", "head",
        "shots", "ways", "dataset", "backbone", "accuracy_mean", "accuracy_ci95", "accuracy_n", "accuracy_sd",
        "ci_method", "accuracies", "runs", "params",
        "time_s", "wall_s", "seconds_per_task", "status", "error", "failed_task", "cached", "frozen_level",
        "peak_memory_mb", "machine", "fingerprints", "key", "finished_at", "peak_memory_growth_mb",
        "peak_memory_measure", "cache", "feature_store", "path"]


def test_record_keeps_its_keys_and_reads_in_a_report(image_folder, tmp_path):
    cfg = TuneConfig(model="vit_tiny_patch16_224", pretrained=False, img_size=32, data=str(image_folder), shots=2,
                     seeds=(0, 1), output=str(tmp_path / "runs"), train=TrainConfig(epochs=1, progress=False))
    rec = tune(cfg)
    assert list(rec) == KEYS
    assert list(rec["dataset"]) == ["name", "classes", "licence", "source"] and rec["dataset"]["classes"] == 3
    assert list(rec["machine"]) == ["python", "torch", "cuda", "threads", "inference_precision"]
    assert rec["peak_memory_mb"] > 0 and rec["peak_memory_measure"]  # the run's own peak, not the process's
    assert len(rec["accuracies"]) == 2 and rec["accuracy_ci95"] is not None
    assert rec["accuracy_n"] == 2 and rec["ci_method"] == "t" and rec["accuracy_sd"] is not None
    on_disk = json.loads(Path(rec["path"]).read_text())
    assert on_disk == json.loads(json.dumps({k: v for k, v in rec.items() if k != "path"}, default=str))
    cell = {"model": cfg.model, "strategy": cfg.strategy, "options": {}, "shots": 2, "seed": 0, "ways": None,
            "config": rec["config"]}
    path = tmp_path / "results.jsonl"
    store.append(path, store.make_row(rec["config_hash"], cell, "ok", rec))
    files, problems = build_report(path, tmp_path / "report", ("md",))
    text = files[0].read_text()
    assert problems == [] and "vit_tiny_patch16_224" in text and f"{100 * rec['accuracy_mean']:.1f}" in text
