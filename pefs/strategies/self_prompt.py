"""``self-prompt`` (ours): prompts generated from the image itself, rather than VPT's fixed learned vectors.

A small generator -- M learned queries cross-attending (one head, width ``dim``) over the image's own features
at the output of block ``source`` -- produces M instance-conditioned prompts for the later ``targets`` blocks.

* Transformers (timm and ``transformers`` ViTs, any encoder whose description names its blocks' q/k/v, output
  projection and norms): the prompts are projected to the model width D. Each target block gets a parallel
  attention branch from its own (normalised) tokens to the prompts, through the block's frozen q/k/v and output
  projections, added to the block's output times a per-head gate that starts at zero (LLaMA-Adapter's
  zero-init gating).
* CNNs: the generator reads the source feature map's positions as tokens; each target block mixes the M
  prompts with its own softmax weights and maps the mix to a per-channel scale and shift (FiLM) of its output,
  ``y * (1 + gamma) + beta``, through a zero-initialised linear layer.

Either way the wrapped model starts exactly equal to the backbone. The design is ablatable through its
options: ``prompts`` (M), ``source`` (which block's features feed the generator; default ``len(blocks) // 4``),
``targets`` (which later blocks read the prompts; default every block after the source) and ``dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pefs.backbones import Backbone
from pefs.backbones.layout import BlockRoles, TokenLayout, attend_to, replace_module
from pefs.errors import PefsError
from pefs.strategies.base import Strategy, StrategyConfig, set_trainable
from pefs.strategies.common import RerunBlocks, Wrapped, probe_shapes, reference_device_dtype, select_blocks, vit_blocks
from pefs.strategies.registry import register


class PromptGenerator(nn.Module):
    """M learned queries attend over (B, N, C) tokens and give (B, M, out_dim) prompts."""

    def __init__(self, in_dim: int, dim: int, prompts: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.queries = nn.Parameter(torch.randn(prompts, dim) * 0.02)
        self.kv = nn.Linear(in_dim, 2 * dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(self.norm(tokens)).chunk(2, dim=-1)
        q = self.queries.to(k.dtype).expand(tokens.shape[0], -1, -1)
        return self.out(F.scaled_dot_product_attention(q, k, v))


class SelfPromptedBlocks(RerunBlocks):
    """ViT blocks whose ``targets`` read prompts generated from the output of block ``source``."""

    def __init__(self, blocks: nn.Module, generator: PromptGenerator, source: int, targets: list[int],
                 roles: BlockRoles, layout: TokenLayout | None = None) -> None:
        super().__init__(blocks, layout)
        heads = roles.num_heads
        self.roles = roles
        self.generator = generator
        self.gates = nn.Parameter(torch.zeros(len(targets), heads))
        self.source = source
        self.targets = {t: j for j, t in enumerate(targets)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prompts = None
        for i, block in enumerate(self.block_list()):
            y = self.run_block(block, x)
            if i in self.targets:
                y = y + attend_to(block, self.roles, x, prompts, self.gates[self.targets[i]])
            x = y
            if i == self.source:
                prompts = self.generator(x)
        return x


class PromptSource(Wrapped):
    """A CNN block whose output feature map feeds the generator; the prompts wait here for the target blocks."""

    def __init__(self, base_layer: nn.Module, generator: PromptGenerator) -> None:
        super().__init__(base_layer)
        self.generator = generator
        self.prompts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        self.prompts = self.generator(y.flatten(2).transpose(1, 2))
        return y


class FilmTarget(Wrapped):
    """A CNN block whose output is scaled and shifted per channel from a mix of the generated prompts."""

    def __init__(self, base_layer: nn.Module, source: PromptSource, prompts: int, dim: int, channels: int,
                 last: bool) -> None:
        super().__init__(base_layer)
        self.mix = nn.Parameter(torch.zeros(prompts))
        self.film = nn.Linear(dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self._source = [source]  # a plain reference: the source is registered where it sits
        self.last = last

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        source = self._source[0]
        if source.prompts is None:
            raise RuntimeError("self-prompt target block ran before its source block")
        mixed = torch.einsum("m,bmd->bd", self.mix.softmax(0).to(y.dtype), source.prompts.to(y.dtype))
        gamma, beta = self.film(mixed).to(y.dtype)[:, :, None, None].chunk(2, dim=1)
        if self.last:  # drop the reference so a finished forward leaves no graph behind (deepcopy-safe)
            source.prompts = None
        return y * (1 + gamma) + beta


@dataclass
class SelfPromptConfig(StrategyConfig):
    #: number of generated prompts M
    prompts: int = 8
    #: block whose output feeds the generator (negative from the end); none = len(blocks) // 4
    source: int | None = None
    #: blocks that read the prompts (after the source); empty = every block after it
    targets: tuple[int, ...] = ()
    #: generator width (attention width of its queries)
    dim: int = 64

    def validate(self, strategy: str) -> None:
        for key in ("prompts", "dim"):
            if getattr(self, key) < 1:
                raise PefsError(f"option {key}={getattr(self, key)} of strategy {strategy!r} must be >= 1")


@register
class SelfPrompt(Strategy):
    name = "self-prompt"
    summary = "instance prompts generated from an early block's features, read by later blocks (zero-init gated)"
    config_class = SelfPromptConfig
    kinds = ("transformer", "cnn")

    def plan(self, bb: Backbone) -> tuple[int, list[int]]:
        """The source block index and the target block indices, validated against ``bb``."""
        c: SelfPromptConfig = self.config  # type: ignore[assignment]
        n = len(bb.block_names)
        source = select_blocks(bb, (c.source if c.source is not None else n // 4,), self.name, "source")[0]
        if source >= n - 1:
            raise PefsError(f"option source={c.source} of strategy 'self-prompt' leaves no block after it to read "
                            f"the prompts ({bb.name} has {n} blocks); valid sources: 0..{n - 2}")
        targets = select_blocks(bb, c.targets, self.name, "targets") if c.targets else list(range(source + 1, n))
        early = [t for t in targets if t <= source]
        if early:
            raise PefsError(f"option targets={','.join(map(str, c.targets))} of strategy 'self-prompt' includes "
                            f"block {early[0]}, which runs before the prompts exist (source block {source}); "
                            f"valid targets: {source + 1}..{n - 1}")
        return source, targets

    def apply(self, bb: Backbone) -> None:
        c: SelfPromptConfig = self.config  # type: ignore[assignment]
        source, targets = self.plan(bb)
        device, dtype = reference_device_dtype(bb.model)
        if bb.kind == "transformer":
            blocks = vit_blocks(bb, "self-prompt on a transformer", "strategy 'adapter' or 'lora'")
            if bb.roles is None:
                raise PefsError(f"self-prompt reuses each block's attention (its norm, q/k/v and output projection); "
                                f"pefs does not know where those are in the blocks of {bb.name} "
                                f"({type(bb.blocks[0]).__name__}): use strategy 'adapter' or 'lora'")
            generator = PromptGenerator(bb.token_width, c.dim, c.prompts, bb.token_width)
            new = SelfPromptedBlocks(blocks, generator, source, targets, bb.roles, bb.tokens).to(device=device,
                                                                                                   dtype=dtype)
            replace_module(bb.model, bb.tokens.container, new)  # type: ignore[union-attr]
            set_trainable(list(new.generator.parameters()) + [new.gates])
            return
        names = [bb.block_names[i] for i in (source, *targets)]
        shapes = probe_shapes(bb, names)
        bad = [n for n in names if n not in shapes or len(shapes[n][1]) != 4]
        if bad:
            raise PefsError(f"self-prompt needs CNN blocks that output (B, C, H, W) feature maps; block {bad[0]} "
                            f"of {bb.name} gave {tuple(shapes[bad[0]][1]) if bad[0] in shapes else 'nothing'}")
        generator = PromptGenerator(shapes[names[0]][1][1], c.dim, c.prompts, c.dim)
        src = PromptSource(bb.model.get_submodule(names[0]), generator).to(device=device, dtype=dtype)
        replace_module(bb.model, names[0], src)
        trainable = list(generator.parameters())
        for j, name in enumerate(names[1:]):
            target = FilmTarget(bb.model.get_submodule(name), src, c.prompts, c.dim, shapes[name][1][1],
                                last=j == len(targets) - 1).to(device=device, dtype=dtype)
            replace_module(bb.model, name, target)
            trainable += [target.mix, *target.film.parameters()]
        set_trainable(trainable)

    def checkpointing_target(self, bb: Backbone) -> nn.Module | None:
        """Self-prompting reruns the ViT's blocks inside their own container, which checkpoints block by block."""
        container = bb.block_container()
        return container if isinstance(container, RerunBlocks) else None
