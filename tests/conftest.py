"""Shared fixtures: everything offline, small random-weight models for family tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# before torch loads OpenMP: spinning threads on a shared, loaded CPU made the suite ~8x slower (250 s vs 30 s)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

#: small timm models, one per family, with the kwargs that keep them fast on a CPU
TINY_MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32}),
    "convnext": ("convnext_atto", {}),
    "resnet": ("resnet18", {}),
    "efficientnet": ("efficientnet_lite0", {}),
}


@pytest.fixture
def image_folder(tmp_path):
    """A 3-class image folder with 6 small RGB images per class (distinct colours per class)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        d = tmp_path / "imgs" / name
        d.mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            arr[..., c] += 150
            Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path / "imgs"
