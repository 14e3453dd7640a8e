"""The memory and CPU caps of a local function, as Lambda sets them: what, and how enforced.

Memory: a cgroup v1 memory group per function (the kernel kills it past its cap), or, where
cgroups are not writable, an address-space limit; both with the child's resident-set watch.
CPU: a share proportional to memory (Lambda's one vCPU at 1769 MB) as a cgroup CFS quota, or
CPU affinity to ceil(share) cores. torch gets one thread per whole core of the share.
"""

from __future__ import annotations

import contextlib
import math
import os
import re

from funcpipe.errors import ConfigError
from funcpipe.platform_profiles import LAMBDA_CPU_PER_GB
from funcpipe.platforms.base import FunctionSpec, Invocation
from funcpipe.platforms.local.cgroup_v1 import controller_writable, remove_cgroup, write_value

__all__ = [
    "CFS_PERIOD_US",
    "CPU_MODES",
    "LAMBDA_CPU_PER_GB",
    "MEMORY_MODES",
    "MIN_CPU_SHARE",
    "THREAD_VARS",
    "cpu_share",
    "local_torch_threads",
    "make_cgroups",
    "pick_mode",
    "spread_cores",
]

MIN_CPU_SHARE = 0.1
CFS_PERIOD_US = 100_000
MB = 1024 * 1024

MEMORY_MODES = ("auto", "cgroup", "rlimit", "none")
CPU_MODES = ("auto", "cgroup", "affinity", "none")
#: Environment variables that size the thread pools of torch's math libraries.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pick_mode(requested: str, root: str, controller: str, probe: str, fallback: str) -> str:
    """How to enforce one cap: "cgroup" where the controller is writable, else ``fallback``.

    ``requested`` "cgroup" refuses to fall back, with what to do instead.
    """
    if requested in ("auto", "cgroup") and controller_writable(root, controller, probe):
        return "cgroup"
    if requested == "cgroup":
        raise ConfigError(
            f"{controller}_enforcement='cgroup' needs a writable cgroup v1 '{controller}' "
            f"controller under {root}/{controller} (run as root on a cgroup v1 host), "
            f"or pass {controller}_enforcement='{fallback}'"
        )
    return fallback if requested == "auto" else requested


def cpu_share(memory_mb: int, cpu_per_gb: float | None, host_cores: int) -> float | None:
    """Cores a function of ``memory_mb`` gets, within [MIN_CPU_SHARE, host cores]; None: no cap."""
    if cpu_per_gb is None:
        return None
    share = memory_mb / 1024 * cpu_per_gb
    return min(max(share, MIN_CPU_SHARE), float(host_cores))


def local_torch_threads(share: float | None, host_cores: int) -> int:
    """torch threads of a local function with CPU ``share`` (None: no share) on this host.

    One per whole core of its share, at least one, and at most ``host_cores - 1``. Measured on
    a 2-core host: the demo CNN's function with a 2-core share took 0.20-0.28 s a step with two
    threads and 0.16-0.17 s with one (bench/model_error.py, 2026-11-26), while two threads in a
    process alone were 1.4 times as fast as one.
    """
    whole = host_cores if share is None else math.floor(share + 1e-9)
    return max(1, min(whole, host_cores - 1))


def spread_cores(host_cores: list[int], first: int, share: float) -> tuple[list[int], int]:
    """The ceil(share) cores of the host from index ``first`` on, and where the next begins.

    Functions take the host's cores in turn, as a Lambda's threads share its vCPUs.
    """
    n = min(len(host_cores), math.ceil(share))
    cores = [host_cores[(first + i) % len(host_cores)] for i in range(n)]
    return cores, (first + n) % len(host_cores)


def make_cgroups(
    group_dirs: dict[str, str], spec: FunctionSpec, inv: Invocation, share: float | None
) -> tuple[str | None, str | None]:
    """Create and configure the function's (memory, cpu) groups under the platform's folders.

    On failure none of the groups this call created is left behind.
    """
    leaf = f"{re.sub(r'[^A-Za-z0-9._-]', '_', spec.name)[:80]}-{inv.id}"
    mem_cg = cpu_cg = None
    try:
        if "memory" in group_dirs:
            os.makedirs(path := os.path.join(group_dirs["memory"], leaf))
            mem_cg = path  # only what this call created is removed on failure
            limit = spec.memory_mb * MB
            write_value(os.path.join(mem_cg, "memory.limit_in_bytes"), limit)
            with contextlib.suppress(OSError):  # only exists with swap accounting
                write_value(os.path.join(mem_cg, "memory.memsw.limit_in_bytes"), limit)
        if "cpu" in group_dirs:
            os.makedirs(path := os.path.join(group_dirs["cpu"], leaf))
            cpu_cg = path
            quota = round((share or 0.0) * CFS_PERIOD_US)
            write_value(os.path.join(cpu_cg, "cpu.cfs_period_us"), CFS_PERIOD_US)
            write_value(os.path.join(cpu_cg, "cpu.cfs_quota_us"), quota)
    except BaseException:
        for cg in (mem_cg, cpu_cg):
            if cg:
                remove_cgroup(cg)
        raise
    return mem_cg, cpu_cg
