"""The strategy contract, all of it on :class:`Strategy`: a typed config, an ``apply`` that decides what trains,
and what the engine and the model need to know about the result.

A strategy mutates a freshly loaded :class:`~pefs.backbones.Backbone` in place: it may insert modules
(adapters, prompts, LoRA layers) and it marks *its own* parameters ``requires_grad``, never anyone else's
(``pefs.model.wrap.wrap`` checks that and trains the head). It declares which leading blocks it leaves untouched
(``frozen_blocks``: the engine caches their output), whether it reruns the blocks itself
(``checkpointing_target``: where gradient checkpointing is switched on), whether it keeps the backbone's own
architecture (``keeps_architecture``: then merging is trivially nothing), how it merges, which base
weights it relies on staying frozen (``frozen_base``), and what it does around each fit and step (``begin_fit``,
``after_step``, ``regularizer``: AdaLoRA's rank schedule and penalty). What strategies share lives in
:mod:`pefs.strategies.common`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError


@dataclass
class StrategyConfig:
    """Base class of every strategy's options (a dataclass; fields are the options)."""

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Option name -> default value."""
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, strategy: str, **opts: Any) -> StrategyConfig:
        """Build a config from (possibly string) option values, casting each to its field's type."""
        hints = typing.get_type_hints(cls)
        valid = cls.options()
        out = {}
        for key, value in opts.items():
            if key not in valid:
                raise PefsError(f"unknown option {key!r} for strategy {strategy!r}; valid options: "
                                + (", ".join(f"{k} (default {v!r})" for k, v in valid.items()) or "none"))
            out[key] = cast_option(strategy, key, value, hints[key])
        cfg = cls(**out)
        cfg.validate(strategy)
        return cfg

    def validate(self, strategy: str) -> None:
        """Raise PefsError for out-of-range values; subclasses override."""


def cast_option(strategy: str, key: str, value: Any, hint: Any) -> Any:
    """Turn a CLI string (``"8"``, ``"qkv,proj"``, ``"true"``) into the option's declared type."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or value == "none":
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    try:
        if origin in (tuple, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
            return tuple(inner(i) for i in items if str(i) != "")
        if typing.get_origin(hint) is typing.Literal:
            if value not in typing.get_args(hint):
                raise ValueError
            return value
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return hint(value) if not isinstance(value, hint) else value
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf) from a JSON Infinity
        expected = (" or ".join(map(repr, typing.get_args(hint))) if typing.get_origin(hint) is typing.Literal
                    else getattr(hint, "__name__", str(hint)))
        raise PefsError(f"option {key}={value!r} of strategy {strategy!r} must be {expected}") from None


class Strategy:
    """One way of choosing what trains. Subclasses set the class attributes and implement ``apply``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: backbone kinds this strategy supports ("transformer", "cnn", "other")
    kinds: ClassVar[tuple[str, ...]] = ("transformer", "cnn", "other")
    #: True when nothing before the head trains, so pooled features can be cached
    frozen_prefix: ClassVar[bool] = False
    #: True when ``merge`` folds the strategy into the backbone's own weights
    mergeable: ClassVar[bool] = False
    #: True when the wrapped model's features equal the backbone's before any training (zero-init updates)
    identity_at_init: ClassVar[bool] = True
    #: merge order, lowest first: a strategy that folds into the layer it follows (ssf) merges before one
    #: that rewrites that layer's weights (peft merges W + dW in place)
    merge_order: ClassVar[int] = 0
    #: True when the strategy adds no module: what trains is weights the backbone already has (biases, norms,
    #: blocks, or only the head), so the tuned model keeps the backbone's own architecture and merging is nothing
    keeps_architecture: ClassVar[bool] = False
    #: learning rate of this strategy's parameters when ``--lr`` is not given; a strategy moves off 1e-3 only when
    #: validation data says so (benchmarks/selection.md, "Default learning rates")
    default_lr: ClassVar[float] = 1e-3

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config or self.config_class()

    def check(self, bb: Backbone) -> None:
        """Refuse a backbone kind this strategy does not support, saying what to use instead."""
        if bb.kind not in self.kinds:
            raise PefsError(f"strategy {self.name!r} does not apply to {bb.name} (a {bb.kind} backbone); "
                            f"it supports {', '.join(self.kinds)} backbones")

    def apply(self, bb: Backbone) -> None:
        """Modify ``bb.model`` in place and set ``requires_grad`` on this strategy's parameters."""
        raise NotImplementedError

    def frozen_base(self, bb: Backbone) -> set[str]:
        """Names of parameters this strategy relies on staying frozen (e.g. LoRA's base weights)."""
        return set()

    def frozen_blocks(self, bb: Backbone) -> int | None:
        """How many leading blocks of ``bb`` this strategy leaves exactly as loaded (the engine may compute
        their output once and cache it); None when it changes blocks throughout or cannot say. A strategy that
        trains only the head leaves them all."""
        return len(bb.block_names) if self.frozen_prefix else None

    def checkpointing_target(self, bb: Backbone) -> nn.Module | None:
        """The module whose ``set_grad_checkpointing(bool)`` switches gradient checkpointing when this strategy
        reruns the blocks itself (VPT tokens, self-prompt); None: the backbone's own switch serves."""
        return None

    def begin_fit(self, bb: Backbone, total_steps: int) -> None:
        """Called by the engine before a fit's first step with the optimizer steps it will take: a strategy whose
        training follows its own schedule (AdaLoRA's rank budget) sets it here and forgets the last fit's state.
        Default: nothing."""

    def after_step(self, bb: Backbone, step: int) -> None:
        """Called by the engine after each optimizer step (``step``: 1 first) with the gradients still in place
        (AdaLoRA scores and prunes its ranks from them). Default: nothing."""

    def regularizer(self, bb: Backbone) -> torch.Tensor | None:
        """A term the engine adds to each step's training loss (AdaLoRA's orthogonality penalty); None: none."""
        return None

    def merge(self, bb: Backbone) -> None:
        """Fold the strategy's weights into the backbone so inference costs nothing extra (nothing to do when
        it trains the backbone's own weights); refuses a strategy that adds computation with no weight
        equivalent."""
        if not self.keeps_architecture:
            raise PefsError(f"strategy {self.name!r} cannot be merged into the backbone weights")

    def merged_view(self, bb: Backbone) -> contextlib.AbstractContextManager[None]:
        """Fold the strategy into the weights for the duration of a ``with`` block (fast inference), then undo
        it exactly. Default: nothing to fold (the strategy trains the backbone's own weights, or it adds
        computation that has no weight equivalent and simply keeps running)."""
        return contextlib.nullcontext()

    def describe(self) -> str:
        opts = dataclasses.asdict(self.config)
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")


def set_trainable(params: typing.Iterable[nn.Parameter]) -> int:
    """Mark parameters trainable; return how many elements that is."""
    n = 0
    for p in params:
        p.requires_grad_(True)
        n += p.numel()
    return n


@contextlib.contextmanager
def tuner_layers_merged(layers: list[nn.Module]) -> typing.Iterator[None]:
    """Merge peft tuner ``layers`` (W + dW in the base layer) inside the block; afterwards unmerge them and put
    the base weights back bit for bit (peft's unmerge subtracts dW again, which leaves rounding error)."""
    layers = [m for m in layers if not m.merged]
    saved = [{k: v.detach().clone() for k, v in m.get_base_layer().named_parameters(recurse=False)} for m in layers]
    try:
        for m in layers:
            m.merge()
        yield
    finally:
        for m, tensors in zip(layers, saved):
            if m.merged:
                with warnings.catch_warnings():  # "unmerge can be inaccurate": the exact copy below fixes that
                    warnings.simplefilter("ignore", UserWarning)
                    m.unmerge()
            base = dict(m.get_base_layer().named_parameters(recurse=False))
            for k, v in tensors.items():
                base[k].data.copy_(v)
