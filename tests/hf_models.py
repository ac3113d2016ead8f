"""Tiny random-weight ``transformers`` vision models built from configs (offline), described as pefs Backbones."""

from __future__ import annotations

import copy
import functools

import torch

from pefs.backbones import Backbone, load
from tests.strategy_battery import IMG, liven

D, LAYERS, HEADS, PATCH, REGISTERS = 32, 2, 4, 8, 4


def _encoder_kwargs() -> dict:
    return dict(image_size=IMG, patch_size=PATCH, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=2 * D)


def build(kind: str, num_labels: int = 3) -> torch.nn.Module:
    """A fresh tiny ``transformers`` model of ``kind`` (seeded: the same weights every call)."""
    import transformers as T

    torch.manual_seed(0)
    enc = _encoder_kwargs()
    cnn = dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=num_labels)
    models = {
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(**enc, num_labels=num_labels)),
        "vit-base": lambda: T.ViTModel(T.ViTConfig(**enc), add_pooling_layer=False),
        "dinov2-reg": lambda: T.Dinov2WithRegistersForImageClassification(
            T.Dinov2WithRegistersConfig(**{k: v for k, v in enc.items() if k != "intermediate_size"}, mlp_ratio=2,
                                        num_register_tokens=REGISTERS, num_labels=num_labels)),
        "clip": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**enc)),
        "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(**cnn)),
        "resnet": lambda: T.ResNetForImageClassification(T.ResNetConfig(**cnn, embedding_size=8)),
    }
    return models[kind]().eval()


@functools.cache
def _pristine(kind: str) -> Backbone:
    model = build(kind)
    liven(model)
    return load(model, name=f"tiny-{kind}")


def hf_backbone(kind: str) -> Backbone:
    """A fresh copy of the tiny described model (the same weights every call)."""
    return copy.deepcopy(_pristine(kind))
