"""``pefs pretrain``: train a backbone on a source's base classes (supervised, contrastive or MAE objective, or
ProtoNet meta-training) and write a checkpoint directory ``pefs tune --checkpoint DIR`` loads."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from pefs.cli.flags import EPILOG, add_config_args


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``pretrain`` and its flags (generated from :class:`~pefs.config.pretrain.PretrainConfig`) to ``sub``."""
    from pefs.config.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="train a backbone on base classes before the few shots; write a checkpoint "
                       "directory for pefs tune --checkpoint", description="Train --model on the base classes of "
                       "--data (never its novel classes) with --objective supervised | contrastive | mae, or "
                       "meta-train it on base-class episodes (--meta-train), and write --out DIR: the trunk's "
                       "weights (safetensors) and their identity, which pefs tune --checkpoint DIR checks and records.",
                       epilog=EPILOG)
    add_config_args(p, PretrainConfig)
    return p


def run(a: argparse.Namespace) -> int:
    """Run the pretraining ``a`` describes; print what was trained on, the loss and the checkpoint's path."""
    from pefs.config.pretrain import PretrainConfig
    from pefs.pretrain import pretrain

    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(PretrainConfig) if hasattr(a, f.name)}
    info = pretrain(PretrainConfig(**values))
    data = info["data"]
    print(f"{info['model']} | {info['objective']} | {info['steps']} steps on {data['images']} images of "
          f"{data['classes']} {'base classes' if data['split'] == 'base' else 'classes (train split)'} of "
          f"{data['name']}")
    if data["note"]:
        print(f"note: {data['note']}")
    print(f"loss: {info['first_loss']:.4f} at the first step, {info['final_loss']:.4f} at the end")
    out = shlex.quote(str(values["out"]))
    print(f"checkpoint: {values['out']} (next: pefs tune --model {info['model']} --checkpoint {out}"
          f"{' --img-size ' + str(info['img_size']) if info['model_kwargs'] else ''} ...)")
    return 0
