"""Render benchmarks/scale.md from the raw results benchmarks/scale.py wrote (scale.json)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import provenance_section

NAMES = {"forward": "forward-only limit", "linear": "linear probe", "prototype": "prototype head",
         "lora": "LoRA (r=8)", "lora-cache64": "LoRA, --cache-mb 64"}


def _row(rows: list[dict], method: str, n: int) -> dict | None:
    """The fastest repetition of ``method`` at ``n`` test images (the one least slowed by other load)."""
    reps = [r for r in rows if r["method"] == method and r["n_test"] == n]
    return min(reps, key=lambda r: r["wall_s"]) if reps else None


def _reps(rows: list[dict], method: str, n: int) -> str:
    """How many times ``method`` at ``n`` was measured and the spread: ``, best of K, slowest X s``, or
    ``, N=1`` for a single run (no spread to show)."""
    walls = [r["wall_s"] for r in rows if r["method"] == method and r["n_test"] == n]
    return f", best of {len(walls)}, slowest {max(walls):.1f} s" if len(walls) > 1 else ", N=1"


def cpus(data: dict[str, Any]) -> int:
    """The machine's CPU count (records before benchmarks/common.py kept it as ``nproc``)."""
    return data["machine"]["cpus"] if "machine" in data else data["nproc"]


def render(data: dict[str, Any]) -> str:
    """The Markdown report: one table of wall time and peak memory per method and test-split size."""
    rows = data["rows"]
    sizes = sorted({r["n_test"] for r in rows})
    methods = [m for m in NAMES if any(r["method"] == m for r in rows)]
    r0 = rows[0]
    out = ["# Memory and time against the size of the test split", "",
           f"Model {data['model']} (ImageNet weights), {r0['img_size']} px, batch {r0['batch']}, "
           f"{r0['workers']} DataLoader worker(s), {r0['threads']} torch thread(s), inference precision "
           f"{r0.get('precision')}; K-shot runs: 1 shot x 10 classes, one seed. Data: the full Fashion-MNIST "
           "(Debian `dataset-fashion-mnist`): test splits drawn from its 10,000 test images, then its training "
           "images. Each cell ran in a fresh process.", "",
           f"Measured on a {cpus(data)}-core machine. {data.get('note', '')} Beside each fastest repetition: "
           "how many there were and the slowest (N=1: measured once, no spread).", "",
           "## Wall time (s) and images per second", "",
           "| method | " + " | ".join(f"{n:,} test images" for n in sizes) + " |",
           "|---|" + "---:|" * len(sizes)]
    for m in methods:
        cells = []
        for n in sizes:
            r = _row(rows, m, n)
            cells.append(f"{r['wall_s']:.1f} s ({n / r['wall_s']:.0f} img/s{_reps(rows, m, n)})" if r else "-")
        out.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    out += ["", "## Ratio to the forward-only limit (wall time of the run / wall time of the limit)", "",
            "| method | " + " | ".join(f"{n:,}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in methods:
        if m == "forward":
            continue
        cells = []
        for n in sizes:
            r, f = _row(rows, m, n), _row(rows, "forward", n)
            once = " (N=1)" if _reps(rows, m, n).endswith("N=1") else ""  # one run against a best-of: say so
            cells.append(f"{r['wall_s'] / f['wall_s']:.2f}x{once}" if r and f else "-")
        out.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    out += ["", "## Peak memory (MB): the run's peak RSS, and its growth over the process before the run", "",
            "| method | " + " | ".join(f"{n:,}" for n in sizes) + " | largest / smallest |",
            "|---|" + "---:|" * (len(sizes) + 1)]
    for m in methods:
        cells, peaks = [], []
        for n in sizes:
            r = _row(rows, m, n)
            if r:
                peaks.append(r["process_peak_rss_mb"])
            cells.append(f"{r['process_peak_rss_mb']:.0f} (+{r['peak_growth_mb']:.0f})" if r else "-")
        ratio = f"{peaks[-1] / peaks[0]:.2f}x" if len(peaks) > 1 else "-"
        out.append(f"| {NAMES[m]} | " + " | ".join(cells) + f" | {ratio} |")
    out += ["", "## Per run (every repetition)", "",
            "| method | test images | wall s | accuracy | decode s | features s | train s | eval s | trunk passes "
            "| cache MB | peak MB |", "|---|" + "---:|" * 10]
    for r in sorted(rows, key=lambda r: (list(NAMES).index(r["method"]), r["n_test"])):
        if r["method"] == "forward":
            continue
        t = r["time_s"]
        out.append(f"| {NAMES[r['method']]} | {r['n_test']:,} | {r['wall_s']:.1f} | {100 * r['accuracy_mean']:.2f}% | "
                   f"{t['decode_s']:.1f} | {t['extract_s']:.1f} | {t['train_s']:.1f} | {t['eval_s']:.1f} | "
                   f"{r['trunk_images']:,} | {r['cache']['cache_mb']:.0f} | {r['process_peak_rss_mb']:.0f} |")
    out += ["", "## Reading the figures", "",
            "* Frozen-prefix runs (linear probe, prototype head) keep the pooled features of every test image "
            "(1,280 values, stored as bf16 when the pass ran in bf16: 2.5 KB) and nothing else per image: the "
            "decoded split is never held. Their peak grows by those features only.",
            "* LoRA reruns the trunk, so it keeps no features; it keeps the decoded test images as uint8 "
            f"({3 * r0['img_size'] ** 2 / 1024:.0f} KB each at {r0['img_size']} px) for the next seed, up to "
            "`--cache-mb` (default 512 MiB), then re-decodes the rest with the same results; with `--cache-mb 64` "
            "the cache stops at 64 MiB. Its peak otherwise is training (backward through the whole network).",
            "* Time of a frozen-prefix run = a constant (model build, support, head training: the 500-image "
            "column) + one trunk pass over the test split; the limit is that pass alone in a plain loop.",
            "* The forward-only loop is the usual plain pattern: its worker applies the whole transform and "
            "sends float32 batches; pefs' workers send uint8 and normalise in the main process, a quarter of "
            "the bytes, which is why a pefs run can come out at or under the limit when the worker is the "
            "bottleneck (a loaded machine). `--cache-mb 64` was measured once, under load (memory is its point).",
            "* Item 5 of issue 11 (GPU): no GPU machine was available to this task, so nothing was measured on "
            "one.", ""]
    out += ["", "Decode time is the time the run waited for decoded batches (the worker decodes beside the "
            "forward pass). The features time of a frozen-prefix run is its one trunk pass over the support and "
            "test images; LoRA runs the whole network on the test split inside evaluation (merged weights).", ""]
    machine = {"cpus": cpus(data), "threads": r0["threads"], **data.get("machine", {})}
    out += provenance_section({**data, "machine": machine}, "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.scale "
                              "--methods forward,linear,prototype,lora,lora-cache64",
                              ".venv/bin/python -m benchmarks.scale --render")
    return "\n".join(out)
