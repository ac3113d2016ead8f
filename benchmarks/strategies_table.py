"""The table of ``strategies.md``, rendered from the sweep store ``strategies/results.jsonl``.

    .venv/bin/python -m benchmarks.strategies_table --render      # rewrites the table in benchmarks/strategies.md
    .venv/bin/python -m benchmarks.strategies_table               # prints it

One row per strategy (store order): trainable parameters (% of the backbone), accuracy at each shot count as the
mean over seeds with each seed in brackets (seed order), and the mean wall seconds of one ``tune`` run. The page
keeps its hand-written prose outside the markers; only the part between them is generated.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # started as a file: rerun as `python -m benchmarks.strategies_table`
    import common

    common.run_as_module(__file__)

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import parser, render_source, write_section

HERE = Path(__file__).resolve().parent


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
    """The row's name: the strategy and its options."""
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


def main() -> None:
    p = parser(__doc__, "--store; without --render the table is printed")
    p.add_argument("--store", type=Path, default=HERE / "strategies" / "results.jsonl")
    p.add_argument("--page", type=Path, default=HERE / "strategies.md", help="the page --render writes into")
    a = p.parse_args()
    source = render_source(a, a.store)
    body = table(load(source or a.store))
    if source is not None:
        write_section(a.page, body, "strategies_table.py")
    else:
        print(body)


if __name__ == "__main__":
    main()
