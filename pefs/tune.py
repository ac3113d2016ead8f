"""``tune``: the K-shot transfer protocol, seed by seed, with a result record (what ``pefs tune`` runs)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from pefs import engine
from pefs.config import TuneConfig
from pefs.data import decode, eval_transform, kshot_split, load_dataset
from pefs.engine import NonFiniteLoss, mean_ci95
from pefs.errors import PefsError
from pefs.model import PefsModel, wrap


def build_model(cfg: TuneConfig, num_classes: int) -> PefsModel:
    kwargs = {"img_size": cfg.img_size} if cfg.img_size and _takes_img_size(cfg.model) else {}
    return wrap(cfg.model, cfg.strategy, num_classes=num_classes, pretrained=cfg.pretrained,
                checkpoint=cfg.checkpoint, model_kwargs=kwargs, **cfg.options)


def _takes_img_size(name: str) -> bool:
    return any(k in name for k in ("vit", "deit", "eva", "beit", "swin"))


def run_kshot_seed(cfg: TuneConfig, dataset, seed: int, query_cache: dict) -> dict[str, Any]:
    """One seed of K-shot transfer: sample K per class, fit, evaluate on the whole test split."""
    split = kshot_split(dataset, cfg.shots, seed=seed)
    engine.seed_everything(seed)
    model = build_model(cfg, len(dataset.classes))
    tf = eval_transform(model.backbone.data_config, cfg.img_size)
    t0 = time.perf_counter()
    xs, ys = decode(split.support, tf)
    if "x" not in query_cache:
        query_cache["x"], query_cache["y"] = decode(split.query, tf)
    xq, yq = query_cache["x"], query_cache["y"]
    decode_s = time.perf_counter() - t0
    stats = engine.fit(model, xs, ys, cfg.train, seed=seed)
    t0 = time.perf_counter()
    if stats.cached:
        feats = engine.extract_features(model, xq, cfg.train, desc="query features")
        pred = engine.predict(model, xq, cfg.train, features=feats)
    else:
        pred = engine.predict(model, xq, cfg.train)
    eval_s = time.perf_counter() - t0
    if cfg.save_adapter:
        model.save(Path(cfg.save_adapter) / f"seed{seed}")
    return {"seed": seed, "accuracy": engine.accuracy(pred, yq), "support": len(ys), "query": len(yq),
            "decode_s": decode_s, "extract_s": stats.extract_s, "train_s": stats.train_s, "eval_s": eval_s,
            "steps": stats.steps, "final_loss": stats.final_loss, "cached": stats.cached,
            "params": model.param_report(), "_model": model}


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the configured protocol over every seed; return the result record (also written to disk)."""
    cfg.validate()
    dataset = load_dataset(cfg.data)
    if cfg.img_size is None and dataset.suggested_img_size:
        cfg.img_size = dataset.suggested_img_size
    if cfg.protocol == "episodic":
        from pefs.episodic import run_episodes  # noqa: PLC0415  (kept apart: its own module)

        return finish(cfg, dataset, run_episodes(cfg, dataset))
    t_start = time.perf_counter()
    runs, cache = [], {}
    for seed in cfg.seeds:
        try:
            runs.append(run_kshot_seed(cfg, dataset, seed, cache))
        except NonFiniteLoss as e:
            record = finish(cfg, dataset, {"runs": runs, "wall_s": time.perf_counter() - t_start,
                                           "status": "diverged", "error": str(e), "failed_seed": seed})
            e.record = record  # type: ignore[attr-defined]
            raise
    return finish(cfg, dataset, {"runs": runs, "wall_s": time.perf_counter() - t_start, "status": "ok"})


def finish(cfg: TuneConfig, dataset, body: dict[str, Any]) -> dict[str, Any]:
    """Assemble the record (mean and 95% CI over seeds/episodes) and write it as JSON."""
    runs = body.pop("runs")
    model = runs[-1].pop("_model", None) if runs else None
    for r in runs:
        r.pop("_model", None)
    accs = [r["accuracy"] for r in runs]
    mean, ci = mean_ci95(accs) if accs and body.get("status", "ok") == "ok" else (None, None)
    params = runs[-1]["params"] if runs else None
    record = {
        "pefs_record": 1, "config": cfg.to_dict(), "config_hash": cfg.hash(), "protocol": cfg.protocol,
        "model": cfg.model, "strategy": cfg.strategy, "shots": cfg.shots, "ways": cfg.ways,
        "dataset": {"name": dataset.name, "classes": len(dataset.classes), "licence": dataset.licence},
        "backbone": model.backbone.describe() if model is not None else None,
        "accuracy_mean": mean, "accuracy_ci95": ci, "accuracies": accs, "runs": runs, "params": params,
        "time_s": {k: sum(r.get(k, 0.0) for r in runs) for k in ("decode_s", "extract_s", "train_s", "eval_s")},
        "peak_memory_mb": engine.peak_memory_mb(), "machine": {"python": platform.python_version(),
                                                              "torch": torch.__version__,
                                                              "cuda": torch.cuda.is_available(),
                                                              "threads": torch.get_num_threads()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **body,
    }
    record["path"] = str(write_record(record, cfg.output))
    return record


def write_record(record: dict[str, Any], output: str | Path) -> Path:
    """Write ``record`` atomically (temp file + rename) under ``output``; a clear error if we cannot."""
    out = Path(output)
    name = (f"{time.strftime('%Y%m%d-%H%M%S')}-{record['model']}-{record['strategy']}-{record['shots']}shot-"
            f"{record['config_hash'][:8]}.json").replace("/", "_").replace(":", "_")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{name}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(out / name)
    except OSError as e:
        raise PefsError(f"cannot write the result record to {str(out)!r}: {e.strerror or e}") from e
    return out / name
