"""Platform profiles are the one source of prices and limits."""

from __future__ import annotations

import dataclasses
import os

import pytest

from funcpipe import Plan
from funcpipe.client.pricing import AWS_LAMBDA, Pricing
from funcpipe.errors import ConfigError
from funcpipe.planning import platforms
from funcpipe.planning.platforms import get_platform, measured_runtime
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
    monkeypatch.setattr(platforms, "_measured", {"rss_mb": 123.0, "import_s": 1.0})
    assert get_platform("local").runtime_base_mb == 123.0


def test_background_probe_counts_competing_threads() -> None:
    assert platforms.background_tasks(0.05) >= 0.0
    busy = get_platform("local").replace(background_tasks=3.0)
    assert busy.background_tasks == 3.0 and busy.pricing == get_platform("local").pricing
