"""Hyper-parameter search specs: ``--search lr=1e-4,1e-3 -o r=4,8 --search strategy=linear,bias,lora``.

:func:`parse_search` turns search items and strategy options into a :class:`SearchSpace`, checking every value
up front (a bad number, an option no searched strategy takes, an empty list, an unknown field are PefsErrors
naming the bad value and the valid choices). :meth:`SearchSpace.settings` lists the grid in a fixed order
(the first axis varies slowest; values in the order given), with settings that only differ in an option their
strategy does not take folded into one. :func:`run_search` scores each setting with a caller's function (on
validation data, never on test) and returns the chosen setting with the whole table; :func:`apply` turns a
setting into the TuneConfig that runs it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pefs.config import TrainConfig, TuneConfig, field_types
from pefs.errors import PefsError
from pefs.heads import registry as heads
from pefs.strategies.spec import option_hints, takes

#: TuneConfig fields a search may vary besides the training settings and strategy options
TUNE_AXES = ("strategy", "head")
#: training settings that are searchable (those that change results and are numbers or choices)
TRAIN_AXES = tuple(f.name for f in dataclasses.fields(TrainConfig)
                   if not f.metadata.get("neutral") and f.metadata.get("cli", True)
                   and field_types(TrainConfig)[f.name] is not bool)

Setting = dict[str, Any]


@dataclass(frozen=True)
class Axis:
    """One searched name and its values; ``kind`` is "train", "tune" or "option"."""

    name: str
    kind: str
    values: tuple[Any, ...]


@dataclass
class SearchSpace:
    """The grid: axes in the order given, over a base strategy (used when ``strategy`` is not an axis)."""

    axes: tuple[Axis, ...]
    strategy: str = "linear"
    fixed_options: dict[str, Any] = field(default_factory=dict)

    def strategies(self) -> tuple[str, ...]:
        axis = next((a for a in self.axes if a.name == "strategy"), None)
        return axis.values if axis else (self.strategy,)

    def settings(self) -> list[Setting]:
        """Every distinct setting, deterministic: first axis slowest, values in the order given."""
        out: list[Setting] = []
        for combo in itertools.product(*(a.values for a in self.axes)):
            s = dict(zip((a.name for a in self.axes), combo))
            strategy = s.get("strategy", self.strategy)
            for a in self.axes:
                if a.kind == "option" and not takes(strategy, a.name):
                    s.pop(a.name)  # linear with r=4 and with r=8 is one setting
            if s not in out:
                out.append(s)
        return out


def _split(name: str, text: Any) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",")) if isinstance(text, str) else tuple(text)
    if not values or any(v == "" for v in values):
        raise PefsError(f"search {name}={text!r} has an empty value; give a comma-separated list such as "
                        f"{name}=1e-4,1e-3")
    return values


def _cast_train(name: str, raw: str) -> Any:
    hint = field_types(TrainConfig)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | None: a searched value is the int
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if typing.get_origin(hint) is typing.Literal:
            if raw not in typing.get_args(hint):
                raise ValueError
            value: Any = raw
        else:
            value = hint(raw)
    except ValueError:
        want = " | ".join(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else hint.__name__
        raise PefsError(f"search {name}={raw!r}: not a valid value; {name} takes {want}") from None
    TrainConfig(**{name: value}).validate()
    return value


def _cast_option(name: str, raw: str, strategies: Sequence[str]) -> Any:
    from pefs.strategies.base import cast_option
    from pefs.strategies.spec import build

    users = [s for s in strategies if takes(s, name)]
    hint = option_hints(users[0])[name]
    if typing.get_origin(hint) in (tuple, list):
        raise PefsError(f"option {name} takes a list itself ({name}=a,b), so it cannot be searched; fix it "
                        f"with -o {name}=...")
    for s in users:
        build(s, **{name: raw})  # casts and range-checks as a run would (r=0 is refused here, not mid-search)
    return cast_option(users[0], name.rpartition(".")[2], raw, hint)


def parse_search(items: Sequence[str], options: Mapping[str, Any] | None = None,
                 strategy: str = "linear") -> SearchSpace:
    """A SearchSpace from ``--search KEY=V1,V2`` items and ``-o`` options (an option of a number or choice
    given as a list becomes an axis; other options stay fixed). Every value is checked here."""
    from pefs.strategies.registry import resolve
    from pefs.strategies.spec import build

    raw: list[tuple[str, str]] = []
    for item in items:
        if "=" not in item:
            raise PefsError(f"search items look like KEY=V1,V2 (e.g. lr=1e-4,1e-3), got {item!r}")
        k, v = item.split("=", 1)
        raw.append((k.strip(), v))
    fixed: dict[str, Any] = {}
    for k, v in (options or {}).items():
        is_list = isinstance(v, str) and "," in v
        if is_list and k not in dict(raw) and not _list_typed(k, strategy, raw):
            raw.append((k, v))
        else:
            fixed[k] = v
    names = [k for k, _ in raw]
    twice = next((k for i, k in enumerate(names) if k in names[:i]), None)
    if twice:
        raise PefsError(f"search names {twice!r} twice; give one list of values per name")
    strategies = (strategy,)
    if "strategy" in names:
        strategies = _split("strategy", dict(raw)["strategy"])
        for s in strategies:
            for part in s.split("+"):
                resolve(part.strip())  # an unknown name lists the valid ones
    axes = []
    for name, text in raw:
        values = _split(name, text)
        if name == "strategy":
            axes.append(Axis(name, "tune", values))
            continue
        if name == "head":
            bad = [v for v in values if v not in heads.HEADS]
            if bad:
                raise PefsError(f"search head={bad[0]!r}: unknown head; valid choices: {', '.join(heads.HEADS)}")
            axes.append(Axis(name, "tune", values))
            continue
        if name in TRAIN_AXES:
            axes.append(Axis(name, "train", _unique(name, tuple(_cast_train(name, v) for v in values))))
            continue
        if not any(takes(s, name) for s in strategies):
            valid = sorted({k for s in strategies for k in option_hints(s) if "." not in k})
            raise PefsError(f"cannot search {name!r}: not a training setting ({', '.join(TRAIN_AXES)}, "
                            f"{', '.join(TUNE_AXES)}) nor an option of strategy {' / '.join(strategies)} "
                            f"(its options: {', '.join(valid) or 'none'})")
        axes.append(Axis(name, "option", _unique(name, tuple(_cast_option(name, v, strategies) for v in values))))
    for s in strategies:  # fixed options must suit at least the strategies that take them
        given = {k: v for k, v in fixed.items() if takes(s, k)}
        build(s, **given)
    stray = [k for k in fixed if not any(takes(s, k) for s in strategies)]
    if stray:
        build(strategies[0], **{stray[0]: fixed[stray[0]]})  # the registry's own error lists the valid options
    return SearchSpace(tuple(axes), strategy, fixed)


def _list_typed(name: str, strategy: str, raw: list[tuple[str, str]]) -> bool:
    strategies = _split("strategy", dict(raw)["strategy"]) if "strategy" in dict(raw) else (strategy,)
    for s in strategies:
        hint = option_hints(s).get(name)
        if hint is not None:
            return typing.get_origin(hint) in (tuple, list)
    return False


def _unique(name: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise PefsError(f"search {name} lists {twice!r} twice")
    return values


def apply(cfg: TuneConfig, setting: Setting) -> TuneConfig:
    """A copy of ``cfg`` running ``setting``: training values into ``train``, options routed to the strategy
    that takes them (an option the setting's strategy lacks is dropped). ``cfg`` is not changed."""
    train = {k: v for k, v in setting.items() if k in TRAIN_AXES}
    tune = {k: v for k, v in setting.items() if k in TUNE_AXES}
    strategy = tune.get("strategy", cfg.strategy)
    opts = {**cfg.options, **{k: v for k, v in setting.items() if k not in TRAIN_AXES and k not in TUNE_AXES}}
    opts = {k: v for k, v in opts.items() if takes(strategy, k)}
    return dataclasses.replace(cfg, options=opts, seeds=tuple(cfg.seeds),
                               train=dataclasses.replace(cfg.train, **train), **tune)


@dataclass
class SearchResult:
    """The chosen setting and every row: setting, validation accuracy, seconds (and status)."""

    chosen: Setting
    table: list[dict[str, Any]]


def run_search(space: SearchSpace, score: Callable[[Setting], float],
               budget_s: float | None = None) -> SearchResult:
    """Score every setting in order with ``score`` (validation accuracy in [0, 1]); the best wins, ties going
    to the earlier setting, a non-finite score (a diverged run) never winning. With ``budget_s``, settings not
    started before the budget runs out are recorded as skipped (the first setting always runs)."""
    table: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for s in space.settings():
        if budget_s is not None and table and time.perf_counter() - t_start >= budget_s:
            table.append({"setting": s, "val_accuracy": None, "seconds": 0.0, "status": "skipped (budget)"})
            continue
        t0 = time.perf_counter()
        acc = float(score(dict(s)))
        table.append({"setting": s, "val_accuracy": acc, "seconds": time.perf_counter() - t0, "status": "ok"})
    ran = [r for r in table if r["status"] == "ok" and math.isfinite(r["val_accuracy"])]
    if not ran:
        raise PefsError(f"no setting of the search gave a finite validation score ({len(table)} tried)")
    best = max(ran, key=lambda r: r["val_accuracy"])  # max keeps the first of equal scores
    return SearchResult(dict(best["setting"]), table)
