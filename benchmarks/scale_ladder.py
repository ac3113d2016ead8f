"""The scale ladder (issue #27): is a bigger model better at 1 shot, and which parameters should be tuned at each
scale? ViTs of three scales (``pefs.backbones`` ladder models, 47x apart in parameters) are pretrained from random
weights by ``pefs pretrain`` on Fashion-MNIST's 5 base classes, then transferred K-shot to its 5 novel classes by
``pefs sweep`` (``recipes/scale-ladder.yaml``): 1/2/5/10 shots x linear/bias/norm/LoRA/adapter/full/VPT x seeds,
with and without MAE-style masked views; the pretraining objective (supervised, contrastive, MAE) is compared at
one scale.

    .venv/bin/python -m benchmarks.scale_ladder --work /tmp/scale-ladder     # measure (see the estimate below)
    .venv/bin/python -m benchmarks.scale_ladder --render                     # the page from the committed data
    .venv/bin/python -m benchmarks.scale_ladder --quick --work /tmp/sl-quick # the whole pipeline on tiny sizes

Measuring writes the ``fewshot:`` layout under ``--work`` (``benchmarks.protocols.write_fewshot``), one checkpoint
per scale and objective under ``--work/checkpoints`` (kept: a rerun reuses a checkpoint made with the same
settings), runs each sweep into ``--store`` (resumable: a rerun skips finished cells) and records the settings,
the pretraining runs, machine and load in ``--json``; rendering reads only those files. ``--quick`` runs every
stage on tiny sizes into ``--work`` (never the committed store or page): a check that the pipeline works, not a
measurement.

Estimate, from single cells timed on this project's shared 2-core machine (not a measurement for the page): at
the largest scale one 10-shot cell of full fine-tuning (10 epochs) took about 22 s, LoRA about 15 s, and a
pretraining step of 8 images about 0.4 s (so about 1.5 s for the default 32); the whole default grid (3 scales x 4
shot counts x 7 strategies x 5 seeds, with and without masked views, and two more objectives at the middle scale:
1,120 cells) comes to about 1.5-2 hours, most of it the largest scale's masked-view cells. ``--epochs 5`` brings
it near an hour; a GPU runs it in minutes.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.scale_ladder`
    import common

    common.run_as_module(__file__)

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import load, machine, parser, provenance, provenance_section, render_source, run_sweep

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch (imported below, inside functions) reads it on load
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGE = HERE / "scale_ladder.md"
RECIPE = ROOT / "recipes" / "scale-ladder.yaml"
#: the masked-views condition: two complementary views of half the patches each, beside the clean one
MASKED = {"views": 3, "mask_ratio": 0.5, "mask_mode": "complementary"}
#: what --quick changes: every stage runs, on tiny sizes
QUICK = {"per_class": 12, "models": ["vit_ladder_w96_d4", "vit_ladder_w192_d8"], "steps": 3, "batch_size": 8,
         "shots": [1, 2], "seeds": [0, 1], "strategies": ["linear", "bias"], "epochs": 1}
INTRO = """# The scale ladder: shots x scale x tuned parameters on Fashion-MNIST's novel classes

ViTs of three scales (widths 96/192/384, depths 4/8/12, 4-pixel patches at 28 pixels) are pretrained from random
weights by `pefs pretrain` on Fashion-MNIST's five base classes (T-shirt, trouser, pullover, dress, coat), then
transferred K-shot to its five novel classes (sandal, shirt, sneaker, bag, ankle boot) by `pefs sweep` with
`recipes/scale-ladder.yaml`. Every number below is generated from the committed store and `scale_ladder.json`.
"""


# ------------------------------------------------------------------------------------------------ the stages


def settings_of(args: Any) -> dict[str, Any]:
    """The run's settings: the recipe's, then the flags given (``--quick``: the tiny sizes)."""
    from pefs.sweep.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    st: dict[str, Any] = {"models": recipe["models"], "strategies": recipe["strategies"], "shots": recipe["shots"],
                          "seeds": list(range(5)), "epochs": recipe["epochs"], "img_size": recipe["img_size"],
                          "per_class": 600, "steps": 300, "batch_size": 32, "lr": 1e-3, "objectives_at": None,
                          "objectives": ["supervised", "contrastive", "mae"]}
    if args.quick:
        st.update(QUICK)
    for key in ("models", "shots", "seeds", "strategies", "per_class", "steps", "epochs", "objectives_at"):
        if getattr(args, key, None) is not None:
            st[key] = getattr(args, key)
    st["objectives_at"] = st["objectives_at"] or st["models"][len(st["models"]) // 2]
    st["work"] = str(args.work)
    return st


def pretrain_one(model: str, objective: str, st: dict[str, Any], data: str) -> dict[str, Any]:
    """``pefs pretrain`` of ``model`` with ``objective`` on the base classes; a checkpoint already written with the
    same settings from the same images is reused. Returns its identity, as the checkpoint records it, and where
    it is."""
    from pefs.backbones.sources.checkpoint import is_pretrain_dir, pretrain_identity
    from pefs.config.pretrain import PretrainConfig
    from pefs.data.fingerprint import data_fingerprint
    from pefs.pretrain import pretrain

    out = Path(st["work"]) / "checkpoints" / f"{model}-{objective}"
    cfg = PretrainConfig(model=model, out=str(out), data=data, objective=objective, pretrained=False,
                         img_size=st["img_size"], steps=st["steps"], batch_size=st["batch_size"], lr=st["lr"],
                         progress=False)
    same = is_pretrain_dir(out) and pretrain_identity(out).get("config") == json.loads(json.dumps(cfg.to_dict()))
    if same and pretrain_identity(out)["data"].get("fingerprint") == data_fingerprint(data):
        info = pretrain_identity(out)
    else:
        print(f"scale_ladder.py: pretrain {model} ({objective}, {st['steps']} steps)", file=sys.stderr, flush=True)
        info = pretrain(cfg)
    keep = ("model", "objective", "params", "steps", "batch_size", "seconds", "first_loss", "final_loss")
    return {"checkpoint": str(out), **{k: info.get(k) for k in keep}, "images": info["data"]["images"]}


def sweeps(st: dict[str, Any], checkpoints: list[dict[str, Any]], data: str, store: str) -> list[dict[str, Any]]:
    """Every sweep, as ``pefs sweep`` settings: per scale (supervised pretraining) without and with masked views,
    and at ``objectives_at`` the other objectives' checkpoints without masked views."""
    common = {"strategies": st["strategies"], "shots": st["shots"], "seeds": st["seeds"], "epochs": st["epochs"],
              "img_size": st["img_size"], "data": data, "store": store, "output": str(Path(st["work"]) / "records")}
    out = []
    for ck in checkpoints:
        one = {**common, "models": [ck["model"]], "checkpoint": ck["checkpoint"]}
        if ck["objective"] == "supervised":
            out += [one, {**one, **MASKED}]
        else:
            out.append(one)
    return out


def measure(args: Any) -> dict[str, Any]:
    """Every stage: the layout, the pretraining runs, the sweeps; returns the page's data (also written to
    ``args.json`` after each stage, so an interrupted run keeps what finished)."""
    from benchmarks.protocols import write_fewshot

    st = settings_of(args)
    store = str(args.store or (Path(st["work"]) / "results.jsonl" if args.quick else "benchmarks/scale_ladder/"
                                                                                  "results.jsonl"))
    st["store"] = store
    root = write_fewshot(Path(st["work"]) / "fashion-mnist-5base-5novel", st["per_class"])
    data_spec = f"fewshot:{root}"
    data: dict[str, Any] = {**provenance(__file__, args.argv), "settings": st, "quick": bool(args.quick),
                            "load_start": load(), "pretraining": [], "sweeps": []}
    jobs = [(m, "supervised") for m in st["models"]]
    jobs += [(st["objectives_at"], o) for o in st["objectives"] if o != "supervised"]
    for model, objective in jobs:
        data["pretraining"].append(pretrain_one(model, objective, st, data_spec))
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    for settings in sweeps(st, data["pretraining"], data_spec, store):
        data["sweeps"].append(run_sweep(settings, "scale_ladder.py"))
        args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    data.update(machine=machine(), load_end=load())
    args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


# ------------------------------------------------------------------------------------------------ the page


def cells(data: dict[str, Any], rows: list[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
    """(model, objective, masked, strategy, shots) -> {seed: accuracy} over the store's finished rows of this
    run's checkpoints (the objective is the checkpoint's, as the page's data records it)."""
    objective = {p["checkpoint"]: p["objective"] for p in data["pretraining"]}
    out: dict[tuple, dict[int, float]] = {}
    for r in rows:
        rec = r.get("record") or {}
        cfg = rec.get("config") or {}
        if r["status"] != "ok" or cfg.get("checkpoint") not in objective or len(rec.get("accuracies") or []) != 1:
            continue
        key = (r["cell"]["model"], objective[cfg["checkpoint"]], (cfg.get("mask_ratio") or 0) > 0, label(r["cell"]),
               int(r["cell"]["shots"]))
        out.setdefault(key, {})[int(r["cell"].get("seed", 0))] = 100 * float(rec["accuracies"][0])
    return out


def label(cell: dict[str, Any]) -> str:
    """A cell's strategy with its options: ``lora (r=4)``."""
    options = ", ".join(f"{k}={v}" for k, v in sorted((cell.get("options") or {}).items()))
    return cell["strategy"] + (f" ({options})" if options else "")


def fmt(s: Any) -> str:
    """A Summary as ``mean ± half-width`` (one seed: the mean alone)."""
    return f"{s.mean:.1f}" + (f" ± {s.half_width:.1f}" if s.half_width is not None else "")


def scale_table(found: dict[tuple, dict[int, float]], model: str, objective: str, masked: bool,
                shots: list[int], strategies: list[str]) -> list[str]:
    """Accuracy (mean ± t 95% half-width over seeds) per strategy and shots, and each strategy's paired
    difference from the linear probe on the same seeds (the same support images)."""
    from pefs.results.stats import mean_ci, paired_diff

    head = ["| strategy | " + " | ".join(f"{k}-shot acc. % | vs linear (paired)" for k in shots) + " |",
            "|---|" + "---:|---:|" * len(shots)]
    lines = []
    for strategy in strategies:
        row = []
        for k in shots:
            mine, base = found.get((model, objective, masked, strategy, k)), found.get((model, objective, masked,
                                                                                        "linear", k))
            row.append(f"{fmt(mean_ci(list(mine.values())))} (n={len(mine)})" if mine else "-")
            seeds = sorted(set(mine or {}) & set(base or {}))
            row.append(fmt(paired_diff([mine[s] for s in seeds], [base[s] for s in seeds]))
                       if strategy != "linear" and len(seeds) > 1 else "")
        if any(c not in ("-", "") for c in row):
            lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    return head + lines if lines else []


def best_of(found: dict[tuple, dict[int, float]], model: str, objective: str, masked: bool,
            k: int) -> tuple[str, float] | None:
    """The strategy with the highest mean accuracy at ``k`` shots, and that mean."""
    means = {key[3]: sum(v.values()) / len(v) for key, v in found.items() if key[:3] == (model, objective, masked)
             and key[4] == k and v}
    return max(means.items(), key=lambda kv: kv[1]) if means else None


def bigger_vs_smaller(found: dict[tuple, dict[int, float]], best: dict[str, tuple[str, float]],
                      params: dict[str, int], k: int) -> str:
    """Whether the biggest scale's best strategy beats the smallest one's, paired over the seeds both ran (a
    seed draws the same support images at every scale), in words: better, worse, or not told apart."""
    from pefs.results.stats import paired_diff

    big, small = max(best, key=lambda m: params[m]), min(best, key=lambda m: params[m])
    a, b = found[(big, "supervised", False, best[big][0], k)], found[(small, "supervised", False, best[small][0], k)]
    seeds = sorted(set(a) & set(b))
    if big == small or len(seeds) < 2:
        return "(Too few paired seeds to compare the biggest scale with the smallest.)"
    d = paired_diff([a[s] for s in seeds], [b[s] for s in seeds])
    words = {"above 0": "better than", "below 0": "worse than"}.get(d.direction(), "not told apart from")
    return (f"The biggest ({big}, {params[big] / params[small]:.0f}x the parameters) is {words} the smallest "
            f"({small}): {d.mean:+.1f} points, 95% interval {d.low:+.1f} to {d.high:+.1f}, paired over "
            f"{len(seeds)} seeds.")


def budget_lines(rows: list[dict[str, Any]], data: dict[str, Any]) -> list[str]:
    """How each strategy transferred, from its records: the head it used, its learning rates and the optimizer
    steps per task at each shot count (clean / with masked views), over every scale. A probe fitted to
    convergence (the logistic head) and a few AdamW steps through a tuned trunk are different budgets, and the
    tables above compare them as pefs runs them by default."""
    supervised = {p["checkpoint"] for p in data["pretraining"] if p["objective"] == "supervised"}
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        rec = r.get("record") or {}
        if r["status"] != "ok" or rec.get("config", {}).get("checkpoint") not in supervised or not rec.get("runs"):
            continue
        one = seen.setdefault(label(r["cell"]), {"heads": set(), "rates": set(), "steps": {}})
        one["heads"].add(rec.get("head"))
        run = rec["runs"][0]
        one["rates"].add("-" if run.get("lr") is None and run.get("head_lr") is None
                         else f"{run.get('lr') or '-'} / {run.get('head_lr') or '-'}")
        masked = (rec["config"].get("mask_ratio") or 0) > 0
        one["steps"].setdefault((int(r["cell"]["shots"]), masked), set()).add(int(run.get("steps") or 0))
    shots = data["settings"]["shots"]

    def steps(s: dict, k: int) -> str:
        return " / ".join(",".join(map(str, sorted(s.get((k, m), {"-"})))) for m in (False, True))

    heads = [f"steps at {k} shot{'s' if k > 1 else ''} (clean / masked)" for k in shots]
    lines = ["## How each strategy transferred (from its records)", "",
             "| strategy | head | lr / head lr | " + " | ".join(heads) + " |", "|---|---|---|" + "---:|" * len(shots)]
    for name, one in seen.items():
        lines.append(f"| {name} | {', '.join(sorted(map(str, one['heads'])))} | {', '.join(sorted(one['rates']))} | "
                     + " | ".join(steps(one["steps"], k) for k in shots) + " |")
    return [*lines, "", "A `logistic` head is fitted to convergence on frozen features (no optimizer steps); every "
            "other row trains its head with the trunk's tuned parameters for the steps shown (AdamW, cosine).", ""] \
        if seen else []


def pretraining_budget(data: dict[str, Any]) -> str:
    """One sentence on what the ladder compares: the same pretraining budget at every scale, and how well each
    scale fit the base classes within it (its final loss, from the data)."""
    sup = sorted((p for p in data["pretraining"] if p["objective"] == "supervised"), key=lambda p: p["params"])
    if len(sup) < 2:
        return ""
    small, big = sup[0], sup[-1]
    same = len({(p["steps"], p["batch_size"]) for p in sup}) == 1
    fit = ("less well than" if big["final_loss"] > small["final_loss"] else "at least as well as")
    return (f"- What is compared: every scale was pretrained with {'the same' if same else 'a different'} budget "
            f"({small['steps']} steps x {small['batch_size']} images for the smallest), and the biggest fit the base "
            f"classes {fit} the smallest in it (final loss {big['final_loss']:.3f} vs {small['final_loss']:.3f}): "
            "scales are compared at an equal pretraining budget on this machine, not each at convergence.")


def tuned_vs_linear(found: dict[tuple, dict[int, float]], model: str, k: int) -> str:
    """Whether tuning anything inside ``model``'s trunk beat its linear probe at ``k`` shots: the tuned strategy
    with the highest mean, paired with the probe over the seeds both ran, in words (the pick is made on the same
    seeds, which the sentence says)."""
    from pefs.results.stats import paired_diff

    base = found.get((model, "supervised", False, "linear", k))
    tuned = {key[3]: v for key, v in found.items() if key[:3] == (model, "supervised", False) and key[4] == k
             and key[3] != "linear" and v}
    if not base or not tuned:
        return ""
    name = max(tuned, key=lambda n: sum(tuned[n].values()) / len(tuned[n]))
    seeds = sorted(set(tuned[name]) & set(base))
    if len(seeds) < 2:
        return ""
    d = paired_diff([tuned[name][s] for s in seeds], [base[s] for s in seeds])
    words = {"above 0": "beats", "below 0": "falls below"}.get(d.direction(), "is not told apart from")
    return (f"the best tuned strategy, {name}, {words} the linear probe ({d.mean:+.1f} points, 95% interval "
            f"{d.low:+.1f} to {d.high:+.1f}, {len(seeds)} paired seeds; picked as the best of {len(tuned)} on these "
            "same seeds, so the interval is optimistic).")


def masked_vs_clean(found: dict[tuple, dict[int, float]], model: str, masked: str, clean: str, k: int) -> str:
    """The best strategy with masked views against the best without, paired over the seeds both ran (a seed
    draws the same support images either way), in words."""
    from pefs.results.stats import paired_diff

    a, b = found[(model, "supervised", True, masked, k)], found[(model, "supervised", False, clean, k)]
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "too few paired seeds to compare with no masked views."
    d = paired_diff([a[s] for s in seeds], [b[s] for s in seeds])
    words = {"above 0": "above", "below 0": "below"}.get(d.direction(), "not told apart from")
    return (f"{words} the best without them ({d.mean:+.1f} points, 95% interval {d.low:+.1f} to {d.high:+.1f}, "
            f"{len(seeds)} paired seeds).")


def answer(found: dict[tuple, dict[int, float]], data: dict[str, Any]) -> list[str]:
    """The answer in plain words, from the data: per shot count, the scale whose best strategy scores highest,
    and whether masked views raised or lowered each scale's best accuracy."""
    st, params = data["settings"], {p["model"]: p["params"] for p in data["pretraining"]}
    lines = ["## The answer, from the data above", ""]
    if pretraining_budget(data):
        lines.append(pretraining_budget(data))
    for k in st["shots"]:
        best = {m: best_of(found, m, "supervised", False, k) for m in st["models"]}
        best = {m: b for m, b in best.items() if b}
        if not best:
            continue
        top = max(best, key=lambda m: best[m][1])
        order = " < ".join(f"{m} ({params[m] / 1e6:.2f}M)" for m in sorted(best, key=lambda m: best[m][1]))
        lines.append(f"- {k} shot{'s' if k > 1 else ''}: {top} scores highest ({best[top][0]}, "
                     f"{best[top][1]:.1f}%); the scales ranked by their best strategy: {order}. "
                     + bigger_vs_smaller(found, best, params, k))
        for m in best:
            tuned = tuned_vs_linear(found, m, k)
            if tuned:
                lines.append(f"  - {m}: {tuned}")
        for m in best:
            masked = best_of(found, m, "supervised", True, k)
            if masked:
                lines.append(f"  - {m} with masked views: best {masked[0]} {masked[1]:.1f}%; "
                             + masked_vs_clean(found, m, masked[0], best[m][0], k))
    return lines + [""]


def objective_lines(found: dict[tuple, dict[int, float]], data: dict[str, Any]) -> list[str]:
    """The pretraining objectives at one scale: each one's best strategy per shot count."""
    st = data["settings"]
    m = st["objectives_at"]
    lines = [f"## Pretraining objective at {m}", "", "| objective | " + " | ".join(
        f"{k}-shot best strategy, acc. %" for k in st["shots"]) + " |", "|---|" + "---|" * len(st["shots"])]
    for o in st["objectives"]:
        cells_ = [best_of(found, m, o, False, k) for k in st["shots"]]
        if any(cells_):
            lines.append(f"| {o} | " + " | ".join(f"{b[0]} {b[1]:.1f}" if b else "-" for b in cells_) + " |")
    return lines + [""]


def plot(rows: list[dict[str, Any]], data: dict[str, Any], page: Path) -> str | None:
    """``pefs report``'s 3-D plot (shots x trainable parameters x accuracy, CI bars) of the supervised, unmasked
    cells; its path relative to the page, or None without matplotlib."""
    from pefs.results.aggregate import aggregate
    from pefs.results.report.plots import shots_params_accuracy_3d

    supervised = {p["checkpoint"] for p in data["pretraining"] if p["objective"] == "supervised"}
    keep = [r for r in rows if (r.get("record") or {}).get("config", {}).get("checkpoint") in supervised
            and not ((r.get("record") or {}).get("config", {}).get("mask_ratio") or 0)]
    # a checkpoint belongs to one scale, which the marker already shows: the legend names the strategy alone
    groups = [dataclasses.replace(g, strategy=re.sub(r" \(\)", "", re.sub(r"checkpoint=[^,)]*(, )?", "", g.strategy)))
              for g in aggregate(keep)]
    try:
        path = shots_params_accuracy_3d(groups, page.parent / page.stem / "shots_params_accuracy_3d.png",
                                        "scale ladder: shots x trainable parameters x accuracy")
    except ImportError:
        return None
    return os.path.relpath(path, page.parent)


def render(data: dict[str, Any], page: Path = PAGE) -> str:
    """The page from ``data`` and the store it names: pretraining, a table per scale, the objectives, the plot and
    the answer."""
    from pefs.results import store as results

    st = data["settings"]
    rows = list(results.load(ROOT / st["store"]).rows.values())
    found = cells(data, rows)
    strategies = list(dict.fromkeys(k[3] for k in found))
    lines = [INTRO, "## Pretraining (`pefs pretrain`, base classes only)", "",
             "| model | parameters | objective | steps x batch | images | loss first → last | seconds |",
             "|---|---:|---|---:|---:|---|---:|"]
    lines += [f"| {p['model']} | {p['params']:,} | {p['objective']} | {p['steps']} x {p['batch_size']} | "
              f"{p['images']} | {p['first_loss']:.3f} → {p['final_loss']:.3f} | {p['seconds']} |"
              for p in data["pretraining"]]
    lines += ["", f"Transfer: {'/'.join(map(str, st['shots']))} shots per novel class, seeds "
              f"{', '.join(map(str, st['seeds']))}, {st['epochs']} epochs; masked views: "
              + ", ".join(f"{k}={v}" for k, v in MASKED.items()) + ". Accuracy: mean ± t 95% half-width over "
              "seeds; 'vs linear': the paired difference from the linear probe on the same seeds (points).", ""]
    for m in st["models"]:
        for masked in (False, True):
            table = scale_table(found, m, "supervised", masked, st["shots"], strategies)
            if table:
                lines += [f"## {m}{', masked views' if masked else ''}", "", *table, ""]
    lines += budget_lines(rows, data)
    lines += objective_lines(found, data)
    picture = plot(rows, data, page)
    if picture:
        lines += ["## Shots x trainable parameters x accuracy (`pefs report`'s 3-D plot)", "",
                  f"![3-D plot]({picture})", ""]
    lines += answer(found, data)
    measure = f".venv/bin/python -m benchmarks.scale_ladder --work {st['work']} --epochs {st['epochs']}"
    return "\n".join([*lines, *provenance_section(data, measure, ".venv/bin/python -m benchmarks.scale_ladder "
                                                                  "--render")])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "benchmarks/scale_ladder.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/scale-ladder"), help="where the image layout, the "
                   "checkpoints and the per-run records are written (not committed)")
    p.add_argument("--quick", action="store_true", help="every stage on tiny sizes into --work (not a measurement)")
    p.add_argument("--store", help="the sweeps' store (default benchmarks/scale_ladder/results.jsonl; --quick: in "
                   "--work)")
    p.add_argument("--models", type=lambda s: s.split(","), help="comma list of ladder models (default: the recipe's)")
    p.add_argument("--strategies", type=lambda s: s.split(","), help="comma list (default: the recipe's)")
    p.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--seeds", type=lambda s: list(range(int(s))), help="how many seeds")
    p.add_argument("--per-class", type=int, help="images per class in base/ and novel/ (default 600)")
    p.add_argument("--steps", type=int, help="pretraining steps per checkpoint (default 300)")
    p.add_argument("--epochs", type=int, help="transfer epochs (default: the recipe's)")
    p.add_argument("--objectives-at", help="the model whose objectives are compared (default: the middle one)")
    p.add_argument("--json", type=Path, help="where the run's data is written (default benchmarks/scale_ladder.json; "
                   "--quick: in --work)")
    args = p.parse_args(argv)
    args.argv = argv
    source = render_source(args, HERE / "scale_ladder.json")
    if source is not None:
        PAGE.write_text(render(json.loads(source.read_text())))
        return 0
    os.chdir(ROOT)  # stores and commands are relative to the repository root
    args.json = args.json or (args.work / "scale_ladder.json" if args.quick else HERE / "scale_ladder.json")
    args.work.mkdir(parents=True, exist_ok=True)
    data = measure(args)
    page = args.work / "scale_ladder.md" if args.quick else PAGE
    page.write_text(render(data, page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
