"""The co-optimiser equals exhaustive search through the simulator, on random small instances."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import FakePlatform, FakePredictor, FakeProfile, random_profile

from funcpipe.errors import ConfigError, PlanInfeasible
from funcpipe.planning.bound import link_of, plan_bound, prices_of
from funcpipe.planning.memory import stage_memory_mb
from funcpipe.planning.optimize import optimize, solve
from funcpipe.planning.space import Weights

SMALL = {"max_micro_batches": 4}
PLATFORM = FakePlatform(memory_choices_mb=(512, 1536, 3072))


def _instance(seed: int, layers: int, batch: int):
    prof = random_profile(random.Random(seed), layers)
    return prof, FakePredictor(prof, PLATFORM, batch)


def _solve(prof, predictor, batch, method, **kw):
    return solve(prof, PLATFORM, batch_size=batch, method=method, predictor=predictor,
                 **SMALL, **kw)  # fmt: skip


def _memory_ok(prof, plan, batch) -> bool:
    mu = batch // plan.micro_batches
    return all(
        stage_memory_mb(
            prof,
            s.start,
            s.end,
            micro_batch=mu,
            held=math.ceil(plan.micro_batches / s.replicas),
            replicas=s.replicas,
            base_mb=PLATFORM.runtime_base_mb,
        )
        <= s.memory_mb  # fmt: skip
        for s in plan.stages
    )


weights = st.sampled_from([(1.0, 0.0), (0.0, 1.0), (1.0, 0.001), (100.0, 0.01)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    layers=st.integers(1, 3),
    batch=st.sampled_from([2, 4, 6]),
    w=weights,
)
def test_optimum_equals_exhaustive_search(seed, layers, batch, w) -> None:
    prof, pred = _instance(seed, layers, batch)
    best = _solve(prof, pred, batch, "optimal", weights=w)
    ref = _solve(prof, FakePredictor(prof, PLATFORM, batch), batch, "exhaustive", weights=w)
    assert (best.best is None) == (ref.best is None)
    if ref.best is not None:
        assert best.best.objective == pytest.approx(ref.best.objective, rel=1e-12)
        assert _memory_ok(prof, best.plan, batch)
        assert best.predictions <= ref.predictions
        assert best.extra["bound_violations"] == 0


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    layers=st.integers(2, 3),
    batch=st.sampled_from([4, 6]),
    limit=st.sampled_from(["deadline", "budget", "max_functions"]),
    q=st.floats(0.0, 1.0),
)
def test_limits_equal_exhaustive_search(seed, layers, batch, limit, q) -> None:
    """With a limit set between the extremes, both searches agree and respect it."""
    prof, pred = _instance(seed, layers, batch)
    ref_all = _solve(prof, FakePredictor(prof, PLATFORM, batch), batch, "exhaustive")
    values = {
        "deadline": [c.prediction.time_s for c in ref_all.candidates],
        "budget": [c.prediction.cost_usd for c in ref_all.candidates],
        "max_functions": [c.plan.num_functions for c in ref_all.candidates],
    }[limit]
    lo, hi = min(values), max(values)
    value = lo + q * (hi - lo)
    if limit == "max_functions":
        value = int(value)
    kw = {limit: value}
    best = _solve(prof, pred, batch, "optimal", **kw)
    ref = _solve(prof, FakePredictor(prof, PLATFORM, batch), batch, "exhaustive", **kw)
    assert (best.best is None) == (ref.best is None)
    if ref.best is None:
        with pytest.raises(PlanInfeasible, match=limit):
            _ = best.plan
        return
    assert best.best.objective == pytest.approx(ref.best.objective, rel=1e-12)
    p = best.best.prediction
    assert {"deadline": p.time_s, "budget": p.cost_usd,
            "max_functions": best.plan.num_functions}[limit] <= value  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 4), batch=st.sampled_from([2, 4, 8]))
def test_bound_never_exceeds_the_prediction(seed, layers, batch) -> None:
    prof, pred = _instance(seed, layers, batch)
    ref = _solve(prof, pred, batch, "exhaustive") if layers <= 2 else None
    rng = random.Random(seed)
    from funcpipe.planning.space import build_space

    space = build_space(prof, PLATFORM, batch_size=batch, **SMALL)
    plans = [c.plan for c in ref.candidates] if ref else []
    for _ in range(20):
        m = rng.choice(space.micro_batch_counts)
        k = space.num_groups
        cut = sorted(rng.sample(range(1, k), rng.randint(0, k - 1))) if k > 1 else []
        b = [0, *cut, k]
        stages = [(i, j, rng.choice(space.memory_choices), rng.choice(space.replica_counts(m)))
                  for i, j in zip(b, b[1:], strict=False)]  # fmt: skip
        plans.append(space.plan(m, stages))
    for plan in plans:
        stages = [(space.bounds.index(s.start), space.bounds.index(s.end), s.memory_mb,
                   s.replicas) for s in plan.stages]  # fmt: skip
        t, cost, _ = plan_bound(space, plan.micro_batches, stages, link_of(PLATFORM),
                                prices_of(PLATFORM), Weights(1, 0))  # fmt: skip
        p = pred(plan)
        assert t <= p.time_s * (1 + 1e-9)
        assert cost <= p.cost_usd * (1 + 1e-9)


def test_layer_too_big_is_named_with_its_size() -> None:
    prof = FakeProfile(fwd=[0.01, 0.01], act=[1e3, 1e3], params=[1e6, 2e9], saved=[1e3, 1e3],
                       names=["embed", "huge_block"])  # fmt: skip
    with pytest.raises(PlanInfeasible) as err:
        optimize(prof, PLATFORM, batch_size=4, predictor=FakePredictor(prof, PLATFORM, 4))
    msg = str(err.value)
    assert "huge_block" in msg and "layer 1" in msg and "3072 MB" in msg
    assert "MB" in msg.split("needs")[1]


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"deadline": 1e-6}, "deadline"), ({"budget": 1e-12}, "budget"),
     ({"max_functions": 1, "deadline": 1e-6}, "max_functions")],
)  # fmt: skip
def test_infeasible_limits_name_the_limit(kw, named) -> None:
    prof, pred = _instance(3, 3, 4)
    with pytest.raises(PlanInfeasible, match=named):
        optimize(prof, PLATFORM, batch_size=4, predictor=pred, **SMALL, **kw)


@pytest.mark.parametrize(
    "kw",
    [{"weights": (0, 0)}, {"weights": (-1, 1)}, {"weights": "fast"}, {"budget": 0},
     {"deadline": -1}, {"max_functions": 0}, {"batch_size": 0}],
)  # fmt: skip
def test_bad_arguments_are_config_errors(kw) -> None:
    prof, pred = _instance(1, 2, 4)
    args = {"batch_size": 4, **kw}
    with pytest.raises(ConfigError):
        optimize(prof, PLATFORM, predictor=pred, **args)


def test_baselines_never_beat_the_optimum() -> None:
    prof, pred = _instance(7, 3, 4)
    best = _solve(prof, pred, 4, "optimal")
    for method in ("tpdmp", "lambdaml", "bayes", "random"):
        other = _solve(prof, FakePredictor(prof, PLATFORM, 4), 4, method,
                       prediction_budget=best.predictions)  # fmt: skip
        if other.best is not None:
            assert other.best.objective >= best.best.objective * (1 - 1e-12), method
    bb = _solve(prof, FakePredictor(prof, PLATFORM, 4), 4, "bayes", prediction_budget=5)
    assert bb.predictions <= 5


BASELINES = ("tpdmp", "lambdaml", "bayes", "random")


@pytest.mark.parametrize("seed", [2, 19, 23, 41])
def test_the_optimiser_is_never_worse_than_a_baseline(seed) -> None:
    """Deeper instances (8 layers in 6 groups, up to 8 micro-batches): the optimiser's objective
    is at most every baseline's, the black-box ones given as many simulations."""
    prof = random_profile(random.Random(seed), 8)
    kw = {"max_groups": 6, "max_micro_batches": 8}
    best = solve(prof, PLATFORM, batch_size=8, predictor=FakePredictor(prof, PLATFORM, 8), **kw)
    assert best.extra["proven_optimal"]
    for method in BASELINES:
        other = solve(prof, PLATFORM, batch_size=8, method=method, predictor=FakePredictor(
            prof, PLATFORM, 8), prediction_budget=best.predictions, **kw)  # fmt: skip
        assert other.best is not None, method
        assert best.best.objective <= other.best.objective * (1 + 1e-12), method


@pytest.mark.parametrize("seed", [2, 19, 23, 41])
def test_a_search_cut_short_still_beats_tpdmp_and_lambdaml(seed) -> None:
    """With no node expanded (max_nodes=0), the seeds alone: the answer is at most the
    TPDMP-like and LambdaML-like baselines' and the gap says it is not proven."""
    prof = random_profile(random.Random(seed), 8)
    kw = {"max_groups": 6, "max_micro_batches": 8}
    cut = solve(prof, PLATFORM, batch_size=8, predictor=FakePredictor(prof, PLATFORM, 8),
                max_nodes=0, **kw)  # fmt: skip
    assert cut.extra["seeds_complete"] and cut.nodes == 0
    assert not cut.extra["proven_optimal"] and cut.extra["gap"] > 0
    for method in ("tpdmp", "lambdaml"):
        other = solve(prof, PLATFORM, batch_size=8, method=method,
                      predictor=FakePredictor(prof, PLATFORM, 8), **kw)  # fmt: skip
        assert cut.best.objective <= other.best.objective * (1 + 1e-12), method


def test_the_optimiser_beats_the_baselines_through_predict(cnn_profile) -> None:
    space = {"max_groups": 4, "max_micro_batches": 4, "memory_choices": (1024, 2048, 3538)}
    best = solve(cnn_profile, "aws-lambda", batch_size=8, **space)
    assert best.extra["proven_optimal"] and best.extra["bound_violations"] == 0
    for method in BASELINES:
        other = solve(cnn_profile, "aws-lambda", batch_size=8, method=method,
                      prediction_budget=best.predictions, **space)  # fmt: skip
        assert best.best.objective <= other.best.objective * (1 + 1e-12), method


def test_lambdaml_is_one_stage_and_tpdmp_has_no_replicas() -> None:
    prof, pred = _instance(11, 3, 4)
    dp = _solve(prof, pred, 4, "lambdaml")
    assert all(c.plan.num_stages == 1 for c in dp.candidates)
    tp = _solve(prof, FakePredictor(prof, PLATFORM, 4), 4, "tpdmp")
    assert all(s.replicas == 1 for c in tp.candidates for s in c.plan.stages)
    assert all(len({s.memory_mb for s in c.plan.stages}) == 1 for c in tp.candidates)


def test_layer_merging_keeps_big_models_tractable() -> None:
    prof = random_profile(random.Random(5), 60)
    pred = FakePredictor(prof, PLATFORM, 8)
    sol = solve(prof, PLATFORM, batch_size=8, predictor=pred, max_groups=6)
    assert sol.space.num_groups <= 6
    assert {s.start for s in sol.plan.stages} <= set(sol.space.bounds)
    assert sol.plan.num_layers == 60


# --- with the real simulator and a measured profile ------------------------------------------

REAL_SPACE = {"max_groups": 3, "max_micro_batches": 2, "memory_choices": (1024, 3538)}


@pytest.mark.parametrize(
    ("platform", "w"),
    [("aws-lambda", (1.0, 0.001)), ("alibaba-fc", (0.0, 1.0)), ("local", (1.0, 0.0))],
)
def test_optimum_equals_exhaustive_search_through_predict(cnn_profile, platform, w) -> None:
    best = solve(cnn_profile, platform, batch_size=4, weights=w, **REAL_SPACE)
    ref = solve(cnn_profile, platform, batch_size=4, weights=w, method="exhaustive",
                **REAL_SPACE)  # fmt: skip
    assert best.extra["proven_optimal"] and best.extra["bound_violations"] == 0
    assert best.best.objective == pytest.approx(ref.best.objective, rel=1e-12)
    assert best.predictions < ref.predictions / 5
    need = best.best.prediction.memory_mb
    assert all(n <= s.memory_mb for n, s in zip(need, best.plan.stages, strict=True))


@pytest.mark.parametrize("platform", ["aws-lambda", "local"])
def test_real_bound_never_exceeds_the_prediction(cnn_profile, platform) -> None:
    """Every plan of the space, including (on `local`) CPU shares below one core, which the
    emulator's quota per period lets run at full speed while the quota lasts."""
    from funcpipe.planning.platforms import get_platform

    pf = get_platform(platform)
    ref = solve(cnn_profile, pf, batch_size=4, method="exhaustive", **REAL_SPACE)
    space = ref.space
    for c in ref.candidates:
        stages = [(space.bounds.index(s.start), space.bounds.index(s.end), s.memory_mb,
                   s.replicas) for s in c.plan.stages]  # fmt: skip
        t, cost, _ = plan_bound(space, c.plan.micro_batches, stages, link_of(pf), prices_of(pf),
                                Weights(1, 0))  # fmt: skip
        assert t <= c.prediction.time_s * (1 + 1e-3)
        assert cost <= c.prediction.cost_usd * (1 + 1e-3)


def test_optimize_takes_a_platform_name_and_returns_a_plan(cnn_profile) -> None:
    import funcpipe

    plan = funcpipe.optimize(cnn_profile, "aws-lambda", batch_size=8, weights=(1, 0.001))
    assert isinstance(plan, funcpipe.Plan) and plan.num_layers == cnn_profile.num_layers
    pred = funcpipe.predict(plan, cnn_profile, "aws-lambda", batch_size=8)
    assert all(n <= s.memory_mb for n, s in zip(pred.memory_mb, plan.stages, strict=True))


def test_the_bound_leaves_out_what_a_links_burst_gets_across_at_once() -> None:
    """On the emulator's link a request may get its first ~2 ms of bytes across at once (the
    token bucket's burst), so the bound counts bytes beyond a burst per request only."""
    from funcpipe.planning.platforms import local_platform

    link = link_of(local_platform())
    assert link.up_burst > 0 and link.down_burst > 0
    assert link.up(link.up_burst / 2) == pytest.approx(link.latency_s)
    assert link.down(link.down_burst + link.down_bps) == pytest.approx(link.latency_s + 1.0)
    # an all-reduce's requests each get a burst: no more than the bytes beyond them
    up, down = link.sync_lanes(8e6, 2)
    assert 0 < up < 8e6 / link.up_bps and 0 < down < 8e6 / link.down_bps
