"""Serverless platforms as data: memory choices, CPU per GB, storage link, prices, runtime base.

One :class:`PlatformProfile` per platform is the single source of truth for what a function may
be (memory range and step, time limit), how fast it is (CPU share per GB, storage link) and what
it costs (per GB-second and per request). The runtime's :class:`~funcpipe.client.pricing.Pricing`
and :class:`~funcpipe.platforms.base.PlatformLimits` are derived from these profiles, and the
planner (profile, simulator, optimiser) reads them directly.

"local" is the emulator exactly as ``funcpipe.train(platform="local")`` runs it by default: the
default :class:`~funcpipe.storage.throttle.LinkConfig`, Lambda's CPU share per GB clamped to the
host's cores (the emulated functions share them), Lambda's memory range and prices (the cost
report prices a local run as if it ran on AWS Lambda + S3).

The runtime's own memory (a Python interpreter with torch loaded, before any model) is measured,
not guessed: :func:`measured_runtime` starts a fresh interpreter, imports torch, runs a tiny
forward/backward/optimizer step and reads its resident set size; the figure is cached per Python
and torch version under ``$FUNCPIPE_CACHE`` (default ``~/.cache/funcpipe``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from funcpipe.errors import ConfigError

if TYPE_CHECKING:  # imported lazily at run time: pricing and platforms.base derive from us
    from funcpipe.client.pricing import Pricing
    from funcpipe.platforms.base import PlatformLimits

__all__ = [
    "ALIBABA_FC",
    "AWS_LAMBDA",
    "AWS_LAMBDA_ARM64",
    "background_tasks",
    "LinkProfile",
    "PlatformProfile",
    "Prices",
    "get_platform",
    "local_platform",
    "measured_runtime",
    "platform_names",
]

MB = 1e6  # link rates are in MB = 1e6 bytes, as in LinkConfig
MIB = 1024 * 1024


@dataclass(frozen=True)
class Prices:
    """USD per unit: GB-second of function memory, invocation, storage request by class."""

    gb_second: float
    invocation: float
    put: float
    get: float
    list: float
    delete: float


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

    @classmethod
    def from_link_config(cls, link: object) -> LinkProfile:
        """The profile of a :class:`~funcpipe.storage.throttle.LinkConfig` (MB = 1e6 bytes)."""
        if not getattr(link, "enabled", True):  # an unthrottled link: as fast as local memory
            return cls(up_bytes_s=1e12, down_bytes_s=1e12, latency_s=0.0)
        from funcpipe.storage.throttle import burst_bytes

        up = link.up_mb_s * MB  # type: ignore[attr-defined]
        down = link.down_mb_s * MB  # type: ignore[attr-defined]
        return cls(
            up_bytes_s=up,
            down_bytes_s=down,
            latency_s=link.latency_s,  # type: ignore[attr-defined]
            up_burst_bytes=burst_bytes(up),
            down_burst_bytes=burst_bytes(down),
        )


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
        return measured_runtime()["rss_mb"]

    @property
    def startup(self) -> float:
        """Seconds from invocation to a function ready to run its first action."""
        if self.startup_s is not None:
            return self.startup_s
        return measured_runtime()["import_s"]

    @property
    def limits(self) -> PlatformLimits:
        from funcpipe.platforms.base import PlatformLimits

        return PlatformLimits(
            min_memory_mb=self.min_memory_mb,
            max_memory_mb=self.max_memory_mb,
            max_timeout_s=self.max_timeout_s,
            memory_step_mb=self.memory_step_mb,
        )

    @property
    def pricing(self) -> Pricing:
        from funcpipe.client.pricing import Pricing

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

# AWS Lambda, us-east-1, x86_64. Source: https://aws.amazon.com/lambda/pricing/ (compute
# $0.0000166667 per GB-s, requests $0.20 per 1M) and https://docs.aws.amazon.com/lambda/latest/dg/
# configuration-memory.html (128..10,240 MB in 1 MB steps, one vCPU at 1,769 MB, up to 6 vCPUs),
# gettingstarted-limits.html (900 s). S3 Standard us-east-1, https://aws.amazon.com/s3/pricing/:
# PUT, COPY, POST, LIST $0.005 per 1,000; GET $0.0004 per 1,000; DELETE free (DeleteObjects is a
# POST, i.e. PUT class). Link ~70 MB/s per function and ~10 ms per request: the FuncPipe paper
# (Liu et al. 2022) and the emulator's defaults. Read 2022; checked 2026-11.
_S3_PRICES = {"put": 0.005 / 1000, "get": 0.0004 / 1000, "list": 0.005 / 1000, "delete": 0.0}
AWS_LAMBDA = PlatformProfile(
    name="aws-lambda",
    description="AWS Lambda + S3 (us-east-1)",
    memory_choices_mb=_grid(512, 10240, 512, LAMBDA_CPU_PER_GB, 6),
    min_memory_mb=128,
    max_memory_mb=10240,
    memory_step_mb=1,
    max_timeout_s=900.0,
    cpu_per_gb=LAMBDA_CPU_PER_GB,
    max_cpus=6.0,
    link=LinkProfile(up_bytes_s=70 * MB, down_bytes_s=70 * MB, latency_s=0.01),
    prices=Prices(gb_second=0.0000166667, invocation=0.20 / 1_000_000, **_S3_PRICES),
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


def local_platform(
    link: object | None = None,
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
    from funcpipe.platforms.local import CFS_PERIOD_US, MIN_CPU_SHARE, local_torch_threads
    from funcpipe.platforms.local import LAMBDA_CPU_PER_GB as LOCAL_CPU_PER_GB
    from funcpipe.storage.throttle import LinkConfig

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
        link=LinkProfile.from_link_config(link if link is not None else LinkConfig()),
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


_NAMED = {p.name: p for p in (AWS_LAMBDA, AWS_LAMBDA_ARM64, ALIBABA_FC)}


def platform_names() -> list[str]:
    return [*_NAMED, "local"]


def get_platform(platform: str | PlatformProfile) -> PlatformProfile:
    """The profile called ``platform`` (or ``platform`` itself if it is already a profile)."""
    if isinstance(platform, PlatformProfile):
        return platform
    if platform == "local":
        return local_platform()
    if platform in _NAMED:
        return _NAMED[platform]
    raise ConfigError(
        f"unknown platform {platform!r}; known platforms: {', '.join(platform_names())} "
        "(or pass a funcpipe.planning.platforms.PlatformProfile)"
    )


# --- the measured runtime base ---------------------------------------------------------------

_PROBE = r"""
import json, time
t0 = time.perf_counter()
import torch
layer = torch.nn.Linear(8, 8)
opt = torch.optim.Adam(layer.parameters())
layer(torch.randn(4, 8)).sum().backward()
opt.step()
ready = time.perf_counter() - t0
rss = peak = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1])
print(json.dumps({"rss_mb": rss / 1024, "peak_mb": peak / 1024, "import_s": ready}))
"""

_measured: dict[str, float] | None = None


def _cache_file() -> Path:
    root = Path(os.environ.get("FUNCPIPE_CACHE", Path.home() / ".cache" / "funcpipe"))
    import torch

    py = ".".join(map(str, sys.version_info[:3]))
    return root / f"runtime-base-py{py}-torch{torch.__version__}.json"


def measured_runtime(*, refresh: bool = False) -> dict[str, float]:
    """RSS (MB = MiB) and start-up seconds of a fresh interpreter after importing torch and
    running a tiny forward/backward/Adam step; measured once per Python/torch, then cached."""
    global _measured
    if _measured is not None and not refresh:
        return _measured
    path = _cache_file()
    if not refresh and path.exists():
        try:
            _measured = {k: float(v) for k, v in json.loads(path.read_text()).items()}
            return _measured
        except (ValueError, OSError, AttributeError):
            pass  # a damaged cache is measured again
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    if out.returncode != 0:
        raise ConfigError(
            f"could not measure the runtime's base memory ({sys.executable} failed): "
            f"{out.stderr.strip()[-500:]}"
        )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - started
    _measured = {k: float(v) for k, v in figures.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_measured))
    except OSError:
        pass  # read-only home: measure again next time
    return _measured
