"""Every setting of a run as plain data: defaults, types and help text written once, here (stdlib only).

The dataclasses below are the single source of truth: ``pefs.cli.main`` generates its flags from their fields
(name, type, default, help, choices in the field metadata), ``pefs.sweep.recipe`` checks recipe keys against
them, and :func:`config_hash` identifies results by them. Nothing here imports torch, so reading a results
store or writing a report stays light.

A config is never changed by the code that runs it: values resolved at run time (the image size a dataset
suggests, the precision "auto" becomes) go into a resolved copy (:func:`resolved`) recorded beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pefs.config.checks import check_seeds, parse_budget
from pefs.errors import PefsError, unknown

#: bumped when the meaning of a hashed field changes; part of every hash, so old results never pass as new
SCHEMA_VERSION = 2
DEFAULT_MODEL = "efficientnet_lite0.offline"
#: classifier heads (``pefs.heads.registry.HEADS`` implements exactly these; a test checks they agree)
HEAD_NAMES = ("linear", "linear-proto", "prototype", "patch-match", "logistic")
DEFAULT_HEAD = "linear-proto"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] = (),
            neutral: bool = False, since: int = 1, cli: bool = True, metavar: str | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its documentation. ``neutral``: does not change a run's numbers (kept out of the
    hash, so a sweep resumes across it). ``since``: the schema version that added the field; a field added
    after version 1 is left out of the hash while it holds its default (which must reproduce the behaviour
    from before it existed), so adding one changes no existing hash. ``flags``: the CLI spellings (default
    ``--field-name``); ``cli=False`` keeps a field off the command line."""
    meta = {"help": help, "flags": flags, "neutral": neutral, "since": since, "cli": cli, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """How to train: epochs over the support set, batch size, learning rates, precision, caching."""

    epochs: int = setting(30, "passes over the support set")
    steps: int | None = setting(
        None, "optimizer steps to train, whatever the support size (overrides --epochs, so 1-shot is not "
        "starved of steps); default: epochs x batches per epoch", metavar="N", since=3)
    batch_size: int = setting(16, "training batch size")
    lr: float | None = setting(
        None, "learning rate of the strategy's parameters; default: the strategy's own (1e-3; full fine-tuning "
        "1e-4; a composition the smallest of its parts'), chosen on validation data (benchmarks/selection.md)")
    head_lr: float = setting(1e-2, "learning rate of the classifier head")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    mixed_precision: Literal["no", "bf16", "fp16"] = setting(
        "no", "autocast while training (bf16 training measured 0.84x the speed of fp32 on a CPU)")
    inference_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "autocast of no-grad passes (cached frozen prefix, evaluation); auto: bf16 where the hardware "
        "computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else as --mixed-precision")
    merge_for_eval: bool = setting(
        True, "evaluate LoRA / peft tuners with their update merged into the weights (then unmerged exactly)")
    grad_checkpointing: bool = setting(
        False, "recompute block activations in backward: less memory, more time (models with a checkpointing "
        "switch); identical results", neutral=True)
    bn_stats: Literal["frozen", "update"] = setting(
        "frozen", "BatchNorm running statistics while training: frozen keeps the pretrained ones, update lets "
        "them move")
    cache_features: bool = setting(
        True, "run the frozen part of the network once per image and cache it (--no-cache-features: every step)",
        flags=("--no-cache", "--no-cache-features"))
    eval_batch_size: int = setting(16, "evaluation batch size (16 beats 64 on a CPU for channels-last CNNs)",
                                   neutral=True)
    progress: bool = setting(True, "progress bars", neutral=True, cli=False)
    num_workers: int = setting(0, "DataLoader processes decoding images beside the forward pass (0: in this "
                               "process)", flags=("--workers",), metavar="N", neutral=True)
    cache_mb: float = setting(512, "budget of the run's decoded-image / activation cache in MiB (pooled features "
                              "are kept outside it)", metavar="MIB", neutral=True)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PefsError(f"{name} must be >= 1, got {value!r} (a whole number)")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise PefsError(f"steps must be a whole number >= 1 (or unset: epochs decide), got {self.steps!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if name == "lr" and value is None:
                continue  # the strategy's default (resolved where the strategy is known)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise PefsError(f"{name} must be > 0 and finite, got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise PefsError(f"weight_decay must be >= 0 and finite, got {self.weight_decay!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise PefsError(f"num_workers must be a whole number >= 0, got {self.num_workers!r}")
        if not isinstance(self.cache_mb, (int, float)) or not self.cache_mb >= 0 or not math.isfinite(self.cache_mb):
            raise PefsError(f"cache_mb must be a number of MiB >= 0, got {self.cache_mb!r}")
        check_choice(self, "bn_stats")
        check_choice(self, "mixed_precision")
        check_choice(self, "inference_precision")


@dataclass
class ViewConfig:
    """How many views each support image contributes and how the extra ones differ from the clean one."""

    views: int = 1
    augment: bool = False
    mask_ratio: float = 0.0
    mask_patch: int = 16
    mask_mode: str = "random"

    def validate(self) -> None:
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise PefsError(f"views must be a whole number >= 1, got {self.views!r}")
        if not (isinstance(self.mask_ratio, (int, float)) and 0 <= self.mask_ratio < 1):
            raise PefsError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}")
        if self.mask_mode not in ("random", "block"):
            raise PefsError(f"mask_mode must be one of random, block; got {self.mask_mode!r}")
        if isinstance(self.mask_patch, bool) or not isinstance(self.mask_patch, int) or self.mask_patch < 1:
            raise PefsError(f"mask_patch must be a whole number of pixels >= 1, got {self.mask_patch!r}")
        extra = self.augment or self.mask_ratio > 0
        if self.views > 1 and not extra:
            raise PefsError(f"views={self.views} would only repeat each image; add augmentation (--augment) "
                            "or masking (--mask-ratio in (0, 1))")
        if self.views == 1 and extra:
            raise PefsError("augmentation and masking make extra views; set views >= 2 (--views 4)")


@dataclass
class TuneConfig:
    """One run: a model, a strategy, a dataset and a protocol (K-shot transfer, or episodes when ``ways``)."""

    model: str = setting(DEFAULT_MODEL, "timm model name, offline model, or hf:<repo id or local directory> for a "
                         "transformers model (`pefs models` lists them)")
    strategy: str = setting("linear", "tuning strategy, or several joined by '+' (e.g. lora, lora+norm; "
                            "`pefs strategies` lists them)")
    shots: int = setting(5, "K: training images per class")
    seeds: tuple[int, ...] = setting(help="seed(s): 0 | 0,1,2 | 0-4; mean and 95% CI are over seeds",
                                     flags=("--seeds", "--seed"), default_factory=lambda: (0,))
    data: str | None = setting(None, "image folder (<root>/<class>/*.jpg), Hugging Face dataset name or local "
                               "path; default: the embedded fashion-mnist-small")
    ways: int | None = setting(None, "N: switch to N-way K-shot episodes")
    queries: int = setting(15, "query images per class in an episode")
    episodes: int = setting(100, "number of episodes")
    pretrained: bool = setting(True, "pretrained weights (off: random weights)")
    checkpoint: str | None = setting(None, "local weights (.safetensors/.pth) to load into the model")
    img_size: int | None = setting(None, "input resolution (default: the data's suggestion, else the model's "
                                   "own data config)")
    options: dict[str, Any] = setting(
        help="strategy option, repeatable: -o r=8 -o targets=qkv,proj (lora.r=8 for one of several)",
        flags=("--opt", "-o"), metavar="KEY=VALUE", default_factory=dict)
    head: str = setting(DEFAULT_HEAD, "classifier: " + " | ".join(HEAD_NAMES))
    search: dict[str, str] = setting(
        help="search a setting on validation data, repeatable: --search lr=1e-4,1e-3 --search strategy=linear,lora "
        "(a strategy option given as a list, -o r=4,8, is searched too); the best on validation is retrained on the "
        "K shots and scored once on test", flags=("--search",), metavar="KEY=V1,V2", default_factory=dict, since=3)
    val_per_class: int = setting(5, "validation images per class for --search, from the train split outside the "
                                 "K shots", since=3)
    budget: str | None = setting(None, "time budget of --strategy auto's search on validation data: 90s, 10m, 1h",
                                 metavar="TIME", since=3)
    views: int = setting(1, "views per support image, the clean one included")
    augment: bool = setting(False, "extra views are randomly cropped and flipped")
    mask_ratio: float = setting(0.0, "extra views have this fraction of patches masked: a ViT drops the masked "
                                "patch tokens before its blocks (as the MAE encoder); a CNN sees them painted out")
    mask_patch: int = setting(16, "side of a masked patch in pixels (pixel masking; a ViT masks its own patches)")
    mask_mode: Literal["random", "block"] = setting(
        "random", "which patches a ViT's masked view drops: random, or block-wise rectangles of neighbours",
        since=3)
    train: TrainConfig = setting(help="training settings", cli=False, default_factory=TrainConfig)
    output: str = setting("runs", "folder for the JSON result record", neutral=True, cli=False)
    save_adapter: str | None = setting(None, "save each seed's tuned model directory here", neutral=True,
                                       cli=False)
    final: bool = setting(False, "train on every image of the training split and save a model directory to "
                          "save_adapter (pefs tune --final DIR)", since=3, cli=False)
    feature_cache: str | None = setting(None, "on-disk store of frozen features shared by runs (default "
                                        "$PEFS_FEATURE_CACHE, else none); delete DIR to clear it", metavar="DIR",
                                        neutral=True)

    @property
    def view_config(self) -> ViewConfig:
        return ViewConfig(self.views, self.augment, self.mask_ratio, self.mask_patch, self.mask_mode)

    @property
    def protocol(self) -> str:
        return "episodic" if self.ways else "kshot"

    def validate(self) -> None:
        if isinstance(self.val_per_class, bool) or not isinstance(self.val_per_class, int) or self.val_per_class < 1:
            raise PefsError(f"val_per_class must be a whole number >= 1, got {self.val_per_class!r}")
        if self.budget is not None or self.strategy == "auto":
            check_auto(self)
        for name in ("shots", "queries", "episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PefsError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.seeds:
            raise PefsError("seeds must name at least one seed")
        check_seeds(self.seeds)
        if self.img_size is not None and (not isinstance(self.img_size, int) or self.img_size < 8):
            raise PefsError(f"img_size must be a whole number >= 8 pixels, got {self.img_size!r}")
        if self.ways is not None and (isinstance(self.ways, bool) or not isinstance(self.ways, int)
                                      or self.ways < 2):
            raise PefsError(f"ways must be a whole number >= 2 for an episode, got {self.ways!r}")
        if self.ways is not None and len(self.seeds) > 1:
            raise PefsError(f"episodes draw their own tasks from one seed; give one seed, got {list(self.seeds)}")
        if self.head not in HEAD_NAMES:
            raise unknown("head", self.head, list(HEAD_NAMES))
        if self.feature_cache is not None and not isinstance(self.feature_cache, str):
            raise PefsError(f"feature_cache must be a directory path, got {self.feature_cache!r}")
        self.view_config.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def hash(self) -> str:
        """The identity of this config's results: see :func:`config_hash`."""
        return config_hash(self)


def check_auto(cfg: TuneConfig) -> None:
    """``--strategy auto`` takes a ``--budget`` and searches its own grid; ``--budget`` means nothing without it."""
    if cfg.strategy != "auto":
        raise PefsError(f"--budget {cfg.budget} limits --strategy auto's search; the strategy is {cfg.strategy!r}: "
                        "add --strategy auto or drop --budget")
    if cfg.budget is None:
        raise PefsError("--strategy auto searches within a time budget: give one, e.g. --budget 10m (90s, 10m, 1h)")
    parse_budget(cfg.budget)
    if cfg.search or cfg.options:
        given = ", ".join([f"--search {k}={v}" for k, v in cfg.search.items()] +
                          [f"-o {k}={v}" for k, v in cfg.options.items()])
        raise PefsError(f"--strategy auto searches its own strategies and learning rates; drop {given} (or name "
                        "a strategy and search it with --search)")


def check_choice(cfg: Any, name: str) -> None:
    """A Literal-typed field holds one of its choices, or a PefsError listing them."""
    choices = typing.get_args(field_types(type(cfg))[name])
    if getattr(cfg, name) not in choices:
        raise PefsError(f"{name} must be one of {', '.join(choices)}; got {getattr(cfg, name)!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass."""
    return typing.get_type_hints(cls)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a config dataclass."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}


def result_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a config (nested configs included) that change its numbers, as JSON-able values:
    neutral fields are dropped, and so are later-added fields that still hold their default."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        meta, value = f.metadata, getattr(cfg, f.name)
        if meta.get("neutral"):
            continue
        if dataclasses.is_dataclass(value) and any("neutral" in g.metadata for g in dataclasses.fields(value)):
            # a nested config (its fields are settings)
            out[f.name] = result_fields(value)
            continue
        if not isinstance(value, (str, int, float, bool, list, tuple, dict, type(None))):
            # an object given in Python (a Dataset for ``data``): its name; its content is in the run's key
            value = f"<{type(value).__name__} {getattr(value, 'name', '')}>"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if meta.get("since", 1) > 1 and value == default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_hash(cfg: Any) -> str:
    """16 hex digits identifying a run's results: the schema version and every result-changing field.
    Sweeps key their store by it and records carry it, so a record's hash is its store key."""
    payload = {"schema": SCHEMA_VERSION, **result_fields(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(cfg: TuneConfig, fingerprints: dict[str, Any]) -> str:
    """A run's identity (a sweep cell's store key, a record's ``key``): the hash of its resolved config and the
    content fingerprints of what it reads (data, checkpoint), so changed files under the same path rerun."""
    blob = json.dumps({"config": cfg.hash(), **fingerprints}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolved(cfg: TuneConfig, **values: Any) -> TuneConfig:
    """A copy of ``cfg`` with run-time values filled in (``img_size=128``, ``train={"inference_precision":
    "bf16"}``); the caller's config is never changed."""
    train = values.pop("train", {})
    values = {"options": dict(cfg.options), "search": dict(cfg.search), "seeds": tuple(cfg.seeds), **values}
    copy = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train), **values)
    return copy
