"""Tuning strategies: one module each, registered by name (see :mod:`pefs.strategies.registry`)."""

from pefs.strategies import full, linear, lora  # noqa: F401  (registration side effects)
from pefs.strategies.base import Strategy, StrategyConfig
from pefs.strategies.registry import STRATEGIES, build, list_strategies, register

__all__ = ["STRATEGIES", "Strategy", "StrategyConfig", "build", "list_strategies", "register"]
