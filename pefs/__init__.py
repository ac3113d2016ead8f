"""pefs: parameter-efficient fine-tuning of pretrained vision backbones for few-shot classification.

>>> import pefs
>>> model = pefs.wrap("efficientnet_lite0.offline", "lora", num_classes=10, r=8)
>>> model.param_report()["trainable"]

The public names load lazily (PEP 562), so ``import pefs.results``
or ``pefs.results.store`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from pefs.errors import PefsError

__version__ = "0.2.0"
#: public name -> the module that defines it
_LAZY = {"Backbone": "pefs.backbones", "list_models": "pefs.backbones", "load": "pefs.backbones",
         "PefsModel": "pefs.model", "wrap": "pefs.model", "list_strategies": "pefs.strategies",
         "TuneConfig": "pefs.config", "TrainConfig": "pefs.config", "tune": "pefs.protocols.run",
         "PretrainConfig": "pefs.config.pretrain"}
__all__ = ["PefsError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pefs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
