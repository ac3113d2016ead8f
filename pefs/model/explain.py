"""Where a model looks: attention rollout and the last block's class-token attention for transformer encoders,
Grad-CAM for CNNs, as maps over the image the model sees (``pefs explain``).

Attention weights are computed here from the blocks' own queries and keys, caught by forward hooks on the q/k
projections the :class:`~pefs.backbones.Backbone` description names (``roles``), so fused attention kernels
(timm's SDPA, transformers' attention back-ends) need not be switched off: ``softmax(q k^T / sqrt(d))`` per head,
after the block's per-head q/k norms where it has them. Tuned projections (LoRA, DoRA) are caught with their
update, as the forward runs them; attention a strategy adds beside the blocks' own (self-prompt's gated
attention to its generated prompts) is not in the maps, only its effect on the tokens the blocks attend with.
The rollout is multiplied up block by block as the forward runs, so one block's attention is held at a time.

Every map is non-negative and finite. :attr:`Explanation.grid` is the raw map over the patch grid / feature-map
positions (for rollout and the last block: the class token's attention to each patch; it sums to at most 1, the
rest going to the class, register and prompt tokens); :attr:`Explanation.map` is the grid upsampled (bilinear)
to the model's input size and divided by its maximum, so its maximum is 1 (an all-zero map stays zero).
Everything runs on the CPU, in eval mode: a few images, one forward pass (and for Grad-CAM one backward) each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import BlockRoles, first_tensor, sub
from pefs.backbones.split import stages
from pefs.data import ImageSet
from pefs.errors import PefsError
from pefs.model.inference import decode_each, saved_transform

if TYPE_CHECKING:
    from pefs.model.wrap import PefsModel

ROLLOUT = "attention rollout"
LAST = "last-block class-token attention"
GRAD_CAM = "Grad-CAM"


@dataclass
class Explanation:
    """One map of one image: ``method``, the raw ``grid`` (h, w), the normalised ``map`` (H, W) at the model's
    input size, the class the model predicts (``label``, its softmax ``score``) and the class the map is for
    (``target``: the predicted class unless one was asked for; attention maps do not depend on a class)."""

    method: str
    grid: np.ndarray
    map: np.ndarray
    label: int
    score: float
    target: int


def methods_for(bb: Backbone) -> tuple[str, ...]:
    """The maps ``pefs explain`` draws for ``bb``: rollout and last-block attention for a transformer encoder
    pefs can read attention from, Grad-CAM for a CNN; a PefsError naming what is supported otherwise."""
    if bb.kind == "transformer" and bb.roles is not None and bb.tokens is not None:
        return (ROLLOUT, LAST)
    if bb.kind == "cnn" and stages(bb).tokens is not None:
        return (GRAD_CAM,)
    raise PefsError(f"pefs explain cannot draw maps for {bb.name} (a {bb.kind} backbone of family {bb.family}): "
                    "attention maps need a ViT-style encoder whose q/k projections pefs knows (timm ViT/DeiT, "
                    "transformers ViT, DeiT, DINOv2, CLIP), Grad-CAM a CNN whose feature map pefs can reach "
                    "(timm EfficientNet, ResNet, ConvNeXt; transformers CNNs give pooled features only)")


def _probs(block: nn.Module, roles: BlockRoles, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, heads, N, N) from a block's q and k projection outputs (B, N, heads x dim)."""
    heads, hd = roles.num_heads, roles.head_dim
    b, n = q.shape[:2]
    q, k = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k))
    q, k = sub(block, roles.q_norm)(q).float(), sub(block, roles.k_norm)(k).float()
    return (q @ k.transpose(-2, -1) * hd ** -0.5).softmax(-1)


@contextmanager
def caught_attention(bb: Backbone, each: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Inside the block, every forward pass calls ``each(block index, probabilities (B, heads, N, N))`` as each
    encoder block computes its q and k (forward hooks on the projections the description names), so no more than
    one block's attention is held at a time; the hooks are removed on exit."""
    roles = bb.roles
    if roles is None:
        raise PefsError(f"{bb.name} has no q/k roles in its description; attention maps need them")
    width = roles.num_heads * roles.head_dim
    handles = []

    def fused(i: int, block: nn.Module):
        def hook(module, args, out):
            t = first_tensor(out)
            each(i, _probs(block, roles, t[..., :width], t[..., width:2 * width]))
        return hook

    def separate(i: int, block: nn.Module, key: str, pending: dict[str, torch.Tensor]):
        def hook(module, args, out):
            pending[key] = first_tensor(out)
            if len(pending) == 2:
                each(i, _probs(block, roles, pending.pop("q"), pending.pop("k")))
        return hook

    try:
        for i, block in enumerate(bb.blocks):
            if roles.qkv:
                handles.append(block.get_submodule(roles.qkv).register_forward_hook(fused(i, block)))
                continue
            pending: dict[str, torch.Tensor] = {}
            for key, name in (("q", roles.q), ("k", roles.k)):
                handles.append(block.get_submodule(name).register_forward_hook(separate(i, block, key, pending)))
        yield
    finally:
        for h in handles:
            h.remove()


def rollout_step(r: torch.Tensor | None, a: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """One block of attention rollout: its heads' mean attention ``a`` (B, heads, N, N), with the residual
    connection as ``0.5 A + 0.5 I`` (rows renormalised to sum to 1), multiplied onto the rollout ``r`` so far."""
    m = a.float().mean(1)
    if residual:
        m = 0.5 * m + 0.5 * torch.eye(m.shape[-1], dtype=m.dtype)
        m = m / m.sum(-1, keepdim=True)
    return m if r is None else m @ r


def rollout(attentions: Sequence[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) over blocks' attentions (each (B, heads, N, N)), first block
    first: ``R = A_L ... A_2 A_1`` (B, N, N) of :func:`rollout_step`'s matrices; row i is how much each input token
    flows into token i's output."""
    if not attentions:
        raise PefsError("attention rollout needs at least one block's attention")
    r = None
    for a in attentions:
        r = rollout_step(r, a, residual)
    return r  # type: ignore[return-value]


def grid_shape(bb: Backbone, size: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (rows, columns) of an input of ``size`` (height, width)."""
    assert bb.tokens is not None
    ph, pw = bb.tokens.patch_size
    return size[0] // ph, size[1] // pw


def class_row(m: torch.Tensor, prefix: int, patches: int, grid: tuple[int, int]) -> torch.Tensor:
    """From a token-to-token matrix (B, N, N): the class token's row (the mean of the patch rows when the encoder
    has no prefix token), over the patch columns (the last ``patches`` tokens: prompts sit between the prefix
    tokens and the patches), as (B, rows, columns)."""
    if m.shape[-1] < prefix + patches:
        raise PefsError(f"the encoder ran {m.shape[-1]} tokens, fewer than {prefix} prefix + {patches} patch tokens "
                        f"of a grid of {grid[0]}x{grid[1]}; is the image at the model's input size?")
    row = m[:, 0] if prefix else m[:, -patches:].mean(1)
    return row[:, -patches:].reshape(-1, *grid)


def attention_maps(model: PefsModel, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rollout and last-block class-token attention of images ``x`` (B, C, H, W) as (B, rows, columns) grids,
    and the logits. The rollout is multiplied up block by block as the forward pass runs."""
    bb = model.backbone
    assert bb.tokens is not None
    grid = grid_shape(bb, tuple(x.shape[-2:]))  # type: ignore[arg-type]
    state: dict[str, Any] = {"rollout": None, "last": None, "blocks": []}

    def each(i: int, probs: torch.Tensor) -> None:
        state["rollout"] = rollout_step(state["rollout"], probs)
        state["last"] = probs.mean(1)
        state["blocks"].append(i)

    with torch.no_grad(), caught_attention(bb, each):
        logits = model(x).float()
    if state["blocks"] != list(range(len(bb.block_names))):
        raise PefsError(f"the forward pass of {bb.name} ran the q/k projections of blocks {state['blocks'][:8]}, "
                        f"not each of its {len(bb.block_names)} blocks once in order; its attention cannot be rolled "
                        "out")
    prefix, patches = bb.tokens.num_prefix, grid[0] * grid[1]
    return {ROLLOUT: class_row(state["rollout"], prefix, patches, grid),
            LAST: class_row(state["last"], prefix, patches, grid)}, logits


def grad_cam(model: PefsModel, x: torch.Tensor,
             target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) on the backbone's final feature map (B, C, h, w), before pooling: the
    channels weighted by the mean gradient of the ``target`` class's logit (default: the predicted class), summed,
    ReLU. Returns the maps (B, h, w) and the logits."""
    bb = model.backbone
    st = stages(bb)
    if st.tokens is None:
        raise PefsError(f"Grad-CAM needs the feature map of {bb.name}, whose layout pefs does not know")
    with torch.no_grad():
        fmap = bb.model.forward_features(x).float()
    if fmap.ndim != 4:
        raise PefsError(f"Grad-CAM needs a (B, C, H, W) feature map; {bb.name} gives {tuple(fmap.shape)}")
    fmap.requires_grad_(True)
    with torch.enable_grad():
        logits = st.run(fmap, st.tokens, st.logits).float()
        cls = logits.argmax(-1) if target is None else target
        (grads,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), fmap)
    weights = grads.mean((2, 3), keepdim=True)
    return F.relu((weights * fmap).sum(1)).detach(), logits.detach()


def to_image(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) grid upsampled (bilinear) to ``size`` and divided by its maximum (an all-zero map stays zero)."""
    up = F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
    top = float(up.max())
    return (up / top if top > 0 else up).numpy()


def explain(model: PefsModel, x: torch.Tensor,
            target: int | Sequence[int] | None = None) -> list[list[Explanation]]:
    """Every map of :func:`methods_for` for each image of ``x`` (B, C, H, W, preprocessed as the model expects):
    one list of :class:`Explanation` per image. ``target`` picks Grad-CAM's class, one for all images or one per
    image (default: each image's prediction)."""
    bb = model.backbone
    methods = methods_for(bb)
    model.eval()
    size = (int(x.shape[-2]), int(x.shape[-1]))
    targets = None if target is None else (torch.full((len(x),), int(target), dtype=torch.long)
                                           if isinstance(target, int) else torch.tensor(list(target)))
    if methods == (GRAD_CAM,):
        cam, logits = grad_cam(model, x, targets)
        grids = {GRAD_CAM: cam}
    else:
        grids, logits = attention_maps(model, x)
    probs = logits.softmax(-1)
    label = logits.argmax(-1)
    out = []
    for i in range(len(x)):
        tgt = int(label[i]) if targets is None else int(targets[i])
        out.append([Explanation(m, grids[m][i].numpy(), to_image(grids[m][i], size), int(label[i]),
                                float(probs[i, label[i]]), tgt) for m in methods])
    return out


def decode(model: PefsModel, paths: Sequence[Path]) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """The images as the model sees them (its saved eval preprocessing), stacked (empty when none decodes); the
    indices of those decoded; (path, reason) of each that cannot be decoded."""
    images = ImageSet([], np.zeros(len(paths), dtype=int), [str(p) for p in paths], lambda i: paths[i])
    ok, xs, failed = decode_each(images, range(len(paths)), saved_transform(model))
    return (torch.stack(xs) if xs else torch.empty(0, *model.preprocessing["input_size"])), ok, failed


def decode_all(model: PefsModel, paths: Sequence[Path]) -> torch.Tensor:
    """:func:`decode` of every image; a PefsError names the first that cannot be decoded."""
    x, _, failed = decode(model, paths)
    if failed:
        raise PefsError(failed[0][1])
    return x


def to_display(model: PefsModel, x: torch.Tensor) -> torch.Tensor:
    """Preprocessed images back to (B, H, W, 3) RGB in [0, 1] (the normalisation undone)."""
    mean = torch.tensor(model.preprocessing.get("mean", (0.0, 0.0, 0.0))).view(1, -1, 1, 1)
    std = torch.tensor(model.preprocessing.get("std", (1.0, 1.0, 1.0))).view(1, -1, 1, 1)
    img = (x * std + mean).clamp(0, 1)
    return (img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img).permute(0, 2, 3, 1)
