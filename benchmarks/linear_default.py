"""Default linear probe benchmark: ``pefs tune --strategy linear`` with every default against scikit-learn's
``LogisticRegression()`` with every default, on the same frozen features and the same K-shot splits.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.linear_default             # writes linear_default.json/.md
    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.linear_default --render    # only re-renders the .md

Three datasets: the embedded Fashion-MNIST subset, scikit-learn's ``load_digits`` (8x8 digits, upscaled), and
the full Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``benchmarks/fmnist.py``), each through the
offline EfficientNet-Lite0 at one image size, fp32 throughout. pefs' side is ``pefs.tune`` itself (the library
call of ``pefs tune --strategy linear``: default head, learning rates and epochs); a third column is the same run
with ``--head linear`` (the AdamW-trained head). scikit-learn's side fits on pooled features this script extracts
once per dataset with the same model and evaluation transform, for the supports ``kshot_split`` draws for the
same seed, and scores the whole test split, as tune does.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.linear_default`
    import common

    common.run_as_module(__file__)

import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.common import load, machine, machine_load, parser, pm, provenance, render_source

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent
MODEL = "efficientnet_lite0.offline"
#: column -> what it is; "pefs default" is tune with no head named, "pefs --head linear" the AdamW head
METHODS = ("pefs default", "sklearn LogisticRegression()", "pefs --head linear")


def digits():
    """scikit-learn's 8x8 digits (1,797 images, 10 classes) as a pefs Dataset: half of each class trains, half
    tests (a fixed split, seed 0)."""
    import numpy as np
    from sklearn.datasets import load_digits

    from pefs.data import Dataset, from_arrays

    d = load_digits()
    x = np.clip(d.images * (255 / 16), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    test = np.zeros(len(x), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        test[idx[: len(idx) // 2]] = True
    names = [str(c) for c in range(10)]
    return Dataset("sklearn-digits", from_arrays(x[~test], d.target[~test], names, "train"),
                   from_arrays(x[test], d.target[test], names, "test"), licence="scikit-learn (BSD-3-Clause)")


def datasets(fmnist_test: int) -> dict:
    """Name -> Dataset for the three datasets (Fashion-MNIST's train split: 20 per class)."""
    from benchmarks import fmnist
    from pefs.data import load_dataset

    return {"embedded": load_dataset(None), "digits": digits(), "fashion-mnist": fmnist.dataset(fmnist_test)}


def features(ds, size: int):
    """Pooled fp32 features of the train and test splits, with the model and transform tune uses."""
    import torch

    import pefs
    from pefs.config import TrainConfig
    from pefs.data import eval_transform
    from pefs.runtime import engine

    model = pefs.wrap(MODEL, "linear", num_classes=len(ds.classes))
    tf = eval_transform(model.backbone.data_config, size)
    cfg = TrainConfig(progress=False, inference_precision="no", eval_batch_size=64)
    out = {}
    for split in ("train", "test"):
        s = getattr(ds, split)
        x = torch.stack([tf(s.image(i)) for i in range(len(s))])
        out[split] = (engine.outputs(model, x, cfg, 0, "pooled").numpy(), s.labels)
    return out


def pefs_runs(ds, shots: int, seeds: list[int], size: int, head: str | None, out: str) -> tuple[dict, str]:
    """Per-seed accuracy of ``pefs.tune`` (strategy linear, ``head`` or the default), and the head it used."""
    from pefs import tune
    from pefs.config import TrainConfig, TuneConfig

    cfg = TuneConfig(strategy="linear", data=ds, shots=shots, seeds=tuple(seeds), img_size=size, head=head,
                     output=out, train=TrainConfig(progress=False, inference_precision="no", mixed_precision="no"))
    rec = tune(cfg)
    return {r["seed"]: r["accuracy"] for r in rec["runs"]}, rec["head"]


def sklearn_runs(ds, feats: dict, shots: int, seeds: list[int]) -> dict:
    """Per-seed accuracy of ``LogisticRegression()`` fitted on each seed's K-shot support features."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from pefs.data import kshot_split

    (xtr, ytr), (xte, yte) = feats["train"], feats["test"]
    acc = {}
    for seed in seeds:
        idx = kshot_split(ds, shots, seed=seed).support_index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression().fit(xtr[idx], ytr[idx])
        acc[seed] = float(np.mean(clf.predict(xte) == yte))
    return acc


def run(shots_list: list[int], seeds: list[int], size: int, fmnist_test: int) -> dict:
    """Every method on every (dataset, shots, seed): accuracy rows, and the run's description."""
    rows, info = [], {}
    for name, ds in datasets(fmnist_test).items():
        t0 = time.perf_counter()
        feats = features(ds, size)
        info[name] = {"dataset": ds.name, "classes": len(ds.classes), "train": len(ds.train),
                      "test": len(ds.test), "extract_s": round(time.perf_counter() - t0, 1)}
        with tempfile.TemporaryDirectory() as out:
            for shots in shots_list:
                acc = {METHODS[1]: sklearn_runs(ds, feats, shots, seeds)}
                acc[METHODS[0]], info[name]["default_head"] = pefs_runs(ds, shots, seeds, size, None, out)
                acc[METHODS[2]], _ = pefs_runs(ds, shots, seeds, size, "linear", out)
                for m, by_seed in acc.items():
                    rows += [{"dataset": name, "shots": shots, "seed": s, "method": m, "accuracy": a}
                             for s, a in by_seed.items()]
                print(name, shots, {m: round(100 * sum(v.values()) / len(v), 1) for m, v in acc.items()}, flush=True)
    return {"rows": rows, "datasets": info, "img_size": size, "model": MODEL, "seeds": seeds, "shots": shots_list,
            "machine": machine()}


def _paired(rows: list[dict], name: str, k: int, a: str, b: str):
    """Method ``a`` minus ``b`` on dataset ``name`` at ``k`` shots, paired by seed, in points."""
    from pefs.results.stats import paired_diff

    acc = {(r["method"], r["seed"]): 100 * r["accuracy"] for r in rows if r["dataset"] == name and r["shots"] == k}
    seeds = sorted(s for m, s in acc if m == a and (b, s) in acc)
    return paired_diff([acc[(a, s)] for s in seeds], [acc[(b, s)] for s in seeds])


def render(data: dict) -> str:
    """The page, from the JSON data alone: accuracies, the paired differences and a reading built from them."""
    from pefs.results.stats import mean_ci

    rows, shots, seeds = data["rows"], data["shots"], data["seeds"]
    lines = ["# The default linear probe against scikit-learn's logistic regression", "",
             f"Frozen `{data['model']}` pooled features at {data['img_size']} px (fp32); K-shot supports from "
             f"`kshot_split`, seeds {seeds[0]}-{seeds[-1]}, scored on each dataset's whole test split. Accuracy in "
             "%, mean ± 95% CI over seeds (Student's t); differences are paired by seed, in points, with their t "
             "interval (`pefs.results.stats`). Rendered from `linear_default.json` by `linear_default.py`.", "",
             "| dataset | classes | train / test images | head `pefs tune --strategy linear` used |",
             "|---|---|---|---|"]
    for name, d in data["datasets"].items():
        lines.append(f"| {name} (`{d['dataset']}`) | {d['classes']} | {d['train']} / {d['test']} | "
                     f"{d['default_head']} |")
    lines += ["", "| dataset | shots | " + " | ".join(METHODS) + " | default − sklearn | --head linear − sklearn |",
              "|---|---|" + "---|" * (len(METHODS) + 2)]
    verdicts = []
    for name in data["datasets"]:
        for k in shots:
            cells = [pm(mean_ci([100 * r["accuracy"] for r in rows if r["dataset"] == name and r["shots"] == k
                                 and r["method"] == m])) for m in METHODS]
            d_def, d_lin = (_paired(rows, name, k, m, METHODS[1]) for m in (METHODS[0], METHODS[2]))
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + f" | {pm(d_def, sign=True)} | "
                         f"{pm(d_lin, sign=True)} |")
            verdicts.append((name, k, d_def, d_lin))
    lines += ["", "## Reading", "", _reading(verdicts), "", f"Command: `{data.get('command', 'not recorded')}`; "
              f"commit {data.get('git_commit', 'not recorded')}; measured {data.get('measured_at', '?')}.", "",
              machine_load(data), ""]
    return "\n".join(lines) + "\n"


def _cells(items: list) -> str:
    """``digits 1-shot (-0.3 ± 0.2), ...`` for (dataset, shots, summary) items, or "no cell"."""
    return ", ".join(f"{n} {k}-shot ({pm(s, sign=True)})" for n, k, s in items) if items else "no cell"


def _reading(verdicts: list) -> str:
    """Every claim from the paired intervals: where the default is below, within noise of, or above sklearn."""
    below = [(n, k, d) for n, k, d, _ in verdicts if d.direction() == "below 0"]
    above = [(n, k, d) for n, k, d, _ in verdicts if d.direction() == "above 0"]
    covers = [(n, k, d) for n, k, d, _ in verdicts if d.direction() not in ("below 0", "above 0")]
    from pefs.results.stats import holm_directions

    lin_below = [(n, k, d) for n, k, _, d in verdicts if d.direction() == "below 0"]
    first = (f"The default probe against scikit-learn, paired (each cell's own 95% interval): above "
             f"(interval above 0) at {_cells(above)}; within noise (the interval covers 0) at {len(covers)} of "
             f"{len(verdicts)} cells; below at {_cells(below)}.")
    holm = holm_directions([d for _, _, d, _ in verdicts])
    held = [(n, k, d) for (n, k, d, _), h in zip(verdicts, holm) if h == "below 0"]
    verdict = ("The default is within noise of or above scikit-learn's default in every cell." if not below else
               "The default is not within noise of scikit-learn's default in every cell.")
    verdict += (f" Over the {len(verdicts)} comparisons with Holm's correction (family-wise 5%), the default is below "
                f"at {_cells(held)}.")
    second = (f"The AdamW-trained `--head linear` is below scikit-learn at {_cells(lin_below)}, of "
              f"{len(verdicts)} cells.")
    return f"{first} {verdict} {second}"


def main() -> None:
    ap = parser(__doc__, "benchmarks/linear_default.json")
    ap.add_argument("--shots", default="1,5,10")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--fmnist-test", type=int, default=1000, help="Fashion-MNIST test images")
    args = ap.parse_args()
    path = render_source(args, HERE / "linear_default.json")
    if path is None:
        path, start = HERE / "linear_default.json", load()
        data = run([int(s) for s in args.shots.split(",")], list(range(args.seeds)), args.img_size, args.fmnist_test)
        data.update(provenance(__file__), load_start=start, load_end=load())
        path.write_text(json.dumps(data, indent=1) + "\n")
    (HERE / "linear_default.md").write_text(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
