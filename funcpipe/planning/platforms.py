"""The platforms a planner can be asked about by name, the local emulator's among them.

The profiles themselves are plain data in :mod:`funcpipe.platform_profiles` (re-exported here,
where they always were). This module adds what needs the layers above that data: the local
emulator's profile, built from the emulator's own settings.

"local" is the emulator exactly as ``funcpipe.train(platform="local")`` runs it by default: the
default :class:`~funcpipe.storage.throttle.LinkConfig`, Lambda's CPU share per GB clamped to the
host's cores (the emulated functions share them), Lambda's memory range and prices (the cost
report prices a local run as if it ran on AWS Lambda + S3).
"""

from __future__ import annotations

import os
import time

from funcpipe.errors import ConfigError
from funcpipe.platform_profiles import (
    ALIBABA_FC,
    AWS_LAMBDA,
    AWS_LAMBDA_ARM64,
    NAMED,
    LinkProfile,
    PlatformProfile,
    Prices,
    measured_runtime,
)
from funcpipe.platforms.local import CFS_PERIOD_US, MIN_CPU_SHARE, local_torch_threads
from funcpipe.platforms.local import LAMBDA_CPU_PER_GB as LOCAL_CPU_PER_GB
from funcpipe.storage.throttle import MB, LinkConfig, burst_bytes

__all__ = [
    "ALIBABA_FC",
    "AWS_LAMBDA",
    "AWS_LAMBDA_ARM64",
    "background_tasks",
    "LinkProfile",
    "PlatformProfile",
    "Prices",
    "get_platform",
    "link_profile",
    "local_platform",
    "measured_runtime",
    "platform_names",
]


def link_profile(link: LinkConfig) -> LinkProfile:
    """The profile of an emulated :class:`~funcpipe.storage.throttle.LinkConfig` (MB = 1e6 B),
    with the emulator's burst (see :func:`funcpipe.storage.throttle.burst_bytes`)."""
    if not link.enabled:  # an unthrottled link: as fast as local memory
        return LinkProfile(up_bytes_s=1e12, down_bytes_s=1e12, latency_s=0.0)
    up, down = link.up_mb_s * MB, link.down_mb_s * MB
    return LinkProfile(
        up_bytes_s=up,
        down_bytes_s=down,
        latency_s=link.latency_s,
        up_burst_bytes=burst_bytes(up),
        down_burst_bytes=burst_bytes(down),
    )


def local_platform(
    link: LinkConfig | None = None,
    *,
    host_cores: float | None = None,
    background_tasks: float = 0.0,
) -> PlatformProfile:
    """The emulator as ``train(platform="local")`` runs it (``link`` = its LinkConfig).

    Functions are processes sharing this host's cores (``os.sched_getaffinity``), each with a CPU
    quota of Lambda's share for its memory; the link defaults to ``LinkConfig()``; the runtime
    base and start-up time are measured on this host. On a shared host, ``host_cores`` may be
    the cores a job actually gets (fewer than the host has), or ``background_tasks`` the busy
    threads of other programs competing for them (see :func:`background_tasks`).
    """
    host = len(os.sched_getaffinity(0))
    cores = host_cores or host
    return AWS_LAMBDA.replace(
        name="local",
        description="local emulator (priced as AWS Lambda + S3)",
        cpu_per_gb=LOCAL_CPU_PER_GB,
        min_cpus=MIN_CPU_SHARE,
        max_cpus=float(host),  # a function's quota is clamped to the host's cores
        host_cores=cores,
        background_tasks=background_tasks,
        link=link_profile(link if link is not None else LinkConfig()),
        startup_s=None,
        cpu_quota_period_s=CFS_PERIOD_US / 1e6,
        max_threads=local_torch_threads(float(host), host),
    )


def background_tasks(seconds: float = 0.5) -> float:
    """Busy threads of other programs on this host, estimated from the share of a core that one
    spinning thread gets: on ``n`` cores shared fairly, it gets ``n / (others + 1)``."""
    cores = len(os.sched_getaffinity(0))
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    x = 0
    while time.perf_counter() - wall0 < seconds:
        for _ in range(1000):
            x += 1
    share = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
    if share >= 0.98:
        return 0.0
    return max(0.0, cores / max(share, 1e-3) - 1)


def platform_names() -> list[str]:
    return [*NAMED, "local"]


def get_platform(platform: str | PlatformProfile) -> PlatformProfile:
    """The profile called ``platform`` (or ``platform`` itself if it is already a profile)."""
    if isinstance(platform, PlatformProfile):
        return platform
    if platform == "local":
        return local_platform()
    if platform in NAMED:
        return NAMED[platform]
    raise ConfigError(
        f"unknown platform {platform!r}; known platforms: {', '.join(platform_names())} "
        "(or pass a funcpipe.planning.platforms.PlatformProfile)"
    )
