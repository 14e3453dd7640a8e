"""A simulated plan and its score, and what a search returns: shared by every search method.

The optimiser (`optimize.py`) and the baselines (`baselines.py`) score plans the same way, so they
share the `Evaluator` (simulate each plan once, score it against the weights and limits), its
`Candidate` records and the `Solution` they return; both import them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import PlanInfeasible
from funcpipe.plan import Plan
from funcpipe.planning.space import Limits, SearchSpace, Weights

__all__ = ["Candidate", "Evaluator", "Solution", "infeasible_message"]


@dataclass
class Candidate:
    """A simulated plan: its prediction, objective and bound, and any limit it breaks."""

    plan: Plan
    prediction: Any
    objective: float
    bound: float
    violation: str | None = None

    @property
    def feasible(self) -> bool:
        return self.violation is None


@dataclass
class Solution:
    """What a search returns: the best plan and how it was found."""

    method: str
    best: Candidate | None
    candidates: list[Candidate]
    solve_s: float
    predictions: int
    space: SearchSpace
    nodes: int = 0
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        if self.best is None:
            raise PlanInfeasible(self.note or f"{self.method}: no plan satisfies the limits")
        return self.best.plan


class Evaluator:
    """Simulates plans once each and scores them against the weights and limits."""

    def __init__(self, predictor: Callable[[Plan], Any], weights: Weights, limits: Limits) -> None:
        self.predictor = predictor
        self.weights = weights
        self.limits = limits
        self.cache: dict[str, Candidate] = {}

    @property
    def count(self) -> int:
        return len(self.cache)

    def __call__(self, plan: Plan, bound: float = 0.0) -> Candidate:
        key = plan.model_dump_json()
        if key in self.cache:
            return self.cache[key]
        pred = self.predictor(plan)
        obj = self.weights.of(pred.cost_usd, pred.time_s)
        violation = self.limits.violation(plan.num_functions, pred.time_s, pred.cost_usd)
        over = _memory_violation(plan, pred)
        cand = Candidate(plan, pred, obj, bound, violation or over)
        self.cache[key] = cand
        return cand


def _memory_violation(plan: Plan, pred: Any) -> str | None:
    mems = getattr(pred, "memory_mb", None)
    if mems is None:
        return None
    for s, (stage, need) in enumerate(zip(plan.stages, mems, strict=False)):
        if need > stage.memory_mb:
            return f"stage {s} needs {need:.0f} MB > its {stage.memory_mb} MB"
    return None


def infeasible_message(limits: Limits, space: SearchSpace, closest: Candidate | None) -> str:
    """Name the limit(s) no plan meets, with the closest plan's figures."""
    named = []
    if limits.max_functions is not None:
        named.append(f"max_functions={limits.max_functions}")
    if limits.budget is not None:
        named.append(f"budget=${limits.budget:g} per iteration")
    if limits.deadline is not None:
        named.append(f"deadline={limits.deadline:g} s per iteration")
    what = " and ".join(named) if named else "the memory limit"
    msg = f"no plan meets {what}"
    if closest is not None:
        p = closest.prediction
        msg += (
            f"; the closest simulated plan ({closest.plan.num_stages} stages, "
            f"{closest.plan.num_functions} functions) {closest.violation} "
            f"(time {p.time_s:.3f} s, cost ${p.cost_usd:.6f} per iteration)"
        )
    return msg + "; relax the limit"
