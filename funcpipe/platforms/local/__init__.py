"""A serverless platform on one machine: each function is a fresh interpreter with Lambda limits.

Each function is a new Python process started from its payload alone (never a fork of the
caller: a fork would inherit the caller's pages uncharged, its random state and, once the caller
has run torch, a dead OpenMP pool that deadlocks the child's first parallel op). The process gets:

* a **memory cap** of `memory_mb` covering what a Lambda's covers: interpreter, libraries,
  weights, activations, buffers. Preferred: a cgroup v1 memory controller group per function,
  entered before exec, so the kernel OOM-kills the process when its own pages pass the cap, plus
  a watch on the resident set (shared library pages already cached by other processes are not
  charged by the kernel, but a Lambda pays for them). Reported as reason "memory" with the peak.
  Fallback where cgroups are not writable: ``RLIMIT_AS`` (address-space growth past the loaded
  runtime) plus the same resident-set watch on growth.
* a **CPU share** proportional to memory, like Lambda (about 1 vCPU per 1769 MB): a cgroup v1 CFS
  quota, or, as fallback, CPU affinity to ceil(share) cores. torch gets floor(share) threads (at
  least one) so it does not oversubscribe, and never all the host's cores: the client and every
  function's transfer threads run beside it, and a torch op whose threads wait at a barrier for
  one that lost its core runs at the slowest thread's pace.
* a **wall-clock limit** (`timeout_s`) counted from before exec, so start-up counts as on Lambda:
  an interval timer with the default SIGALRM action ends it even in C code, and the parent kills
  it if it is still there shortly after.

The modules, one idea each:

* :mod:`.platform` -- :class:`LocalPlatform`: start, watch, stop, clean up;
* :mod:`.runs` -- the parent's record of one function: its report, label, kill and release;
* :mod:`.caps` -- the memory and CPU caps and how they are enforced;
* :mod:`.spawn` -- starting the process (fresh, or from :mod:`.forkserver`) into its sandbox;
* :mod:`.child` -- the function's side: its last limits, its memory watch, its report;
* :mod:`.activity` -- the activity label the function shares with its parent;
* :mod:`.outcome` -- how a function ended, from its report, exit status and cgroup;
* :mod:`.cgroup_v1` -- the cgroup v1 files.
"""

from __future__ import annotations

from funcpipe.platforms.local.caps import (
    CFS_PERIOD_US,
    LAMBDA_CPU_PER_GB,
    MIN_CPU_SHARE,
    local_torch_threads,
)
from funcpipe.platforms.local.platform import LocalPlatform
from funcpipe.platforms.local.spawn import START_ENV

__all__ = [
    "CFS_PERIOD_US",
    "LAMBDA_CPU_PER_GB",
    "MIN_CPU_SHARE",
    "START_ENV",
    "LocalPlatform",
    "local_torch_threads",
]
