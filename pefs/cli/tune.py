"""``pefs tune``: one model, one strategy, K shots; evaluate and write a result record."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from pefs.cli.flags import EPILOG, add_tune_args, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``tune`` and its flags (generated from the configs) to ``sub``."""
    t = sub.add_parser("tune", help="tune one model with one strategy on K shots, evaluate, write a record",
                       description="Sample K images per class (or N-way K-shot episodes), tune, evaluate on "
                       "held-out images, print accuracy ± 95% CI and write a JSON result record.", epilog=EPILOG)
    add_tune_args(t)
    # --final DIR sets two settings at once (final=True, save_adapter=DIR), so it is the one flag written here
    t.add_argument("--final", metavar="DIR", help="train on every training image (no K-shot sampling) and save "
                   "the model directory in DIR for pefs predict / pefs export")
    return t


def run(a: argparse.Namespace) -> int:
    """Run the tune ``a`` describes and print its summary: accuracy, parameters, time, the record's path."""
    from pefs.protocols.run import tune
    from pefs.runtime.distributed import is_main

    cfg = config_from_args(a)
    if not is_main():  # a multi-process --final: the main process shows progress and prints the summary, once
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
    rec = tune(cfg)
    if not is_main():
        return 0
    unit = "episodes" if rec["protocol"] == "episodic" else "seeds"
    what = f"{cfg.ways}-way {cfg.shots}-shot" if cfg.ways else f"{cfg.shots}-shot"
    if rec.get("final"):
        what = f"all {rec['trained_on']} training images"
    print(f"{rec['model']} | {rec['strategy']} | head {rec['head']} | {what} on {rec['dataset']['name']} "
          f"({rec['dataset'].get('source') or 'data'}, {rec['dataset']['classes']} classes)")
    if rec.get("final"):
        _print_final(rec)
    else:
        _print_kshot(rec, unit)
    return 0


def _print_final(rec: dict) -> None:
    run = rec["runs"][0]
    print(f"accuracy on the {rec['test_images']} test images: {100 * run['accuracy']:.2f}%" if rec["test_images"]
          else f"no test split: accuracy on the training images {100 * run['train_accuracy']:.2f}% (not a "
          "measure of accuracy on new images)")
    print(f"model directory: {rec['model_dir']} (next: pefs predict {shlex.quote(str(rec['model_dir']))} IMAGES...)")
    print(f"result record: {rec['path']}")


def _print_kshot(rec: dict, unit: str) -> None:
    from pefs.protocols.selection.auto import auto_lines

    p, n = rec["params"], len(rec["accuracies"])
    if rec["accuracy_ci95"] is None:
        print(f"accuracy: {100 * rec['accuracy_mean']:.2f}% (one {unit[:-1]}: no confidence interval; "
              f"give several {'seeds (--seeds 0-4)' if unit == 'seeds' else 'episodes'} for one)")
    else:
        print(f"accuracy: {100 * rec['accuracy_mean']:.2f}% ± {100 * rec['accuracy_ci95']:.2f} "
              f"(95% CI over {n} {unit})")
    if p.get("note") and not p["trainable"]:
        print(f"trainable parameters: 0 ({p['note']})")
    elif p.get("note"):  # a head that fits its own weights per task (logistic): the count it fits, and how
        print(f"trainable parameters: {p['trainable']:,} ({p['percent_of_backbone']:.3f}% of the backbone's "
              f"{p['backbone_params']:,}; {p['note']})")
    else:
        print(f"trainable parameters: {p['trainable']:,} ({p['percent_of_backbone']:.3f}% of the backbone's "
              f"{p['backbone_params']:,}; head {p['head']:,})")
    t = rec["time_s"]
    print(f"wall time: {rec['wall_s']:.1f} s (decode {t['decode_s']:.1f}, features {t['extract_s']:.1f}, "
          f"train {t['train_s']:.1f}, eval {t['eval_s']:.1f}; {rec['seconds_per_task']:.2f} s per "
          f"{unit[:-1]}); peak memory {rec['peak_memory_mb']:.0f} MB")
    print(*auto_lines(rec), f"result record: {rec['path']}", sep="\n")

