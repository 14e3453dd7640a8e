"""Serverless platforms as plain data: memory choices, CPU per GB, storage link, prices, limits.

One :class:`PlatformProfile` per platform is the single source of truth for what a function may
be (memory range and step, time limit), how fast it is (CPU share per GB, storage link) and what
it costs (per GB-second and per request). :class:`Pricing` (what ``train`` reports as cost) and
:class:`PlatformLimits` (what a platform checks each function against) are derived from the
profiles; the planner reads them directly.

This package sits at the bottom of FuncPipe, just above :mod:`funcpipe.plan` and
:mod:`funcpipe.errors`, and imports nothing else of it, so the runtime, the platforms, the planner
and the client all read the same figures. The local emulator's profile is built from the
emulator's own settings, above it, by :func:`funcpipe.planning.platforms.local_platform`.
"""

from __future__ import annotations

from funcpipe.platform_profiles.limits import PlatformLimits
from funcpipe.platform_profiles.prices import LAMBDA_PRICES, Prices, Pricing
from funcpipe.platform_profiles.profiles import (
    ALIBABA_FC,
    AWS_LAMBDA,
    AWS_LAMBDA_ARM64,
    LAMBDA_CPU_PER_GB,
    NAMED,
    LinkProfile,
    PlatformProfile,
)
from funcpipe.platform_profiles.runtime_base import measured_runtime

__all__ = [
    "ALIBABA_FC",
    "AWS_LAMBDA",
    "AWS_LAMBDA_ARM64",
    "LAMBDA_CPU_PER_GB",
    "LAMBDA_PRICES",
    "NAMED",
    "LinkProfile",
    "PlatformLimits",
    "PlatformProfile",
    "Prices",
    "Pricing",
    "measured_runtime",
]
