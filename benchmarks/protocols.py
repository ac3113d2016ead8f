"""The field's protocols on the full Fashion-MNIST: a base/novel class split in the ``fewshot:`` layout (5-way 1- and
5-shot episodes from the 5 novel classes) and a VTAB-style task in the ``vtab1k:`` layout (train800 / val200 /
test), each run as a ``pefs sweep`` into a store and tabled by ``pefs report``'s paper layouts.

    .venv/bin/python -m benchmarks.protocols --work /tmp/protocols     # measure: stores, protocols.json, the page
    .venv/bin/python -m benchmarks.protocols --render                  # the page from the committed data alone

Measuring writes the two layouts under ``--work`` from /usr/share/datasets/fashion-mnist (Debian's
``dataset-fashion-mnist``; the images are not committed, the split files' SHA-256 are in every stored record),
runs each sweep into ``benchmarks/protocols/{episodic,vtab}.jsonl`` (resumable: a rerun skips finished cells) and
records the settings, machine and load in ``protocols.json``. Rendering reads only those files.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.protocols`
    import common

    common.run_as_module(__file__)

import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import (
    load,
    load_text,
    machine,
    parser,
    provenance,
    provenance_section,
    render_source,
    run_sweep,
)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch (imported below, inside functions) reads it on load
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
#: the committed stores, relative to the repository root (where every benchmark runs)
STORES = "benchmarks/protocols"
PAGE = HERE / "protocols.md"
#: Fashion-MNIST's classes 0-4 are the base classes, 5-9 the novel ones (episodes draw only from these)
BASE, NOVEL = range(0, 5), range(5, 10)
#: the page's fixed text, above what the data renders (no number in it: every figure comes from the data)
INTRO = """# The field's protocols on Fashion-MNIST: base/novel episodes and a VTAB-style task

What a user of the benchmark sources (`fewshot:`, `vtab1k:`) gets, measured here on what exists offline: the full
Fashion-MNIST (Debian's `dataset-fashion-mnist`) written in each benchmark's own folder layout, swept with
`pefs sweep`, and tabled by `pefs report`'s layouts in the papers' form (`paper.md`, `--layout`).

- **Base/novel episodes** (`fewshot:` layout, `base/<class>/` and `novel/<class>/`): half the classes are base
  classes, the other half novel; every episode is drawn from the novel classes only (the base classes are the
  dataset's `base` split, for pretraining, and never sampled). Five-way one- and five-shot episodes of the
  linear probe and of a strategy that trains inside the backbone (BitFit, `bias`); each cell gives its episode
  count.
- **VTAB-style task** (`vtab1k:` layout, train800 / val200 / train800val200 / test split files): each strategy is
  trained on all of train800val200 (every class has the same count, so K = that count takes every image) and
  scored once on test, over a few seeds. With every training image taken, seeds change only the training order
  and initialisation; the linear probe (logistic regression fitted to convergence) is deterministic on a fixed
  set, so its seeds can agree exactly (an interval of zero width). The task is not one of VTAB-1k's nineteen,
  so the table lists it apart and computes no VTAB-1k group or overall mean; `--published` rows are only for the
  nineteen real tasks.

The backbone is the embedded offline EfficientNet-Lite0 at a small image size, not a ViT-B/16: these numbers say
what the protocols and tables do on this machine, not how the strategies compare at the scale papers report.
Other helpers' jobs shared the two cores while this ran: the load averages are in the table below, and
seconds depend on them (accuracies do not).
"""
#: the VTAB-style task's folder name (not one of VTAB-1k's 19: a report lists it apart from them)
TASK = "fashion_mnist"


# ------------------------------------------------------------------------------------------------ the layouts


def _name(c: int) -> str:
    from benchmarks.fmnist import CLASSES

    return f"{c}-{CLASSES[c].replace('/', '-')}"


def write_fewshot(root: Path, per_class: int) -> Path:
    """``root/base/<class>/*.png`` (classes 0-4) and ``root/novel/<class>/*.png`` (classes 5-9): the first
    ``per_class`` official training images of each class; kept if already complete."""
    from PIL import Image

    from benchmarks.fmnist import arrays

    done = root / ".complete"
    if done.exists() and done.read_text() == str(per_class):
        return root
    x, y, _, _ = arrays(0, per_class)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / ("base" if label in BASE else "novel") / _name(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    done.write_text(str(per_class))
    return root


def write_vtab(root: Path, n_test: int) -> Path:
    """``root/fashion_mnist/`` in the VTAB-1k layout: train800 = the first 80 official training images of each
    class, val200 = the next 20, train800val200 = both, test = the first ``n_test`` official test images; every
    image under ``images/`` and each split file's lines ``<split>/<n>.png <label>``. Kept if already complete."""
    from PIL import Image

    from benchmarks.fmnist import arrays

    task = root / TASK
    done = task / ".complete"
    if done.exists() and done.read_text() == str(n_test):
        return task
    xtr, ytr, xte, yte = arrays(n_test, 100)
    seen: dict[int, int] = {}
    lines: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for split, xs, ys in (("train", xtr, ytr), ("test", xte, yte)):
        (task / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(xs, ys)):
            Image.fromarray(img).save(task / "images" / split / f"{i:05d}.png")
            k = seen[int(label)] = seen.get(int(label), -1) + 1 if split == "train" else 0
            which = "test" if split == "test" else "train800" if k < 80 else "val200"
            lines[which].append(f"{split}/{i:05d}.png {int(label)}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for name, rows in lines.items():
        (task / f"{name}.txt").write_text("\n".join(rows) + "\n")
    done.write_text(str(n_test))
    return task


# ------------------------------------------------------------------------------------------------ the sweeps


def sweeps(args: Any, fewshot: Path, vtab: Path) -> list[dict[str, Any]]:
    """Every sweep this page runs, as ``pefs sweep`` settings (a recipe's keys)."""
    common = {"models": ["efficientnet_lite0.offline"], "img_size": args.img_size,
              "output": str(args.work / "records")}
    episodic = {**common, "data": f"fewshot:{fewshot}", "ways": 5, "queries": 15, "shots": [1, 5], "seeds": [0],
                "store": f"{args.stores}/episodic.jsonl"}
    return [
        {**common, "data": f"vtab1k:{vtab}", "shots": [100], "seeds": list(range(args.vtab_seeds)),
         "strategies": ["linear", "bias", {"name": "lora", "options": {"r": 8}}], "epochs": args.vtab_epochs,
         "store": f"{args.stores}/vtab.jsonl"},
        {**episodic, "strategies": ["linear"], "episodes": args.linear_episodes},
        {**episodic, "strategies": ["bias"], "episodes": args.tuned_episodes, "epochs": args.tuned_epochs},
    ]


def _same(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------ the page


def _rows(store: str) -> list[dict[str, Any]]:
    from pefs.results import store as results

    return list(results.load(HERE.parent / store).rows.values())


def _split_files(rows: list[dict[str, Any]]) -> list[str]:
    """Each benchmark folder's split files and SHA-256, as the records name them."""
    seen: dict[str, dict[str, str]] = {}
    for r in rows:
        bench = (r.get("record") or {}).get("benchmark") or {}
        seen.setdefault(f"{bench.get('benchmark')}:{bench.get('name')}", bench.get("split_files") or {})
    return [f"  - `{name}`: " + ", ".join(f"`{f}` {h[:12]}" for f, h in files.items()) for name, files in seen.items()]


def _sweep_line(sweep: dict[str, Any]) -> str:
    s = sweep["settings"]
    names = ", ".join(e if isinstance(e, str) else e["name"] + " (" + ", ".join(
        f"{k}={v}" for k, v in sorted((e.get("options") or {}).items())) + ")" for e in s["strategies"])
    what = (f"{s['ways']}-way {'/'.join(map(str, s['shots']))}-shot, {s['episodes']} episodes of {s['queries']} "
            f"queries per class" if s.get("ways") else f"{s['shots'][0]} shots per class, seeds "
            + ", ".join(map(str, s["seeds"])))
    epochs = f"epochs={s['epochs']}" if s.get("epochs") else "default epochs"
    return (f"| {names} | {what} | {epochs} | {sweep['cells']} ({sweep['ran']} run here) | {sweep['wall_s']:.0f} | "
            f"{load_text(sweep['load_start'])} → {load_text(sweep['load_end'])} |")


def render(data: dict[str, Any]) -> str:
    """The page's generated part, from ``protocols.json`` and the two stores it names: the tables are
    ``pefs report``'s own (:func:`pefs.results.report.paper.paper_tables`)."""
    from pefs.results.report.paper import paper_tables, table_markdown

    st = data["settings"]
    stores = {"vtab": f"{st['stores']}/vtab.jsonl", "episodic": f"{st['stores']}/episodic.jsonl"}
    rows = {k: _rows(v) for k, v in stores.items()}
    lines = ["## What ran", "",
             f"- Data: the full Fashion-MNIST from `{st['work']}` (written by this script): base classes "
             f"{BASE.start}-{BASE.stop - 1}, novel classes {NOVEL.start}-{NOVEL.stop - 1}, the first "
             f"{st['per_class']} official training images of each class in `base/` and `novel/`; the VTAB-style "
             f"task `{TASK}`: train800 = the first 80 training images of each class, val200 = the next 20, test = "
             f"the first {st['n_test']} official test images.",
             f"- Model `efficientnet_lite0.offline` (embedded weights) at {st['img_size']}x{st['img_size']} pixels.",
             "- Split files and their SHA-256 (first 12 hex digits), as every record names them:",
             *_split_files(rows["vtab"] + rows["episodic"]), "",
             "| strategies | protocol | training | cells | wall s | load average (1/5/15 min) start → end |",
             "|---|---|---|---:|---:|---|", *(_sweep_line(s) for s in data["sweeps"]), "",
             *(f"Measured by an earlier command (the store kept its cells; a rerun resumes them), at commit "
               f"`{s['git_commit']}`, {s['measured_at']}: {_sweep_line(s).split(' | ')[0].lstrip('| ')}.\n"
               for s in data["sweeps"] if s.get("git_commit"))]
    for layout, what in (("vtab", "The VTAB-style task"), ("episodic", "Base/novel episodes")):
        lines += [f"## {what}", "", f"`pefs report --store {stores[layout]}` writes this table (paper.md):", ""]
        for t in paper_tables(rows[layout], layout):
            lines += table_markdown(t, "###")
    measure = f".venv/bin/python -m benchmarks.protocols --work {st['work']}"
    return "\n".join([INTRO, *lines, *provenance_section(data, measure,
                                                      ".venv/bin/python -m benchmarks.protocols --render")])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/protocols.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/protocols"), help="where the image layouts and the "
                   "per-run records are written (not committed)")
    p.add_argument("--stores", default=STORES, help=f"folder of the two sweep stores (default {STORES})")
    p.add_argument("--per-class", type=int, default=100, help="images per class in base/ and novel/")
    p.add_argument("--n-test", type=int, default=2000, help="test images of the VTAB-style task")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--vtab-seeds", type=int, default=3)
    p.add_argument("--vtab-epochs", type=int, default=10)
    p.add_argument("--linear-episodes", type=int, default=600)
    p.add_argument("--tuned-episodes", type=int, default=200)
    p.add_argument("--tuned-epochs", type=int, default=5)
    p.add_argument("--json", type=Path, default=HERE / "protocols.json", help="where the run's data is written")
    args = p.parse_args(argv)
    source = render_source(args, HERE / "protocols.json")
    if source is not None:
        PAGE.write_text(render(json.loads(source.read_text())))
        return 0
    os.chdir(HERE.parent)  # stores and commands are relative to the repository root
    fewshot = write_fewshot(args.work / "fashion-mnist-5base-5novel", args.per_class)
    vtab = write_vtab(args.work / "vtab-1k", args.n_test)
    data: dict[str, Any] = {**provenance(__file__, argv), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in vars(args).items()},
                            "load_start": load(), "sweeps": []}
    # a rerun resumes the stores: a sweep it finds finished keeps the entry of the run that measured it
    earlier = json.loads(args.json.read_text()) if args.json.exists() else {}
    measured = {_same(s["settings"]): s for s in earlier.get("sweeps", [])}
    for settings in sweeps(args, fewshot, vtab):
        result = run_sweep(settings, "protocols.py")
        kept = measured.get(_same(result["settings"])) if result["ran"] == 0 else None
        if kept:  # the command, commit and date of the run that measured it (older entries: the earliest run's)
            first = (earlier.get("commands_run") or [earlier["command"]])[0]
            kept = {"git_commit": earlier.get("git_commit"), "measured_at": earlier.get("measured_at"),
                    "command": first, **kept}
        data["sweeps"].append(kept or {**result, "command": data["command"]})
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    commands = list(dict.fromkeys(s["command"] for s in data["sweeps"]))
    if commands != [data["command"]]:
        data["commands_run"] = commands
    data.update(machine=machine(), load_end=load())
    args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    if args.json == HERE / "protocols.json":
        PAGE.write_text(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
