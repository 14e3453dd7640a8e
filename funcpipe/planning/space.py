"""The set of plans the optimiser and every baseline choose from, and how a plan is scored.

All searches share one `SearchSpace`, so "the optimiser equals exhaustive search" compares like
with like: stages cut only at the boundaries of merged layer groups (layer merging keeps big
models tractable), micro-batch counts that divide the batch, replica counts that divide the
micro-batch count, and the platform's memory sizes. Plans are always scored by the simulator
(`predict`); the objective is ``a1 * cost_usd + a2 * time_s`` per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import ConfigError, PlanInfeasible
from funcpipe.plan import Plan, Stage
from funcpipe.planning.memory import stage_memory_mb

DEFAULT_MAX_GROUPS = 8
DEFAULT_MAX_MICRO_BATCHES = 32

Predictor = Callable[[Plan], Any]  # plan -> Prediction (time_s, cost_usd, memory_mb)


@dataclass(frozen=True)
class Limits:
    """The user's optional limits; budget and deadline are per iteration."""

    max_functions: int | None = None
    budget: float | None = None  # USD per iteration
    deadline: float | None = None  # seconds per iteration

    def violation(self, functions: int, time_s: float, cost_usd: float) -> str | None:
        """Why a plan breaks a limit, or None."""
        if self.max_functions is not None and functions > self.max_functions:
            return f"uses {functions} functions > max_functions={self.max_functions}"
        if self.deadline is not None and time_s > self.deadline:
            return f"takes {time_s:.3f} s per iteration > deadline={self.deadline:g} s"
        if self.budget is not None and cost_usd > self.budget:
            return f"costs ${cost_usd:.6f} per iteration > budget=${self.budget:g}"
        return None


@dataclass(frozen=True)
class Weights:
    """Objective ``cost * cost_usd + time * time_s`` (the paper's a1, a2)."""

    cost: float
    time: float

    def of(self, cost_usd: float, time_s: float) -> float:
        return self.cost * cost_usd + self.time * time_s


@dataclass
class SearchSpace:
    """Plans over ``bounds`` (group boundaries, original layer indices)."""

    profile: Any
    platform: Any
    batch_size: int
    bounds: tuple[int, ...]  # 0 = b0 < b1 < ... < bK = num_layers
    micro_batch_counts: tuple[int, ...]
    memory_choices: tuple[int, ...]
    max_replicas: int | None = None
    _need: dict = field(default_factory=dict, repr=False)

    @property
    def num_groups(self) -> int:
        return len(self.bounds) - 1

    def replica_counts(self, micro_batches: int) -> list[int]:
        top = micro_batches if self.max_replicas is None else min(self.max_replicas, micro_batches)
        return [d for d in range(1, top + 1) if micro_batches % d == 0]

    def micro_batch(self, micro_batches: int) -> int:
        return self.batch_size // micro_batches

    def need_mb(self, i: int, k: int, micro_batches: int, replicas: int) -> float:
        """Memory one function of a stage of groups [i, k) needs (cached)."""
        key = (i, k, micro_batches, replicas)
        if key not in self._need:
            self._need[key] = stage_memory_mb(
                self.profile,
                self.bounds[i],
                self.bounds[k],
                micro_batch=self.micro_batch(micro_batches),
                held=math.ceil(micro_batches / replicas),
                replicas=replicas,
                base_mb=runtime_base_mb(self.profile, self.platform),
            )
        return self._need[key]

    def plan(self, micro_batches: int, stages: Sequence[tuple[int, int, int, int]]) -> Plan:
        """Plan from (first group, end group, memory MB, replicas) per stage."""
        return Plan(
            stages=[
                Stage(start=self.bounds[i], end=self.bounds[k], memory_mb=m, replicas=d)
                for i, k, m, d in stages
            ],
            micro_batches=micro_batches,
        )


def runtime_base_mb(profile: Any, platform: Any) -> float:
    """The runtime's own footprint: the platform's measured figure, else the profile's."""
    base: Any = getattr(platform, "runtime_base_mb", None)
    if base is None:
        base = getattr(profile, "runtime_base_mb", 0.0)
    return float(base)


def divisors(n: int, cap: int | None = None) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0 and (cap is None or d <= cap))


def build_space(
    profile: Any,
    platform: Any,
    *,
    batch_size: int,
    max_groups: int = DEFAULT_MAX_GROUPS,
    max_micro_batches: int = DEFAULT_MAX_MICRO_BATCHES,
    memory_choices: Sequence[int] | None = None,
    max_replicas: int | None = None,
    micro_batch_counts: Sequence[int] | None = None,
) -> SearchSpace:
    """The plans worth considering, after checking that every layer fits some function.

    ``micro_batch_counts`` fixes the micro-batch counts to consider (each must divide the batch);
    by default every divisor up to ``max_micro_batches``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    choices = tuple(sorted(set(memory_choices or platform.memory_choices_mb)))
    if not choices:
        raise ConfigError("memory_choices is empty: give at least one function memory size")
    _check_memory_choices(choices, platform)
    counts = divisors(batch_size, max_micro_batches)
    if micro_batch_counts is not None:
        bad = [m for m in micro_batch_counts if m < 1 or batch_size % m]
        if bad or not micro_batch_counts:
            raise ConfigError(
                f"micro-batch counts {list(micro_batch_counts)} must be divisors of the batch "
                f"size {batch_size} (e.g. {', '.join(map(str, divisors(batch_size)[:6]))})"
            )
        counts = tuple(sorted(set(micro_batch_counts)))
    bounds = merge_layers(profile, platform, batch_size, max_groups, choices[-1])
    space = SearchSpace(profile, platform, batch_size, bounds, counts, choices, max_replicas)
    _check_layers_fit(space)
    return space


def _check_memory_choices(choices: Sequence[int], platform: Any) -> None:
    """Every size must lie in the platform's own range (Lambda stops at 10,240 MB, Alibaba FC
    goes to 32 GB); a platform without limits only needs positive sizes. The step is left to the
    caller: a size between a platform's steps may still be worth predicting."""
    limits = getattr(platform, "limits", None)
    lo, hi = (1, math.inf) if limits is None else (limits.min_memory_mb, limits.max_memory_mb)
    bad = [m for m in choices if not lo <= m <= hi]
    if bad:
        name = getattr(platform, "name", "the platform")
        where = "positive" if limits is None else f"inside {name}'s range {lo}..{hi} MB"
        raise ConfigError(f"memory choices {bad} must be {where}; drop them from memory_choices")


def _layer_need(profile: Any, platform: Any, layer: int, micro_batch: int) -> float:
    return stage_memory_mb(
        profile,
        layer,
        layer + 1,
        micro_batch=micro_batch,
        held=1,
        replicas=1,
        base_mb=runtime_base_mb(profile, platform),
    )


def _check_layers_fit(space: SearchSpace) -> None:
    """A layer that no function can hold, even alone with one sample, is named with its size."""
    largest = space.memory_choices[-1]
    for layer in range(space.profile.num_layers):
        need = _layer_need(space.profile, space.platform, layer, 1)
        if need > largest:
            name = space.profile.layer_names[layer]
            raise PlanInfeasible(
                f"layer {layer} ({name!r}) needs {need:.0f} MB (parameters, gradients, optimizer "
                f"state and one sample's working set, plus the {runtime_base_mb(space.profile, space.platform):.0f} MB "  # noqa: E501
                f"runtime) but the largest function has {largest} MB: split that layer, use a "
                "smaller optimizer state, or a platform with more memory per function"
            )


def merge_layers(
    profile: Any, platform: Any, batch_size: int, max_groups: int, largest_mb: int
) -> tuple[int, ...]:
    """Group boundaries: at most ``max_groups`` contiguous groups of about equal compute.

    A group that could not fit a function even with one sample is split again, so merging never
    makes a feasible model infeasible.
    """
    n = profile.num_layers
    if max_groups < 1:
        raise ConfigError(f"max_groups must be >= 1, got {max_groups}")
    if n <= max_groups:
        return tuple(range(n + 1))
    mb = max(1, batch_size // 8)
    work = [profile.forward_s(i, mb, 1.0) + profile.backward_s(i, mb, 1.0) for i in range(n)]
    total = sum(work) or 1.0
    bounds = [0]
    acc = 0.0
    for i, w in enumerate(work[:-1]):
        acc += w
        target = total * len(bounds) / max_groups
        if acc >= target and len(bounds) < max_groups:
            bounds.append(i + 1)
    bounds.append(n)
    # Split groups too big for the largest function.
    out = [0]
    base = runtime_base_mb(profile, platform)
    for a, b in zip(bounds, bounds[1:], strict=False):
        start = a
        for j in range(a + 1, b):
            need = stage_memory_mb(profile, start, j + 1, micro_batch=1, held=1, replicas=1,
                                   base_mb=base)  # fmt: skip
            if need > largest_mb:
                out.append(j)
                start = j
        out.append(b)
    return tuple(out)
