"""Do masked extra views help at 1-5 shots? And what does MAE-style token dropping cost on a ViT?

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views            # writes masked_views.json/.md
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views --render   # only re-renders the .md

Accuracy: ``pefs tune`` on the offline ImageNet EfficientNet-Lite0 (a CNN: masked views are painted in
pixels) with a linear probe, K-shot transfer on the embedded Fashion-MNIST subset, one clean view versus one
clean + 3 masked views (50% of 16-px patches), same seeds. No pretrained ViT installs offline, so the accuracy
effect of token dropping cannot be measured here; on a random-weight ViT-S/16 (224 px) the script measures
what dropping buys in compute instead: seconds per masked view, dropping 75% of the tokens (as MAE) versus
painting the same patches and running every token.
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
              "needs pretrained ViT weights, which cannot be installed offline here: not measured.", ""]
    lines += provenance_section(data, "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.masked_views",
                                ".venv/bin/python -m benchmarks.masked_views --render")
    return "\n".join(lines) + "\n"


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
    args = ap.parse_args()
    path = render_source(args, HERE / "masked_views.json")
    if path is None:
        path, seeds, start = HERE / "masked_views.json", list(range(args.seeds)), load()
        data = {"seeds": seeds, "accuracy": accuracy_rows([int(s) for s in args.shots.split(",")], seeds,
                                                          "/tmp/pefs-masked-views-runs"),
                "cost": cost_rows(), "machine": machine(), **provenance(__file__), "load_start": start,
                "load_end": load()}
        path.write_text(json.dumps(data, indent=1) + "\n")
    (HERE / "masked_views.md").write_text(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
