"""Normalisation layers chosen by name.

BatchNorm statistics depend on how a batch is cut into micro-batches, so a pipelined BatchNorm
network cannot equal full-batch training; GroupNorm and "none" are micro-batch independent.
"""

from __future__ import annotations

import math

from torch import nn

from funcpipe.errors import ConfigError

NORMS = ("batch", "group", "none")


def check_norm(norm: str) -> str:
    """Return `norm` if it names a known normalisation, else raise ConfigError."""
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r} is not supported; use one of {', '.join(NORMS)}")
    return norm


def norm2d(norm: str, channels: int) -> nn.Module:
    """A 2-D normalisation over `channels` feature maps.

    GroupNorm uses up to 32 groups of at least 4 channels (when there are 4), so a group never
    holds a single value at 1x1 resolution, where normalising would zero it.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)
    return nn.Identity()
