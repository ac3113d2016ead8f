"""Transforms from the backbone's own timm data config, and decoding an ImageSet into one tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def eval_transform(data_config: dict[str, Any], img_size: int | None = None) -> Callable:
    """timm's eval pipeline (resize, centre crop, normalise) for this backbone, optionally at ``img_size``."""
    from timm.data import create_transform

    cfg = dict(data_config)
    if img_size:
        cfg["input_size"] = (3, img_size, img_size)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{k: cfg[k] for k in keys if k in cfg}, is_training=False)


def augment_transform(data_config: dict[str, Any], img_size: int | None = None) -> Callable:
    """Light support-set augmentation: random resized crop (scale 0.7-1) and horizontal flip."""
    from torchvision import transforms as T

    size = img_size or data_config["input_size"][-1]
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.7, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])
