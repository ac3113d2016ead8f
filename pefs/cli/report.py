"""``pefs report``: tables (Markdown, CSV) and plots (PNG) from a results store. Torch-free, help and run alike."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``report`` and its flags to ``sub``."""
    from pefs.results.report.markdown import FORMATS
    from pefs.results.report.sections import DEFAULT_BASELINE
    from pefs.results.store import DEFAULT_STORE

    r = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG) from a results store",
                       description="Aggregate seeds (mean ± 95% CI), one model x shots table per strategy (with "
                       "what validation chose and each search table, where cells searched), the best strategy per "
                       "model and shots, paired differences against a baseline strategy, and plots of accuracy vs "
                       "shots and trainable parameters (a heatmap and 3-D bars).")
    r.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read, with its shards (default "
                   f"{DEFAULT_STORE})")
    r.add_argument("--out", help="folder for the report (default: report/ beside the store)")
    r.add_argument("--format", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)} (default all)")
    r.add_argument("--baseline", metavar="STRATEGY", help="strategy the others are paired against, seed by seed "
                   "(a strategy label of the report, or a strategy with one variant in the store; default "
                   f"{DEFAULT_BASELINE} when the store has it)")
    return r


def run(a: argparse.Namespace) -> int:
    """Write the report of ``a.store``; print the files written, warnings to stderr."""
    from pathlib import Path

    from pefs.results.report.markdown import build_report, parse_formats

    out = a.out or str(Path(a.store).parent / "report")
    files, problems = build_report(a.store, out, parse_formats(a.format), baseline=a.baseline)
    for message in problems:
        print(f"pefs report: warning: {message}", file=sys.stderr)
    print("\n".join(str(f) for f in files))
    return 0
