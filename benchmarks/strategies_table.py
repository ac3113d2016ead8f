"""The table of ``strategies.md``, rendered from the sweep store ``strategies/results.jsonl``.

    .venv/bin/python benchmarks/strategies_table.py --render      # rewrites the table in benchmarks/strategies.md
    .venv/bin/python benchmarks/strategies_table.py                # prints it

One row per strategy (store order): trainable parameters (% of the backbone), accuracy at each shot count as the
mean over seeds with each seed in brackets (seed order), and the mean wall seconds of one ``tune`` run. The page
keeps its hand-written prose outside the markers; only the part between them is generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- strategies_table.py: begin (generated) -->", "<!-- strategies_table.py: end -->"


def load(store: Path) -> list[dict[str, Any]]:
    """The store's successful records; refuses a store with failed rows (a table would hide them)."""
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    bad = [r.get("hash") for r in rows if r.get("status") != "ok"]
    if bad:
        sys.exit(f"strategies_table.py: {len(bad)} rows of {store} did not finish (status != ok): {bad[:5]}")
    records = [r["record"] for r in rows]
    seen: dict[tuple[str, int, int], str] = {}
    for rec in records:
        key = (_label(rec), rec["shots"], rec["runs"][0]["seed"])
        if key in seen:  # e.g. a rerun on new defaults appended beside the old rows: averaging them would mix both
            sys.exit(f"strategies_table.py: {store} holds {key} twice (config hashes {seen[key]} and "
                     f"{rec['config_hash']}): keep one run per strategy, shots and seed (move the old store aside)")
        seen[key] = rec["config_hash"]
    return records


def _label(rec: dict[str, Any]) -> str:
    opts = rec["config"].get("options") or {}
    return rec["strategy"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(opts.items()))})" if opts else "")


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per strategy, columns per shot count."""
    groups: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        groups[_label(rec)][rec["shots"]].append(rec)
    shots = sorted({rec["shots"] for rec in records})
    head = ["strategy", "trainable params (% of backbone)", *(f"{k}-shot acc %" for k in shots),
            *(f"s / run, {k}-shot" for k in shots)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, by_shot in groups.items():
        first = next(iter(by_shot.values()))[0]["params"]
        if {r["params"]["trainable"] for runs in by_shot.values() for r in runs} != {first["trainable"]}:
            sys.exit(f"strategies_table.py: {label} has different trainable counts across its runs")
        accs, secs = [], []
        for k in shots:
            runs = sorted(by_shot.get(k, []), key=lambda r: r["runs"][0]["seed"])
            if not runs:
                accs.append("–")
                secs.append("–")
                continue
            a = [100 * r["accuracy_mean"] for r in runs]
            accs.append(f"{sum(a) / len(a):.1f} ({', '.join(f'{x:.1f}' for x in a)})")
            secs.append(f"{sum(r['wall_s'] for r in runs) / len(runs):.1f}")
        lines.append(f"| {label} | {first['trainable']:,} ({first['percent_of_backbone']:.2f}%) | "
                     + " | ".join(accs + secs) + " |")
    return "\n".join(lines)


def render_into(page: Path, body: str) -> None:
    """Replace the generated part of ``page`` (between this script's markers) with ``body``; refuse a page
    without them."""
    from provenance import replace_generated

    if not replace_generated(page, body, "strategies_table.py"):
        sys.exit(f"strategies_table.py: {page} lacks the markers {BEGIN!r} ... {END!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=HERE / "strategies" / "results.jsonl")
    p.add_argument("--page", type=Path, default=HERE / "strategies.md")
    p.add_argument("--render", action="store_true", help="write the table into --page (else print it)")
    a = p.parse_args()
    body = table(load(a.store))
    if a.render:
        render_into(a.page, body)
    else:
        print(body)


if __name__ == "__main__":
    main()
