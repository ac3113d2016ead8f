"""Every setting of a run as plain data: defaults, types and help text written once, here (stdlib only).

The dataclasses below are the single source of truth: ``pefs.cli.flags`` generates the flags from their fields
(name, type, default, help, choices in the field metadata: :mod:`pefs.config.fields`), recipes check their keys
against them (:data:`RUN_KEYS`, :data:`TRAIN_KEYS`), and :func:`pefs.config.identity.config_hash` identifies
results by them. Nothing here imports torch, so reading a results
store or writing a report stays light.

A config is never changed by the code that runs it: values resolved at run time (the image size a dataset
suggests, the precision "auto" becomes) go into a resolved copy (:func:`resolved`) recorded beside it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from pefs.config.checks import check_max_pixels, check_seeds, parse_budget
from pefs.config.fields import check_choice, choices, setting, setting_types
from pefs.config.identity import config_hash
from pefs.errors import PefsError, unknown

DEFAULT_MODEL = "efficientnet_lite0.offline"
DEFAULT_HEAD = "linear-proto"
#: the head of ``--strategy linear`` when none is named: the converged probe the field compares against (an
#: AdamW-trained head scores below scikit-learn's LogisticRegression on the same features: benchmarks/linear_default.md)
LINEAR_PROBE_HEAD = "logistic"


@dataclass
class TrainConfig:
    """How to train: epochs over the support set, batch size, learning rates, precision, caching."""

    epochs: int = setting(30, "passes over the support set")
    steps: int | None = setting(
        None, "optimizer steps to train, whatever the support size (overrides --epochs, so 1-shot is not "
        "starved of steps); default: epochs x batches per epoch", metavar="N", added_later=True)
    batch_size: int = setting(16, "training batch size")
    lr: float | None = setting(
        None, "learning rate of the strategy's parameters; default: the strategy's own (1e-3; full fine-tuning "
        "1e-4; a composition the smallest of its parts'), chosen on validation data (benchmarks/selection.md)")
    head_lr: float = setting(1e-2, "learning rate of the classifier head")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "autocast while training; auto: bf16 on a CUDA GPU with native bf16, else no (fp32: a CPU emulates "
        "bf16 training slowly, benchmarks/speed.md)")
    inference_precision: Literal["auto", "no", "bf16", "fp16"] = setting(
        "auto", "autocast of no-grad passes (cached frozen prefix, evaluation); auto: bf16 where the hardware "
        "computes it natively (CUDA with bf16, CPUs with AVX-512 BF16 or AMX), else as --mixed-precision")
    deterministic: bool = setting(
        False, "exact comparisons: fp32 throughout (no TF32, no bf16 autocast under auto), deterministic GPU "
        "algorithms, no cuDNN autotuning; slower on a GPU, the same numbers on a CPU", added_later=True)
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
    eval_batch_size: int = setting(16, "evaluation batch size (benchmarks/speed.md measures the choice)",
                                   neutral=True)
    progress: bool = setting(True, "progress bars", neutral=True, flags=("--quiet", "-q"))
    num_workers: int | None = setting(
        None, "DataLoader processes decoding images beside the forward pass (0: in this process); default: sized to "
        "the machine, half its cores (at most 8) beside a CUDA GPU, 0 on a CPU alone (decoding would take cores "
        "from the forward pass)", flags=("--workers",), metavar="N", neutral=True)
    label_smoothing: float = setting(
        0.0, "cross-entropy label smoothing: the target puts this much mass spread over every class (0: off)",
        metavar="EPS", added_later=True)
    warmup_steps: int = setting(
        0, "optimizer steps of linear learning-rate warmup before the cosine decay (0: none)", metavar="N",
        added_later=True)
    mixup: float = setting(
        0.0, "mixup alpha (timm's Mixup): train on images blended in pairs with blended soft targets (0: off); "
        "needs image inputs (a frozen trunk's cached features cannot be mixed: add --no-cache-features)",
        metavar="ALPHA", added_later=True)
    cutmix: float = setting(
        0.0, "cutmix alpha (timm's Mixup): paste a box of one image into another, targets by area (0: off; with "
        "--mixup each batch takes one of the two at random)", metavar="ALPHA", added_later=True)
    ema: float = setting(
        0.0, "decay of an exponential moving average of the trained weights (timm's ModelEmaV3, e.g. 0.999); the "
        "average replaces the weights after training, so it is what is evaluated and saved (0: off)",
        metavar="DECAY", added_later=True)
    layer_decay: float | None = setting(
        None, "layer-wise learning-rate decay: block i of n trains at lr x D^(n-i), the stem (patch embedding) at "
        "lr x D^(n+1), the head at head_lr (default: none, every block at lr)", metavar="D", added_later=True)
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
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or not isinstance(
                self.num_workers, int) or self.num_workers < 0):
            raise PefsError(f"num_workers must be a whole number >= 0, got {self.num_workers!r}")
        if not isinstance(self.cache_mb, (int, float)) or not self.cache_mb >= 0 or not math.isfinite(self.cache_mb):
            raise PefsError(f"cache_mb must be a number of MiB >= 0, got {self.cache_mb!r}")
        check_recipe(self)
        check_choice(self, "bn_stats")
        check_choice(self, "mixed_precision")
        check_choice(self, "inference_precision")


def check_recipe(cfg: TrainConfig) -> None:
    """The training-recipe settings (label smoothing, warmup, mixup / cutmix, EMA, layer decay) lie in range."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (number(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        raise PefsError(f"label_smoothing must lie in [0, 1), got {cfg.label_smoothing!r}")
    if isinstance(cfg.warmup_steps, bool) or not isinstance(cfg.warmup_steps, int) or cfg.warmup_steps < 0:
        raise PefsError(f"warmup_steps must be a whole number >= 0, got {cfg.warmup_steps!r}")
    for name in ("mixup", "cutmix"):
        if not (number(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise PefsError(f"{name} must be an alpha >= 0 and finite (0: off), got {getattr(cfg, name)!r}")
    if not (number(cfg.ema) and 0 <= cfg.ema < 1):
        raise PefsError(f"ema must be a decay in [0, 1) (0: off; e.g. 0.999), got {cfg.ema!r}")
    if cfg.layer_decay is not None and not (number(cfg.layer_decay) and 0 < cfg.layer_decay <= 1):
        raise PefsError(f"layer_decay must lie in (0, 1] (e.g. 0.75), or be unset, got {cfg.layer_decay!r}")


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
                               "path, or a benchmark layout: vtab1k:<root>/<task>, vtab1k-val:<root>/<task>, "
                               "miniimagenet:<root>, fewshot:<root>; default: the embedded fashion-mnist-small")
    label_column: str | None = setting(
        None, "the label column of a Hugging Face dataset (--data) with several candidates (fine_label, coarse_label); "
        "default: its one ClassLabel column, else 'label'", metavar="COLUMN", added_later=True)
    ways: int | None = setting(None, "N: switch to N-way K-shot episodes")
    queries: int = setting(15, "query images per class in an episode")
    episodes: int = setting(100, "number of episodes")
    pretrained: bool = setting(True, "pretrained weights (off: random weights)")
    checkpoint: str | None = setting(None, "local weights (.safetensors/.pth) to load into the model")
    img_size: int | None = setting(None, "input resolution (default: the data's suggestion, else the model's "
                                   "own data config)")
    options: dict[str, Any] = setting(
        help="strategy option, repeatable: -o r=8 -o alpha=16 (lora.r=8 for one of several)",
        flags=("--opt", "-o"), metavar="KEY=VALUE", default_factory=dict)
    head: str | None = setting(
        None, f"classifier head; default: {LINEAR_PROBE_HEAD} (a converged probe) for --strategy linear, else "
        f"{DEFAULT_HEAD} (also with --final / --save-adapter: a saved model needs a head that predicts by itself)",
        choices_from="pefs.heads.registry:HEADS")
    search: dict[str, str] = setting(
        help="search a setting on validation data, repeatable: --search lr=1e-4,1e-3 --search strategy=linear,lora "
        "(a strategy option given as a list, -o r=4,8, is searched too); the best on validation is retrained on the "
        "K shots and scored once on test", flags=("--search",), metavar="KEY=V1,V2", default_factory=dict,
        added_later=True)
    val_per_class: int = setting(5, "validation images per class for --search, from the train split outside the "
                                 "K shots", added_later=True)
    budget: str | None = setting(None, "time budget of --strategy auto's search on validation data: 90s, 10m, 1h",
                                 metavar="TIME", added_later=True)
    views: int = setting(1, "views per support image, the clean one included")
    augment: bool = setting(False, "extra views are randomly cropped and flipped")
    mask_ratio: float = setting(0.0, "extra views have this fraction of patches masked: a ViT drops the masked "
                                "patch tokens before its blocks (as the MAE encoder); a CNN sees them painted out")
    mask_patch: int = setting(16, "side of a masked patch in pixels (pixel masking; a ViT masks its own patches)")
    mask_mode: Literal["random", "block", "complementary"] = setting(
        "random", "which patches a ViT's masked view drops: random, block-wise rectangles of neighbours, or "
        "complementary pairs of views whose kept patches partition the image (views = 1 + an even number)",
        added_later=True)
    query_views: int = setting(1, "score each query image as the mean of its scores over this many views: the "
                               "clean one and query_views - 1 masked like the support's extra views (--mask-ratio, "
                               "--mask-mode; no augmentation); 1: the clean view only", metavar="M",
                               added_later=True)
    train: TrainConfig = setting(help="training settings", cli=False, default_factory=TrainConfig)
    output: str = setting("runs", "folder for the JSON result record", neutral=True, metavar="DIR")
    save_adapter: str | None = setting(None, "save a model directory per seed here (DIR/seedN)", neutral=True,
                                       metavar="DIR")
    final: bool = setting(False, "train on every image of the training split and save a model directory to "
                          "save_adapter (pefs tune --final DIR)", added_later=True, cli=False)
    max_image_pixels: int | None = setting(
        None, "refuse images larger than N pixels (default 89,478,485: a guard against decompression bombs); raise "
        "it for genuine large images", metavar="N", neutral=True, added_later=True)
    track: Literal["tensorboard", "wandb", "mlflow", "csv"] | None = setting(
        None, "log the run to an experiment tracker through Accelerate: its config, per-step loss and learning rate, "
        "per-task accuracy and the record's summary (wandb offline unless WANDB_MODE says otherwise; mlflow to a "
        "local store in the tracking folder)", neutral=True, added_later=True)
    track_dir: str | None = setting(None, "folder of --track's logs (default: OUTPUT/tracking)", metavar="DIR",
                                    neutral=True, added_later=True)
    feature_cache: str | None = setting(None, "on-disk store of frozen features shared by runs (default "
                                        "$PEFS_FEATURE_CACHE, else none); delete DIR to clear it", metavar="DIR",
                                        neutral=True)

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
        if self.label_column is not None and (not isinstance(self.label_column, str) or not self.label_column):
            raise PefsError(f"label_column must name a column, got {self.label_column!r}")
        if self.feature_cache is not None and not isinstance(self.feature_cache, str):
            raise PefsError(f"feature_cache must be a directory path, got {self.feature_cache!r}")
        check_views(self)
        if self.track is not None:
            check_choice(self, "track")
        if self.track_dir is not None and (self.track is None or not isinstance(self.track_dir, str)):
            raise PefsError(f"track_dir={self.track_dir!r} names where --track logs go; add --track "
                            f"({', '.join(choices(TuneConfig, 'track') or ())}) or drop --track-dir")
        if self.max_image_pixels is not None:
            check_max_pixels(self.max_image_pixels)
        if self.head is not None and self.head not in choices(TuneConfig, "head"):
            raise unknown("head", self.head, choices(TuneConfig, "head"))
        if self.head is None and "head_lr" in self.search and head_of(self) == LINEAR_PROBE_HEAD:
            raise PefsError(f"--search head_lr={self.search['head_lr']} tunes a trained head, but --strategy linear's "
                            f"default head ({LINEAR_PROBE_HEAD}) fits without one; name a trained head: --head linear "
                            "or --head linear-proto")
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def hash(self) -> str:
        """The identity of this config's results: see :func:`pefs.config.identity.config_hash`."""
        return config_hash(self)


def head_of(cfg: TuneConfig) -> str:
    """The head a run uses: the one named, else :data:`LINEAR_PROBE_HEAD` for a plain ``--strategy linear`` (not
    a searched strategy; not ``--final`` / ``--save-adapter``, whose saved model must predict by itself), else
    :data:`DEFAULT_HEAD`. :func:`pefs.protocols.run.resolve` records it, so it is part of the run's key."""
    if cfg.head is not None:
        return cfg.head
    probe = cfg.strategy == "linear" and "strategy" not in cfg.search and not cfg.final and not cfg.save_adapter
    return LINEAR_PROBE_HEAD if probe else DEFAULT_HEAD


def check_views(cfg: TuneConfig) -> None:
    """Refuse view settings (``--views``, ``--augment``, ``--mask-*``) that make no extra view or an impossible one."""
    if isinstance(cfg.views, bool) or not isinstance(cfg.views, int) or cfg.views < 1:
        raise PefsError(f"views must be a whole number >= 1, got {cfg.views!r}")
    if not (isinstance(cfg.mask_ratio, (int, float)) and 0 <= cfg.mask_ratio < 1):
        raise PefsError(f"mask_ratio must lie in [0, 1), got {cfg.mask_ratio}")
    check_choice(cfg, "mask_mode")
    if isinstance(cfg.mask_patch, bool) or not isinstance(cfg.mask_patch, int) or cfg.mask_patch < 1:
        raise PefsError(f"mask_patch must be a whole number of pixels >= 1, got {cfg.mask_patch!r}")
    extra = cfg.augment or cfg.mask_ratio > 0
    if cfg.views > 1 and not extra:
        raise PefsError(f"views={cfg.views} would only repeat each image; add augmentation (--augment) "
                        "or masking (--mask-ratio in (0, 1))")
    if cfg.views == 1 and extra:
        raise PefsError("augmentation and masking make extra views; set views >= 2 (--views 4)")
    if cfg.mask_mode == "complementary" and cfg.mask_ratio > 0 and (cfg.views - 1) % 2:
        raise PefsError(f"complementary masks come in pairs of views; views={cfg.views} leaves an odd "
                        f"{cfg.views - 1} extra: set views to 1 + an even number (3, 5)")
    if isinstance(cfg.query_views, bool) or not isinstance(cfg.query_views, int) or cfg.query_views < 1:
        raise PefsError(f"query_views must be a whole number >= 1, got {cfg.query_views!r}")
    if cfg.mask_mode == "complementary" and cfg.mask_ratio > 0 and (cfg.query_views - 1) % 2:
        raise PefsError(f"complementary masks come in pairs of views; query_views={cfg.query_views} leaves an odd "
                        f"{cfg.query_views - 1} masked: set query_views to 1 + an even number (3, 5)")


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


def resolved(cfg: TuneConfig, **values: Any) -> TuneConfig:
    """A copy of ``cfg`` with run-time values filled in (``img_size=128``, ``train={"inference_precision":
    "bf16"}``); the caller's config is never changed."""
    train = values.pop("train", {})
    values = {"options": dict(cfg.options), "search": dict(cfg.search), "seeds": tuple(cfg.seeds), **values}
    copy = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train), **values)
    return copy


#: TuneConfig fields that are not settings shared by every cell (the grid axes, or where output goes)
NOT_RUN_KEYS = ("model", "strategy", "shots", "seeds", "options", "train", "output", "save_adapter")
#: TrainConfig fields that are not recipe settings (how a run looks, not what it computes)
NOT_TRAIN_KEYS = ("progress",)
#: one run's protocol and model settings (TuneConfig's other fields: data, ways, pretrained, ...), with types
RUN_KEYS: dict[str, tuple[type, ...]] = setting_types(TuneConfig, NOT_RUN_KEYS)
#: training settings: TrainConfig's fields (progress bars are not a setting of the result)
TRAIN_KEYS: dict[str, tuple[type, ...]] = setting_types(TrainConfig, NOT_TRAIN_KEYS)
