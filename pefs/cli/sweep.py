"""``pefs sweep``: a grid of models x strategies x shots x seeds, one tune run per cell, into a results store."""

from __future__ import annotations

import argparse
import sys

from pefs.cli.flags import EPILOG, add_tune_args
from pefs.errors import PefsError
from pefs.results.store import DEFAULT_STORE

#: run fields whose single-value flags the grid's comma-list flags replace (--models, --strategies, ...)
GRID_FIELDS = ("model", "strategy", "shots", "seeds")
#: run settings the sweep sets itself: records go beside the store, no model directories, its own --quiet
SWEEP_OWN = ("output", "save_adapter", "progress")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``sweep`` to ``sub``: the run flags of ``tune`` (less the grid's), the grid flags and its own. Every
    flag defaults to None, so the sweep can tell a flag given (it overrides the recipe) from one left out."""
    s = sub.add_parser("sweep", epilog=EPILOG,
                       help="run a grid of models x strategies x shots x seeds into a resumable results store",
                       description="One tune run per (model, strategy, shots, seed) cell, appended to a JSONL "
                       "store keyed by the cell's config hash. Rerun the same command to resume: finished cells "
                       "are skipped. Under `accelerate launch` each process takes every n-th cell. Flags override "
                       "the recipe; run flags apply to every cell.")
    added = add_tune_args(s, skip=GRID_FIELDS + SWEEP_OWN)
    g = s.add_argument_group("grid (comma lists; each overrides the recipe)")
    added += [
        g.add_argument("--recipe", metavar="FILE", help="YAML recipe of sweep settings (see recipes/)"),
        g.add_argument("--models", "--model", help="model names, e.g. efficientnet_lite0.offline,resnet18"),
        g.add_argument("--strategies", "--strategy", help="strategies, e.g. linear,lora (default linear)"),
        g.add_argument("--shots", help="shots per class: 1,2,4,8,16 (default 5)"),
        g.add_argument("--seeds", "--seed", help="seeds: 0-2 | 0,1,2 (default 0); one cell per seed"),
        s.add_argument("--store", help=f"results store, a .jsonl file (default {DEFAULT_STORE})"),
        s.add_argument("--output", help="folder for each cell's JSON record (default: records/ beside the store)"),
        s.add_argument("--retry-failed", action="store_true", help="run again the cells stored as failed"),
        s.add_argument("--dry-run", action="store_true", help="list the cells and which are already stored; run none"),
        s.add_argument("--quiet", "-q", action="store_true", help="no progress bars")]
    s.set_defaults(**{act.dest: None for act in added})
    return s


def _sweep_settings(a: argparse.Namespace) -> dict:
    """The sweep flags the user gave (None = not given), under their recipe key names."""
    from pefs.sweep.recipe import RECIPE_KEYS

    given = {k: v for k, v in vars(a).items() if k in RECIPE_KEYS and v is not None}
    for key in ("options", "search"):  # KEY=VALUE flags arrive as a list of pairs; a recipe holds a mapping
        if getattr(a, key, None):
            given[key] = dict(getattr(a, key))
    if isinstance(given.get("seeds"), tuple):
        given["seeds"] = list(given["seeds"])
    return given


def _print_cell(rank_prefix: str):
    waiting: list[int] = []

    def show(kind: str, cell, info: dict) -> None:
        if kind == "waiting":
            indices = [c.index for c in info["cells"]]
            if indices != waiting:  # once per change, not every poll
                waiting[:] = indices
                print(f"{rank_prefix}waiting for {len(indices)} cell(s) another sweep on this store is running",
                      flush=True)
        elif kind == "problem":
            print(f"pefs sweep: warning: {info['message']}", file=sys.stderr)
        elif kind in ("done", "failed"):
            row, at = info["row"], f"{rank_prefix}[{info['position']}/{info['of']}] {cell.label()}"
            if kind == "failed":
                print(f"{at}: FAILED: {row['error']}", flush=True)
            else:
                rec = row["record"]
                print(f"{at}: {100 * rec['accuracy_mean']:.2f}% ({rec['wall_s']:.1f} s)", flush=True)
    return show


def run(a: argparse.Namespace) -> int:
    """Plan the cells from the recipe and the flags, then run those not yet stored (or list them: --dry-run)."""
    from pefs.results import store
    from pefs.sweep import run as sweep
    from pefs.sweep.recipe import load_recipe

    recipe = load_recipe(a.recipe) if a.recipe else {}
    flags = _sweep_settings(a)
    settings = {**recipe, **flags, "options": {**(recipe.get("options") or {}), **flags.get("options", {})}}
    where = f"recipe {a.recipe!r} or the flags" if a.recipe else "the flags"
    try:
        spec = sweep.spec_from_settings(settings, where)
        spec.progress = not a.quiet
        cells = sweep.plan(spec)
    except PefsError as e:  # every refusal says where the bad value came from
        if a.recipe and "recipe" not in str(e):
            raise PefsError(f"{e} (set in {where})") from e
        raise
    if a.dry_run:
        rows = store.load(store.check_store_path(spec.store)).rows
        for c in cells:
            print(f"[{c.index + 1}/{len(cells)}] {c.label()}: {rows[c.hash]['status'] if c.hash in rows else 'to run'}")
        print(f"{len(cells)} cells, {sum(c.hash in rows for c in cells)} already in {spec.store}")
        return 0
    rank, world = sweep.process_slot()
    s = sweep.run_sweep(cells, spec.store, rank, world, a.retry_failed,
                        on_event=_print_cell(f"[rank {rank}] " if world > 1 else ""))
    print(f"sweep: {s.planned} cells; this process ran {s.ran}, skipped {s.skipped} already in the store, "
          f"{s.failed} failed{' (rerun with --retry-failed to try them again)' if s.failed else ''}; "
          f"results in {s.shard}. Next: pefs report --store {spec.store}")
    return 0
