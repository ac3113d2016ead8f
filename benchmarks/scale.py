"""Peak memory and wall time of a K-shot run against the size of the test split, and the forward-only limit.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.scale        # measure, write scale.json + scale.md
    .venv/bin/python -m benchmarks.scale --render                 # re-render scale.md from scale.json

Each (method, test-split size) runs in a fresh process, so its peak RSS is its own. Methods: ``linear``
(linear probe: strategy linear, head linear), ``prototype`` (strategy linear, head prototype), ``lora``
(strategy lora, head linear; ``lora-cache64``: the same with ``--cache-mb 64``) and ``forward`` (the limit: a
plain DataLoader that decodes the same images with the same transform in the same number of workers, and the
trunk to the pooled features, same batch size, precision and layout; nothing kept). Data: the full
Fashion-MNIST (Debian ``dataset-fashion-mnist``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.scale`
    import common

    common.run_as_module(__file__)

import json
import subprocess
import time
from pathlib import Path

from benchmarks.common import load, machine, module_command, module_env, parser, provenance, render_source
from benchmarks.scale_report import render

HERE = Path(__file__).parent

#: method -> (strategy, head, --cache-mb)
METHODS = {"linear": ("linear", "linear", 512), "prototype": ("linear", "prototype", 512),
           "lora": ("lora", "linear", 512), "lora-cache64": ("lora", "linear", 64)}
MODEL = "efficientnet_lite0.offline"
NAMES_ORDER = ("forward", *METHODS)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's ``field`` of /proc/self/status (VmRSS: resident now, VmHWM: its peak) in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def forward_only(ds, img_size: int, batch: int, workers: int) -> dict:
    """The limit: decode + transform in a DataLoader, trunk to pooled features, nothing kept."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pefs.data import eval_transform
    from pefs.model.wrap import wrap
    from pefs.runtime import engine, hardware

    model = wrap(MODEL, "linear", num_classes=10, pretrained=True)
    tf = eval_transform(model.backbone.data_config, img_size)
    images = ds.test

    class Plain(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return tf(images.image(i))

    cfg = engine.TrainConfig(progress=False, eval_batch_size=batch)
    run = engine.no_grad_pass(model, cfg, 0, "pooled")
    t0 = time.perf_counter()
    n = 0
    for xb in DataLoader(Plain(), batch_size=batch, num_workers=workers):
        n += len(run(xb))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images": n, "precision": hardware.inference_precision(cfg, torch.device("cpu"))}


def one(method: str, n_test: int, img_size: int, batch: int, workers: int, shots: int) -> dict:
    """One measurement in this (fresh) process."""
    import timm  # noqa: F401  (imported before the clock starts on both sides: a one-off cost, not the run's)
    import torch

    from benchmarks import fmnist
    from pefs.config import TrainConfig, TuneConfig
    from pefs.protocols.run import tune

    ds = fmnist.dataset(n_test)
    base = rss_mb()
    out = {"method": method, "n_test": n_test, "img_size": img_size, "batch": batch, "workers": workers,
           "threads": torch.get_num_threads(), "rss_before_mb": base}
    if method == "forward":
        out.update(forward_only(ds, img_size, batch, workers))
    else:
        strategy, head, cache_mb = METHODS[method]
        cfg = TuneConfig(model=MODEL, strategy=strategy, head=head, shots=shots, seeds=(0,), data=ds,  # type: ignore
                         img_size=img_size, output="/tmp/pefs-scale-runs",
                         train=TrainConfig(progress=False, eval_batch_size=batch, num_workers=workers,
                                           cache_mb=cache_mb))
        rec = tune(cfg)
        r = rec["runs"][0]
        out.update({k: rec[k] for k in ("wall_s", "peak_memory_mb", "peak_memory_growth_mb", "accuracy_mean",
                                        "time_s", "cache")},
                   decoded=r["decoded"], trunk_images=r["trunk_images"], steps=r["steps"],
                   precision=rec["machine"]["inference_precision"])
    out["process_peak_rss_mb"] = rss_mb("VmHWM") if method == "forward" else out["peak_memory_mb"]
    out["peak_growth_mb"] = out["process_peak_rss_mb"] - base
    return out


def measure(args) -> list[dict]:
    """Every (size, method) cell in a fresh process of this script (``--one``); its row, with the process time."""
    rows = []
    for n in args.sizes:
        for method in args.methods:
            cmd = [*module_command(__file__), "--one", method, str(n), "--img-size", str(args.img_size),
                   "--batch", str(args.batch), "--workers", str(args.workers), "--shots", str(args.shots)]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=module_env(__file__))
            if res.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{method:9s} {n:6d}: {row['wall_s']:7.1f} s, peak {row['process_peak_rss_mb']:6.0f} MB "
                  f"(+{row['peak_growth_mb']:.0f})", flush=True)
    return rows


def main() -> None:
    p = parser(__doc__, "--out")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[500, 4000, 20000])
    p.add_argument("--methods", type=lambda s: s.split(","), default=["forward", "linear", "prototype", "lora"])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "scale.json"))
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N"))
    p.add_argument("--update", action="store_true", help="replace the measured (method, size) rows of --out")
    p.add_argument("--repeat", action="store_true", help="add the measured rows to --out as repetitions (the "
                   "report shows the fastest repetition of each: the least disturbed by other load)")
    p.add_argument("--note", default="", help="what else ran on the machine while measuring")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.img_size, a.batch, a.workers, a.shots)))
        return
    source = render_source(a, a.out)
    if source is None:
        start = load()
        rows = measure(a)
        if (a.update or a.repeat) and Path(a.out).exists():  # merge with the rows already measured
            done = {(r["method"], r["n_test"]) for r in rows} if a.update else set()
            old = json.loads(Path(a.out).read_text())["rows"]
            rows = [r for r in old if (r["method"], r["n_test"]) not in done] + rows
            rows.sort(key=lambda r: (r["n_test"], list(NAMES_ORDER).index(r["method"])))
        data = {**provenance(__file__), "model": MODEL, "machine": machine(), "load_start": start,
                "load_end": load(), "note": a.note, "rows": rows}
        Path(a.out).write_text(json.dumps(data, indent=2) + "\n")
        source = Path(a.out)
    (HERE / "scale.md").write_text(render(json.loads(source.read_text())))


if __name__ == "__main__":
    main()
