"""MAE-style masked views for timm ViTs: masked patch tokens are dropped before the blocks, not painted over.

As in the MAE encoder, the image is embedded patch by patch, position embeddings are added, and only the
kept patch tokens (with the class/register tokens) enter the transformer; the pooled features are read from
that shorter sequence. Masks are random (each patch dropped independently of its place) or block-wise
(BEiT-style rectangles of neighbouring patches), drawn from a seeded generator. CNNs keep pixel masking
(:func:`pefs.data.views.mask_patches`).
"""

from __future__ import annotations

import math

import torch

from pefs.backbones.describe import Backbone
from pefs.backbones.families import family_of
from pefs.errors import PefsError

MASK_MODES = ("random", "block")


def supports_token_masks(bb: Backbone) -> bool:
    """True when the backbone's family can drop patch tokens before the blocks (timm VisionTransformers: patch
    embedding, position embedding and blocks pefs can run)."""
    family = family_of(bb)
    return family is not None and family.token_masks(bb.model)


def grid_size(bb: Backbone) -> tuple[int, int]:
    """Patch grid (rows, columns) of the ViT at its configured image size."""
    return family_of(bb).patch_grid(bb.model)


def keep_indices(batch: int, grid: tuple[int, int], ratio: float, mode: str,
                 generator: torch.Generator) -> torch.Tensor:
    """Sorted indices (batch, kept) of the patch tokens each image keeps; ``round(ratio * patches)`` dropped
    (at least one kept). ``block`` drops rectangles of neighbouring patches until the count is reached."""
    if mode not in MASK_MODES:
        raise PefsError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    if not 0 <= ratio < 1:
        raise PefsError(f"mask_ratio must lie in [0, 1), got {ratio}")
    gh, gw = grid
    n = gh * gw
    n_drop = min(round(ratio * n), n - 1)
    if mode == "random":
        order = torch.rand(batch, n, generator=generator).argsort(dim=1)
        return order[:, n_drop:].sort(dim=1).values
    out = []
    for _ in range(batch):
        dropped = torch.zeros(gh, gw, dtype=torch.bool)
        while int(dropped.sum()) < n_drop:
            left = n_drop - int(dropped.sum())
            area = int(torch.randint(1, max(2, min(left, n // 4) + 1), (1,), generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=generator)))
            h = max(1, min(gh, round(math.sqrt(area * aspect))))
            w = max(1, min(gw, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, gh - h + 1, (1,), generator=generator))
            lft = int(torch.randint(0, gw - w + 1, (1,), generator=generator))
            block = torch.zeros_like(dropped)
            block[top:top + h, lft:lft + w] = True
            new = block & ~dropped
            extra = int(new.sum()) - left
            if extra > 0:  # the rectangle overshoots: keep only as many of its new patches as still needed
                idx = torch.nonzero(new.flatten()).flatten()
                new = new.flatten().clone()
                new[idx[left:]] = False
                new = new.view(gh, gw)
            dropped |= new
        out.append(torch.nonzero(~dropped.flatten()).flatten())
    return torch.stack(out)


def masked_tokens(bb: Backbone, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Final-norm token sequence (B, prefix + kept, D) of images ``x`` with only the ``keep`` patch tokens."""
    if not supports_token_masks(bb):
        raise PefsError(f"token masking needs a timm VisionTransformer; {bb.name} is a {bb.family} model: "
                        "masked views of CNNs are made in pixels")
    return family_of(bb).masked_tokens(bb.model, x, keep)


def masked_pooled(bb: Backbone, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logit features (B, D) of images ``x`` keeping only the ``keep`` patch tokens."""
    return bb.model.forward_head(masked_tokens(bb, x, keep), pre_logits=True)


@torch.no_grad()
def pooled_views(bb: Backbone, views: torch.Tensor, ratio: float, mode: str, seed: int,
                 batch_size: int = 16) -> torch.Tensor:
    """Pooled features (N, D) of images ``views`` (N, C, H, W), each with its own seeded token mask; run in
    eval mode on the model's device, float32, on the CPU afterwards. Deterministic for a seed."""
    keep = keep_indices(len(views), grid_size(bb), ratio, mode, torch.Generator().manual_seed(seed))
    device = next(bb.model.parameters()).device
    bb.model.eval()
    out = [masked_pooled(bb, views[i:i + batch_size].to(device), keep[i:i + batch_size]).float().cpu()
           for i in range(0, len(views), batch_size)]
    return torch.cat(out) if out else views.new_zeros(0, bb.width)
