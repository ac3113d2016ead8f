"""Extra views of the support images: light augmentation and random patch masking, made once per task.

Each support image keeps its clean view and gains ``views - 1`` extra ones, each augmented (random resized
crop + flip) and/or masked (a random ``mask_ratio`` of its ``mask_patch`` x ``mask_patch`` squares set to 0,
the dataset's mean colour after normalisation). They are made once per K-shot seed or episode and then
trained on like any other support image, never re-drawn per step, so frozen-prefix caching still holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pefs.config import TuneConfig
from pefs.data.sources import ImageSet
from pefs.errors import PefsError


def mask_patches(x: torch.Tensor, ratio: float, patch: int, generator: torch.Generator) -> torch.Tensor:
    """A copy of images ``x`` (B, C, H, W) with ``round(ratio * patches)`` random patch squares zeroed each."""
    b, _, h, w = x.shape
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    if patch > min(h, w):
        raise PefsError(f"mask_patch={patch} is larger than the {h}x{w} input; valid: 1..{min(h, w)}")
    n_mask = round(ratio * gh * gw)
    order = torch.rand(b, gh * gw, generator=generator).argsort(dim=1)
    keep = torch.ones(b, gh * gw)
    keep.scatter_(1, order[:, :n_mask], 0.0)
    grid = keep.view(b, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    return x * grid.to(x.dtype)


def extra_views(images: ImageSet, cfg: TuneConfig, clean: torch.Tensor, augment: Callable | None,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``views - 1`` extra views of every image (view-major order) and their labels.

    ``clean`` holds the already decoded clean views; ``augment`` is a PIL -> tensor transform used when
    ``cfg.augment``. Deterministic for a seed, and leaves the global RNG state untouched.
    """
    labels = torch.as_tensor(images.labels, dtype=torch.long)
    n = cfg.views - 1
    if n == 0 or len(images) == 0:
        return clean[:0], labels[:0]
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchvision's random transforms draw from the global generator
        for _ in range(n):
            v = torch.stack([augment(images.image(i)) for i in range(len(images))]) if cfg.augment else clean
            if v.shape[1:] != clean.shape[1:]:
                raise PefsError(f"augmented views are {tuple(v.shape[1:])} but clean ones {tuple(clean.shape[1:])}")
            out.append(mask_patches(v, cfg.mask_ratio, cfg.mask_patch, g) if cfg.mask_ratio > 0 else v)
    return torch.cat(out), labels.repeat(n)
