"""``vpt``: visual prompt tuning. Learned prompts steer a frozen backbone; only the prompts (and head) train.

``mode=shallow`` (Jia et al. 2022): M prompt tokens inserted after the class/prefix tokens before block 0 and
carried through every block. ``mode=deep``: fresh M tokens per block, each replacing the previous block's
prompt outputs. Prompt tokens are removed after the last block, so the final norm and the pooling (class
token, or the mean over the patch tokens) see exactly the original layout. Token prompts need a backbone whose
description has a token layout (timm and ``transformers`` ViTs) and change attention from the start.

``mode=pixel`` (Bahng et al. 2022) works on any backbone, CNNs included: a learned frame ``pad`` pixels wide
added to the image border in front of the stem. It is learned at the backbone's input size and resized to
other image sizes; it starts at zero, so the model starts equal to the backbone.

The default ``mode=auto`` is ``deep`` on a transformer whose token layout pefs knows and ``pixel`` on any other
backbone (CNNs), as the README's strategy table promises; the mode it became is :meth:`Vpt.mode_for`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import TokenLayout, replace_module
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import RerunBlocks, Wrapped, reference_device_dtype, vit_blocks
from pefs.strategies.registry import register

#: Bahng et al. pad 30 pixels on 224-pixel images; the default keeps that fraction at other sizes
DEFAULT_PAD_FRACTION = 30 / 224


class PromptedBlocks(RerunBlocks):
    """ViT blocks with M prompt tokens after the prefix tokens: shallow (one set) or deep (one set per block)."""

    def __init__(self, blocks: nn.Module, prompts: torch.Tensor, num_prefix_tokens: int,
                 layout: TokenLayout | None = None) -> None:
        super().__init__(blocks, layout)
        self.prompts = nn.Parameter(prompts)  # (1 or num_blocks, M, D)
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, m, b = self.num_prefix_tokens, self.prompts.shape[1], x.shape[0]
        prompts = self.prompts.to(x.dtype)
        x = torch.cat([x[:, :n], prompts[0].expand(b, -1, -1), x[:, n:]], dim=1)
        for i, block in enumerate(self.block_list()):
            if i > 0 and len(prompts) > 1:
                x = torch.cat([x[:, :n], prompts[i].expand(b, -1, -1), x[:, n + m:]], dim=1)
            x = self.run_block(block, x)
        return torch.cat([x[:, :n], x[:, n + m:]], dim=1)


class PixelPrompt(Wrapped):
    """A learned frame added to the image border before ``base_layer`` (the stem) sees it."""

    def __init__(self, base_layer: nn.Module, size: tuple[int, int], pad: int) -> None:
        super().__init__(base_layer)
        h, w = size
        self.pad_top = nn.Parameter(torch.zeros(3, pad, w))
        self.pad_bottom = nn.Parameter(torch.zeros(3, pad, w))
        self.pad_left = nn.Parameter(torch.zeros(3, h - 2 * pad, pad))
        self.pad_right = nn.Parameter(torch.zeros(3, h - 2 * pad, pad))

    def frame(self) -> torch.Tensor:
        """The (3, H, W) prompt at the size it was learned at; zero inside the frame."""
        p = self.pad_left.shape[2]
        inner = self.pad_top.new_zeros(3, self.pad_left.shape[1], self.pad_top.shape[2] - 2 * p)
        middle = torch.cat([self.pad_left, inner, self.pad_right], dim=2)
        return torch.cat([self.pad_top, middle, self.pad_bottom], dim=1)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        frame = self.frame().to(x.dtype)
        if frame.shape[1:] != x.shape[2:]:
            # antialiased, so that shrinking still lets every learned pixel reach the image (and get gradient)
            frame = F.interpolate(frame[None], size=x.shape[2:], mode="bilinear", align_corners=False,
                                  antialias=True)[0]
        return self.base_layer(x + frame, *args, **kwargs)


class _Abort(Exception):
    pass


@torch.no_grad()
def find_stem(bb: Backbone) -> str:
    """Name of the first layer of the model (outermost first) that is called with the image itself."""
    device, dtype = reference_device_dtype(bb.model)
    x = torch.zeros(1, *bb.input_size, device=device, dtype=dtype)
    found: list[str] = []

    def hook(name: str, args: tuple) -> None:
        if args and args[0] is x:
            found.append(name)
            raise _Abort

    hooks = [m.register_forward_pre_hook(lambda _, a, n=n: hook(n, a)) for n, m in bb.model.named_modules() if n]
    was_training = bb.model.training
    bb.model.eval()
    try:
        bb.model(x)
    except _Abort:
        pass
    finally:
        for hk in hooks:
            hk.remove()
        bb.model.train(was_training)
    if not found:
        raise PefsError(f"vpt mode='pixel' adds its prompt to the input of the first layer, but no layer "
                        f"of {bb.name} receives the image unchanged; use strategy 'adapter' or 'lora' instead")
    return found[0]


@dataclass
class VptConfig(StrategyConfig):
    #: shallow / deep: prompt tokens (transformers); pixel: a learned padding frame (any backbone); auto: deep on
    #: a transformer with a known token layout, pixel elsewhere (CNNs)
    mode: Literal["auto", "shallow", "deep", "pixel"] = "auto"
    #: prompt tokens per set (token modes)
    tokens: int = 10
    #: frame width in pixels at the backbone's input size (pixel mode); none = 30/224 of the image side
    pad: int | None = None

    def validate(self, strategy: str) -> None:
        if self.mode not in ("auto", "shallow", "deep", "pixel"):
            raise PefsError(f"option mode={self.mode!r} of strategy {strategy!r} must be 'auto', 'shallow', 'deep' or "
                            "'pixel'")
        if self.tokens < 1:
            raise PefsError(f"option tokens={self.tokens} of strategy {strategy!r} must be >= 1")
        if self.pad is not None and self.pad < 1:
            raise PefsError(f"option pad={self.pad} of strategy {strategy!r} must be >= 1")


@register
class Vpt(Strategy):
    name = "vpt"
    summary = "visual prompts: tokens for ViTs (shallow/deep), or a learned pixel frame for any backbone (pixel)"
    config_class = VptConfig
    identity_at_init = False  # token prompts change attention; pixel mode (zero frame) starts as the backbone

    def __init__(self, config: StrategyConfig | None = None) -> None:
        super().__init__(config)
        self.identity_at_init = self.config.mode == "pixel"  # type: ignore[misc, attr-defined]

    def mode_for(self, bb: Backbone) -> str:
        """The mode this strategy runs in on ``bb``: the one named, or for ``auto`` deep token prompts on a
        transformer whose token layout pefs knows and the pixel prompt on any other backbone."""
        mode = self.config.mode  # type: ignore[attr-defined]
        if mode != "auto":
            return mode
        return "deep" if bb.kind == "transformer" and bb.tokens is not None else "pixel"

    def check(self, bb: Backbone) -> None:
        mode = self.mode_for(bb)
        if mode != "pixel":
            vit_blocks(bb, f"vpt mode={mode!r} (token prompts)",
                       "mode=pixel (a learned pixel-space prompt), or strategy 'adapter' or 'ssf'")

    def apply(self, bb: Backbone) -> None:
        c: VptConfig = self.config  # type: ignore[assignment]
        mode = self.mode_for(bb)
        self.identity_at_init = mode == "pixel"  # type: ignore[misc]  (auto is known only now, on the backbone)
        device, dtype = reference_device_dtype(bb.model)
        if mode == "pixel":
            _, h, w = bb.input_size
            pad = c.pad if c.pad is not None else max(1, round(min(h, w) * DEFAULT_PAD_FRACTION))
            if 2 * pad >= min(h, w):
                raise PefsError(f"option pad={pad} of strategy 'vpt' leaves no image inside the frame at "
                                f"{h}x{w}; valid: 1..{(min(h, w) - 1) // 2}")
            stem = find_stem(bb)
            new = PixelPrompt(bb.model.get_submodule(stem), (h, w), pad).to(device=device, dtype=dtype)
            replace_module(bb.model, stem, new)
            set_trainable([new.pad_top, new.pad_bottom, new.pad_left, new.pad_right])
            return
        blocks = vit_blocks(bb, f"vpt mode={mode!r}", "mode=pixel")
        patch = bb.tokens.patch_size  # type: ignore[union-attr]
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + bb.token_width))  # VPT: xavier-uniform over a patch
        sets = len(blocks) if mode == "deep" else 1
        prompts = torch.empty(sets, c.tokens, bb.token_width, device=device, dtype=dtype).uniform_(-bound, bound)
        new_blocks = PromptedBlocks(blocks, prompts, bb.tokens.num_prefix, bb.tokens)  # type: ignore[union-attr]
        replace_module(bb.model, bb.tokens.container, new_blocks)  # type: ignore[union-attr]
        set_trainable([new_blocks.prompts])

    def checkpointing_target(self, bb: Backbone) -> nn.Module | None:
        """Token prompts rerun the ViT's blocks inside their own container, which checkpoints block by block."""
        container = bb.block_container()
        return container if isinstance(container, RerunBlocks) else None
