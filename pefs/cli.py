"""``pefs`` command line: thin over the library. User errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from pefs.errors import PefsError

EPILOG = "Runs offline by default: model efficientnet_lite0.offline, data fashion-mnist-small (both embedded)."


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "-" in text.strip("-") and "," not in text:
            a, b = text.split("-")
            if int(b) < int(a):
                raise argparse.ArgumentTypeError(f"seed range {text!r} is empty; give LOW-HIGH with LOW <= HIGH")
            return tuple(range(int(a), int(b) + 1))
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 0 or 0,1,2 or 0-4, got {text!r}") from None


def _keyval(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"options must look like KEY=VALUE (e.g. r=8), got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def add_tune_args(p: argparse.ArgumentParser) -> None:
    """The flags of one run (shared by ``tune`` and, as grid axes, by ``sweep``)."""
    from pefs.backbones import DEFAULT_MODEL

    g = p.add_argument_group("model and strategy")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"timm model name or offline model (default {DEFAULT_MODEL}; "
                   "`pefs models` lists them)")
    g.add_argument("--strategy", default="linear", help="tuning strategy, or several joined by '+' "
                   "(e.g. lora, lora+norm; `pefs strategies` lists them). Default linear")
    g.add_argument("--opt", "-o", action="append", type=_keyval, default=[], metavar="KEY=VALUE",
                   help="strategy option, repeatable: -o r=8 -o targets=qkv,proj (lora.r=8 for one of several)")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random weights instead of the hub's pretrained ones")
    g.add_argument("--checkpoint", help="local weights (.safetensors/.pth) to load into the model")
    g.add_argument("--img-size", type=int, help="input resolution (default: the model's own data config)")
    g = p.add_argument_group("data and protocol")
    g.add_argument("--data", help="image folder (<root>/<class>/*.jpg), Hugging Face dataset name or local "
                   "path; default: the embedded fashion-mnist-small")
    g.add_argument("--max-image-pixels", type=int, metavar="N", help="refuse images larger than N pixels (default "
                   "89,478,485: a guard against decompression bombs); raise it for genuine large images")
    g.add_argument("--shots", type=int, default=5, help="K: training images per class (default 5)")
    g.add_argument("--seeds", "--seed", type=_seeds, default=(0,), help="seed(s): 0 | 0,1,2 | 0-4 (default 0); "
                   "mean and 95%% CI are over seeds")
    g.add_argument("--ways", type=int, help="N: switch to N-way K-shot episodes")
    g.add_argument("--queries", type=int, default=15, help="query images per class in an episode (default 15)")
    g.add_argument("--episodes", type=int, default=100, help="number of episodes (default 100)")
    g.add_argument("--head", default=None, help="classifier: linear | linear-proto (default) | prototype | "
                   "patch-match (Hungarian matching of patch tokens)")
    g.add_argument("--views", type=int, default=1, help="views per support image, the clean one included (default 1)")
    g.add_argument("--augment", action="store_true", help="extra views are randomly cropped and flipped")
    g.add_argument("--mask-ratio", type=float, default=0.0, help="extra views have this fraction of patches masked")
    g.add_argument("--mask-patch", type=int, default=16, help="side of a masked patch in pixels (default 16)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=30, help="passes over the support set (default 30)")
    g.add_argument("--batch-size", type=int, default=16, help="default 16")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate of the strategy's parameters (1e-3)")
    g.add_argument("--head-lr", type=float, default=1e-2, help="learning rate of the classifier head (1e-2)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                   help="autocast while training (default no)")
    g.add_argument("--inference-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="autocast of no-grad passes (cached frozen prefix, evaluation); auto: bf16 where the "
                        "hardware has it natively, else as --mixed-precision")
    g.add_argument("--no-merge-for-eval", dest="merge_for_eval", action="store_false",
                   help="evaluate LoRA / peft tuners unmerged (default: merged, then unmerged exactly)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute block activations in backward: less memory, more time (timm models)")
    g.add_argument("--no-cache", dest="cache_features", action="store_false",
                   help="run the frozen trunk every step even when only the head trains")


def config_from_args(a: argparse.Namespace):
    from pefs.config import TuneConfig
    from pefs.engine import TrainConfig

    train = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, head_lr=a.head_lr,
                        weight_decay=a.weight_decay, mixed_precision=a.mixed_precision,
                        inference_precision=a.inference_precision, merge_for_eval=a.merge_for_eval,
                        grad_checkpointing=a.grad_checkpointing,
                        cache_features=a.cache_features, progress=not getattr(a, "quiet", False))
    return TuneConfig(model=a.model, strategy=a.strategy, shots=a.shots, seeds=a.seeds, data=a.data, ways=a.ways,
                      queries=a.queries, episodes=a.episodes, pretrained=a.pretrained, checkpoint=a.checkpoint,
                      img_size=a.img_size, options=dict(a.opt), train=train, output=a.output,
                      save_adapter=getattr(a, "save_adapter", None), **_head_and_views(a))


def _head_and_views(a: argparse.Namespace) -> dict:
    keys = ("head", "views", "augment", "mask_ratio", "mask_patch")
    return {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}


def cmd_tune(a: argparse.Namespace) -> int:
    from pefs.tune import tune

    cfg = config_from_args(a)
    rec = tune(cfg)
    p = rec["params"]
    unit = "episodes" if rec["protocol"] == "episodic" else "seeds"
    what = f"{cfg.ways}-way {cfg.shots}-shot" if cfg.ways else f"{cfg.shots}-shot"
    print(f"{rec['model']} | {rec['strategy']} | head {rec['head']} | {what} on {rec['dataset']['name']} "
          f"({rec['dataset'].get('source') or 'data'}, {rec['dataset']['classes']} classes)")
    n = len(rec["accuracies"])
    if rec["accuracy_ci95"] is None:
        print(f"accuracy: {100 * rec['accuracy_mean']:.2f}% (one {unit[:-1]}: no confidence interval; "
              f"give several {'seeds (--seeds 0-4)' if unit == 'seeds' else 'episodes'} for one)")
    else:
        print(f"accuracy: {100 * rec['accuracy_mean']:.2f}% ± {100 * rec['accuracy_ci95']:.2f} "
              f"(95% CI over {n} {unit})")
    if p.get("note"):
        print(f"trainable parameters: 0 ({p['note']})")
    else:
        print(f"trainable parameters: {p['trainable']:,} ({p['percent_of_backbone']:.3f}% of the backbone's "
              f"{p['backbone_params']:,}; head {p['head']:,})")
    t = rec["time_s"]
    print(f"wall time: {rec['wall_s']:.1f} s (decode {t['decode_s']:.1f}, features {t['extract_s']:.1f}, "
          f"train {t['train_s']:.1f}, eval {t['eval_s']:.1f}; {rec['seconds_per_task']:.2f} s per "
          f"{unit[:-1]}); peak memory {rec['peak_memory_mb']:.0f} MB")
    print(f"result record: {rec['path']}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from pefs.backbones import OFFLINE_MODELS, list_models, load

    if a.describe:
        import json

        print(json.dumps(load(a.describe, pretrained=False).describe(), indent=2))
        return 0
    for name, spec in OFFLINE_MODELS.items():
        print(f"{name:34s} offline  {spec.summary}")
    if not a.offline:
        names = [n for n in list_models(a.pattern) if n not in OFFLINE_MODELS]
        print(f"\n{len(names)} timm models matching {a.pattern!r} (pretrained weights need the model hub):")
        print("\n".join(names[: a.limit]) + (f"\n... ({len(names) - a.limit} more)" if len(names) > a.limit else ""))
    return 0


def cmd_strategies(a: argparse.Namespace) -> int:
    from pefs.strategies import list_strategies

    for name, cls in list_strategies().items():
        opts = cls.config_class.options()
        kinds = "/".join(cls.kinds)
        print(f"{name:12s} {cls.summary} [{kinds}]")
        if opts:
            print(" " * 13 + "options: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    return 0


def _sweep_settings(a: argparse.Namespace) -> dict:
    """The sweep flags the user gave (None = not given), under their recipe key names."""
    from pefs.recipe import RECIPE_KEYS

    given = {k: v for k, v in vars(a).items() if k in RECIPE_KEYS and v is not None}
    if a.opt:
        given["options"] = dict(a.opt)
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


def cmd_sweep(a: argparse.Namespace) -> int:
    from pefs import store, sweep
    from pefs.recipe import load_recipe

    recipe = load_recipe(a.recipe) if a.recipe else {}
    flags = _sweep_settings(a)
    settings = {**recipe, **flags, "options": {**(recipe.get("options") or {}), **flags.get("options", {})}}
    spec = sweep.spec_from_settings(settings, f"recipe {a.recipe!r} or the flags" if a.recipe else "the flags")
    spec.progress = not a.quiet
    cells = sweep.plan(spec)
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


def cmd_report(a: argparse.Namespace) -> int:
    from pathlib import Path

    from pefs.report import build_report, parse_formats

    out = a.out or str(Path(a.store).parent / "report")
    files, problems = build_report(a.store, out, parse_formats(a.format))
    for message in problems:
        print(f"pefs report: warning: {message}", file=sys.stderr)
    print("\n".join(str(f) for f in files))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tune": cmd_tune, "models": cmd_models, "strategies": cmd_strategies, "sweep": cmd_sweep, "report": cmd_report}


def _add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    from pefs.report import FORMATS
    from pefs.sweep import DEFAULT_STORE

    s = sub.add_parser("sweep", conflict_handler="resolve", epilog=EPILOG,
                       help="run a grid of models x strategies x shots x seeds into a resumable results store",
                       description="One tune run per (model, strategy, shots, seed) cell, appended to a JSONL "
                       "store keyed by the cell's config hash. Rerun the same command to resume: finished cells "
                       "are skipped. Under `accelerate launch` each process takes every n-th cell. Flags override "
                       "the recipe; run flags apply to every cell.")
    add_tune_args(s)
    g = s.add_argument_group("grid (comma lists; each overrides the recipe)")
    g.add_argument("--recipe", metavar="FILE", help="YAML recipe of sweep settings (see recipes/)")
    g.add_argument("--models", "--model", help="model names, e.g. efficientnet_lite0.offline,resnet18")
    g.add_argument("--strategies", "--strategy", help="strategies, e.g. linear,lora (default linear)")
    g.add_argument("--shots", help="shots per class: 1,2,4,8,16 (default 5)")
    g.add_argument("--seeds", "--seed", help="seeds: 0-2 | 0,1,2 (default 0); one cell per seed")
    s.add_argument("--store", help=f"results store, a .jsonl file (default {DEFAULT_STORE})")
    s.add_argument("--output", help="folder for each cell's JSON record (default: records/ beside the store)")
    s.add_argument("--retry-failed", action="store_true", help="run again the cells stored as failed")
    s.add_argument("--dry-run", action="store_true", help="list the cells and which are already stored; run none")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    s.set_defaults(**{act.dest: None for act in s._actions if act.dest != "help"})
    r = sub.add_parser("report", help="tables (Markdown, CSV) and plots (PNG) from a results store",
                       description="Aggregate seeds (mean ± 95% CI), one model x shots table per strategy, the "
                       "best strategy per model and shots, and plots of accuracy vs shots and trainable parameters.")
    r.add_argument("--store", default=DEFAULT_STORE, help=f"results store to read, with its shards (default "
                   f"{DEFAULT_STORE})")
    r.add_argument("--out", help="folder for the report (default: report/ beside the store)")
    r.add_argument("--format", default=",".join(FORMATS), help=f"comma list of {', '.join(FORMATS)} (default all)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pefs", description="Parameter-efficient fine-tuning for few-shot image "
                                "classification.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("tune", help="tune one model with one strategy on K shots, evaluate, write a record",
                       description="Sample K images per class (or N-way K-shot episodes), tune, evaluate on "
                       "held-out images, print accuracy ± 95% CI and write a JSON result record.", epilog=EPILOG)
    add_tune_args(t)
    t.add_argument("--output", default="runs", help="folder for the JSON result record (default runs/)")
    t.add_argument("--save-adapter", metavar="DIR", help="save the strategy's tensors (safetensors) per seed here")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    m = sub.add_parser("models", help="list offline and timm model names", description="List model names; "
                       "offline ones load with no network.")
    m.add_argument("pattern", nargs="?", default="*", help="glob over timm names, e.g. 'vit_*' (default *)")
    m.add_argument("--offline", action="store_true", help="only models that load with no network")
    m.add_argument("--limit", type=int, default=50, help="how many timm names to show (default 50)")
    m.add_argument("--describe", metavar="NAME", help="print the family, blocks, width and head of one model "
                   "(random weights, nothing downloaded)")
    sub.add_parser("strategies", help="list tuning strategies and their options",
                   description="List tuning strategies, the backbone kinds they support, and their options.")
    _add_sweep_parsers(sub)
    for register in EXTRA_PARSERS:
        register(sub)
    return p


#: Other modules add subcommands here: ``fn(subparsers)`` adds a parser and its entry in COMMANDS.
EXTRA_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = []


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds like Ctrl-C: atomic writes finish
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if getattr(args, "max_image_pixels", None) is not None:
            from pefs.data.decoding import set_max_image_pixels

            set_max_image_pixels(args.max_image_pixels)
        return COMMANDS[args.command](args)
    except PefsError as e:
        print(f"pefs {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pefs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
