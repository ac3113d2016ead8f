"""``pefs models``: list offline and timm model names, or describe one model."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` and its flags to ``sub``."""
    m = sub.add_parser("models", help="list offline and timm model names", description="List model names; "
                       "offline ones load with no network.")
    m.add_argument("pattern", nargs="?", default="*", help="glob over timm names, e.g. 'vit_*' (default *)")
    m.add_argument("--offline", action="store_true", help="only models that load with no network")
    m.add_argument("--limit", type=int, default=50, help="how many timm names to show (default 50)")
    m.add_argument("--describe", metavar="NAME", help="print the family, blocks, width and head of one model "
                   "(random weights, nothing downloaded)")
    return m


def run(a: argparse.Namespace) -> int:
    """Print the families and model names (or, with --describe, one model's description as JSON)."""
    from pefs.backbones import FAMILIES, LADDER_MODELS, OFFLINE_MODELS, list_models, load

    if a.describe:
        import json

        print(json.dumps(load(a.describe, pretrained=False).describe(), indent=2))
        return 0
    print("families:")
    for family, how in FAMILIES.items():
        print(f"  {family:13s} {how}")
    print()
    for name, spec in OFFLINE_MODELS.items():
        print(f"{name:34s} offline  {spec.summary}")
    if not a.offline:
        for name, ladder in LADDER_MODELS.items():
            print(f"{name:34s} ladder   {ladder.summary} (random weights; pefs pretrain it)")
        names = [n for n in list_models(a.pattern) if n not in OFFLINE_MODELS and n not in LADDER_MODELS]
        print(f"\n{len(names)} timm models matching {a.pattern!r} (pretrained weights need the model hub):")
        print("\n".join(names[: a.limit]) + (f"\n... ({len(names) - a.limit} more)" if len(names) > a.limit else ""))
    return 0
