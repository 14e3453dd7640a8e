"""What a function's lanes add to the compute they overlap (``Profile.lane_overhead_s``)."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from funcpipe import codec
from funcpipe.planning.profiler.timing import Config, time_round
from funcpipe.storage.local_dir import LocalDirStorage

__all__ = ["lane_overhead"]


def lane_overhead(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    window_s: float,
    pairs: int = 3,
) -> float:
    """Wall seconds one transfer on a lane thread adds to a training pass it overlaps.

    A function's lanes store, read, decode and delete tensors while its main thread computes.
    Both need the interpreter lock, which torch hands over around every kernel: while a lane
    wants it, each kernel launch of the compute thread becomes a hand-over. A pass of a few
    large kernels hardly notices, one of many small kernels does (on this project's 2-core VM,
    micro-batches 4-16: the demo CNN 0-0.8 ms per transfer, bert-large-small 0.6-1.9 ms, where
    a transfer itself costs about 1 ms of CPU; docs/planner.md). Measured as such:
    windows of passes alone and beside a thread transferring a micro-batch every 5 ms through
    local storage, alternated ``pairs`` times; the median over pairs of the extra time per
    pass, divided by the transfers made during one pass. Needs a second core for the lane
    (on one, the pass would also pay the lane's CPU, which the transfer cost already counts):
    0 on a single-core host.
    """
    if len(os.sched_getaffinity(0)) < 2:
        return 0.0
    previous_threads = torch.get_num_threads()
    try:
        return _extra_per_transfer(model, config, loss_fn, window_s, pairs)
    finally:
        torch.set_num_threads(previous_threads)


def _extra_per_transfer(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    window_s: float,
    pairs: int,
) -> float:
    inputs = config[0]

    def window() -> float:
        """Median wall seconds of a pass, over ``window_s`` (at least two passes)."""
        times: list[float] = []
        end = time.perf_counter() + window_s
        sink: tuple[list[list[float]], list[list[float]]] = ([[]], [[]])
        while time.perf_counter() < end or len(times) < 2:
            t0 = time.perf_counter()
            time_round(model, config, loss_fn, *sink, keep=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with tempfile.TemporaryDirectory(prefix="funcpipe-profile-") as root:
        store = LocalDirStorage(root)
        payload = codec.encode(inputs)
        extra = []
        for _ in range(pairs):
            alone = window()
            stop, done = threading.Event(), [0]

            def lane(stop: threading.Event = stop, done: list[int] = done) -> None:
                while not stop.wait(0.005):
                    store.put("lane", payload)
                    codec.decode(store.get("lane"))
                    store.delete("lane")
                    done[0] += 1

            thread = threading.Thread(target=lane, name="profile-lane", daemon=True)
            t0 = time.perf_counter()
            thread.start()
            try:
                beside = window()
            finally:
                stop.set()
                thread.join()
            elapsed = time.perf_counter() - t0
            per_pass = done[0] * beside / elapsed if elapsed > 0 else 0.0
            if per_pass > 0:
                extra.append((beside - alone) / per_pass)
        store.close()
    return max(0.0, statistics.median(extra)) if extra else 0.0
