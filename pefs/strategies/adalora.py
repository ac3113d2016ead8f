"""``adalora``: AdaLoRA (Zhang et al. 2023, peft's ``AdaLoraConfig``): LoRA in SVD form, W + B·diag(E)·A, whose
rank budget is reallocated while training: every ``delta_t`` steps the singular values E of least importance
(sensitivity x uncertainty of their gradients) are pruned, the budget falling by a cubic schedule from ``init_r``
per layer to ``target_r`` per layer on average, after ``tinit`` steps at full rank and before ``tfinal`` steps at
the final ranks; an orthogonality penalty (``orth_reg``) keeps A and B near-orthogonal.

The schedule needs the fit's step count: the engine gives it before each fit (:meth:`AdaLora.begin_fit`) and
calls :meth:`AdaLora.after_step` after each optimizer step, both declared on the strategy contract. Targets as
``lora`` (ViT ``qkv``; a CNN's non-grouped convs and linears in its blocks); E starts at zero, so the model starts
as the backbone. Pruned ranks are zeros in E: saved, loaded and merged as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pefs.backbones import Backbone
from pefs.errors import PefsError
from pefs.strategies.base import StrategyConfig
from pefs.strategies.common import default_targets
from pefs.strategies.peft_tuner import PeftTuner
from pefs.strategies.registry import register


@dataclass
class AdaLoraStrategyConfig(StrategyConfig):
    #: rank of each adapted layer at the start (peft's init_r)
    init_r: int = 12
    #: average rank per layer the budget falls to (peft's target_r)
    target_r: int = 8
    #: scaling of the update (peft's lora_alpha; AdaLoRA divides by the initial rank)
    alpha: int = 8
    #: steps at the full budget before pruning starts
    tinit: int = 0
    #: steps at the final budget at the end of each fit
    tfinal: int = 0
    #: steps between two reallocations (peft's deltaT)
    delta_t: int = 1
    #: weight of the orthogonality penalty on A and B (peft's orth_reg_weight)
    orth_reg: float = 0.5
    #: module-name suffixes to adapt (e.g. "qkv,proj"); empty = the family default
    targets: tuple[str, ...] = ()

    def validate(self, strategy: str) -> None:
        if self.init_r < 1 or not 1 <= self.target_r <= self.init_r:
            raise PefsError(f"options init_r={self.init_r}, target_r={self.target_r} of strategy {strategy!r} "
                            "must satisfy 1 <= target_r <= init_r")
        if self.tinit < 0 or self.tfinal < 0 or self.delta_t < 1:
            raise PefsError(f"options tinit={self.tinit}, tfinal={self.tfinal} of strategy {strategy!r} must be "
                            f">= 0 and delta_t={self.delta_t} >= 1")
        if not self.orth_reg >= 0:
            raise PefsError(f"option orth_reg={self.orth_reg} of strategy {strategy!r} must be >= 0")


@register
class AdaLora(PeftTuner):
    name = "adalora"
    summary = ("AdaLoRA (peft): LoRA in SVD form whose ranks are pruned to a budget while training "
               "(init_r -> target_r), on lora's targets")
    config_class = AdaLoraStrategyConfig
    peft_type = "ADALORA"

    def peft_config_for(self, bb: Backbone) -> tuple[Any, list[str]]:
        import peft

        c: AdaLoraStrategyConfig = self.config  # type: ignore[assignment]
        names = default_targets(bb, c.targets)
        # total_step is the fit's (begin_fit); until then one that satisfies peft's tinit < total - tfinal
        return peft.AdaLoraConfig(init_r=c.init_r, target_r=c.target_r, lora_alpha=c.alpha, tinit=c.tinit,
                                  tfinal=c.tfinal, deltaT=c.delta_t, orth_reg_weight=c.orth_reg,
                                  total_step=c.tinit + c.tfinal + 1, target_modules=names), names

    def inject(self, cfg: Any, model: nn.Module) -> None:
        from peft.tuners.adalora import AdaLoraModel

        # AdaLoRA's rank allocator lives on its tuner object: keep it (peft.inject_adapter_in_model drops it)
        self.tuner = AdaLoraModel(model, cfg, "default")

    def begin_fit(self, bb: Backbone, total_steps: int) -> None:
        c: AdaLoraStrategyConfig = self.config  # type: ignore[assignment]
        if c.tinit >= total_steps - c.tfinal:
            raise PefsError(f"adalora's tinit={c.tinit} and tfinal={c.tfinal} leave no step to reallocate ranks in "
                            f"this fit's {total_steps} optimizer steps; lower them or train longer (--steps)")
        config = self.tuner.peft_config["default"]
        config.total_step, config.rank_pattern = total_steps, None
        self.tuner.rankallocator.set_total_step(total_steps)
        self.tuner.rankallocator.reset_ipt()  # importance scores are the fit's own, not the last task's

    def after_step(self, bb: Backbone, step: int) -> None:
        self.tuner.update_and_allocate(step)

    def regularizer(self, bb: Backbone) -> torch.Tensor | None:
        """peft's penalty: the mean over A and B matrices of ||A A^T - I||_F and ||B^T B - I||_F, times orth_reg."""
        c: AdaLoraStrategyConfig = self.config  # type: ignore[assignment]
        if not c.orth_reg:
            return None
        terms = []
        for n, p in bb.model.named_parameters():
            if p.requires_grad and (".lora_A." in n or ".lora_B." in n):
                cov = p @ p.T if ".lora_A." in n else p.T @ p
                terms.append(torch.linalg.matrix_norm(cov - torch.eye(len(cov), device=cov.device, dtype=cov.dtype)))
        return c.orth_reg * torch.stack(terms).mean() if terms else None

    def ranks(self, bb: Backbone) -> dict[str, int]:
        """Layer name -> its rank now: the singular values in E that are not zero (after a fit, the ranks AdaLoRA
        kept; at init every E is zero, so 0)."""
        return {n.removesuffix(".lora_E.default"): int((p != 0).sum()) for n, p in bb.model.named_parameters()
                if n.endswith(".lora_E.default")}
