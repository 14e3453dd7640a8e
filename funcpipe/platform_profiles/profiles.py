"""One :class:`PlatformProfile` per serverless platform, and the named ones FuncPipe knows.

A profile says what a function may be (memory range and step, time limit), how fast it is (CPU
share per GB, storage link) and what it costs (per GB-second and per request). The runtime's
:class:`~funcpipe.platform_profiles.Pricing` and
:class:`~funcpipe.platform_profiles.PlatformLimits` are derived from it (``profile.pricing``,
``profile.limits``), and the planner reads it directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from funcpipe.errors import ConfigError
from funcpipe.platform_profiles import runtime_base
from funcpipe.platform_profiles.limits import PlatformLimits
from funcpipe.platform_profiles.prices import LAMBDA_DESCRIPTION, LAMBDA_PRICES, Prices, Pricing

__all__ = [
    "ALIBABA_FC",
    "AWS_LAMBDA",
    "AWS_LAMBDA_ARM64",
    "LAMBDA_CPU_PER_GB",
    "NAMED",
    "LinkProfile",
    "PlatformProfile",
]

MB = 1e6  # link rates are in MB = 1e6 bytes, as in the emulator's LinkConfig


@dataclass(frozen=True)
class LinkProfile:
    """One function's link to object storage: bytes/s each way and seconds per request.

    ``up_burst_bytes``/``down_burst_bytes``: what an idle link lets through at once before its
    rate applies (a token bucket's depth). The local emulator has one (see
    :func:`funcpipe.storage.throttle.burst_bytes`); for a cloud's link none is assumed.
    """

    up_bytes_s: float
    down_bytes_s: float
    latency_s: float
    up_burst_bytes: float = 0.0
    down_burst_bytes: float = 0.0

    def __post_init__(self) -> None:
        if not (self.up_bytes_s > 0 and self.down_bytes_s > 0 and self.latency_s >= 0):
            raise ConfigError(f"LinkProfile needs positive rates and latency >= 0, got {self}")
        if not (self.up_burst_bytes >= 0 and self.down_burst_bytes >= 0):
            raise ConfigError(f"LinkProfile needs bursts >= 0 bytes, got {self}")


@dataclass(frozen=True)
class PlatformProfile:
    """What a planner needs to know about a serverless platform (see module docstring).

    ``memory_choices_mb`` are the sizes a planner considers (a grid inside the platform's range,
    including the sizes where the CPU share reaches a whole core); ``min/max/step`` are what the
    platform accepts. ``host_cores`` is set for platforms whose functions share one machine (the
    local emulator): their compute slows down when the CPU shares of busy functions exceed it,
    and ``background_tasks`` counts other programs' busy threads sharing those cores.
    ``runtime_base_mb`` = None means "measure it" (see :func:`measured_runtime`).
    """

    name: str
    memory_choices_mb: tuple[int, ...]
    min_memory_mb: int
    max_memory_mb: int
    memory_step_mb: int
    max_timeout_s: float
    cpu_per_gb: float  # cores per GiB (1024 MB) of function memory
    max_cpus: float
    link: LinkProfile
    prices: Prices
    min_cpus: float = 0.1
    host_cores: float | None = None
    background_tasks: float = 0.0  # other programs' busy threads competing for host_cores
    startup_s: float | None = None  # a function's start (cold start + imports); None = measure
    # A CPU share below the function's thread count enforced as a quota per period (Linux CFS
    # bandwidth control): threads run at full speed until the period's quota is spent, then wait
    # for the next period. None: model a share as a uniform slow-down (no burst).
    cpu_quota_period_s: float | None = None
    runtime_base_mb_value: float | None = None
    description: str = ""
    # Most torch threads a function runs, whatever its share; None: one per whole core. The
    # local emulator keeps a core for the client and the functions' own transfer threads.
    max_threads: int | None = None

    def cpus(self, memory_mb: float) -> float:
        """CPU cores a function of ``memory_mb`` gets (proportional to memory, clamped)."""
        share = memory_mb / 1024 * self.cpu_per_gb
        return min(max(share, self.min_cpus), self.max_cpus)

    @property
    def runtime_base_mb(self) -> float:
        """Memory of a function before any model: interpreter + torch (measured when None)."""
        if self.runtime_base_mb_value is not None:
            return self.runtime_base_mb_value
        return runtime_base.measured_runtime()["rss_mb"]

    @property
    def startup(self) -> float:
        """Seconds from invocation to a function ready to run its first action."""
        if self.startup_s is not None:
            return self.startup_s
        return runtime_base.measured_runtime()["import_s"]

    @property
    def limits(self) -> PlatformLimits:
        return PlatformLimits(
            min_memory_mb=self.min_memory_mb,
            max_memory_mb=self.max_memory_mb,
            max_timeout_s=self.max_timeout_s,
            memory_step_mb=self.memory_step_mb,
        )

    @property
    def pricing(self) -> Pricing:
        return Pricing.from_prices(self.description or self.name, self.prices)

    def replace(self, **changes: object) -> PlatformProfile:
        """A copy with some fields changed, e.g. ``AWS_LAMBDA.replace(link=...)``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _grid(lo: int, hi: int, step: int, cpu_per_gb: float, max_cpus: float) -> tuple[int, ...]:
    """Multiples of ``step`` plus the sizes where the CPU share reaches 1, 2, ... cores."""
    sizes = set(range(lo, hi + 1, step))
    for cores in range(1, math.floor(max_cpus) + 1):
        mb = round(cores * 1024 / cpu_per_gb)
        if lo <= mb <= hi:
            sizes.add(mb)
    return tuple(sorted(sizes))


LAMBDA_CPU_PER_GB = 1024 / 1769  # one vCPU at 1769 MB

# AWS Lambda, us-east-1, x86_64: limits and prices as in limits.py and prices.py (their defaults),
# one vCPU at 1,769 MB, up to 6 vCPUs (https://docs.aws.amazon.com/lambda/latest/dg/
# configuration-memory.html). Link ~70 MB/s per function and ~10 ms per request: the FuncPipe
# paper (Liu et al. 2022) and the emulator's defaults. Read 2022; checked 2026-11.
_LAMBDA_LIMITS = PlatformLimits()
AWS_LAMBDA = PlatformProfile(
    name="aws-lambda",
    description=LAMBDA_DESCRIPTION,
    memory_choices_mb=_grid(512, _LAMBDA_LIMITS.max_memory_mb, 512, LAMBDA_CPU_PER_GB, 6),
    min_memory_mb=_LAMBDA_LIMITS.min_memory_mb,
    max_memory_mb=_LAMBDA_LIMITS.max_memory_mb,
    memory_step_mb=_LAMBDA_LIMITS.memory_step_mb,
    max_timeout_s=_LAMBDA_LIMITS.max_timeout_s,
    cpu_per_gb=LAMBDA_CPU_PER_GB,
    max_cpus=6.0,
    link=LinkProfile(up_bytes_s=70 * MB, down_bytes_s=70 * MB, latency_s=0.01),
    prices=LAMBDA_PRICES,
    startup_s=2.0,  # cold start of a container image with torch; AWS publishes no figure
)

# AWS Lambda arm64 (Graviton2), us-east-1: $0.0000133334 per GB-s, same request price, same
# limits. Source: https://aws.amazon.com/lambda/pricing/ (read 2022; checked 2026-11). arm64 CPUs
# are slower per core for PyTorch than x86; profile on arm64 to plan for it.
AWS_LAMBDA_ARM64 = AWS_LAMBDA.replace(
    name="aws-lambda-arm64",
    description="AWS Lambda arm64 + S3 (us-east-1)",
    prices=dataclasses.replace(AWS_LAMBDA.prices, gb_second=0.0000133334),
)

# Alibaba Cloud Function Compute (international site) + OSS Standard. Source:
# https://www.alibabacloud.com/product/function-compute/pricing (2022: $0.000016384 per GB-s,
# $0.2 per 1M invocations; memory 128 MB..32 GB in 64 MB steps on performance instances, 2-16
# vCPUs, i.e. one vCPU per 2 GB) and https://www.alibabacloud.com/product/oss/pricing (PUT- and
# GET-type requests $0.01 per 10,000 each; LIST and DELETE are priced as PUT-type). Link
# 50 MB/s, 50 ms per request: the paper's own Alibaba model (FuncPipe code, 2022). Timeout
# 600 s for synchronous invocation. Read 2022; checked 2026-11.
ALIBABA_FC = PlatformProfile(
    name="alibaba-fc",
    description="Alibaba Function Compute + OSS (international)",
    memory_choices_mb=_grid(512, 32768, 1024, 0.5, 16),
    min_memory_mb=128,
    max_memory_mb=32768,
    memory_step_mb=64,
    max_timeout_s=600.0,
    cpu_per_gb=0.5,
    max_cpus=16.0,
    link=LinkProfile(up_bytes_s=50 * MB, down_bytes_s=50 * MB, latency_s=0.05),
    prices=Prices(
        gb_second=0.000016384,
        invocation=0.20 / 1_000_000,
        put=0.01 / 10_000,
        get=0.01 / 10_000,
        list=0.01 / 10_000,
        delete=0.01 / 10_000,
    ),
    startup_s=2.0,
)

#: The cloud platforms by name; "local" (the emulator on this host) is built from the emulator's
#: own settings by funcpipe.planning.platforms.local_platform.
NAMED = {p.name: p for p in (AWS_LAMBDA, AWS_LAMBDA_ARM64, ALIBABA_FC)}
