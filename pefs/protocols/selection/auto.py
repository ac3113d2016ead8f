"""``pefs tune --strategy auto --budget 10m``: which strategy to tune, chosen on the user's own data.

Per task (a K-shot seed, an episode) :class:`AutoSelector` tries the :data:`CANDIDATES` that apply to the
backbone (one that does not is skipped with the strategy's own reason), each at its default learning rate
first and then at a second one, on validation data
(:class:`pefs.protocols.selection.selector.Selector` splits it off), timing
each setting as it runs. It starts no setting whose expected cost (its strategy's last, else the mean so far)
would pass the task's share of the budget, and says which it skipped. The best validation accuracy wins; ties
go to fewer trainable parameters, then the cheaper run. The chosen setting is retrained and tested once.
"""

from __future__ import annotations

import time
from typing import Any

from pefs.config import TrainConfig, TuneConfig, defaults
from pefs.config.checks import parse_budget
from pefs.errors import PefsError
from pefs.protocols.loop import task_count
from pefs.protocols.selection.search import Axis, SearchSpace
from pefs.protocols.selection.selector import Selector
from pefs.runtime.engine import NonFiniteLoss
from pefs.runtime.task import TaskRunner
from pefs.strategies import default_lr

#: strategies auto tries, cheapest first
CANDIDATES = ("linear", "bias", "norm", "ssf", "lora", "adapter")
#: the learning-rate grid as multiples of each strategy's default (linear trains only its head: head_lr)
LR_FACTORS = (1, 10)


def grid(strategies: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every strategy at its default learning rate, then every strategy at ten times it (so a short budget
    still compares the strategies before it refines the rates)."""
    out = []
    for f in LR_FACTORS:
        for s in strategies:
            if s == "linear":
                out.append({"strategy": s, "head_lr": defaults(TrainConfig)["head_lr"] * f})
            else:
                out.append({"strategy": s, "lr": default_lr(s) * f})
    return out


def _label(row: dict[str, Any]) -> str:
    setting = row["setting"]
    rate = ", ".join(f"{k}={v:g}" for k, v in setting.items() if k != "strategy")
    return f"{setting['strategy']} ({rate}: val {100 * row['val_accuracy']:.1f}%, {row['seconds']:.1f} s, " \
           f"{row['trainable']:,} trainable)"


class AutoSelector(Selector):
    """A :class:`~pefs.protocols.selection.selector.Selector` over the applicable candidate strategies within a time
    budget."""

    def __init__(self, cfg: TuneConfig, n_classes: int) -> None:
        space = SearchSpace((Axis("strategy", "tune", CANDIDATES),), "linear")
        super().__init__(cfg, n_classes, space)
        self.budget_s = parse_budget(cfg.budget or "")
        self.task_budget_s = self.budget_s / task_count(cfg)
        self.applicable: tuple[str, ...] | None = None
        self.not_applicable: dict[str, str] = {}
        self.summary.update(budget_s=self.budget_s, budget_per_task_s=self.task_budget_s, why=[],
                            axes={"strategy": list(CANDIDATES),
                                  "lr": sorted({default_lr(s) * f for s in CANDIDATES if s != "linear"
                                                for f in LR_FACTORS}),
                                  "head_lr": [defaults(TrainConfig)["head_lr"] * f for f in LR_FACTORS]})

    def default(self) -> dict[str, Any]:
        self.summary["why"].append("auto ran linear with its default settings: this task's support leaves no "
                                   "image to validate on")
        return {"strategy": "linear"}  # nothing to validate on: the cheapest, with its default settings

    def _check_candidates(self) -> tuple[str, ...]:
        """The candidates that apply to this backbone (each built once); the others with the reason."""
        if self.applicable is None:
            ok = []
            for s in CANDIDATES:
                try:
                    self.runners.get(self.fixed({"strategy": s}))
                    ok.append(s)
                except PefsError as e:
                    self.not_applicable[s] = str(e)
            if not ok:
                raise PefsError("--strategy auto: no candidate strategy applies to this model: " +
                                "; ".join(f"{k}: {v}" for k, v in self.not_applicable.items()))
            self.applicable = tuple(ok)
            self.summary["candidates"] = list(ok)
            self.summary["not_applicable"] = dict(self.not_applicable)
        return self.applicable

    def search(self, support: Any, val: Any, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        table: list[dict[str, Any]] = []
        cost: dict[str, float] = {}
        t_start = time.perf_counter()
        for setting in grid(self._check_candidates()):
            ran = [r["seconds"] for r in table if r["status"] == "ok"]
            expected = cost.get(setting["strategy"], sum(ran) / len(ran) if ran else 0.0)
            left = self.task_budget_s - (time.perf_counter() - t_start)
            if table and expected > left:
                table.append({"setting": setting, "val_accuracy": None, "seconds": 0.0, "trainable": None,
                              "status": f"skipped (budget: ~{expected:.1f} s expected, {max(left, 0):.1f} s left)"})
                continue
            fixed = self.fixed(setting)
            runner = self.runners.get(fixed)
            t0 = time.perf_counter()
            try:
                acc = runner.run(support, val, seed, fixed.train).accuracy
                status = "ok"
            except NonFiniteLoss as e:
                acc, status = None, f"diverged: {e}"
            seconds = cost[setting["strategy"]] = time.perf_counter() - t0
            table.append({"setting": setting, "val_accuracy": acc, "seconds": seconds, "status": status,
                          "trainable": trainable(runner)})
        ran = [r for r in table if r["status"] == "ok" and r["val_accuracy"] is not None]
        if not ran:
            raise PefsError(f"--strategy auto: no setting gave a validation score ({len(table)} tried)")
        best = max(ran, key=lambda r: (r["val_accuracy"], -r["trainable"], -r["seconds"]))
        others: dict[str, dict[str, Any]] = {}  # each other strategy's best row, best first
        for r in sorted(ran, key=lambda r: (-r["val_accuracy"], r["trainable"], r["seconds"])):
            if r["setting"]["strategy"] != best["setting"]["strategy"]:
                others.setdefault(r["setting"]["strategy"], r)
        skipped = [r["setting"]["strategy"] for r in table if r["status"].startswith("skipped")]
        rest = list(others.values())
        why = f"auto chose {_label(best)}" + (f" over {'; '.join(_label(r) for r in rest[:3])}" if rest else "")
        why += f" and {len(rest) - 3} more strategies (the record lists every setting)" if len(rest) > 3 else ""
        if skipped:
            why += f"; skipped for the budget: {', '.join(dict.fromkeys(skipped))}"
        self.summary["why"].append(why)
        return dict(best["setting"]), table


def trainable(runner: TaskRunner) -> int:
    """Trainable parameters of the runner's model, the head included (what a tie is broken on)."""
    return int(runner.model.param_report()["trainable"])


def auto_lines(record: dict[str, Any]) -> list[str]:
    """The CLI's account of an auto run: one "auto chose X (val acc, cost) over Y..." line per task (five at most)."""
    why = (record.get("selection") or {}).get("why") or []
    return why[:5] + ([f"... and {len(why) - 5} more tasks (the record lists each)"] if len(why) > 5 else [])
