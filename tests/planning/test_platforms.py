"""Platform profiles are the one source of prices and limits."""

from __future__ import annotations

import dataclasses
import os

import pytest
from planner_fakes import FakePredictor, FakeProfile

from funcpipe import Plan
from funcpipe.client.pricing import AWS_LAMBDA, Pricing
from funcpipe.errors import ConfigError, PlanInfeasible
from funcpipe.planning import platforms
from funcpipe.planning.platforms import get_platform, measured_runtime
from funcpipe.platform_profiles import runtime_base
from funcpipe.platforms.base import PlatformLimits
from funcpipe.storage.throttle import LinkConfig


def test_runtime_pricing_and_limits_come_from_the_aws_profile() -> None:
    aws = get_platform("aws-lambda")
    assert aws.pricing == AWS_LAMBDA
    assert Pricing() == aws.pricing
    assert PlatformLimits() == aws.limits
    assert aws.prices.gb_second == pytest.approx(0.0000166667)
    assert aws.limits.max_memory_mb == 10240 and aws.limits.max_timeout_s == 900


def test_changing_a_price_in_a_profile_changes_its_pricing() -> None:
    aws = get_platform("aws-lambda")
    dearer = aws.replace(prices=dataclasses.replace(aws.prices, gb_second=1.0, list=0.25))
    assert dearer.pricing.gb_second == 1.0
    assert dearer.pricing.list_request == 0.25
    plan = Plan.even(2, stages=1, memory_mb=2048)
    assert dearer.pricing.compute_cost(plan, 3.0) == pytest.approx(6.0)


def test_s3_request_classes() -> None:
    p = get_platform("aws-lambda").pricing
    assert p.list_request == p.put_request == 0.005 / 1000  # LIST is in the PUT class
    assert p.delete_request == 0.0  # DELETE is free
    assert p.request_cost(1000, 1000, 1000, 1000) == pytest.approx(0.005 + 0.0004 + 0.005)
    assert p.request_cost(10, 0) == pytest.approx(10 * p.put_request)  # old callers still work


def test_lambda_cpu_share() -> None:
    aws = get_platform("aws-lambda")
    assert aws.cpus(1769) == pytest.approx(1.0)
    assert aws.cpus(10240) == pytest.approx(10240 / 1769)
    assert aws.cpus(20000) == 6.0  # capped at 6 vCPUs
    assert 1769 in aws.memory_choices_mb and 10240 in aws.memory_choices_mb
    arm = get_platform("aws-lambda-arm64")
    assert arm.prices.gb_second < aws.prices.gb_second and arm.limits == aws.limits


def test_local_profile_is_the_emulator_as_train_runs_it() -> None:
    local = get_platform("local")
    default = LinkConfig()
    assert local.link.up_bytes_s == default.up_mb_s * 1e6
    assert local.link.latency_s == default.latency_s
    assert local.host_cores == len(os.sched_getaffinity(0))
    assert local.cpus(10240) <= local.host_cores
    from funcpipe.planning.profile import threads_for
    from funcpipe.platforms.local import LocalPlatform, local_torch_threads

    with LocalPlatform() as plat:
        for mb in (256, 1769, 3008, 10240):
            assert local.cpus(mb) == pytest.approx(plat.cpu_share(mb))
            # the model runs as many torch threads as the platform gives the function
            cores = len(os.sched_getaffinity(0))
            expected = local_torch_threads(plat.cpu_share(mb), cores)
            assert threads_for(local.cpus(mb), local.max_threads) == expected
    assert get_platform("aws-lambda").max_threads is None


def test_alibaba_and_unknown_names() -> None:
    ali = get_platform("alibaba-fc")
    assert ali.max_memory_mb == 32768 and ali.link.latency_s == 0.05
    with pytest.raises(ConfigError, match="aws-lambda"):
        get_platform("gcp")
    assert set(platforms.platform_names()) >= {"aws-lambda", "alibaba-fc", "local"}


def test_runtime_base_is_measured_and_cached(tmp_path, monkeypatch) -> None:
    figures = measured_runtime()
    assert 50 < figures["rss_mb"] < 2000  # an interpreter with torch loaded
    assert get_platform("aws-lambda").runtime_base_mb == figures["rss_mb"]
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime_base, "_measured", {"rss_mb": 123.0, "import_s": 1.0})
    assert get_platform("local").runtime_base_mb == 123.0


def test_background_probe_counts_competing_threads() -> None:
    assert platforms.background_tasks(0.05) >= 0.0
    busy = get_platform("local").replace(background_tasks=3.0)
    assert busy.background_tasks == 3.0 and busy.pricing == get_platform("local").pricing


def test_the_profiles_are_plain_data_under_their_old_names() -> None:
    """One source: the old modules hand out the very objects of funcpipe.platform_profiles."""
    import funcpipe.platform_profiles as data
    from funcpipe.client import pricing
    from funcpipe.platforms import base

    assert platforms.AWS_LAMBDA is data.AWS_LAMBDA and platforms.ALIBABA_FC is data.ALIBABA_FC
    assert platforms.PlatformProfile is data.PlatformProfile
    assert platforms.LinkProfile is data.LinkProfile and platforms.Prices is data.Prices
    assert pricing.Pricing is data.Pricing and base.PlatformLimits is data.PlatformLimits
    assert platforms.link_profile(LinkConfig(enabled=False)).up_bytes_s == 1e12


def test_the_activity_sink_is_the_runtimes() -> None:
    from funcpipe.platforms import base
    from funcpipe.runtime import activity

    assert base.set_activity is activity.set_activity
    seen: list[str] = []
    base._install_activity_sink(seen.append)
    try:
        base.set_activity("forward mb 0")
    finally:
        activity._install_activity_sink(None)
    assert seen == ["forward mb 0"] and activity._activity_sink is None


def _one_big_layer() -> FakeProfile:
    """A one-layer model whose weights, gradients and Adam state need about 11.5 GB."""
    return FakeProfile(fwd=[0.01], act=[1e4], params=[3e9], saved=[1e5])


def test_optimize_plans_alibaba_functions_larger_than_lambdas() -> None:
    """The default search space takes its sizes from the platform: on Alibaba FC the optimiser
    may pick more than 10,240 MB (Lambda's most), and the plan passes Alibaba's limits."""
    from funcpipe.planning.optimize import optimize

    prof = _one_big_layer()
    ali = get_platform("alibaba-fc")
    plan = optimize(prof, ali, batch_size=4, predictor=FakePredictor(prof, ali, 4),
                    max_micro_batches=2)  # fmt: skip
    assert plan.stages[0].memory_mb > 10240
    ali.limits.check_plan(plan, ali.name)
    aws = get_platform("aws-lambda")
    with pytest.raises(PlanInfeasible, match="largest function has 10240 MB"):
        optimize(prof, aws, batch_size=4, predictor=FakePredictor(prof, aws, 4))
    with pytest.raises(
        ConfigError,
        match=r"memory choices \[20480\] must be inside aws-lambda.s range 128..10240 MB",
    ):
        optimize(prof, aws, batch_size=4, memory_choices=[2048, 20480])
