"""pefs: parameter-efficient fine-tuning of pretrained vision backbones for few-shot classification.

>>> import pefs
>>> model = pefs.wrap("efficientnet_lite0.offline", "lora", num_classes=10, r=8)
>>> model.param_report()["trainable"]
"""

from pefs.backbones import Backbone, list_models, load
from pefs.errors import PefsError
from pefs.model import PefsModel, wrap
from pefs.strategies import list_strategies

__version__ = "0.1.0"
__all__ = ["Backbone", "PefsError", "PefsModel", "__version__", "list_models", "list_strategies", "load", "wrap"]
