"""MAE-style masked views for timm ViTs: masked patch tokens are dropped before the blocks, not painted over.

As in the MAE encoder, the image is embedded patch by patch, position embeddings are added, and only the
kept patch tokens (with the class/register tokens) enter the transformer; the pooled features are read from
that shorter sequence. Masks are random (each patch dropped independently of its place) or block-wise
(BEiT-style rectangles of neighbouring patches), drawn from a seeded generator. CNNs keep pixel masking
(:func:`pefs.data.views.mask_patches`).

Two ways to run a masked view: :func:`masked_tokens` runs a timm ViT's pieces itself (MAE pretraining's
encoder); and :func:`dropping` / :func:`run_kept` (every masked view of a tune run) drop the tokens inside the
model's own forward through a hook on the module that embeds the patches (its family says which), so any
strategy's changes to the blocks run and train on the shorter sequence (timm and ``transformers`` ViTs).
:func:`view_masks` draws the masks of a task's extra views, ``complementary`` ones included
(pairs of views that together cover the image).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

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


# --- token dropping inside the model's own forward (tuned trunks; timm and transformers ViTs) ---------------------

#: every mask mode a view may use: ``complementary`` pairs two views whose kept patches partition the grid
VIEW_MASK_MODES = (*MASK_MODES, "complementary")


def drop_site(bb: Backbone) -> nn.Module | None:
    """The module whose output is the token sequence (prefix tokens + every patch token, position embeddings
    added) that the blocks then take, or None when pefs does not know one for this backbone. The family says
    where it is (timm ViT: ``patch_drop``; ``transformers`` encoders: their ``embeddings``)."""
    if bb.tokens is None:
        return None
    family = family_of(bb)
    if family is not None:
        return family.token_drop_site(bb.model)
    own = getattr(bb.model, "token_drop_site", None)  # a model that describes itself (transformers encoders)
    return own() if callable(own) else None


def drops_tokens(bb: Backbone) -> bool:
    """True when masked views of ``bb`` can drop patch tokens inside its own forward (any strategy, tuned or not)."""
    return drop_site(bb) is not None


def token_grid(bb: Backbone, size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (rows, columns) of ``bb`` on images of ``size`` (height, width), from its token layout."""
    if bb.tokens is None:
        raise PefsError(f"{bb.name} has no token layout, so it has no patch grid")
    ph, pw = bb.tokens.patch_size
    return size[0] // ph, size[1] // pw


def view_masks(n_images: int, n_views: int, grid: tuple[int, int], ratio: float, mode: str,
               generator: torch.Generator) -> torch.Tensor:
    """Which patches each extra view keeps: bool (n_views * n_images, patches), view-major (as
    :func:`pefs.data.views.extra_views` orders views). ``random`` / ``block``: :func:`keep_indices` for every
    view; ``complementary``: views come in pairs, the second keeping exactly the patches the first drops."""
    n = grid[0] * grid[1]
    if mode != "complementary":
        keep = keep_indices(n_views * n_images, grid, ratio, mode, generator)
        return torch.zeros(len(keep), n, dtype=torch.bool).scatter_(1, keep, True)
    if n_views % 2:
        raise PefsError(f"complementary masks come in pairs; {n_views} extra views is odd: set views to 1 + an "
                        "even number (3, 5, ...)")
    if min(round(ratio * n), n - 1) < 1:
        raise PefsError(f"complementary masks at mask_ratio={ratio} drop no patch of the {grid[0]}x{grid[1]} grid, "
                        f"so the second view would keep none; use a mask_ratio of at least {0.5 / n:.3g}")
    out = []
    for _ in range(n_views // 2):
        first = view_masks(n_images, 1, grid, ratio, "random", generator)
        out += [first, ~first]
    return torch.cat(out)


@contextlib.contextmanager
def dropping(bb: Backbone, keep: torch.Tensor, patches: int) -> Iterator[None]:
    """Within the block, every forward of ``bb`` keeps only the ``keep`` (B, kept) patch tokens (sorted
    indices into ``patches`` patch tokens) with the prefix tokens: dropped after the position embeddings are
    added, before the blocks (as the MAE encoder), so a tuned trunk trains on the shorter sequence."""
    site = drop_site(bb)
    if site is None:
        raise PefsError(f"{bb.name} ({bb.family}) has no known place to drop patch tokens; token masks need a timm "
                        "VisionTransformer or a transformers ViT / DeiT / DINOv2 / CLIP encoder")
    prefix = bb.tokens.num_prefix  # type: ignore[union-attr]

    def hook(_module: nn.Module, _args: tuple, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[1] - prefix != patches \
                or t.shape[0] != keep.shape[0]:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PefsError(f"token masks drawn for {keep.shape[0]} images of {patches} patches do not fit the "
                            f"tokens {shape} of {bb.name} ({prefix} prefix tokens)")
        k = keep.to(t.device)[..., None].expand(-1, -1, t.shape[-1])
        return torch.cat([t[:, :prefix], torch.gather(t[:, prefix:], 1, k)], dim=1)

    handle = site.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_kept(bb: Backbone, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             keep: torch.Tensor | None) -> torch.Tensor:
    """``fn(x)`` (a forward of ``bb``'s model on images ``x``) with each image keeping only the patches ``keep``
    (bool (B, patches); None or all True: every token). Images keeping as many tokens run together, so a batch
    may mix clean and masked views; the outputs come back in ``x``'s order (differentiable)."""
    if keep is None:
        return fn(x)
    patches = keep.shape[1]
    counts = keep.sum(dim=1)
    if bool((counts == patches).all()):
        return fn(x)
    outs, rows = [], []
    for c in counts.unique().tolist():
        r = torch.nonzero(counts == c).flatten()
        sub = x[r.to(x.device)]
        if c == patches:
            outs.append(fn(sub))
        else:
            idx = torch.nonzero(keep[r])[:, 1].view(len(r), int(c))  # row-major: each row's indices sorted
            with dropping(bb, idx, patches):
                outs.append(fn(sub))
        rows.append(r)
    out = torch.cat(outs)
    return out[torch.cat(rows).argsort().to(out.device)]
