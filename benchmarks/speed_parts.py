"""The reference's parts of a timm model for benchmarks/speed.py: its classifier, its blocks in order, and its frozen
prefix split from the rest, so the fair linear-probe and last-k references compute the frozen part once per image
(what a PyTorch user who caches features writes) while the plain loop trains the rest.

torch is imported lazily: speed.py's parent process only orchestrates.
"""

from __future__ import annotations

from collections.abc import Callable


def classifier(model):
    """A timm model's classifier (``get_classifier()``), else its ``head``."""
    get = getattr(model, "get_classifier", None)
    return get() if get is not None else model.head


#: reference kinds that compute the frozen part once per image (what a PyTorch user writes); "-naive" kinds rerun
#: it every training step, as a plain loop over the whole network does
CACHED = ("linear", "last-k")


def flat_blocks(model) -> list:
    """A timm model's blocks in order (EfficientNet's stages flattened)."""
    from torch import nn

    return [b for stage in model.blocks for b in (stage if isinstance(stage, nn.Sequential) else [stage])]


def as_module(model, forward: Callable):
    """``forward(model, x)`` as a module holding ``model`` (its parameters, its classifier), so the plain loop can
    train and evaluate a part of the network as it does the whole."""
    from torch import nn

    class Part(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def get_classifier(self):
            return classifier(self.model)

        def forward(self, x):
            return forward(self.model, x)

    return Part()


def split_frozen(model, kind: str, k: int):
    """(frozen prefix, the rest) of a timm model: for ``linear`` the pooled features and the classifier, for
    ``last-k`` everything before the last ``k`` blocks and the blocks, neck and head after it (EfficientNet- and
    ViT-style timm models; another layout is refused, so no row claims a cache it does not have)."""
    from torch import nn

    if kind == "linear":
        return (as_module(model, lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)),
                as_module(model, lambda m, x: classifier(m)(x)))
    blocks = flat_blocks(model)
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "conv_head", "bn2")):
        def prefix(m, x):
            return nn.Sequential(*blocks[:-k])(m.bn1(m.conv_stem(x)))

        def rest(m, x):
            return m.forward_head(m.bn2(m.conv_head(nn.Sequential(*blocks[-k:])(x))))
    elif all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "norm_pre", "norm")):
        def prefix(m, x):
            return nn.Sequential(*blocks[:-k])(m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))))

        def rest(m, x):
            return m.forward_head(m.norm(nn.Sequential(*blocks[-k:])(x)))
    else:
        raise RuntimeError(f"no cached last-k reference for {type(model).__name__}: run it with the naive one")
    return as_module(model, prefix), as_module(model, rest)
