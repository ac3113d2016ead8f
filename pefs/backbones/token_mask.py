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
from pefs.errors import PefsError

MASK_MODES = ("random", "block")


def supports_token_masks(bb: Backbone) -> bool:
    """True for timm VisionTransformers (patch embedding, position embedding and blocks pefs can run)."""
    m = bb.model
    return (bb.family == "vit" and type(m).__name__ == "VisionTransformer" and hasattr(m, "patch_embed")
            and not getattr(m, "dynamic_img_size", False))


def grid_size(bb: Backbone) -> tuple[int, int]:
    """Patch grid (rows, columns) of the ViT at its configured image size."""
    return tuple(int(g) for g in bb.model.patch_embed.grid_size)  # type: ignore[return-value]


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
    m = bb.model
    prefix = int(getattr(m, "num_prefix_tokens", 1))
    t = m._pos_embed(m.patch_embed(x))  # prefix tokens + every patch token, position embeddings added
    if keep.shape[0] != t.shape[0] or int(keep.max()) >= t.shape[1] - prefix:
        raise PefsError(f"keep indices {tuple(keep.shape)} do not fit {t.shape[0]} images of "
                        f"{t.shape[1] - prefix} patches")
    patches = torch.gather(t[:, prefix:], 1, keep.to(t.device)[..., None].expand(-1, -1, t.shape[-1]))
    t = m.norm_pre(torch.cat([t[:, :prefix], patches], dim=1))
    return m.norm(m.blocks(t))


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
