"""``wrap``: a backbone plus strategies -> a model in which only the strategies' parameters and the head train.

This is pefs' ``get_peft_model``: one call, any timm name or ``nn.Module``, any registered strategy or
``"a+b"`` composition. The result counts its trainable parameters, saves and loads only its own tensors,
and merges into the backbone where the strategies allow.
"""

from __future__ import annotations

import contextlib
import typing
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pefs import backbones
from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.model import directory as pefs_io
from pefs.strategies import Strategy, build

if TYPE_CHECKING:
    from pefs.model.inference import Predictions

FORMAT_VERSION = pefs_io.FORMAT_VERSION


class PefsModel(nn.Module):
    """A backbone tuned by one or more strategies. ``forward`` gives logits; ``features`` pooled features."""

    def __init__(self, bb: Backbone, strategies: list[Strategy], spec: str, num_classes: int,
                 backbone_params: int, load_info: dict[str, Any],
                 base_params: list[tuple[str, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.net = bb.model
        self.backbone = bb
        self.strategies = strategies
        self.spec = spec
        self.num_classes = num_classes
        self.backbone_params = backbone_params
        self.load_info = load_info
        self.merged = False
        #: class names in label order, the eval preprocessing and the tune config: saved in the model directory
        self.class_names: list[str] | None = None
        self.preprocessing: dict[str, Any] = pefs_io.preprocessing(bb.data_config)
        self.tune_config: dict[str, Any] | None = None
        self._base_params = base_params or []
        self._base_fingerprint: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (B, width)."""
        return self.backbone.features(x)

    @property
    def head(self) -> nn.Module:
        return self.backbone.head

    @property
    def frozen_prefix(self) -> bool:
        """True when only the head trains, so the trunk's features may be computed once and cached."""
        return all(s.frozen_prefix for s in self.strategies)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The tensors this model owns beyond the backbone: trainable parameters (by name)."""
        return {n: p.detach() for n, p in self.net.named_parameters() if p.requires_grad}

    def param_report(self) -> dict[str, Any]:
        """Trainable parameter count, its % of the backbone (head excluded), and a per-module breakdown."""
        head_prefix = self.backbone.head_name + "."
        breakdown: dict[str, int] = defaultdict(int)
        trainable = head = 0
        for n, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            trainable += p.numel()
            if n.startswith(head_prefix):
                head += p.numel()
                breakdown["head"] += p.numel()
            else:
                breakdown[_group(n, self.backbone.block_names)] += p.numel()
        return {
            "trainable": trainable, "trainable_without_head": trainable - head, "head": head,
            "backbone_params": self.backbone_params,
            "percent_of_backbone": 100.0 * trainable / max(self.backbone_params, 1),
            "breakdown": dict(sorted(breakdown.items())),
        }

    @property
    def base_fingerprint(self) -> str:
        """Hash of the frozen backbone weights the strategies were applied to (head and trained tensors left out)."""
        if self._base_fingerprint is None:
            self._base_fingerprint = pefs_io.weights_fingerprint(self._base_params)
        return self._base_fingerprint

    def base_weights(self) -> list[tuple[str, torch.Tensor]]:
        """The frozen backbone weights the strategies were applied to, named as before any strategy (what
        :attr:`base_fingerprint` hashes; after ``merge()`` they hold the merged values)."""
        return list(self._base_params)

    def predict(self, images: Any, batch_size: int = 16, precision: str | None = None) -> Predictions:
        """Class names and probabilities for ``images`` (PIL images, paths, or an ImageSet), batch by batch;
        ``precision`` (auto, no, bf16, fp16) overrides the inference precision the model was tuned with."""
        from pefs.model.inference import predict_images

        return predict_images(self, images, batch_size=batch_size, precision=precision)

    def merge(self) -> PefsModel:
        """Fold every strategy into the backbone weights (in place); refuses strategies that cannot merge."""
        bad = [s.name for s in self.strategies if not s.mergeable]
        if bad:
            raise PefsError(f"cannot merge {', '.join(bad)}: these strategies add computation that has no "
                            "equivalent backbone weights; mergeable ones: "
                            + ", ".join(sorted(n for n, c in _all_strategies().items() if c.mergeable)))
        _ = self.base_fingerprint  # of the weights before folding: a merged save still names its base
        for s in sorted(self.strategies, key=lambda s: s.merge_order):
            s.merge(self.backbone)
        self.merged = True
        return self

    @contextlib.contextmanager
    def merged_view(self) -> typing.Iterator[None]:
        """Inside the block, strategies that fold into weights (LoRA, peft tuners) are merged, so inference
        runs at the backbone's own cost (benchmarks/speed.md measures what merging saves);
        on exit they are unmerged and the base weights restored exactly. Others keep running as they are."""
        with contextlib.ExitStack() as stack:
            if not self.merged:
                for s in sorted(self.strategies, key=lambda s: s.merge_order):
                    stack.enter_context(s.merged_view(self.backbone))
            yield

    def save(self, directory: str | Path) -> Path:
        """Write a model directory (:mod:`pefs.model.directory`): tensors, config, class names,
        preprocessing, base fingerprint."""
        return pefs_io.save_model(self, directory)

    @classmethod
    def load(cls, directory: str | Path, backbone: str | nn.Module | Backbone | None = None,
             allow_different_base: bool = False) -> PefsModel:
        """Rebuild a saved model exactly (same backbone and weights, every tensor present) or refuse with the
        reason (:mod:`pefs.model.directory` describes the directory and its checks). A refusal leaves a
        ``backbone`` module the caller passed as it was: structure, weights and ``requires_grad`` flags."""
        d = Path(directory)
        cfg = pefs_io.read_config(d)
        saved_bb = cfg["backbone"]
        if backbone is None and not saved_bb.get("rebuildable", True):
            raise PefsError(f"{str(d)!r} was trained on your own module {saved_bb['name']!r}, which pefs cannot "
                            f"rebuild by name; pass it: PefsModel.load({str(d)!r}, backbone=<the same module, same "
                            "weights>)")
        check_not_wrapped(backbone)
        tensors = pefs_io.read_tensors(d, cfg)  # present and intact, before anything is built
        base = pefs_io.read_tensors(d, cfg, "base") if backbone is None and saved_bb.get("base_saved") else None
        source = backbone if backbone is not None else saved_bb["name"]
        load_kwargs = dict(cfg["load"]) if backbone is None else _module_kwargs(backbone, cfg)
        with unchanged_on_error(_modules_of(backbone), values=bool(cfg["merged"])):
            model = wrap(source, cfg["spec"], num_classes=cfg["num_classes"], **load_kwargs, **cfg["options"])
            if base is not None:  # a random base, saved beside the adapter: put it back first
                _check_base_file(model, d, base, tensors)
                model.net.load_state_dict(base, strict=False)
                model._base_fingerprint = None  # now of the saved base, checked against the saved fingerprint
            _check_base(model, d, saved_bb, backbone is None, allow_different_base)
            if cfg["merged"]:
                model.merge()  # the merged structure (tuner layers folded away), then the saved merged tensors
            _check_tensors(model, d, cfg, tensors)
            model.net.load_state_dict(tensors, strict=cfg["merged"])
        model.class_names = cfg.get("class_names")
        model.preprocessing = cfg.get("preprocessing") or model.preprocessing
        model.tune_config = cfg.get("tune_config")
        return model


#: how a user's own module was described (:func:`pefs.backbones.describe.describe_module`): given again on reload
MODULE_KWARGS = ("head_name", "input_size", "data_config")


def _module_kwargs(backbone: object, cfg: dict[str, Any]) -> dict[str, Any]:
    """For a user's module passed to ``load``: the ``head_name=`` / ``input_size=`` it was wrapped with (saved in
    the directory), so ``PefsModel.load(dir, backbone=module)`` finds the same head without being told again."""
    saved = (cfg.get("load") or {}).get("model_kwargs") or {}
    if not isinstance(backbone, nn.Module) or cfg["backbone"].get("source") != "user" or not isinstance(saved, dict):
        return {}
    kwargs = {k: saved[k] for k in MODULE_KWARGS if k in saved}
    return {"model_kwargs": kwargs} if kwargs else {}


def _check_base(model: PefsModel, d: Path, saved_bb: dict[str, Any], by_name: bool,
                allow_different_base: bool) -> None:
    """Refuse a backbone other than the one the saved model was trained on (size, name, weights, revision)."""
    if model.backbone_params != saved_bb["params"] or (by_name and model.backbone.name != saved_bb["name"]):
        raise PefsError(f"adapter in {str(d)!r} was trained on {saved_bb['name']} ({saved_bb['params']:,} "
                        f"params); it cannot load onto {model.backbone.name} ({model.backbone_params:,} params)")
    if model.base_fingerprint != saved_bb["fingerprint"] and not allow_different_base:
        why = (" (it was trained on random weights, --no-pretrained, which cannot be rebuilt: pass the same "
               "backbone object)" if saved_bb.get("source") == "random" else "")
        raise PefsError(f"adapter in {str(d)!r} was trained on different weights of {saved_bb['name']}{why}: "
                        f"base fingerprint {saved_bb['fingerprint'][:12]} saved, {model.base_fingerprint[:12]} "
                        "here; it would not give the saved model. Pass allow_different_base=True "
                        "(--allow-different-base) to load it anyway")
    saved_rev, rev = saved_bb.get("revision"), model.backbone.revision
    if saved_rev and rev and saved_rev != rev:
        raise PefsError(f"adapter in {str(d)!r} was trained on {saved_bb['name']} at revision {saved_rev}; "
                        f"the backbone given is at revision {rev}: load that revision (revision=) instead")


def _check_tensors(model: PefsModel, d: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a tensor file that is not exactly the model's saved state (missing, unexpected, reshaped)."""
    expected = {k: v.shape for k, v in pefs_io.saved_state(model).items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                 f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:3])})" if wrong else ""]
        raise PefsError(f"{cfg['tensors']['file']} in {str(d)!r} does not match {cfg['spec']} on "
                        f"{model.backbone.name}: " + "; ".join(p for p in parts if p)
                        + f" of {len(expected)} expected tensors; refusing a partial load")


def _check_base_file(model: PefsModel, d: Path, base: dict[str, torch.Tensor],
                     tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a saved base that does not complete the adapter to the model's whole state (missing, unexpected or
    reshaped tensors): no partial load."""
    state = {k: v.shape for k, v in model.net.state_dict().items()}
    missing = sorted(set(state) - set(base) - set(tensors))
    extra = sorted(set(base) - set(state))
    wrong = sorted(k for k in set(base) & set(state) if tuple(base[k].shape) != tuple(state[k]))
    if missing or extra or wrong:
        bad = (missing and f"{len(missing)} missing (e.g. {', '.join(missing[:3])})") or \
              (extra and f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})") or \
              f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:3])})"
        raise PefsError(f"{pefs_io.BASE_FILE} in {str(d)!r} does not complete the model: {bad}; refusing a partial "
                        "load")


#: attribute ``wrap`` leaves on a module it has wrapped (its strategy spec): wrapping it again is refused
WRAPPED = "pefs_wrapped"


def check_not_wrapped(model: Any) -> None:
    """Refuse a module (or Backbone, or PefsModel) that ``wrap`` has already wrapped: its head and strategies
    are in place, and wrapping it again would stack strategies on strategies."""
    net = model.net if isinstance(model, PefsModel) else model.model if isinstance(model, Backbone) else model
    spec = getattr(net, WRAPPED, None) if isinstance(net, nn.Module) else None
    if spec is not None:
        raise PefsError(f"this module is already wrapped by pefs.wrap (strategy {spec!r}); pass a fresh copy of the "
                        "backbone (copy.deepcopy it before wrapping), or use the PefsModel you have")


def _modules_of(model: Any) -> list[nn.Module]:
    """The caller's own modules in ``model`` (none for a name: pefs builds that one itself)."""
    if isinstance(model, Backbone):
        return [model.model]
    return [model] if isinstance(model, nn.Module) else []


@contextlib.contextmanager
def unchanged_on_error(modules: list[nn.Module], values: bool = False) -> typing.Iterator[None]:
    """On an error inside the block, put every module under ``modules`` back as it was: its children, parameters,
    buffers, hooks and attributes (each module's own dictionaries), every ``requires_grad`` flag and, with
    ``values``, every tensor's values. So a refusal never leaves the caller's module half wrapped."""
    mods = list({id(m): m for root in modules for m in root.modules()}.values())
    saved = [(m, {k: (v.copy() if isinstance(v, dict) else v) for k, v in vars(m).items()}) for m in mods]
    flags = [(p, p.requires_grad) for m in mods for p in m.parameters(recurse=False)]
    tensors = [(t, t.detach().clone()) for m in mods for t in (*m.parameters(recurse=False),
                                                                 *m.buffers(recurse=False))] if values else []
    try:
        yield
    except BaseException:
        for m, attrs in saved:
            vars(m).clear()
            vars(m).update(attrs)
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for t, v in tensors:
                t.copy_(v)
        raise


def _all_strategies() -> dict:
    from pefs.strategies import STRATEGIES

    return STRATEGIES


def _group(name: str, blocks: list[str]) -> str:
    for b in blocks:
        if name.startswith(b + "."):
            return b
    return name.rsplit(".", 1)[0] if "." in name else name


def wrap(model: str | nn.Module | Backbone, strategy: str = "linear", num_classes: int = 1000,
         pretrained: bool = True, checkpoint: str | None = None, model_kwargs: dict | None = None,
         **options: Any) -> PefsModel:
    """Load ``model`` (timm name, offline name, ``nn.Module`` or Backbone), give it a ``num_classes`` head,
    and apply ``strategy`` (``"lora"``, ``"lora+norm"``, ...) with ``options`` (``r=8``, ``lora.r=8``).

    Only the strategies' parameters and the head have ``requires_grad``; ask ``param_report()`` for counts.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise PefsError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    strategies = build(strategy, **options)  # validate names/options before loading any weights
    check_not_wrapped(model)
    with unchanged_on_error(_modules_of(model), values=checkpoint is not None):
        bb = backbones.load(model, pretrained=pretrained, checkpoint=checkpoint, **(model_kwargs or {}))
        for s in strategies:
            s.check(bb)  # every kind check before the head is replaced or anything frozen
        bb.reset_head(num_classes)
        backbone_params = bb.num_params()
        head_ids = {id(p) for p in bb.head.parameters()}
        base = [(n, p) for n, p in bb.model.named_parameters() if id(p) not in head_ids]  # before any strategy
        for p in bb.model.parameters():
            p.requires_grad_(False)
        _apply(bb, strategies, strategy)
        for p in bb.head.parameters():
            p.requires_grad_(True)
    load_info = {"pretrained": pretrained, "checkpoint": str(checkpoint) if checkpoint else None,
                 "model_kwargs": model_kwargs or {}}
    base = [(n, p) for n, p in base if not p.requires_grad]  # what training never changes
    for net in {id(m): m for m in (bb.model, model) if isinstance(m, nn.Module)}.values():
        setattr(net, WRAPPED, strategy)
    return PefsModel(bb, strategies, strategy, num_classes, backbone_params, load_info, base)


def _apply(bb: Backbone, strategies: list[Strategy], strategy: str) -> None:
    """Apply each strategy in turn, holding them to the contract: none freezes what another trains, and none
    trains what another needs frozen."""
    claimed: dict[int, str] = {}  # id(param) -> strategy that made it trainable
    frozen: dict[str, str] = {}
    for s in strategies:
        before = {id(p) for p in bb.model.parameters() if p.requires_grad}
        s.apply(bb)
        now = {id(p): n for n, p in bb.model.named_parameters() if p.requires_grad}
        lost = [p for p in before if p not in now]
        if lost:  # the contract: apply marks its own parameters, never freezes another strategy's
            raise PefsError(f"strategy {s.name!r} froze {len(lost)} parameters an earlier strategy of {strategy!r} "
                            "trains; this is a bug in that strategy's apply(), please report it")
        for p in now:
            if p not in before:
                claimed.setdefault(p, s.name)
        for n in s.frozen_base(bb):
            frozen[n] = s.name
    params = dict(bb.model.named_parameters())
    for n, owner in frozen.items():
        if n in params and params[n].requires_grad and claimed.get(id(params[n])) != owner:
            raise PefsError(f"strategies conflict: {claimed[id(params[n])]!r} trains {n}, which {owner!r} needs "
                            f"frozen; drop one of them from {strategy!r}")
