"""All-reduce among one stage's replicas, through storage only (functions cannot talk directly).

The gradient vector of N elements is cut into n chunks (chunk i has N//n + [i < N % n] elements)
and replica w owns chunk w: it collects the n-1 peer copies of chunk w, reduces them, and
publishes the result, which every peer then downloads (scatter-reduce, then all-gather).

``naive``: the phases run one after another on one thread (LambdaML style).

``pipelined``: uploads and downloads run at the same time on their own threads. At step t
replica w uploads chunk (w+t) mod n while downloading its chunk w written by replica
(w-t+1) mod n, the order of FuncPipe's pipelined scatter-reduce; ``subchunks=1`` is exactly
that algorithm (one request in flight each way, all-gather after the reduction). By default
each chunk is also cut into sub-chunks of about ``TARGET_PIECE_BYTES``, a few requests are kept
in flight each way to hide per-request latency, and every reduced sub-chunk is published as
soon as it is ready, so the all-gather overlaps the reduction::

    upload   |c(w+1)|c(w+2)| ... |c(w-1)|merged w|
    download    |w<-(w-1)|w<-(w-2)| ... |w<-(w+1)|merged others ............|

The download link is the bottleneck: it must carry (n-1)/n of the data for the reduction and
another (n-1)/n for the all-gather, hence the lower bound 2(n-1)/n * S/B.

Sums run in float64 in a fixed order (own chunk, then peers w-1, w-2, ...) and are rounded
once to the tensor's dtype (float32 or float64, which is also the wire format), so results
are deterministic and equal for both algorithms.

Keys (all under ``key_prefix``): ``rs/<owner>/<src>/<j>`` a peer's piece j of chunk <owner>,
read by the owner; ``ag/<owner>/<j>`` reduced sub-chunk j, read by all peers; ``done/<w>``
written by each w > 0 when it has everything. Replica 0 waits for every done flag, then deletes
the whole prefix (one listing and one bulk delete, no delete round trip on the critical path),
so nothing is left once all have returned.
On error, keys may remain: the caller cleans up with ``delete_prefix(key_prefix)``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
import torch

from funcpipe.errors import ConfigError, StorageError, StorageTimeout
from funcpipe.storage.base import Storage, validate_key

__all__ = [
    "ALGORITHMS",
    "IN_FLIGHT",
    "MAX_SUBCHUNKS",
    "TARGET_PIECE_BYTES",
    "all_reduce",
    "default_subchunks",
    "split_sizes",
]

ALGORITHMS = ("naive", "pipelined")
OPS = ("mean", "sum")
#: Sub-chunk size the default ``subchunks`` aims for: small enough that pipeline fill and
#: drain cost little, large enough that per-request latency and request prices stay low.
TARGET_PIECE_BYTES = 1_000_000
MAX_SUBCHUNKS = 64
#: Requests kept in flight per direction by the default pipelined algorithm.
IN_FLIGHT = 3
#: How often a waiting download checks whether the all-reduce was aborted.
ABORT_CHECK_S = 0.25

_WIRE = {torch.float32: np.dtype("<f4"), torch.float64: np.dtype("<f8")}


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` near-equal pieces of ``total``: the first total % parts get one more."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _spans(offset: int, total: int, parts: int) -> list[tuple[int, int]]:
    spans, start = [], offset
    for size in split_sizes(total, parts):
        spans.append((start, start + size))
        start += size
    return spans


def default_subchunks(numel: int, world: int, itemsize: int = 4) -> int:
    """Sub-chunks per chunk so that a piece is about TARGET_PIECE_BYTES (1 for small tensors)."""
    chunk_bytes = itemsize * math.ceil(numel / max(world, 1))
    return max(1, min(MAX_SUBCHUNKS, round(chunk_bytes / TARGET_PIECE_BYTES)))


def _check(tensor: torch.Tensor, rank: int, world: int, key_prefix: str, algorithm: str,
           op: str, timeout: float, subchunks: int | None) -> None:  # fmt: skip
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 or tensor.dtype not in _WIRE:
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


class _Exchange:
    """One participant's view of a single all-reduce: layout, keys, piece I/O and reduction."""

    def __init__(self, storage: Storage, tensor: torch.Tensor, rank: int, world: int,
                 key_prefix: str, op: str, timeout: float, subchunks: int) -> None:  # fmt: skip
        self.storage, self.rank, self.n = storage, rank, world
        self.prefix, self.op, self.timeout = key_prefix.rstrip("/"), op, timeout
        self.src = tensor.detach().contiguous().numpy()
        self.dtype = _WIRE[tensor.dtype]
        self.result = torch.empty(tensor.numel(), dtype=tensor.dtype)
        self.out = self.result.numpy()
        numel = tensor.numel()
        chunks = _spans(0, numel, world)
        # Same k on every participant: it depends only on (N, n, subchunks).
        self.k = max(1, min(subchunks, numel // world)) if numel >= world else 1
        self.pieces = [_spans(a, b - a, self.k) for a, b in chunks]
        self.acc: list[np.ndarray | None] = [None] * self.k
        self.abort = threading.Event()  # set on failure: pending waits give up promptly

    # -- keys -------------------------------------------------------------------------------
    def rs_key(self, owner: int, src: int, j: int) -> str:
        return f"{self.prefix}/rs/{owner}/{src}/{j}"

    def ag_key(self, owner: int, j: int) -> str:
        return f"{self.prefix}/ag/{owner}/{j}"

    def done_key(self, w: int) -> str:
        return f"{self.prefix}/done/{w}"

    # -- transfers --------------------------------------------------------------------------
    def wait(self, key: str, peer: int, *, delete: bool) -> bytes:
        """Wait for a peer's key in slices, so that an aborted all-reduce stops waiting."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.storage.wait(key, max(min(ABORT_CHECK_S, left), 1e-3), delete=delete)
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

    def send_piece(self, owner: int, j: int) -> None:
        a, b = self.pieces[owner][j]
        # A view, not a copy: the bytes go straight from the gradient to storage.
        self.storage.put(self.rs_key(owner, self.rank, j), memoryview(self.src[a:b]).cast("B"))

    def fetch_piece(self, src: int, j: int) -> bytes:
        return self.wait(self.rs_key(self.rank, src, j), src, delete=False)

    # -- reduction --------------------------------------------------------------------------
    def sources(self) -> list[int]:
        """Peers in the order their pieces arrive and are added: w-1, w-2, ..., w-(n-1)."""
        return [(self.rank - t) % self.n for t in range(1, self.n)]

    def reduce(self, src: int, j: int, data: bytes) -> None:
        span = self.pieces[self.rank][j]
        values = self.piece(data, self.rs_key(self.rank, src, j), span)
        if self.acc[j] is None:
            self.acc[j] = self.src[span[0] : span[1]].astype(np.float64)
        np.add(self.acc[j], values, out=self.acc[j])

    def finish(self, j: int) -> memoryview:
        """Reduced sub-chunk j of my chunk, as wire bytes; also written into the result."""
        span = self.pieces[self.rank][j]
        acc = self.acc[j]
        if acc is None:  # world == 1 never gets here; n > 1 always adds a peer first
            raise AssertionError("finish before reduce")
        if self.op == "mean":
            acc /= self.n
        merged = acc.astype(self.dtype)
        self.acc[j] = None
        self.out[span[0] : span[1]] = merged
        return memoryview(merged).cast("B")

    def publish(self, j: int, data: memoryview) -> None:
        self.storage.put(self.ag_key(self.rank, j), data)

    def gather(self, owner: int, j: int, data: bytes) -> None:
        a, b = self.pieces[owner][j]
        self.out[a:b] = self.piece(data, self.ag_key(owner, j), (a, b))

    def fetch_merged(self, owner: int, j: int) -> bytes:
        return self.wait(self.ag_key(owner, j), owner, delete=False)

    def others(self) -> list[int]:
        return [(self.rank + t) % self.n for t in range(1, self.n)]

    # -- cleanup ----------------------------------------------------------------------------
    def cleanup(self, run: Callable[[list[Callable[[], object]]], None]) -> None:
        """Replicas > 0 report done; replica 0 collects the reports and deletes every key."""
        if self.rank:
            self.storage.put(self.done_key(self.rank), b"")
            return
        run([lambda w=w: self.wait(self.done_key(w), w, delete=False) for w in range(1, self.n)])
        self.storage.delete_prefix(f"{self.prefix}/")


def _naive(ex: _Exchange) -> None:
    for t in range(1, ex.n):
        for j in range(ex.k):
            ex.send_piece((ex.rank + t) % ex.n, j)
    for src in ex.sources():
        for j in range(ex.k):
            ex.reduce(src, j, ex.fetch_piece(src, j))
    for j in range(ex.k):
        ex.publish(j, ex.finish(j))
    for owner in ex.others():
        for j in range(ex.k):
            ex.gather(owner, j, ex.fetch_merged(owner, j))
    ex.cleanup(lambda calls: [call() for call in calls])


class _Pools:
    """Upload and download threads; a failed upload surfaces at the next wait for a download."""

    def __init__(self, rank: int, in_flight: int, abort: threading.Event) -> None:
        self.abort = abort
        self.up = ThreadPoolExecutor(in_flight, thread_name_prefix=f"allreduce-up-{rank}")
        self.down = ThreadPoolExecutor(in_flight, thread_name_prefix=f"allreduce-down-{rank}")
        self.sent: list[Future] = []

    def send(self, fn: Callable[..., None], *args: object) -> None:
        self.sent.append(self.up.submit(fn, *args))

    def fetch(self, fn: Callable[..., bytes], *args: object) -> Future:
        return self.down.submit(fn, *args)

    def result(self, fut: Future) -> bytes:
        while True:
            done, _ = wait([fut, *self.sent], return_when=FIRST_COMPLETED)
            for sent in done:
                if sent is not fut and sent.exception() is not None:
                    raise sent.exception()
            if fut in done:
                return fut.result()
            # Drop only what was checked above; anything that finished since is checked next.
            self.sent = [f for f in self.sent if f not in done]

    def drain(self) -> None:
        for fut in self.sent:
            fut.result()

    def close(self) -> None:
        """Stop both pools; after a failure, pending waits give up within ABORT_CHECK_S, and
        no upload is still running (so none can write after the caller cleans up)."""
        self.abort.set()
        self.up.shutdown(wait=True, cancel_futures=True)
        self.down.shutdown(wait=True, cancel_futures=True)


def _pipelined(ex: _Exchange, in_flight: int) -> None:
    pools = _Pools(ex.rank, in_flight, ex.abort)
    try:
        # Both queues are FIFO, so a pool of one thread is the paper's step-by-step order.
        for t in range(1, ex.n):
            for j in range(ex.k):
                pools.send(ex.send_piece, (ex.rank + t) % ex.n, j)
        fetched = [
            (src, j, pools.fetch(ex.fetch_piece, src, j))
            for src in ex.sources()
            for j in range(ex.k)
        ]
        merged_in = [
            (owner, j, pools.fetch(ex.fetch_merged, owner, j))
            for j in range(ex.k)
            for owner in ex.others()
        ]
        last = ex.sources()[-1]
        for src, j, fut in fetched:
            ex.reduce(src, j, pools.result(fut))
            if src == last:
                pools.send(ex.publish, j, ex.finish(j))
        for owner, j, fut in merged_in:
            ex.gather(owner, j, pools.result(fut))
        pools.drain()

        def run(calls: list[Callable[[], object]]) -> None:
            for fut in [pools.down.submit(call) for call in calls]:
                fut.result()

        ex.cleanup(run)
    finally:
        pools.close()


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
    (see :func:`default_subchunks`); ``subchunks=1`` is the paper's pipelined algorithm.
    Raises StorageTimeout naming the key if a peer does not deliver within ``timeout`` s.
    """
    _check(tensor, rank, world, key_prefix, algorithm, op, timeout, subchunks)
    if world == 1:
        return tensor.detach().clone()
    if algorithm == "naive":
        ex = _Exchange(storage, tensor, rank, world, key_prefix, op, timeout, subchunks or 1)
        _naive(ex)
    else:
        # subchunks=1 is the paper's algorithm: one request in flight each way.
        in_flight = 1 if subchunks == 1 else IN_FLIGHT
        k = subchunks or default_subchunks(tensor.numel(), world, tensor.element_size())
        ex = _Exchange(storage, tensor, rank, world, key_prefix, op, timeout, k)
        _pipelined(ex, in_flight)
    return ex.result
