"""Do masked extra views help at 1-5 shots? And what does MAE-style token dropping cost on a ViT?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views            # writes masked_views.json/.md
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views --render   # only re-renders the .md
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views --tuned    # only the tuned-trunk rows

Accuracy: ``pefs tune`` on the offline ImageNet EfficientNet-Lite0 (a CNN: masked views are painted in
pixels) with a linear probe, K-shot transfer on the embedded Fashion-MNIST subset, one clean view versus one
clean + 3 masked views (50% of 16-px patches), same seeds. No pretrained ViT installs offline, so the accuracy
effect of token dropping cannot be measured here; on a random-weight ViT-S/16 (224 px) the script measures
what dropping buys in compute instead: seconds per masked view, dropping 75% of the tokens (as MAE) versus
painting the same patches and running every token.

Tuned trunk (``--tuned``): LoRA and bias on a ViT-Tiny/16 at 48 px (a 3x3 grid of patch tokens) with random
weights (``--no-pretrained``: no pretrained ViT installs offline), 10 epochs, trained on the support with its
masked views' tokens dropped in every step, against the same run with one clean view, same seeds: random
masks, complementary pairs, and complementary pairs with each query scored over 3 views. Seeds run one after
another until ``--budget`` seconds would be exceeded; every cell then has the same seeds.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.masked_views`
    import common

    common.run_as_module(__file__)

import json
import os
import time
from pathlib import Path

from benchmarks.common import load, machine, parser, pm, provenance, provenance_section, render_source

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent


def accuracy_rows(shots_list: list[int], seeds: list[int], out: str) -> list[dict]:
    """``pefs tune`` with one clean view and with 3 masked views added, per shot count: accuracies and times."""
    from pefs.config import TrainConfig, TuneConfig
    from pefs.protocols.run import tune

    rows = []
    for shots in shots_list:
        for label, kw in (("1 clean view", {}), ("clean + 3 masked views (50%)", {"views": 4, "mask_ratio": 0.5})):
            # the head this page measured (the default before --strategy linear defaulted to logistic)
            rec = tune(TuneConfig(shots=shots, seeds=tuple(seeds), output=out, train=TrainConfig(progress=False),
                                  head="linear-proto", **kw))
            rows.append({"shots": shots, "views": label, "accuracies": rec["accuracies"],
                         "seconds_per_task": rec["seconds_per_task"]})
            print(shots, label, rec["accuracy_mean"], flush=True)
    return rows


#: the tuned-trunk conditions: label -> the settings added to the unmasked run
TUNED_VIEWS = {
    "1 clean view": {},
    "clean + 2 masked views (50%)": {"views": 3, "mask_ratio": 0.5},
    "clean + complementary pair (50%)": {"views": 3, "mask_ratio": 0.5, "mask_mode": "complementary"},
    "complementary pair, 3 query views": {"views": 3, "mask_ratio": 0.5, "mask_mode": "complementary",
                                          "query_views": 3},
}
TUNED_MODEL = {"model": "vit_tiny_patch16_224", "pretrained": False, "img_size": 48}
#: training epochs of the tuned-trunk rows (the default 30 would fit one seed in the time budget of 2 shared cores)
TUNED_EPOCHS = 10


def tuned_rows(shots_list: list[int], strategies: list[str], max_seeds: int, budget_s: float, out: str,
               on_seed=None) -> dict:
    """``pefs tune`` with masked views through a tuned ViT trunk against one clean view: one seed at a time over
    every (strategy, shots, views) cell, until the next seed would overrun ``budget_s``."""
    from pefs.config import TrainConfig, TuneConfig
    from pefs.protocols.run import tune

    cells = [(st, k, label) for st in strategies for k in shots_list for label in TUNED_VIEWS]
    rows = {c: {"strategy": c[0], "shots": c[1], "views": c[2], "accuracies": [], "seconds": []} for c in cells}
    t_start, seeds = time.perf_counter(), []
    for seed in range(max_seeds):
        t_seed = time.perf_counter()
        for st, k, label in cells:
            train = TrainConfig(epochs=TUNED_EPOCHS, progress=False)
            rec = tune(TuneConfig(strategy=st, shots=k, seeds=(seed,), output=out, train=train, **TUNED_MODEL,
                                  **TUNED_VIEWS[label]))
            rows[(st, k, label)]["accuracies"].append(rec["accuracies"][0])
            rows[(st, k, label)]["seconds"].append(rec["seconds_per_task"])
            print(seed, st, k, label, rec["accuracies"][0], flush=True)
        seeds.append(seed)
        data = {"seeds": seeds, "rows": list(rows.values())}
        if on_seed is not None:
            on_seed(data)
        took, spent = time.perf_counter() - t_seed, time.perf_counter() - t_start
        if spent + took > budget_s:
            break
    return data


def cost_rows(repeats: int = 3) -> list[dict]:
    """Seconds per masked view on a random ViT-S/16: painted patches with every token against dropped tokens."""
    import torch

    import pefs
    from pefs.backbones.token_mask import keep_indices, masked_pooled
    from pefs.data.views import mask_patches

    model = pefs.wrap("vit_small_patch16_224", "linear", num_classes=10, pretrained=False).eval()
    bb = model.backbone
    x = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        for label, fn in (
                ("painted pixels, all 196 tokens",
                 lambda: model.features(mask_patches(x, 0.75, 16, torch.Generator().manual_seed(0)))),
                ("dropped tokens, 49 of 196 kept",
                 lambda: masked_pooled(bb, x, keep_indices(16, (14, 14), 0.75, "random",
                                                           torch.Generator().manual_seed(0))))):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) / len(x))
            rows.append({"method": label, "seconds_per_view": min(times), "slowest_seconds_per_view": max(times),
                         "repeats": repeats})
            print(label, min(times), flush=True)
    return rows


def render(data: dict) -> str:
    """The page, from the JSON data alone."""
    from pefs.results.stats import mean_ci, paired_diff

    lines = ["# Masked extra views at 1-5 shots, and the cost of MAE-style token dropping", "",
             "Rendered from `masked_views.json` by `masked_views.py`.", "",
             "## Accuracy (EfficientNet-Lite0, pixel masks)", "",
             f"`pefs tune` defaults (linear strategy, linear-proto head, 30 epochs) on `fashion-mnist-small`, seeds "
             f"{data['seeds'][0]}-{data['seeds'][-1]}; accuracy in %, mean ± 95% CI over seeds (Student's t); paired "
             "difference "
             "against one clean view.", "",
             "| shots | 1 clean view | clean + 3 masked views (50%) | masked − clean (paired) "
             "| s / task (clean, masked) |",
             "|---|---|---|---|---|"]
    by = {(r["shots"], r["views"]): r for r in data["accuracy"]}
    diffs = {}
    for k in sorted({r["shots"] for r in data["accuracy"]}):
        a, b = by[(k, "1 clean view")], by[(k, "clean + 3 masked views (50%)")]
        sa, sb = mean_ci([100 * v for v in a["accuracies"]]), mean_ci([100 * v for v in b["accuracies"]])
        diffs[k] = paired_diff([100 * v for v in b["accuracies"]], [100 * v for v in a["accuracies"]])
        lines.append(f"| {k} | {pm(sa)} | {pm(sb)} | {pm(diffs[k], sign=True)} | "
                     f"{a['seconds_per_task']:.1f}, {b['seconds_per_task']:.1f} |")
    lines += ["", _verdicts(diffs)]
    lines += ["", "## Cost of a masked view on a ViT-S/16 (224 px, random weights, 75% masked)", "",
              "| method | ms per view (fastest) | repetitions | slowest (ms) |", "|---|---|---|---|"]
    recovered = data.get("recovered") or {}
    for r in data["cost"]:
        n = r.get("repeats") or recovered.get("cost_repeats")
        at = "" if "repeats" in r else f" (the script's setting at `{recovered.get('data_commit')}`)"
        n_text = "not recorded" if n is None else f"{n}{at}"
        slowest = r.get("slowest_seconds_per_view")
        lines.append(f"| {r['method']} | {1000 * r['seconds_per_view']:.1f} | {n_text} | "
                     f"{'not recorded' if slowest is None else f'{1000 * slowest:.1f}'} |")
    c = {r["method"].split(",")[0]: r["seconds_per_view"] for r in data["cost"]}
    lines += ["", f"Dropping the masked tokens makes a masked view {c['painted pixels'] / c['dropped tokens']:.1f}x "
              "cheaper than painting them out and running every token. Whether dropped-token views help accuracy "
              "on a pretrained ViT needs pretrained ViT weights, which cannot be installed offline here: not measured"
              + ("; the next section measures them on a random-weight ViT tuned with LoRA or bias." if data.get("tuned")
                 else "."), ""]
    if data.get("tuned"):
        lines += render_tuned(data["tuned"])
    lines += provenance_section(data, "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views",
                                ".venv/bin/python -m benchmarks.masked_views --render")
    if data.get("tuned"):
        section = provenance_section(data["tuned"], "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views "
                                     "--tuned", ".venv/bin/python -m benchmarks.masked_views --render")
        lines += ["## Provenance of the tuned-trunk rows", *section[1:]]
    return "\n".join(lines) + "\n"


def render_tuned(tuned: dict) -> list[str]:
    """The tuned-trunk section: accuracy per cell and the paired difference against one clean view."""
    from pefs.results.stats import holm_directions, mean_ci, paired_diff

    seeds = tuned["seeds"]
    lines = ["## Masked views through a tuned ViT trunk (LoRA, bias; random weights)", "",
             f"`pefs tune --model vit_tiny_patch16_224 --no-pretrained --img-size {tuned.get('img_size', 48)} --epochs "
             f"{tuned.get('epochs', TUNED_EPOCHS)}` (a 3x3 grid of patch tokens; "
             f"**random weights**: no pretrained ViT installs offline, so these numbers say what masking does to a "
             f"trunk tuned from scratch on a few shots, not to a pretrained one) on `fashion-mnist-small`, otherwise "
             f"the default recipe; the strategy trains with each masked view's dropped tokens removed before the "
             f"blocks in every step. Seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}); accuracy in %, mean ± 95% CI over "
             "seeds (Student's t); paired difference against one clean view, same seeds.", "",
             "| strategy | shots | views | accuracy | − 1 clean view (paired) | s / task |",
             "|---|---|---|---|---|---|"]
    by = {(r["strategy"], r["shots"], r["views"]): r for r in tuned["rows"]}
    pct = lambda cell: [100 * v for v in by[cell]["accuracies"][:len(seeds)]]  # noqa: E731
    diffs = {c: paired_diff(pct(c), pct((c[0], c[1], "1 clean view"))) for c in by if c[2] != "1 clean view"}
    holm = dict(zip(diffs, holm_directions(list(diffs.values()))))
    for cell in by:
        secs = by[cell]["seconds"][:len(seeds)]
        diff = diffs.get(cell)
        lines.append(f"| {cell[0]} | {cell[1]} | {cell[2]} | {pm(mean_ci(pct(cell)))} | "
                     f"{'—' if diff is None else pm(diff, sign=True)} | {sum(secs) / len(secs):.1f} |")
    shown = [f"{c[2]} with {c[0]} at {c[1]} shot{'s' * (c[1] > 1)} ({pm(d, sign=True)} points"
             f"{', also after Holm' if holm[c] != 'covers 0' else ', not after Holm'})"
             for c, d in diffs.items() if d.direction() in ("above 0", "below 0")]
    resolved = ("the paired intervals that exclude 0 are: " + "; ".join(shown) if shown else
                "no paired interval excludes 0: these seeds cannot tell masked views from one clean view on this "
                "trunk")
    lines += ["", f"Holm's correction runs over the {len(diffs)} paired comparisons of this table. A run with "
              "extra views trains on every view of each support image for the same epochs, so it takes more "
              "optimizer steps than the clean run (and the seconds above): a difference may come from the extra "
              "steps as well as from the masking."]
    return lines + ["", f"In plain words, on a randomly initialised ViT-Tiny: {resolved}.", ""]


def _verdicts(diffs: dict) -> str:
    """The plain-words answer, from each shot count's paired interval (masked − clean)."""
    words = {"above 0": "helped", "below 0": "hurt", "covers 0": "made no difference the CI can resolve",
             "one value": "cannot be judged from one seed"}
    parts = [f"at {k} shot{'s' * (k > 1)} they {words[s.direction()]} ({pm(s, sign=True)} points)"
             for k, s in diffs.items()]
    signs = {(s.mean > 0) - (s.mean < 0) for s in diffs.values()}
    resolved = [s.direction() for s in diffs.values() if s.direction() in ("above 0", "below 0")]
    mean_word = ("negative" if signs == {-1} else "positive" if signs == {1} else "of mixed sign")
    if not resolved:
        tail = (f"The mean change is {mean_word} across the shot counts measured, but no interval excludes 0: these "
                "seeds cannot tell masked views from one clean view.")
    elif set(resolved) == {"below 0"}:
        tail = f"The mean change is {mean_word} across the shot counts measured, so masking is not a default here."
    else:
        tail = "Where an interval excludes 0, the direction above is what these seeds support."
    return "In plain words, pixel-masked extra views on this CNN: " + "; ".join(parts) + ". " + tail


def main() -> None:
    ap = parser(__doc__, "benchmarks/masked_views.json")
    ap.add_argument("--shots", default="1,2,5")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tuned", action="store_true", help="measure only the tuned-trunk rows (kept beside the rest)")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds the tuned-trunk seeds may take")
    args = ap.parse_args()
    path = render_source(args, HERE / "masked_views.json")
    if path is None and args.tuned:
        path, start, made = HERE / "masked_views.json", load(), provenance(__file__)  # before any write
        data = json.loads(path.read_text())

        def save(tuned: dict) -> None:  # after every seed: what is measured survives a kill
            data["tuned"] = {**tuned, "img_size": TUNED_MODEL["img_size"], "epochs": TUNED_EPOCHS,
                             "machine": machine(), **made, "load_start": start,
                             "load_end": load()}
            path.write_text(json.dumps(data, indent=1) + "\n")

        tuned_rows([1, 5], ["lora", "bias"], args.seeds, args.budget, "/tmp/pefs-masked-views-tuned", save)
    elif path is None:
        path, seeds, start = HERE / "masked_views.json", list(range(args.seeds)), load()
        data = {"seeds": seeds, "accuracy": accuracy_rows([int(s) for s in args.shots.split(",")], seeds,
                                                          "/tmp/pefs-masked-views-runs"),
                "cost": cost_rows(), "machine": machine(), **provenance(__file__), "load_start": start,
                "load_end": load()}
        path.write_text(json.dumps(data, indent=1) + "\n")
    (HERE / "masked_views.md").write_text(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
