"""``peft:<method>``: any other ``peft`` tuner (LoHa, LoKr, IA3, OFT, ...) injected into the backbone.

Targets default as for ``lora`` (ViT ``qkv``; CNN non-grouped convs and linears in the blocks); IA3 adds the
MLP ``fc2`` of ViTs, whose input it scales (its "feed-forward" layers), as in the IA3 paper. Methods that
peft implements for Linear layers only adapt only the Linear layers among those. ``r`` and ``alpha`` set the
method's rank / scaling fields where it has them; ``extra=field=value,...`` sets any other field of the
peft config. Merging uses peft's own ``merge()``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError, unknown
from pefs.strategies.base import StrategyConfig, cast_option
from pefs.strategies.common import default_targets
from pefs.strategies.peft_tuner import PeftTuner
from pefs.strategies.registry import register


@dataclass(frozen=True)
class PeftMethod:
    """How pefs drives one peft tuner."""

    peft_type: str  #: peft's PeftType value
    convs: str  #: the Conv2d layers peft adapts exactly: "all", "1x1" or "none" (Linear layers only)
    rank: str | None = None  #: the peft field that ``r`` sets
    alpha: str | None = None  #: the peft field that ``alpha`` sets
    identity: bool = True  #: the update is zero (identity) at init
    with_rank: tuple[tuple[str, Any], ...] = ()  #: fields that must change when ``r`` is given


#: the tuners checked to inject, train and merge through ``inject_adapter_in_model`` (peft 0.17+)
METHODS: dict[str, PeftMethod] = {
    "loha": PeftMethod("LOHA", "all", rank="r", alpha="alpha"),
    "lokr": PeftMethod("LOKR", "all", rank="r", alpha="alpha"),
    "ia3": PeftMethod("IA3", "all"),
    # peft's OFT rotates unfolded input patches and folds them back by summing: exact only for 1x1 kernels
    "oft": PeftMethod("OFT", "1x1", rank="r", with_rank=(("oft_block_size", 0),)),
    "boft": PeftMethod("BOFT", "all"),
    "hra": PeftMethod("HRA", "all", rank="r"),
    "hira": PeftMethod("HIRA", "all", rank="r"),
    "delora": PeftMethod("DELORA", "none", rank="r"),
    "miss": PeftMethod("MISS", "none", rank="r"),
    "shira": PeftMethod("SHIRA", "none", rank="r"),
    "road": PeftMethod("ROAD", "none"),
    "fourierft": PeftMethod("FOURIERFT", "none", identity=False),
}
#: fields set through other options, never through ``extra``
_RESERVED = ("target_modules", "peft_type", "task_type")


@dataclass
class PeftMethodConfig(StrategyConfig):
    #: rank (the method's own rank field); none = peft's default
    r: int | None = None
    #: scaling (the method's alpha field); none = peft's default
    alpha: int | None = None
    #: module-name suffixes to adapt (e.g. "qkv,fc1"); empty = the family default
    targets: tuple[str, ...] = ()
    #: other peft config fields as "field=value" (e.g. "module_dropout=0.1")
    extra: tuple[str, ...] = ()

    def validate(self, strategy: str) -> None:
        if self.r is not None and self.r < 1:
            raise PefsError(f"option r={self.r} of strategy {strategy!r} must be >= 1")
        bad = [e for e in self.extra if "=" not in e]
        if bad:
            raise PefsError(f"option extra={bad[0]!r} of strategy {strategy!r} must be field=value")


def _peft_config_class(method: str) -> type:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(METHODS[method].peft_type)]


def _fits(m: nn.Module, convs: str) -> bool:
    """Whether a method adapting ``convs`` convolutions handles layer ``m`` exactly."""
    if isinstance(m, nn.Conv2d):
        return convs == "all" or (convs == "1x1" and tuple(m.kernel_size) == (1, 1))
    return True


@register
class PeftMethodStrategy(PeftTuner):
    name = "peft"
    summary = "another peft tuner, as peft:<method>: " + ", ".join(METHODS)
    config_class = PeftMethodConfig

    def __init__(self, config: StrategyConfig | None = None, method: str | None = None) -> None:
        super().__init__(config)
        if method is None:
            raise PefsError("strategy 'peft' needs a method, as 'peft:<method>'; methods: " + ", ".join(METHODS))
        if method not in METHODS:
            raise unknown("peft method", str(method), METHODS,
                          extra="use it as 'peft:<method>', e.g. 'peft:loha'; LoRA itself is the 'lora' strategy, "
                          "AdaLoRA the 'adalora' strategy")
        self.method = method
        self.name = f"peft:{method}"
        self.spec = METHODS[method]
        self.peft_type = self.spec.peft_type
        self.identity_at_init = self.spec.identity
        self.fields = self._fields()

    def _fields(self) -> dict[str, Any]:
        """The peft config fields set by ``r``, ``alpha`` and ``extra``, checked and cast before any loading."""
        c: PeftMethodConfig = self.config  # type: ignore[assignment]
        cfg_cls = _peft_config_class(self.method)
        out: dict[str, Any] = {}
        for opt, field in (("r", self.spec.rank), ("alpha", self.spec.alpha)):
            value = getattr(c, opt)
            if value is None:
                continue
            if field is None:
                raise PefsError(f"option {opt}={value} does not apply to {self.name}: {cfg_cls.__name__} has no "
                                f"{'rank' if opt == 'r' else 'alpha'}; set its own fields with extra=field=value")
            out[field] = value
        if c.r is not None:
            out.update(self.spec.with_rank)
        valid = {f.name for f in dataclasses.fields(cfg_cls) if f.init} - set(_RESERVED)
        try:
            hints = typing.get_type_hints(cfg_cls)
        except Exception:  # a peft annotation that does not resolve: pass values as strings
            hints = {}
        for item in c.extra:
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in valid:
                raise unknown(f"{cfg_cls.__name__} field", key, valid,
                              extra="targets= sets the layers; r=/alpha= the rank and scaling")
            cast = cast_option(self.name, key, value, hints.get(key, str))
            out[key] = list(cast) if isinstance(cast, tuple) else cast
        return out

    def _targets(self, bb: Backbone) -> tuple[list[str], list[str]]:
        """(target module names, IA3 feed-forward names among them) for this backbone."""
        c: PeftMethodConfig = self.config  # type: ignore[assignment]
        ia3 = self.method == "ia3"
        roles = bb.roles if ia3 and bb.kind == "transformer" else None
        suffixes: tuple[str, ...] = c.targets
        if not suffixes and roles is not None and roles.fc2:
            # IA3 rescales keys, values and the feed-forward input: fused qkv (or k and v), and the MLP's fc2
            suffixes = (roles.qkv,) if roles.qkv else (roles.k, roles.v)  # type: ignore[assignment]
            suffixes += (roles.fc2,)
        elif not suffixes and ia3 and bb.layer_names is not None:
            suffixes = (bb.layer_names.qkv, bb.layer_names.fc2)
        names = default_targets(bb, suffixes, what=self.name)
        modules = dict(bb.model.named_modules())
        fit = [n for n in names if _fits(modules[n], self.spec.convs)]
        if c.targets and len(fit) < len(names) or not fit:
            bad = next(n for n in names if n not in fit)
            kinds = {"none": "Linear layers only", "1x1": "Linear layers and 1x1 convolutions only"}[self.spec.convs]
            conv = ", ".join(m for m, s in METHODS.items() if s.convs == "all")
            raise PefsError(f"{self.name} adapts {kinds} through peft, not {bad} ({modules[bad]}) of {bb.name}; "
                            f"choose other targets=, or a method that adapts any Conv2d: {conv}")
        names = fit
        fc2 = roles.fc2 if roles is not None and roles.fc2 else bb.layer_names.fc2 if bb.layer_names else None
        ff = [n for n in names if n.endswith("." + fc2)] if ia3 and fc2 else []
        if ia3 and "feedforward_modules" in self.fields:  # suffixes -> the full names peft checks against targets
            given = self.fields["feedforward_modules"]
            given = [given] if isinstance(given, str) else list(given)
            ff = [n for n in names if any(n == s or n.endswith("." + s) for s in given)]
        return names, ff

    def peft_config_for(self, bb: Backbone) -> tuple[Any, list[str]]:
        names, ff = self._targets(bb)
        kwargs = dict(self.fields, target_modules=names)
        if self.method == "ia3":
            kwargs["feedforward_modules"] = ff
        try:
            return _peft_config_class(self.method)(**kwargs), names
        except (ValueError, TypeError) as e:
            raise PefsError(self.describe_refusal(bb, names, str(e).strip().splitlines()[0])) from None

    def describe_refusal(self, bb: Backbone, names: list[str], message: str) -> str:
        kinds = {"all": "Linear and Conv2d", "1x1": "Linear and 1x1 Conv2d", "none": "Linear"}[self.spec.convs]
        return (f"peft refused {self.name} on {bb.name} ({len(names)} layers, e.g. {names[0]}): {message}; "
                f"{self.name} adapts {kinds} layers, pick others with targets=")
