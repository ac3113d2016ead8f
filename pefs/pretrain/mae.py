"""MAE pretraining (He et al. 2022): the encoder sees only the visible patch tokens; a light decoder reconstructs
the masked ones.

Each image keeps a random ``1 - mask_ratio`` of its patch tokens (:func:`pefs.backbones.token_mask.keep_indices`,
the dropped tokens never enter the blocks: :func:`~pefs.backbones.token_mask.masked_tokens`). The decoder embeds the
visible tokens, puts a shared learned mask token at every masked place, adds learned position embeddings, runs two
small pre-norm transformer blocks and predicts each patch's pixels. The target is each patch's normalised pixels
(MAE's ``norm_pix_loss``: per-patch mean 0, variance 1) and the mean squared error counts masked patches only.
"""

from __future__ import annotations

import torch
from torch import nn

from pefs.backbones import Backbone, token_mask
from pefs.config.pretrain import OBJECTIVES
from pefs.errors import PefsError

DECODER_DEPTH = 2


def check_mae(bb: Backbone) -> None:
    """MAE needs a transformer that can drop patch tokens before its blocks; anything else is one PefsError."""
    if not token_mask.supports_token_masks(bb):
        valid = [o for o in OBJECTIVES if o != "mae"]
        raise PefsError(f"--objective mae drops patch tokens before a transformer's blocks; {bb.name} is a {bb.kind} "
                        f"model ({bb.family}) that cannot: use --objective {' or '.join(valid)}")


def patchify(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) images -> (B, patches, p*p*C) in the order of the patch tokens (row by row)."""
    b, c, h, w = x.shape
    gh, gw = grid
    ph, pw = h // gh, w // gw
    return x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, ph * pw * c)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches (``masked`` 1) of the per-patch mean squared error against the per-patch
    normalised ``target``; visible patches count for nothing."""
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * masked).sum() / masked.sum()


class MaskedAutoencoder(nn.Module):
    """``forward(images)`` -> MAE reconstruction loss on the masked patches."""

    views = 1
    augment = "crop"

    def __init__(self, bb: Backbone, n_classes: int, cfg) -> None:
        super().__init__()
        check_mae(bb)
        self.bb, self.trunk, self.ratio = bb, bb.model, float(cfg.mask_ratio)
        self.grid = token_mask.grid_size(bb)
        _, h, w = bb.input_size
        n, d = self.grid[0] * self.grid[1], bb.token_width
        width = max(32, d // 2 // 8 * 8)
        self.embed = nn.Linear(d, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4 if width % 4 == 0 else 1, 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, DECODER_DEPTH, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.predict = nn.Linear(width, (h // self.grid[0]) * (w // self.grid[1]) * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def reconstruct(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted patches (B, n, p*p*3), target patches and the mask (B, n; 1 = masked) for ``keep``."""
        tokens = token_mask.masked_tokens(self.bb, x, keep)
        keep = keep.to(tokens.device)
        visible = self.embed(tokens[:, tokens.shape[1] - keep.shape[1]:])  # the patch tokens, prefix dropped
        b, n = len(x), self.pos.shape[1]
        full = self.mask_token.to(visible.dtype).expand(b, n, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, full.shape[-1]), visible)
        pred = self.predict(self.norm(self.decoder(full + self.pos)))
        masked = torch.ones(b, n, device=pred.device).scatter(1, keep, 0.0)
        return pred, patchify(x, self.grid), masked

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch under fresh random masks; ``labels`` are never read (self-supervised)."""
        keep = token_mask.keep_indices(len(x), self.grid, self.ratio, "random", self.generator)
        return masked_loss(*self.reconstruct(x, keep))
