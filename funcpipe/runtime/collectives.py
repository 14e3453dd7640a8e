"""All-reduce among one stage's replicas, through storage only (functions cannot talk directly).

The protocol (which pieces go where, in what order, on which lanes) is the lowered SYNC of
:mod:`funcpipe.schedule.lower`; this module holds what the runtime does for each of its pieces:
the keys, the bytes, the reduction. :class:`SyncExchange` serves a function's executor, and
:func:`all_reduce` runs one replica's lowered SYNC on its own lanes, for callers outside a
pipeline.

Sums run in float64 in a fixed order (own chunk, then peers w-1, w-2, ...) and are rounded
once to the tensor's dtype (float32 or float64, which is also the wire format), so results
are deterministic and equal for both algorithms.

Keys (all under ``key_prefix``): ``rs/<owner>/<src>/<j>`` a peer's piece j of chunk <owner>,
read by the owner; ``ag/<owner>/<j>`` summed piece j, read by all peers; ``done/<w>`` written
by each w > 0 when it has everything. Replica 0 waits for every done flag, then deletes the
whole prefix (one listing and one bulk delete), so nothing is left once all have returned.
On error, keys may remain: the caller cleans up with ``delete_prefix(key_prefix)``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from funcpipe.errors import ConfigError, StorageError, StorageTimeout
from funcpipe.runtime.lanes import Job, Lanes, drive
from funcpipe.schedule.actions import Action, Op
from funcpipe.schedule.lower import (
    ALGORITHMS,
    IN_FLIGHT,
    MAX_SUBCHUNKS,
    TARGET_PIECE_BYTES,
    SyncLayout,
    default_subchunks,
    lane_widths,
    split_sizes,
    sync_actions,
    sync_layout,
)
from funcpipe.storage.base import Storage, validate_key

__all__ = [
    "ALGORITHMS",
    "IN_FLIGHT",
    "MAX_SUBCHUNKS",
    "TARGET_PIECE_BYTES",
    "SyncExchange",
    "all_reduce",
    "default_subchunks",
    "split_sizes",
]

OPS = ("mean", "sum")
#: How often a waiting download checks whether the all-reduce was aborted.
ABORT_CHECK_S = 0.25

WIRE: dict[torch.dtype, np.dtype[Any]] = {
    torch.float32: np.dtype("<f4"),
    torch.float64: np.dtype("<f8"),
}


def _check(tensor: torch.Tensor, rank: int, world: int, key_prefix: str, algorithm: str,
           op: str, timeout: float, subchunks: int | None) -> None:  # fmt: skip
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 or tensor.dtype not in WIRE:
        raise ConfigError(
            "all_reduce: tensor must be a 1-D float32 or float64 torch.Tensor, got "
            + (f"{tensor.dtype} of shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor)
               else type(tensor).__name__)
            + "; flatten gradients with torch.cat([g.reshape(-1) for g in grads]).float()"
        )  # fmt: skip
    if tensor.device.type != "cpu":
        raise ConfigError(f"all_reduce: tensor is on {tensor.device}; move it to the CPU first")
    if not isinstance(world, int) or world < 1:
        raise ConfigError(f"all_reduce: world must be a positive int, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ConfigError(f"all_reduce: rank must be in [0, {world}), got {rank!r}")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"all_reduce: algorithm {algorithm!r} is not one of {ALGORITHMS}")
    if op not in OPS:
        raise ConfigError(f"all_reduce: op {op!r} is not one of {OPS}")
    if not timeout > 0:
        raise ConfigError(f"all_reduce: timeout must be > 0 seconds, got {timeout!r}")
    if subchunks is not None and (not isinstance(subchunks, int) or subchunks < 1):
        raise ConfigError(f"all_reduce: subchunks must be None or an int >= 1, got {subchunks!r}")
    validate_key(key_prefix)


class SyncExchange:
    """One replica's part in one all-reduce: the keys, piece I/O and reduction of each piece."""

    def __init__(self, storage: Storage, tensor: torch.Tensor, rank: int, layout: SyncLayout,
                 key_prefix: str, op: str, timeout: float) -> None:  # fmt: skip
        self.storage, self.rank, self.n, self.layout = storage, rank, layout.world, layout
        self.prefix, self.op, self.timeout = key_prefix.rstrip("/"), op, timeout
        self.src = tensor.detach().contiguous().numpy()
        self.dtype = WIRE[tensor.dtype]
        self.result = torch.empty(tensor.numel(), dtype=tensor.dtype)
        self.out = self.result.numpy()
        self.acc: list[np.ndarray | None] = [None] * layout.pieces
        self.merged: dict[int, memoryview] = {}
        self.last_source = (rank + 1) % self.n  # sources run w-1, w-2, ..., w-(n-1)
        self.abort = threading.Event()  # set on failure: pending waits give up promptly

    # -- keys -------------------------------------------------------------------------------
    def rs_key(self, owner: int, src: int, j: int) -> str:
        return f"{self.prefix}/rs/{owner}/{src}/{j}"

    def ag_key(self, owner: int, j: int) -> str:
        return f"{self.prefix}/ag/{owner}/{j}"

    def done_key(self, w: int) -> str:
        return f"{self.prefix}/done/{w}"

    # -- the pieces, by op ------------------------------------------------------------------
    def prepare(self, a: Action) -> Job:
        """The job of a lowered SYNC's transfer ``a``."""
        src, dst, j = a.src or 0, a.dst or 0, a.piece or 0
        if a.op is Op.SR_SEND:
            lo, hi = self.layout.spans[dst][j]
            # A view, not a copy: the bytes go straight from the gradient to storage.
            view = self.src[lo:hi].data.cast("B")
            return lambda: self.storage.put(self.rs_key(dst, self.rank, j), view)
        if a.op is Op.SR_RECV:
            return lambda: self.wait(self.rs_key(self.rank, src, j), src)
        if a.op is Op.AG_SEND:
            return lambda: self.storage.put(self.ag_key(self.rank, j), self.merged.pop(j))
        if a.op is Op.AG_RECV:
            return lambda: self.wait(self.ag_key(src, j), src)
        if a.op is Op.DONE_SEND:
            return lambda: self.storage.put(self.done_key(self.rank), b"")
        if a.op is Op.DONE_RECV:
            return lambda: self.wait(self.done_key(src), src)
        raise ValueError(f"{a} is not a transfer of the all-reduce")

    def compute(self, a: Action, values: dict[Action, Any]) -> None:
        """REDUCE, GATHER and SYNC_CLEAR (SYNC_BEGIN and SYNC_END are the caller's)."""
        if a.op is Op.REDUCE:
            recv = Action(Op.SR_RECV, a.stage, None, a.src, a.dst, a.piece)
            self.reduce(a.src or 0, a.piece or 0, values.pop(recv))
        elif a.op is Op.GATHER:
            recv = Action(Op.AG_RECV, a.stage, None, a.src, None, a.piece)
            self.gather(a.src or 0, a.piece or 0, values.pop(recv))
        elif a.op is Op.SYNC_CLEAR:
            self.storage.delete_prefix(f"{self.prefix}/")

    def wait(self, key: str, peer: int) -> bytes:
        """Wait for a peer's key in slices, so that an aborted all-reduce stops waiting."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.storage.wait(key, max(min(ABORT_CHECK_S, left), 1e-3), delete=False)
            except StorageTimeout as exc:
                if self.abort.is_set():
                    raise StorageError(f"all_reduce rank {self.rank}: aborted") from None
                if time.monotonic() >= deadline:
                    raise StorageTimeout(
                        f"all_reduce rank {self.rank} of {self.n}: {key!r} did not appear "
                        f"within {self.timeout:g} s; replica {peer} never wrote it (it failed, "
                        "is slow, or was called with another key_prefix/world/size)"
                    ) from exc

    def piece(self, data: bytes, key: str, span: tuple[int, int]) -> np.ndarray:
        expected = self.dtype.itemsize * (span[1] - span[0])
        if len(data) != expected:
            raise StorageError(
                f"all_reduce rank {self.rank}: {key!r} holds {len(data)} bytes, expected "
                f"{expected}; every replica must pass a tensor of the same length"
            )
        return np.frombuffer(data, dtype=self.dtype)

    def reduce(self, src: int, j: int, data: bytes) -> None:
        span = self.layout.spans[self.rank][j]
        values = self.piece(data, self.rs_key(self.rank, src, j), span)
        acc = self.acc[j]
        if acc is None:
            acc = self.acc[j] = self.src[span[0] : span[1]].astype(np.float64)
        np.add(acc, values, out=acc)
        if src == self.last_source:
            self.merged[j] = self.finish(j)

    def finish(self, j: int) -> memoryview:
        """Summed piece j of my chunk, as wire bytes; also written into the result."""
        span = self.layout.spans[self.rank][j]
        acc = self.acc[j]
        if acc is None:  # world == 1 never gets here; n > 1 always adds a peer first
            raise AssertionError("finish before reduce")
        if self.op == "mean":
            acc /= self.n
        merged = acc.astype(self.dtype)
        self.acc[j] = None
        self.out[span[0] : span[1]] = merged
        return merged.data.cast("B")

    def gather(self, owner: int, j: int, data: bytes) -> None:
        a, b = self.layout.spans[owner][j]
        self.out[a:b] = self.piece(data, self.ag_key(owner, j), (a, b))


class _AllReduce:
    """The handler that runs a lowered SYNC alone: the exchange's pieces, nothing around them."""

    def __init__(self, ex: SyncExchange, lanes: Lanes) -> None:
        self.ex, self.lanes = ex, lanes

    def prepare(self, action: Action) -> Job:
        return self.ex.prepare(action)

    def compute(self, action: Action, values: dict[Action, Any]) -> None:
        self.ex.compute(action, values)

    def await_(self, fut: Future[Any], action: Action) -> Any:
        return self.lanes.result(fut, self.ex.timeout + 30)


def all_reduce(
    storage: Storage,
    tensor: torch.Tensor,
    *,
    rank: int,
    world: int,
    key_prefix: str,
    algorithm: str = "pipelined",
    op: str = "mean",
    timeout: float = 60.0,
    subchunks: int | None = None,
) -> torch.Tensor:
    """Mean (or sum) of ``tensor`` over the ``world`` participants, exchanged through ``storage``.

    Every participant calls this with its own 1-D float32/64 tensor of the same length, its
    ``rank`` and the same ``key_prefix`` (unique per job, step and stage). Returns a new tensor;
    all participants get bit-identical results. ``subchunks=None`` picks a size-based default
    (see :func:`default_subchunks`); ``subchunks=1`` is the paper's pipelined algorithm (one
    request in flight each way). Raises StorageTimeout naming the key if a peer does not
    deliver within ``timeout`` s.
    """
    _check(tensor, rank, world, key_prefix, algorithm, op, timeout, subchunks)
    if world == 1:
        return tensor.detach().clone()
    if algorithm == "naive" and subchunks is None:
        subchunks = 1
    layout = sync_layout(tensor.numel(), world, tensor.element_size(), subchunks)
    ex = SyncExchange(storage, tensor, rank, layout, key_prefix, op, timeout)
    in_flight = 1 if subchunks == 1 else IN_FLIGHT
    lanes = Lanes(lane_widths(algorithm, in_flight), name=f"allreduce-{rank}-")
    try:
        drive(sync_actions(0, rank, world, layout.pieces, algorithm), lanes, _AllReduce(ex, lanes))
    finally:
        # after a failure pending waits give up within ABORT_CHECK_S, and no upload is still
        # running (so none can write after the caller cleans up)
        ex.abort.set()
        lanes.close(wait=True)
    return ex.result
