"""Plans live in :mod:`funcpipe.plan`, below every layer that reads them; kept for old imports."""

from __future__ import annotations

from funcpipe.plan import Plan, Stage, StrictCount
from funcpipe.platform_profiles import AWS_LAMBDA as _AWS

__all__ = ["MAX_MEMORY_MB", "MIN_MEMORY_MB", "Plan", "Stage", "StrictCount"]

# AWS Lambda's memory range, for old imports only: a plan's range is its platform's
# (PlatformProfile.limits, PlatformLimits.check_plan), e.g. up to 32 GB on Alibaba FC.
MIN_MEMORY_MB = _AWS.min_memory_mb
MAX_MEMORY_MB = _AWS.max_memory_mb
