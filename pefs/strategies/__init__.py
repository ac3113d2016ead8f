"""Tuning strategies: one module each, registered by name (see :mod:`pefs.strategies.registry`)."""

from pefs.strategies import (  # noqa: F401  (registration side effects)
    adalora,
    adapter,
    bias,
    full,
    last_k,
    linear,
    lora,
    norm,
    peft_method,
    self_prompt,
    ssf,
    vpt,
)
from pefs.strategies.base import Strategy, StrategyConfig
from pefs.strategies.registry import STRATEGIES, list_strategies, register
from pefs.strategies.spec import build, default_lr

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "build", "default_lr", "list_strategies", "register"]
