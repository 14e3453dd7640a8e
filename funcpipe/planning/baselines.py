"""Other ways to choose a plan, behind the optimiser's interface, for comparison and tests.

* ``exhaustive``: simulate every plan of the search space (small models only); the reference
  the optimiser must equal.
* ``tpdmp``: a TPDMP/GPipe-style partitioner: every stage on functions of one memory size, no
  data parallelism; stages balanced by compute (min-max over contiguous groups), tried for
  every stage count, memory size and micro-batch count, the best by the simulator.
* ``lambdaml``: LambdaML-style pure data parallelism: one stage holding the whole model on d
  functions, one micro-batch each, for every d and memory size.
* ``bayes`` / ``random``: black-box search (optuna's TPE sampler / random sampler) over the same
  space, given as many simulations as the optimiser used (``prediction_budget``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

from funcpipe.errors import ConfigError
from funcpipe.plan import Plan
from funcpipe.planning.candidates import Candidate, Evaluator, Solution, infeasible_message
from funcpipe.planning.sim.kernel import OutOfTime, deadline
from funcpipe.planning.space import SearchSpace

METHODS = ("optimal", "exhaustive", "tpdmp", "lambdaml", "bayes", "random")
Stages = list[tuple[int, int, int, int]]


def run(
    method: str,
    space: SearchSpace,
    evaluate: Evaluator,
    *,
    seed: int = 0,
    prediction_budget: int | None = None,
    time_limit_s: float | None = None,
) -> Solution:
    """Search ``space`` by ``method``; with ``time_limit_s`` no simulation starts that would end
    past the limit (judged by the slowest one so far), one still running at the limit stops
    there, and ``extra["stopped"]`` says so."""
    t0 = time.perf_counter()
    clock = _Clock(t0, time_limit_s)
    if method == "exhaustive":
        plans: Iterator[Plan] = all_plans(space)
    elif method == "tpdmp":
        plans = tpdmp_plans(space)
    elif method == "lambdaml":
        plans = lambdaml_plans(space)
    elif method in ("bayes", "random"):
        return _blackbox(method, space, evaluate, seed, prediction_budget or 50, t0, clock)
    else:
        raise ConfigError(f"unknown planning method {method!r}; choose one of {', '.join(METHODS)}")
    for plan in plans:
        if clock.out_of_time():
            break
        clock.time(evaluate, plan)
    sol = _solution(method, space, evaluate, t0)
    sol.extra["stopped"] = clock.stopped
    return sol


class _Clock:
    """A search's time limit: a new simulation starts only if the slowest so far would fit."""

    def __init__(self, t0: float, limit_s: float | None) -> None:
        self.t0, self.limit_s, self.slowest, self.stopped = t0, limit_s, 0.0, False

    def out_of_time(self) -> bool:
        if self.limit_s is not None and (
            time.perf_counter() - self.t0 + self.slowest > self.limit_s
        ):
            self.stopped = True
        return self.stopped

    def time(self, evaluate: Evaluator, plan: Plan) -> Candidate | None:
        """``plan`` scored, or None if the limit came during its simulation."""
        start = time.perf_counter()
        stop = None if self.limit_s is None else self.t0 + self.limit_s
        try:
            with deadline(stop):
                return evaluate(plan)
        except OutOfTime:
            self.stopped = True
            return None
        finally:
            self.slowest = max(self.slowest, time.perf_counter() - start)


def _solution(method: str, space: SearchSpace, evaluate: Evaluator, t0: float) -> Solution:
    cands = sorted(evaluate.cache.values(), key=lambda c: c.objective)
    feasible = [c for c in cands if c.feasible]
    best = feasible[0] if feasible else None
    sol = Solution(method, best, cands, time.perf_counter() - t0, evaluate.count, space)
    if best is None:
        closest = cands[0] if cands else None
        sol.note = f"{method}: " + infeasible_message(evaluate.limits, space, closest)
    return sol


def _fits(space: SearchSpace, m: int, stages: Stages) -> bool:
    return all(mem >= space.need_mb(i, k, m, d) for i, k, mem, d in stages)


def _partitions(n: int) -> Iterator[tuple[int, ...]]:
    """Every way to cut groups 0..n into contiguous non-empty runs, as boundary tuples."""
    for s in range(1, n + 1):
        for cuts in itertools.combinations(range(1, n), s - 1):
            yield (0, *cuts, n)


def all_plans(space: SearchSpace) -> Iterator[Plan]:
    """Every memory-feasible plan of the space (exponential: small instances only)."""
    for m in space.micro_batch_counts:
        per_stage = [(mem, d) for d in space.replica_counts(m) for mem in space.memory_choices]
        for cut in _partitions(space.num_groups):
            segs = list(zip(cut, cut[1:], strict=False))
            for combo in itertools.product(per_stage, repeat=len(segs)):
                stages = [(i, k, mem, d) for (i, k), (mem, d) in zip(segs, combo, strict=True)]
                if _fits(space, m, stages):
                    yield space.plan(m, stages)


def _balanced_cut(work: list[float], parts: int) -> tuple[int, ...]:
    """Boundaries splitting ``work`` into ``parts`` contiguous runs minimising the largest sum."""
    n = len(work)
    prefix = [0.0, *itertools.accumulate(work)]
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    arg = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        for k in range(p, n + 1):
            for i in range(p - 1, k):
                v = max(best[p - 1][i], prefix[k] - prefix[i])
                if v < best[p][k]:
                    best[p][k], arg[p][k] = v, i
    cut = [n]
    for p in range(parts, 0, -1):
        cut.append(arg[p][cut[-1]])
    return tuple(reversed(cut))


def tpdmp_stages(space: SearchSpace, replicas: int | None = 1) -> Iterator[tuple[int, Stages]]:
    """(micro-batches, stages) of the TPDMP-like partitions: one memory size, stages balanced by
    compute, for every stage count; ``replicas`` per stage (None: every count that divides M)."""
    prof = space.profile
    b = space.bounds
    for m in space.micro_batch_counts:
        mu = space.micro_batch(m)
        reps = space.replica_counts(m) if replicas is None else [replicas]
        for mem in space.memory_choices:
            cpus = float(space.platform.cpus(mem))
            cap = getattr(space.platform, "max_threads", None)
            work = [
                sum(
                    prof.forward_s(i, mu, cpus, cap) + prof.backward_s(i, mu, cpus, cap)
                    for i in range(b[g], b[g + 1])
                )  # fmt: skip
                for g in range(space.num_groups)
            ]
            for parts in range(1, space.num_groups + 1):
                cut = _balanced_cut(work, parts)
                for d in reps:
                    stages = [(i, k, mem, d) for i, k in zip(cut, cut[1:], strict=False)]
                    if _fits(space, m, stages):
                        yield m, stages


def lambdaml_stages(space: SearchSpace) -> Iterator[tuple[int, Stages]]:
    """(micro-batches, stages) of pure data parallelism: the whole model on M functions."""
    k = space.num_groups
    for m in space.micro_batch_counts:
        if space.max_replicas is not None and m > space.max_replicas:
            continue
        for mem in space.memory_choices:
            stages = [(0, k, mem, m)]
            if _fits(space, m, stages):
                yield m, stages


def tpdmp_plans(space: SearchSpace) -> Iterator[Plan]:
    for m, stages in tpdmp_stages(space):
        yield space.plan(m, stages)


def lambdaml_plans(space: SearchSpace) -> Iterator[Plan]:
    for m, stages in lambdaml_stages(space):
        yield space.plan(m, stages)


def seed_stages(space: SearchSpace) -> list[tuple[int, Stages]]:
    """Cheap plans the exact search simulates first (those its bound cannot rule out): every plan
    of the TPDMP-like and LambdaML-like baselines, and the TPDMP-like partitions with the same
    number of replicas on every stage. So the optimiser's answer is never worse than those two
    baselines', and a good plan is known before the search starts pruning."""
    seen: set[tuple] = set()
    out = []
    for m, stages in itertools.chain(
        tpdmp_stages(space), lambdaml_stages(space), tpdmp_stages(space, replicas=None)
    ):
        key = (m, tuple(stages))
        if key not in seen:
            seen.add(key)
            out.append((m, stages))
    return out


def _blackbox(
    method: str,
    space: SearchSpace,
    evaluate: Evaluator,
    seed: int,
    prediction_budget: int,
    t0: float,
    clock: _Clock,
) -> Solution:
    """optuna over (M, stage count, cuts, memory and replicas per stage); infeasible = penalty."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            f"planning method {method!r} needs optuna: pip install 'funcpipe[planner]'"
        ) from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if method == "bayes"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(sampler=sampler)
    k = space.num_groups
    penalty = [0.0]
    trials = 0
    max_trials = 50 * prediction_budget  # memory-infeasible draws cost no simulation

    def objective(trial: optuna.Trial) -> float:
        m = trial.suggest_categorical("micro_batches", list(space.micro_batch_counts))
        parts = trial.suggest_int("stages", 1, k)
        picks = {trial.suggest_int(f"cut{i}", 1, k - 1) for i in range(parts - 1)}
        cuts = sorted(picks) if k > 1 else []
        bounds = [0, *cuts, k]
        reps = space.replica_counts(m)
        stages = []
        for s, (i, j) in enumerate(zip(bounds, bounds[1:], strict=False)):
            mem = trial.suggest_categorical(f"mem{s}", list(space.memory_choices))
            d = reps[trial.suggest_int(f"rep{s}", 0, len(reps) - 1) % len(reps)]
            stages.append((i, j, mem, d))
        if not _fits(space, m, stages):
            return penalty[0] * 2 + 1.0
        c = clock.time(evaluate, space.plan(m, stages))
        if c is None:  # out of time: the study ends at the next check
            return penalty[0] * 2 + 1.0
        penalty[0] = max(penalty[0], c.objective)
        return c.objective if c.feasible else penalty[0] * 2 + 1.0

    while evaluate.count < prediction_budget and trials < max_trials:
        if clock.out_of_time():
            break
        study.optimize(objective, n_trials=1)
        trials += 1
    sol = _solution(method, space, evaluate, t0)
    sol.extra["trials"] = trials
    sol.extra["stopped"] = clock.stopped
    return sol
