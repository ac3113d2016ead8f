"""``pefs report``: tables (Markdown, CSV) and plots (PNG) from a results store. Torch-free, help and run alike."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``report`` and its flags to ``sub``."""
    from pefs.results.report.markdown import FORMATS
    from pefs.results.report.paper import LAYOUTS
    from pefs.results.report.sections import DEFAULT_BASELINE
    from pefs.results.store import DEFAULT_STORE

    r = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG) from a results store",
                       description="Aggregate seeds (mean ± 95% CI), one model x shots table per strategy (with "
                       "what validation chose and each search table, where cells searched), the best strategy per "
                       "model and shots, paired differences against a baseline strategy, plots of accuracy vs "
                       "shots and trainable parameters (a heatmap and 3-D bars), and, for benchmark sources, tables "
                       "in the papers' form (--layout).")
    r.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read, with its shards (default "
                   f"{DEFAULT_STORE})")
    r.add_argument("--out", help="folder for the report (default: report/ beside the store)")
    r.add_argument("--format", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)} (default all)")
    r.add_argument("--baseline", metavar="STRATEGY", help="strategy the others are paired against, seed by seed "
                   "(a strategy label of the report, or a strategy with one variant in the store; default "
                   f"{DEFAULT_BASELINE} when the store has it)")
    r.add_argument("--layout", choices=LAYOUTS, default="auto", help="tables in the papers' form, written to "
                   "paper.md / paper.csv: vtab (one column per VTAB-1k task, group means, the 19-task mean), shots "
                   "(K-shot columns, mean ± 95%% CI over seeds), episodic (N-way K-shot columns, mean ± 95%% CI over "
                   "episodes); auto (default) picks those the store's benchmark-source rows fit")
    r.add_argument("--published", action="store_true", help="add published ViT-B/16 (ImageNet-21k) VTAB-1k rows to "
                   "the vtab table, each labelled 'quoted, <source>' with the source's address")
    return r


def run(a: argparse.Namespace) -> int:
    """Write the report of ``a.store``; print the files written, warnings to stderr."""
    from pathlib import Path

    from pefs.results.report.markdown import build_report, parse_formats

    out = a.out or str(Path(a.store).parent / "report")
    files, problems = build_report(a.store, out, parse_formats(a.format), baseline=a.baseline,
                                   layout=a.layout, published=a.published)
    for message in problems:
        print(f"pefs report: warning: {message}", file=sys.stderr)
    print("\n".join(str(f) for f in files))
    return 0
