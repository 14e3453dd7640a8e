"""The co-optimiser: partition, memory per stage, replicas per stage and micro-batch count at once.

The paper states this as a mixed-integer quadratic program (contiguous layer-to-stage assignment,
one memory size and one data-parallel degree per stage, the micro-batch count; a memory
constraint per function; objective ``a1 * cost + a2 * time``). We solve the same problem exactly,
but with respect to the simulator itself rather than a linearised model of it:

* `bound.py` gives a cheap lower bound of the simulator's objective for a partial plan (stages
  chosen left to right); it never decreases as stages are added.
* A best-first (A*) search over partial plans pops them in increasing bound order. A popped
  complete plan is simulated with `predict`; the search stops when the next bound is no better
  than the best simulated objective. Every plan not simulated therefore has a simulated
  objective >= its bound >= the best found: the answer is the exhaustive search's answer, and
  every candidate is re-ranked by the simulator, as the issue asks.

Limits (max_functions, budget per iteration, deadline per iteration) prune partial plans whose
bound already breaks them and are checked again on the simulated figures.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from funcpipe.errors import ConfigError
from funcpipe.plan import Plan
from funcpipe.planning.bound import (
    Link,
    Options,
    Partial,
    Prices,
    extend,
    link_of,
    plan_bound,
    prices_of,
)
from funcpipe.planning.candidates import Candidate, Evaluator, Solution, infeasible_message
from funcpipe.planning.sim.kernel import OutOfTime, deadline
from funcpipe.planning.space import (
    DEFAULT_MAX_GROUPS,
    DEFAULT_MAX_MICRO_BATCHES,
    Limits,
    SearchSpace,
    Weights,
    build_space,
)

DEFAULT_TIME_LIMIT_S = 25.0
# The simulator's steady-state period is measured over a few steps, so it may fall a hair below
# the bound (seen: 5e-6 relative); bounds are relaxed by this much before they prune.
SLACK = 1e-3
DEFAULT_WEIGHTS = (1.0, 0.001)  # USD per iteration, USD per second of iteration time


def resolve_platform(platform: Any) -> Any:
    """A PlatformProfile from a name ("aws-lambda", "alibaba-fc", "local") or the object."""
    if isinstance(platform, str):
        from funcpipe.planning.platforms import get_platform

        return get_platform(platform)
    return platform


def default_predictor(profile: Any, platform: Any, batch_size: int) -> Callable[[Plan], Any]:
    from funcpipe.planning.simulate import predict

    def run(plan: Plan) -> Any:
        return predict(plan, profile, platform, batch_size=batch_size)

    return run


def check_inputs(weights: Sequence[float], limits: Limits) -> Weights:
    try:
        a1, a2 = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise ConfigError(
            f"weights must be two numbers (a1 for cost, a2 for time), got {weights!r}"
        ) from None
    if a1 < 0 or a2 < 0 or a1 + a2 == 0 or not (math.isfinite(a1) and math.isfinite(a2)):
        raise ConfigError(
            f"weights {weights!r}: both must be finite and >= 0 and not both 0 "
            "(e.g. (1, 0) cheapest, (0, 1) fastest)"
        )
    if limits.max_functions is not None and limits.max_functions < 1:
        raise ConfigError(f"max_functions must be >= 1, got {limits.max_functions}")
    if limits.budget is not None and not limits.budget > 0:
        raise ConfigError(f"budget must be > 0 USD per iteration, got {limits.budget}")
    if limits.deadline is not None and not limits.deadline > 0:
        raise ConfigError(f"deadline must be > 0 seconds per iteration, got {limits.deadline}")
    return Weights(a1, a2)


class _Node:
    __slots__ = ("m", "pos", "state", "stages")

    def __init__(self, m: int, pos: int, state: Partial, stages: tuple) -> None:
        self.m, self.pos, self.state, self.stages = m, pos, state, stages


def _children(
    node: _Node, opts: Options, prices: Prices, w: Weights, lim: Limits, incumbent: float
) -> list[tuple[float, _Node]]:
    """Every extension of ``node`` by one stage whose bound beats ``incumbent`` and the limits."""
    a = opts.at(node.pos)
    if a["k"].size == 0:
        return []
    new = extend(node.state, a, node.pos == 0, prices, opts.link.latency_s)
    t_lb, cost_lb = new["t_lb"], new["cost_lb"]
    obj = w.cost * cost_lb + w.time * t_lb
    keep = (obj * (1 - SLACK) < incumbent) & np.isfinite(cost_lb)
    if lim.deadline is not None:
        keep &= t_lb * (1 - SLACK) <= lim.deadline
    if lim.budget is not None:
        keep &= cost_lb * (1 - SLACK) <= lim.budget
    if lim.max_functions is not None:
        keep &= new["funcs"] + np.where(a["last"], 0, 1) <= lim.max_functions
    out = []
    fields = [(f, new[f]) for f in _STATE]
    for idx in np.flatnonzero(keep):
        stage = (node.pos, int(a["k"][idx]), int(a["mem"][idx]), int(a["d"][idx]))
        state = Partial(**{f: float(v[idx]) for f, v in fields})
        out.append((float(obj[idx]), _Node(node.m, stage[1], state, (*node.stages, stage))))
    return out


_STATE = tuple(Partial.__dataclass_fields__)


def _seed(
    space: SearchSpace,
    opts: dict[int, Options],
    link: Link,
    prices: Prices,
    w: Weights,
    lim: Limits,
    simulate: Callable[[_Node, float], None],
    incumbent: Callable[[], float],
    t0: float,
    time_limit_s: float | None,
) -> dict[str, Any]:
    """Simulate the baselines' cheap plans (`baselines.seed_stages`) in increasing bound order,
    skipping those whose bound cannot beat the best so far, until ``time_limit_s``."""
    from funcpipe.planning.baselines import seed_stages

    scored = []
    for m, stages in seed_stages(space):
        if lim.max_functions is not None and sum(d for *_, d in stages) > lim.max_functions:
            continue
        t, cost, obj = plan_bound(space, m, stages, link, prices, w, opts=opts[m])
        if lim.deadline is not None and t * (1 - SLACK) > lim.deadline:
            continue
        if lim.budget is not None and cost * (1 - SLACK) > lim.budget:
            continue
        scored.append((obj, m, stages))
    scored.sort(key=lambda x: x[0])
    simulated = 0
    complete = True
    for obj, m, stages in scored:
        if obj * (1 - SLACK) >= incumbent():
            break
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            complete = False
            break
        simulated += 1
        simulate(_Node(m, space.num_groups, Partial(fill=0.0), tuple(stages)), obj)
    return {"seeds": len(scored), "seeds_simulated": simulated, "seeds_complete": complete}


def search(
    space: SearchSpace,
    evaluate: Evaluator,
    *,
    link: Link,
    prices: Prices,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    dive_every: int = 200,
    max_nodes: int | None = None,
) -> Solution:
    """Exact best-first search over ``space`` (see the module docstring).

    Every ``dive_every`` expansions it also completes the popped partial plan greedily (best
    bound first) and simulates it: a good plan early lets the bound prune. If ``time_limit_s``
    runs out first, it returns the best plan found and ``extra["gap"]``: how far above the
    smallest open bound its objective is (0 = proven optimal). The limit holds inside a
    simulation too: one still running when it passes is stopped (``extra["simulation_cut"]``).
    """
    t0 = time.perf_counter()
    stop = None if time_limit_s is None else t0 + time_limit_s
    w, lim = evaluate.weights, evaluate.limits
    best: Candidate | None = None
    closest: Candidate | None = None
    heap: list[tuple[float, int, _Node]] = []
    tick = itertools.count()
    opts = {m: Options(space, m, link, prices) for m in space.micro_batch_counts}
    for m, o in opts.items():
        node = _Node(m, 0, Partial(fill=o.input_dn, reqs=prices.client(m)), ())
        heapq.heappush(heap, (0.0, next(tick), node))
    nodes = 0
    violations = 0
    dives = 0
    proven = True
    cut = False

    def simulate(node: _Node, lb: float) -> None:
        nonlocal best, closest, violations, cut, proven
        try:
            with deadline(stop):
                c = evaluate(space.plan(node.m, node.stages), lb)
        except OutOfTime:  # the plan is left unscored: the search can no longer prove its best
            cut, proven = True, False
            return
        if c.objective < lb * (1 - SLACK):
            violations += 1
        if c.feasible:
            if best is None or c.objective < best.objective:
                best = c
        elif closest is None or c.objective < closest.objective:
            closest = c

    def best_objective() -> float:
        return best.objective if best is not None else math.inf

    seeds = _seed(space, opts, link, prices, w, lim, simulate, best_objective,
                  t0, None if time_limit_s is None else time_limit_s / 2)  # fmt: skip
    lb = 0.0
    while heap:
        lb, _, node = heapq.heappop(heap)
        incumbent = best.objective if best is not None else math.inf
        if lb * (1 - SLACK) >= incumbent:
            break
        if (time_limit_s is not None and time.perf_counter() - t0 > time_limit_s) or (
            max_nodes is not None and nodes >= max_nodes
        ):
            proven = False
            break
        if node.pos == space.num_groups:
            simulate(node, lb)
            continue
        nodes += 1
        kids = _children(node, opts[node.m], prices, w, lim, incumbent)
        for obj, child in kids:
            heapq.heappush(heap, (obj, next(tick), child))
        if kids and nodes % dive_every == 1:
            dives += 1
            obj, cur = min(kids, key=lambda oc: oc[0])
            while cur.pos < space.num_groups:
                inc = best.objective if best is not None else math.inf
                deeper = _children(cur, opts[cur.m], prices, w, lim, inc)
                if not deeper:
                    break
                obj, cur = min(deeper, key=lambda oc: oc[0])
            if cur.pos == space.num_groups:
                simulate(cur, obj)
    gap = 0.0
    if not proven and best is not None:
        gap = max(0.0, best.objective / lb - 1) if lb > 0 else math.inf
    sol = Solution(
        method="optimal",
        best=best,
        candidates=sorted(evaluate.cache.values(), key=lambda c: c.objective),
        solve_s=time.perf_counter() - t0,
        predictions=evaluate.count,
        space=space,
        nodes=nodes,
        extra={
            "bound_violations": violations,
            "proven_optimal": proven,
            "gap": gap,
            "dives": dives,
            "simulation_cut": cut,
            **seeds,
        },  # fmt: skip
    )
    if best is None:
        sol.note = infeasible_message(lim, space, closest)
        if not proven:
            sol.note = f"no plan found within time_limit_s={time_limit_s}; " + sol.note
    return sol


def solve(
    profile: Any,
    platform: Any,
    *,
    batch_size: int,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    max_functions: int | None = None,
    budget: float | None = None,
    deadline: float | None = None,
    method: str = "optimal",
    predictor: Callable[[Plan], Any] | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    max_micro_batches: int = DEFAULT_MAX_MICRO_BATCHES,
    memory_choices: Sequence[int] | None = None,
    max_replicas: int | None = None,
    micro_batch_counts: Sequence[int] | None = None,
    seed: int = 0,
    prediction_budget: int | None = None,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    max_nodes: int | None = None,
) -> Solution:
    """Run one search method ("optimal" or a baseline, see `baselines.METHODS`)."""
    from funcpipe.planning import baselines

    platform = resolve_platform(platform)
    limits = Limits(max_functions, budget, deadline)
    w = check_inputs(weights, limits)
    space = build_space(profile, platform, batch_size=batch_size, max_groups=max_groups,
                        max_micro_batches=max_micro_batches, memory_choices=memory_choices,
                        max_replicas=max_replicas,
                        micro_batch_counts=micro_batch_counts)  # fmt: skip
    predictor = predictor or default_predictor(profile, platform, batch_size)
    evaluate = Evaluator(predictor, w, limits)
    if method == "optimal":
        return search(space, evaluate, link=link_of(platform), prices=prices_of(platform),
                      time_limit_s=time_limit_s, max_nodes=max_nodes)  # fmt: skip
    return baselines.run(
        method, space, evaluate, seed=seed, prediction_budget=prediction_budget,
        # exhaustive search is the yardstick of the optimiser's tests: never cut it short
        time_limit_s=None if method == "exhaustive" else time_limit_s,
    )  # fmt: skip


def optimize(
    profile: Any,
    platform: Any,
    *,
    batch_size: int,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    max_functions: int | None = None,
    budget: float | None = None,
    deadline: float | None = None,
    **options: Any,
) -> Plan:
    """The plan minimising ``a1 * cost_usd + a2 * time_s`` per iteration, as `predict` scores it.

    ``platform``: a profile name ("aws-lambda", "alibaba-fc", "local") or a PlatformProfile.
    ``budget``: USD per iteration; ``deadline``: seconds per iteration; ``max_functions``: total
    functions of the plan. Raises PlanInfeasible naming the limit no plan meets, or the layer
    that fits in no function. ``options`` go to `solve` (max_groups, max_micro_batches,
    memory_choices, max_replicas, micro_batch_counts, predictor, time_limit_s, max_nodes).
    """
    return solve(profile, platform, batch_size=batch_size, weights=weights,
                 max_functions=max_functions, budget=budget, deadline=deadline,
                 **options).plan  # fmt: skip


__all__ = ["Candidate", "Solution", "optimize", "plan_bound", "solve"]
