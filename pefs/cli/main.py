"""``pefs`` command line: thin over the library. User errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from pefs.cli.report import cmd_report
from pefs.errors import PefsError

EPILOG = "Runs offline by default: model efficientnet_lite0.offline, data fashion-mnist-small (both embedded)."


def _seeds(text: str) -> tuple[int, ...]:
    try:
        if "-" in text.strip("-") and "," not in text:
            a, b = text.split("-")
            if int(b) < int(a):
                raise argparse.ArgumentTypeError(f"seed range {text!r} is empty; give LOW-HIGH with LOW <= HIGH")
            values = tuple(range(int(a), int(b) + 1))
        else:
            values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 0 or 0,1,2 or 0-4, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"seeds must look like 0 or 0,1,2 or 0-4, got {text!r}")
    return values  # the range (0..2**32-1, each once) is checked with the config, in one place


def _keyval(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"options must look like KEY=VALUE (e.g. r=8), got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def add_config_args(g: argparse._ActionsContainer, cls: type) -> None:
    """One flag per field of config dataclass ``cls``, from its type hint, default and help metadata."""
    import dataclasses
    import typing

    from pefs.config import field_types

    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        hint, default = hints[f.name], (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            hint = args[0]
        text = meta.get("help", "").replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, typing.Any] = {"dest": f.name, "help": text}
        if hint is bool:
            flags = meta.get("flags") or ((f"--no-{f.name.replace('_', '-')}",) if default else (flag,))
            if default:
                kw["help"] = f"{text}: on by default, this flag turns it off"
            g.add_argument(*flags, action="store_false" if default else "store_true", default=default, **kw)
            continue
        if typing.get_origin(hint) is dict:
            kw.update(action="append", type=_keyval, default=[])
        elif typing.get_origin(hint) is tuple:
            kw.update(type=_seeds, default=default)
        elif typing.get_origin(hint) is typing.Literal:
            kw.update(choices=typing.get_args(hint), default=default)
        else:
            kw.update(type=hint, default=default)
        if default not in (None, (), {}) and not isinstance(default, dict):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            kw["help"] = f"{text} (default {shown})"
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        g.add_argument(*(meta.get("flags") or (flag,)), **kw)


def add_tune_args(p: argparse.ArgumentParser) -> None:
    """The flags of one run (shared by ``tune`` and, as grid axes, by ``sweep``): generated from the configs."""
    from pefs.config import TrainConfig, TuneConfig

    g = p.add_argument_group("model, data and protocol")
    add_config_args(g, TuneConfig)
    g.add_argument("--max-image-pixels", type=int, metavar="N", help="refuse images larger than N pixels (default "
                   "89,478,485: a guard against decompression bombs); raise it for genuine large images")
    add_config_args(p.add_argument_group("training"), TrainConfig)


def _config_values(a: argparse.Namespace, cls: type) -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(a, f.name, None)
        if not f.metadata.get("cli", True) or value is None:
            continue
        out[f.name] = dict(value) if f.name in ("options", "search") else value
    return out


def config_from_args(a: argparse.Namespace):
    from pefs.config import TrainConfig, TuneConfig

    train = TrainConfig(**_config_values(a, TrainConfig), progress=not getattr(a, "quiet", False))
    return TuneConfig(**_config_values(a, TuneConfig), train=train, output=a.output, save_adapter=_model_dir(a),
                      final=bool(getattr(a, "final", None)))


def _model_dir(a: argparse.Namespace) -> str | None:
    final, adapter = getattr(a, "final", None), getattr(a, "save_adapter", None)
    if final and adapter and final != adapter:
        raise PefsError(f"--final {final} saves the model directory there; drop --save-adapter {adapter}")
    return final or adapter


def cmd_tune(a: argparse.Namespace) -> int:
    from pefs.protocols.run import tune
    from pefs.protocols.selection.auto import auto_lines

    cfg = config_from_args(a)
    rec = tune(cfg)
    p = rec["params"]
    unit = "episodes" if rec["protocol"] == "episodic" else "seeds"
    what = f"{cfg.ways}-way {cfg.shots}-shot" if cfg.ways else f"{cfg.shots}-shot"
    if rec.get("final"):
        what = f"all {rec['trained_on']} training images"
    print(f"{rec['model']} | {rec['strategy']} | head {rec['head']} | {what} on {rec['dataset']['name']} "
          f"({rec['dataset'].get('source') or 'data'}, {rec['dataset']['classes']} classes)")
    if rec.get("final"):
        run = rec["runs"][0]
        print(f"accuracy on the {rec['test_images']} test images: {100 * run['accuracy']:.2f}%" if rec["test_images"]
              else f"no test split: accuracy on the training images {100 * run['train_accuracy']:.2f}% (not a "
              "measure of accuracy on new images)")
        print(f"model directory: {rec['model_dir']} (next: pefs predict {rec['model_dir']} IMAGES...)")
        print(f"result record: {rec['path']}")
        return 0
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
    print(*auto_lines(rec), f"result record: {rec['path']}", sep="\n")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from pefs.backbones import FAMILIES, OFFLINE_MODELS, list_models, load

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
    from pefs.sweep.recipe import RECIPE_KEYS

    given = {k: v for k, v in vars(a).items() if k in RECIPE_KEYS and v is not None}
    if a.options:
        given["options"] = dict(a.options)
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
    from pefs.results import store
    from pefs.sweep import run as sweep
    from pefs.sweep.recipe import load_recipe

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


def cmd_predict(a: argparse.Namespace) -> int:
    from pefs.model.predict import predict_command

    return predict_command(a.model_dir, a.images, a.out, a.format, a.top_k, a.batch_size, a.labels,
                           a.allow_different_base, not a.quiet)


def cmd_export(a: argparse.Namespace) -> int:
    from pefs.export.formats import export_command

    return export_command(a.model_dir, a.format, a.out, a.allow_different_base)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tune": cmd_tune, "models": cmd_models, "strategies": cmd_strategies, "sweep": cmd_sweep, "report": cmd_report,
    "predict": cmd_predict, "export": cmd_export}


def _add_use_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a saved model directory (pefs tune --final DIR)",
                       description="Top-k class names and probabilities per image, as CSV or JSON Lines, batch by "
                       "batch. Images that cannot be decoded are listed by path and the rest still run; the exit "
                       "status is 1 if any failed.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (pefs tune --final DIR)")
    p.add_argument("images", metavar="IMAGES", nargs="*", help="image files, folders, or .txt files of paths")
    p.add_argument("--out", "-O", default="predictions.csv", help="output file, or - for stdout "
                   "(default predictions.csv)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from --out's suffix, else csv")
    p.add_argument("--top-k", type=int, default=1, help="class names and probabilities per image (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--labels", action="store_true", help="each image's folder names its true class "
                   "(<root>/<class>/<image>): also print accuracy and a confusion matrix")
    p.add_argument("--allow-different-base", action="store_true", help="load even if the backbone's weights "
                   "differ from those the model was trained on (the results will differ)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    e = sub.add_parser("export", help="write a saved model for tools that do not know pefs",
                       description="merged: one safetensors state dict that timm.create_model(name, "
                       "num_classes=N) loads strictly, head included (mergeable strategies); onnx: an ONNX "
                       "graph checked against PyTorch with onnxruntime.")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (pefs tune --final DIR)")
    e.add_argument("--format", choices=["merged", "onnx", "peft"], default="merged",
                   help="merged | onnx | peft (an adapter directory peft.PeftModel.from_pretrained loads; lora and "
                   "peft:<method> on transformers *ForImageClassification models). Default merged")
    e.add_argument("--out", help="output file (default MODEL_DIR/model.safetensors or MODEL_DIR/model.onnx)")
    e.add_argument("--allow-different-base", action="store_true", help="load even if the backbone's weights "
                   "differ from those the model was trained on")


def _add_sweep_parsers(sub: argparse._SubParsersAction) -> None:
    from pefs.cli.report import add_report_parser
    from pefs.sweep.run import DEFAULT_STORE

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
    add_report_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pefs", description="Parameter-efficient fine-tuning for few-shot image "
                                "classification.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser("tune", help="tune one model with one strategy on K shots, evaluate, write a record",
                       description="Sample K images per class (or N-way K-shot episodes), tune, evaluate on "
                       "held-out images, print accuracy ± 95% CI and write a JSON result record.", epilog=EPILOG)
    add_tune_args(t)
    t.add_argument("--output", default="runs", help="folder for the JSON result record (default runs/)")
    t.add_argument("--save-adapter", metavar="DIR", help="save a model directory per seed here (DIR/seedN)")
    t.add_argument("--final", metavar="DIR", help="train on every training image (no K-shot sampling) and save "
                   "the model directory in DIR for pefs predict / pefs export")
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
    _add_use_parsers(sub)
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
