"""The episodic protocol: N-way K-shot tasks, each tuned from the same frozen start, never sharing weights."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from pefs import engine
from pefs.config import TuneConfig
from pefs.data import Dataset, decode, episodes, eval_transform


def run_episodes(cfg: TuneConfig, dataset: Dataset) -> dict[str, Any]:
    """Fit a fresh model per episode on its support set, score its queries; one run entry per episode."""
    from pefs.tune import build_model

    t_start = time.perf_counter()
    runs = []
    seed = cfg.seeds[0]
    tasks = episodes(dataset.train, cfg.ways, cfg.shots, cfg.queries, cfg.episodes, seed=seed)
    for i, ep in enumerate(tqdm(tasks, total=cfg.episodes, desc="episodes", disable=not cfg.train.progress)):
        engine.seed_everything(seed + i)
        model = build_model(cfg, cfg.ways)
        tf = eval_transform(model.backbone.data_config, cfg.img_size)
        t0 = time.perf_counter()
        xs, ys = decode(ep.support, tf)
        xq, yq = decode(ep.query, tf)
        decode_s = time.perf_counter() - t0
        stats = engine.fit(model, xs, ys, cfg.train, seed=seed + i)
        t0 = time.perf_counter()
        feats = engine.extract_features(model, xq, cfg.train, desc="query features") if stats.cached else None
        pred = engine.predict(model, xq, cfg.train, features=feats)
        runs.append({"episode": i, "classes": ep.classes, "accuracy": engine.accuracy(pred, yq),
                     "decode_s": decode_s, "extract_s": stats.extract_s, "train_s": stats.train_s,
                     "eval_s": time.perf_counter() - t0, "steps": stats.steps, "cached": stats.cached,
                     "params": model.param_report(), "_model": model})
        if i < cfg.episodes - 1:
            runs[-1].pop("_model")
    return {"runs": runs, "wall_s": time.perf_counter() - t_start, "status": "ok"}
