"""What a transfer costs a function's CPU: encoding, storage calls and thread hand-offs."""

from __future__ import annotations

import contextlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from funcpipe import codec
from funcpipe.errors import KeyNotFound
from funcpipe.planning.profiler.timing import typical_time
from funcpipe.storage.local_dir import LocalDirStorage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, ThrottledStorage

__all__ = ["transfer_cost"]


def transfer_cost(repeats: int) -> tuple[float, float, float]:
    """CPU seconds of one transfer through local storage (encode, write, read, decode, delete),
    at a small and a large size, and of one poll for a missing key; returns (per request, per
    byte, per poll).

    A transfer goes the way a function makes it: through the storage layers a function stacks
    (link accounting, the job's and generation's prefixes), with the put, the wait and decode,
    and the delete each handed to a thread pool as the executor's lanes do; the cost is the
    process's CPU time, every thread included.
    """
    sizes = (4096, 1 << 22)
    costs = []
    with (
        tempfile.TemporaryDirectory(prefix="funcpipe-profile-") as root,
        ThreadPoolExecutor(1) as lane,
        ThreadPoolExecutor(1) as deleter,
    ):
        base = LocalDirStorage(root)
        link = ThrottledStorage(base, LinkConfig(enabled=False))
        store = PrefixedStorage(PrefixedStorage(link, "jobs/profile/"), "g0/")
        for n in sizes:
            tensor = torch.ones(n // 4)

            def once(tensor: torch.Tensor = tensor) -> None:
                lane.submit(lambda: store.put("probe", codec.encode(tensor))).result()
                lane.submit(lambda: codec.decode(store.wait("probe", 5.0))).result()
                deleter.submit(store.delete, "probe").result()

            # cheap, and noisy at a few repeats (thread hand-offs): take many
            costs.append(typical_time(once, max(repeats, 15), 2, time.process_time)[0])

        def polls(n: int = 100) -> None:
            for _ in range(n):
                with contextlib.suppress(KeyNotFound):
                    store.get("missing")

        poll = typical_time(polls, max(repeats, 3), 1, time.thread_time)[0] / 100
        base.close()
    per_byte = max(0.0, (costs[1] - costs[0]) / (sizes[1] - sizes[0]))
    return max(0.0, costs[0] - per_byte * sizes[0]), per_byte, poll
