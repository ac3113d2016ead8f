"""(Named transformers_vit, not transformers: a script named transformers.py would shadow the package.)

A ``transformers`` ViT next to the timm ViT of the same size, one row per strategy, with identical weights.

    .venv/bin/python -m benchmarks.transformers_vit                    # benchmarks/transformers_vit.json + .md
    .venv/bin/python -m benchmarks.transformers_vit --shots 1 --epochs 2 --out -   # a quick look, printed
    .venv/bin/python -m benchmarks.transformers_vit --render           # re-renders the .md from the .json

A random-weight timm ``vit_tiny_patch16_224`` (at the embedded data's 128 px) is saved as a checkpoint and
converted exactly (:func:`pefs.backbones.convert.timm_vit_to_transformers`) into a ``transformers``
ViTForImageClassification saved with ``save_pretrained``; each row is one
``pefs.protocols.run.tune`` run on the embedded
Fashion-MNIST subset, once with ``--model vit_tiny_patch16_224 --checkpoint ...`` and once with
``--model hf:DIR``. Both models compute the same function, so the accuracy columns should agree (random
weights: the accuracy is not meaningful as a measure of the strategies, only as a check that both families
train alike); the time columns compare the two implementations under pefs.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.transformers_vit`
    import common

    common.run_as_module(__file__)

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load, machine, parser, provenance, provenance_section, render_source

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STRATEGIES: list[tuple[str, dict[str, Any]]] = [
    ("linear", {}), ("bias", {}), ("norm", {}), ("last-k", {"k": 2}), ("adapter", {}), ("lora", {}),
    ("ssf", {}), ("vpt", {"mode": "deep"}), ("self-prompt", {}), ("peft:ia3", {}),
]
TIMM_NAME, IMG = "vit_tiny_patch16_224", 128


def make_models(root: Path) -> tuple[str, str]:
    """(timm checkpoint path, transformers directory) holding the same random ViT-Tiny."""
    import timm
    import torch
    from safetensors.torch import save_file

    from pefs.backbones import load
    from pefs.backbones.convert import processor_config, timm_vit_to_transformers

    torch.manual_seed(0)
    vit = timm.create_model(TIMM_NAME, img_size=IMG, pretrained=False).eval()
    ckpt = root / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(ckpt))
    hf_dir = root / "hf-vit-tiny"
    timm_vit_to_transformers(vit).save_pretrained(hf_dir)
    # the same preprocessing as timm's data config, so both sides see the same pixels
    dc = load(vit).data_config
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(processor_config(dc)))
    return str(ckpt), str(hf_dir)


def run(shots: int, epochs: int, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Every strategy on both families, one ``tune`` each: accuracy, trainable parameters, times."""
    import torch

    from pefs.config import TrainConfig, TuneConfig
    from pefs.protocols.run import tune

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, hf_dir = make_models(Path(tmp))
        for strategy, options in STRATEGIES:
            row: dict[str, Any] = {"strategy": strategy, "options": options}
            for side, model, extra in (("timm", TIMM_NAME, {"checkpoint": ckpt}), ("transformers", f"hf:{hf_dir}", {})):
                cfg = TuneConfig(model=model, strategy=strategy, shots=shots, seeds=seeds, img_size=IMG,
                                 head="linear-proto",  # the head this page measured, whatever the strategy
                                 options=dict(options), output=str(Path(tmp) / "runs"), **extra,
                                 train=TrainConfig(epochs=epochs, progress=False, inference_precision="no"))
                t0 = time.perf_counter()
                rec = tune(cfg)
                row[side] = {"accuracy": rec["accuracy_mean"], "ci95": rec.get("accuracy_ci95"),
                             "trainable": rec["params"]["trainable"], "wall_s": time.perf_counter() - t0,
                             "seconds_per_task": rec["seconds_per_task"], "time_s": rec["time_s"]}
                print(f"{strategy:12s} {side:12s} acc {rec['accuracy_mean']:.3f}  "
                      f"{rec['seconds_per_task']:.1f} s/task  {rec['params']['trainable']:,} trainable", flush=True)
            rows.append(row)
    return {"shots": shots, "epochs": epochs, "seeds": list(seeds), "img_size": IMG, "model": TIMM_NAME,
            "weights": "random (seeded), identical in both families via exact conversion",
            "machine": machine(), "rows": rows}


def _time_reading(rows: list[dict[str, Any]]) -> str:
    """What the time ratios say, from the rows alone: their range, and whether they fall on both sides of 1 (one
    timing per cell: no spread to judge a single row by)."""
    ratios = [r["transformers"]["seconds_per_task"] / r["timm"]["seconds_per_task"] for r in rows]
    lo, hi = min(ratios), max(ratios)
    both = lo < 1 < hi
    return (f"- The time ratios range from {lo:.2f} to {hi:.2f} (one timing per cell, N=1, so no spread per row)"
            + ("; they fall on both sides of 1, so this run does not show a systematic speed difference between "
               "the two implementations under pefs." if both else
               f"; every row is {'above' if lo >= 1 else 'below'} 1 in this run, which one timing per cell on a "
               "shared machine does not establish as a systematic difference."))


def render(data: dict[str, Any]) -> str:
    """The Markdown report of one results file."""
    lines = [
        "# A `transformers` ViT next to the timm ViT of the same size",
        "",
        f"`{data['model']}` at {data['img_size']} px, {data['weights']}; the embedded Fashion-MNIST subset, "
        f"{data['shots']}-shot, {data['epochs']} epochs, seeds {data['seeds']}. Reproduce with "
        "`.venv/bin/python -m benchmarks.transformers_vit` (raw numbers: `benchmarks/transformers_vit.json`).",
        "",
        "**Accuracy is not meaningful here** (random weights, no pretraining): it is shown only to check that "
        "both families train alike on the same weights. **Time is**: seconds per task (decode + frozen prefix + "
        "training + evaluation) under pefs for each implementation.",
        "",
        "| strategy | trainable (timm) | trainable (transformers) | acc timm | acc transformers | s/task timm "
        "| s/task transformers | transformers / timm time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        t, h = r["timm"], r["transformers"]
        name = r["strategy"] + (f" ({', '.join(f'{k}={v}' for k, v in r['options'].items())})" if r["options"] else "")
        lines.append(f"| {name} | {t['trainable']:,} | {h['trainable']:,} | {t['accuracy']:.3f} | {h['accuracy']:.3f} "
                     f"| {t['seconds_per_task']:.1f} | {h['seconds_per_task']:.1f} "
                     f"| {h['seconds_per_task'] / t['seconds_per_task']:.2f} |")
    same = sum(r["timm"]["accuracy"] == r["transformers"]["accuracy"] for r in data["rows"])
    lines += ["", "Reading:", "",
              f"- Accuracy agrees exactly on {same} of {len(data['rows'])} rows. Where it differs by a few test "
              "images, the strategy trains inside the attention, where timm computes q/k/v in one fused matmul and "
              "transformers in three: the float rounding differs (not measured here), and a few epochs of "
              "training can carry that into a different final model. Before training the two forwards agree to "
              "1e-5 (tests/test_convert.py).",
              "- `peft:ia3` trains fewer parameters on transformers by design: IA3 rescales keys and values (k_proj, "
              "v_proj) plus fc2 there; timm's fused `qkv` has no separate keys/values, so the whole qkv output is "
              "rescaled.",
              _time_reading(data["rows"])]
    m = data["machine"]
    lines += ["", f"Platform: {m['platform']}. {data.get('note', '')}".rstrip(), ""]
    lines += provenance_section(data, ".venv/bin/python -m benchmarks.transformers_vit",
                                ".venv/bin/python -m benchmarks.transformers_vit --render")
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__, "OUT.json")
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default="benchmarks/transformers_vit", help="path stem for .json and .md, or - to print")
    p.add_argument("--note", default="", help="what else ran on the machine (it is shared)")
    a = p.parse_args()
    source = render_source(a, a.out + ".json")
    if source is not None:
        data = json.loads(source.read_text())
    else:
        start = load()
        data = run(a.shots, a.epochs, tuple(int(s) for s in a.seeds.split(",")))
        data.update(provenance(__file__), note=a.note, load_start=start, load_end=load())
        if a.out != "-":
            Path(a.out + ".json").write_text(json.dumps(data, indent=2))
    if a.out == "-":
        print(render(data))
    else:  # the page a fresh run writes and the page --render writes are the same bytes
        Path(a.out + ".md").write_text(render(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
