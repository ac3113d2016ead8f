"""``pefs strategies``: list tuning strategies, the backbone kinds they support, and their options; then the
classifier heads (``--head``)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``strategies`` (no flags) to ``sub``."""
    return sub.add_parser("strategies", help="list tuning strategies and their options",
                          description="List tuning strategies, the backbone kinds they support, and their options.")


def run(a: argparse.Namespace) -> int:
    """Print each strategy: name, summary, kinds and options; then each head: name, summary, what it reads."""
    from pefs.heads.registry import HEADS, head_class
    from pefs.strategies import list_strategies

    for name, cls in list_strategies().items():
        opts = cls.config_class.options()
        kinds = "/".join(cls.kinds)
        print(f"{name:12s} {cls.summary} [{kinds}]")
        if opts:
            print(" " * 13 + "options: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    print("\nheads (--head):")
    for name in HEADS:
        head = head_class(name)
        mark = ", transductive: reads the task's queries together" if head.transductive else ""
        print(f"{name:12s} {head.summary} [reads {head.reads}{mark}]")
    return 0
