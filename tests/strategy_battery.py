"""The checks every tuning strategy must pass, on one tiny random model per family.

A strategy's test file states *what it must train*, computed on its own from the model (never by asking
the strategy), and runs the battery::

    from tests.strategy_battery import FAMILIES, check_strategy, names_with

    def expect_adapter(model, original):          # parameter names (besides the head) that must train
        return names_with(model, ".adapter.")

    @pytest.mark.parametrize("family", FAMILIES)
    def test_adapter_battery(family, tmp_path):
        check_strategy("adapter", family, expect_adapter, tmp_path)

The battery checks (a) exactly the expected parameters and the head have ``requires_grad``; (b) where the
strategy claims ``identity_at_init``, features equal the untouched backbone's; (c) one optimiser step changes
only trainable tensors, the head and at least one strategy tensor among them; (d) ``save`` then
``PefsModel.load`` onto a copy of the same random backbone reproduces predictions exactly; (e) mergeable
strategies merge to the original module tree with outputs equal within 1e-5, others refuse to merge.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from pefs.backbones import Backbone, load
from pefs.errors import PefsError
from pefs.model.wrap import PefsModel, wrap
from tests.conftest import TINY_MODELS

FAMILIES = tuple(TINY_MODELS)
IMG = 32
NUM_CLASSES = 3
#: expected-trainable function: (wrapped model, untouched copy of its backbone) -> parameter names (head excluded)
Expected = Callable[[PefsModel, Backbone], set[str]]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models gain nothing from more, and on a busy machine the idle threads'
    spin-waits make every forward pass 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _pristine(family: str) -> Backbone:
    name, kwargs = TINY_MODELS[family]
    torch.manual_seed(0)
    bb = load(name, pretrained=False, **kwargs)
    liven(bb.model)
    bb.model.eval()
    return bb


def liven(model: nn.Module, seed: int = 0) -> None:
    """Give random-init models weights under which every parameter matters: timm zero-initialises the last
    norm of ResNet blocks and scales ConvNeXt blocks by 1e-6, which would hide a strategy's mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # norm scales, layer scales
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.75 + 0.5 * torch.rand(b.shape, generator=g))


def tiny_backbone(family: str) -> Backbone:
    """A fresh copy of the family's tiny random backbone (the same weights every call)."""
    return copy.deepcopy(_pristine(family))


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


# -- helpers for expected-trainable functions ---------------------------------------------------------------

def param_names(model: PefsModel) -> set[str]:
    return {n for n, _ in model.net.named_parameters()}


def head_names(model: PefsModel) -> set[str]:
    return {n for n in param_names(model) if n.startswith(model.backbone.head_name + ".")}


def names_with(model: PefsModel, *markers: str) -> set[str]:
    """Parameter names outside the head that contain any of ``markers``."""
    return {n for n in param_names(model) - head_names(model) if any(m in n for m in markers)}


def modules_in_blocks(original: Backbone, types: tuple[type, ...]) -> list[str]:
    """Names of modules of ``types`` inside (or being) the original backbone's blocks."""
    return [n for n, m in original.model.named_modules()
            if isinstance(m, types) and any(n == b or n.startswith(b + ".") for b in original.block_names)]


def under(model: PefsModel, modules: list[str], marker: str) -> set[str]:
    """Parameter names containing ``marker`` below each of ``modules``; fails when one of them has none
    (a layer the strategy should have adapted but did not)."""
    names = param_names(model)
    out: set[str] = set()
    for m in modules:
        found = {n for n in names if n.startswith(m + ".") and marker in n[len(m):]}
        assert found, f"expected {marker!r} parameters under {m}, found none"
        out |= found
    return out


def union(*fns: Expected) -> Expected:
    """The expected set of a composition ``a+b``: what ``a`` trains plus what ``b`` trains."""
    return lambda model, original: set().union(*(f(model, original) for f in fns))


# -- the checks ---------------------------------------------------------------------------------------------

def trainable_names(model: PefsModel) -> set[str]:
    return {n for n, p in model.net.named_parameters() if p.requires_grad}


def check_trainable(model: PefsModel, original: Backbone, expected: Expected) -> None:
    want = expected(model, original) | head_names(model)
    got = trainable_names(model)
    assert got == want, (f"{model.spec}: trains {len(got - want)} unexpected tensors {sorted(got - want)[:4]}, "
                         f"misses {len(want - got)} {sorted(want - got)[:4]}")
    n = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    assert model.param_report()["trainable"] == n


def check_identity(model: PefsModel, original: Backbone, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), original.features(x), atol=1e-5, rtol=1e-5)


def check_step(model: PefsModel, x: torch.Tensor) -> None:
    """One SGD step: only trainable tensors move, the head and at least one strategy tensor among them."""
    before = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    trainable = trainable_names(model)
    opt = torch.optim.SGD([p for p in model.net.parameters() if p.requires_grad], lr=0.5)
    loss = nn.functional.cross_entropy(model(x), torch.arange(len(x)) % NUM_CLASSES)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    changed = {n for n, p in model.net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= trainable, f"{model.spec}: frozen tensors changed: {sorted(changed - trainable)[:4]}"
    heads = head_names(model)
    assert changed & heads, f"{model.spec}: the head did not train"
    if trainable - heads:
        assert changed - heads, f"{model.spec}: no strategy tensor changed (no gradient reaches them)"


def check_roundtrip(model: PefsModel, original: Backbone, x: torch.Tensor, directory: Path) -> None:
    from safetensors.torch import load_file

    model.save(directory)
    buffers = set(model.net.state_dict()) - set(dict(model.net.named_parameters()))  # BN statistics are saved too
    assert set(load_file(str(directory / "adapter.safetensors"))) == trainable_names(model) | buffers
    loaded = PefsModel.load(directory, backbone=copy.deepcopy(original)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)), f"{model.spec}: reloaded predictions differ"


def perturb(model: PefsModel, scale: float = 0.05, seed: int = 1) -> None:
    """Move every trainable tensor away from its init, so merging zero-initialised updates is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def check_merge(model: PefsModel, original: Backbone, x: torch.Tensor) -> None:
    if not all(s.mergeable for s in model.strategies):
        try:
            model.merge()
        except PefsError as e:
            assert any(s.name in str(e) for s in model.strategies if not s.mergeable)
        else:
            raise AssertionError(f"{model.spec} is not mergeable but merge() did not refuse")
        return
    perturb(model)
    with torch.no_grad():
        y = model(x)
        model.merge()
        torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)
    head = original.head_name
    strip = {n for n, _ in original.model.named_modules() if n != head and not n.startswith(head + ".")}
    now = {n for n, _ in model.net.named_modules() if n != head and not n.startswith(head + ".")}
    assert now == strip, f"{model.spec}: merge left extra modules {sorted(now - strip)[:4]}"


def check_strategy(spec: str, family: str | Backbone, expected: Expected, tmp_path: Path, **options) -> PefsModel:
    """Run the whole battery for ``spec`` on the tiny ``family`` model (or on a copy of a given Backbone that
    takes 32x32 images); returns the (merged) model."""
    with one_thread():
        original = tiny_backbone(family) if isinstance(family, str) else copy.deepcopy(family)
        x = images()
        model = wrap(copy.deepcopy(original), spec, num_classes=NUM_CLASSES, **options).eval()
        check_trainable(model, original, expected)
        if all(s.identity_at_init for s in model.strategies):
            check_identity(model, original, x)
        check_step(model, x)
        check_roundtrip(model, original, x, tmp_path / "saved")
        check_merge(model, original, x)
    return model
