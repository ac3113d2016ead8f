"""The flags of one run, generated from the config dataclasses (:mod:`pefs.config.run`), and their way back.

``tune`` adds them as they are; ``sweep`` adds them as run flags for every cell, less the ones its grid replaces.
Stdlib only at import time, so building the parser (``pefs COMMAND --help``) never imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection

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


def add_config_args(g: argparse._ActionsContainer, cls: type, skip: Collection[str] = ()) -> list[argparse.Action]:
    """One flag per field of config dataclass ``cls`` (but those named in ``skip``), from its type hint, default
    and help metadata. Returns the actions added."""
    from pefs.config import choices, field_types

    hints, added = field_types(cls), []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        hint, default = hints[f.name], (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            hint = args[0]
        text = meta.get("help", "").replace("%", "%%")
        if meta.get("choices_from"):  # a registry's names (heads), listed in the help; the config checks the value
            text = f"{text}: {' | '.join(choices(cls, f.name))}"
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, typing.Any] = {"dest": f.name, "help": text}
        if hint is bool:
            flags = meta.get("flags") or ((f"--no-{f.name.replace('_', '-')}",) if default else (flag,))
            if default:
                kw["help"] = f"{text}: on by default, this flag turns it off"
            added.append(g.add_argument(*flags, action="store_false" if default else "store_true", default=default,
                                        **kw))
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
        added.append(g.add_argument(*(meta.get("flags") or (flag,)), **kw))
    return added


def add_tune_args(p: argparse.ArgumentParser, skip: Collection[str] = ()) -> list[argparse.Action]:
    """The flags of one run (shared by ``tune`` and, as run flags for every cell, by ``sweep``): generated from
    the configs, but the fields named in ``skip``. Returns the actions added."""
    from pefs.config import TrainConfig, TuneConfig

    g = p.add_argument_group("model, data and protocol")
    added = add_config_args(g, TuneConfig, skip)
    return added + add_config_args(p.add_argument_group("training"), TrainConfig, skip)


def _config_values(a: argparse.Namespace, cls: type) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(a, f.name, None)
        if not f.metadata.get("cli", True) or value is None:
            continue
        out[f.name] = dict(value) if f.name in ("options", "search") else value
    return out


def config_from_args(a: argparse.Namespace):
    """The :class:`~pefs.config.run.TuneConfig` that ``pefs tune``'s parsed flags ``a`` describe."""
    from pefs.config import TrainConfig, TuneConfig

    train = TrainConfig(**_config_values(a, TrainConfig))
    return TuneConfig(**{**_config_values(a, TuneConfig), "save_adapter": _model_dir(a)}, train=train,
                      final=bool(getattr(a, "final", None)))


def _model_dir(a: argparse.Namespace) -> str | None:
    final, adapter = getattr(a, "final", None), getattr(a, "save_adapter", None)
    if final and adapter and final != adapter:
        raise PefsError(f"--final {final} saves the model directory there; drop --save-adapter {adapter}")
    return final or adapter
