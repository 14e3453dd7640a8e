"""Lowering: a builder's compute-level schedule into the lists that run.

Three passes, applied by :func:`lower`:

* **SYNC into its pieces**, the pipelined scatter-reduce of FuncPipe: the gradient vector of N
  elements is cut into one chunk per replica (chunk i has N//n + [i < N % n] elements) and each
  chunk into ``k`` pieces (:func:`sync_layout`); replica w owns chunk w: it sends every peer its
  pieces of their chunks, receives and adds up the peers' pieces of its own, publishes each
  summed piece as soon as the last peer's is added, and gathers the others' summed pieces.
  Pipelined, the pieces move on sync lanes of ``IN_FLIGHT`` threads each way; naive (LambdaML
  style) the same pieces run one phase after another on the walking thread (sync lanes of
  width 0). Replicas > 0 then put a done flag; replica 0 waits for every flag and deletes the
  sync's keys, so nothing is left once all have returned.
* **reports**: every function's step ends with a ``REPORT`` once everything it wrote is across.
* **the client**: it feeds each micro-batch (``PUT_INPUT``/``PUT_TARGET``, from the builder) and
  then waits for (polls) every function's report (``READ_REPORT``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from funcpipe.errors import ConfigError
from funcpipe.schedule.actions import CLIENT, Action, Lane, Op, Schedule, WorkerId
from funcpipe.schedule.build import schedule_for

if TYPE_CHECKING:
    from funcpipe.plan import Plan

__all__ = [
    "ALGORITHMS",
    "IN_FLIGHT",
    "MAX_SUBCHUNKS",
    "TARGET_PIECE_BYTES",
    "SyncLayout",
    "default_subchunks",
    "lane_widths",
    "lower",
    "lower_sync",
    "lowered_schedule",
    "split_sizes",
    "sync_actions",
    "sync_layout",
]

ALGORITHMS = ("naive", "pipelined")
#: Piece size the default layout aims for: small enough that pipeline fill and drain cost
#: little, large enough that per-request latency and request prices stay low.
TARGET_PIECE_BYTES = 1_000_000
MAX_SUBCHUNKS = 64
#: Requests kept in flight per direction by the pipelined all-reduce.
IN_FLIGHT = 3


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` near-equal pieces of ``total``: the first total % parts get one more."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def default_subchunks(numel: int, world: int, itemsize: int = 4) -> int:
    """Pieces per chunk so that a piece is about TARGET_PIECE_BYTES (1 for small vectors)."""
    chunk_bytes = itemsize * math.ceil(numel / max(world, 1))
    return max(1, min(MAX_SUBCHUNKS, round(chunk_bytes / TARGET_PIECE_BYTES)))


@dataclass(frozen=True)
class SyncLayout:
    """How one all-reduce cuts a vector: ``spans[c][p]`` is piece p of chunk c (start, end)."""

    numel: int
    world: int
    pieces: int
    itemsize: int
    spans: tuple[tuple[tuple[int, int], ...], ...]

    def piece_bytes(self, chunk: int, piece: int) -> int:
        a, b = self.spans[chunk][piece]
        return self.itemsize * (b - a)


def sync_layout(
    numel: int, world: int, itemsize: int = 4, subchunks: int | None = None
) -> SyncLayout:
    """The layout every replica derives alike from (N, n, subchunks): the sub-chunk rule."""
    k = default_subchunks(numel, world, itemsize) if subchunks is None else subchunks
    k = max(1, min(k, numel // world)) if numel >= world else 1
    spans, start = [], 0
    for size in split_sizes(numel, world):
        chunk, at = [], start
        for piece in split_sizes(size, k):
            chunk.append((at, at + piece))
            at += piece
        spans.append(tuple(chunk))
        start += size
    return SyncLayout(numel, world, k, itemsize, tuple(spans))


def lane_widths(sync_algorithm: str = "pipelined", in_flight: int = IN_FLIGHT) -> dict[Lane, int]:
    """Threads per lane: one upload and one download lane; the sync lanes by algorithm."""
    if sync_algorithm not in ALGORITHMS:
        raise ConfigError(f"sync_algorithm {sync_algorithm!r} is not one of {ALGORITHMS}")
    sync = in_flight if sync_algorithm == "pipelined" else 0
    return {Lane.UPLOAD: 1, Lane.DOWNLOAD: 1, Lane.SYNC_UP: sync, Lane.SYNC_DOWN: sync}


def sync_actions(stage: int, rank: int, world: int, pieces: int, algorithm: str) -> list[Action]:
    """Replica ``rank``'s all-reduce of stage ``stage``: what SYNC becomes."""
    w, n, k = rank, world, pieces
    sources = [(w - t) % n for t in range(1, n)]  # the order peers' pieces are added in
    others = [(w + t) % n for t in range(1, n)]
    last = sources[-1]

    def act(op: Op, src: int | None = None, dst: int | None = None, p: int | None = None):
        return Action(op, stage, None, src, dst, p)

    out = [act(Op.SYNC_BEGIN)]
    out += [act(Op.SR_SEND, w, (w + t) % n, j) for t in range(1, n) for j in range(k)]
    if algorithm == "pipelined":
        out += [act(Op.SR_RECV, src, w, j) for src in sources for j in range(k)]
        out += [act(Op.AG_RECV, o, None, j) for j in range(k) for o in others]
        for src in sources:
            for j in range(k):
                out.append(act(Op.REDUCE, src, w, j))
                if src == last:
                    out.append(act(Op.AG_SEND, w, None, j))
        out += [act(Op.GATHER, o, None, j) for j in range(k) for o in others]
    elif algorithm == "naive":
        for src in sources:
            for j in range(k):
                out += [act(Op.SR_RECV, src, w, j), act(Op.REDUCE, src, w, j)]
        out += [act(Op.AG_SEND, w, None, j) for j in range(k)]
        for o in others:
            for j in range(k):
                out += [act(Op.AG_RECV, o, None, j), act(Op.GATHER, o, None, j)]
    else:
        raise ConfigError(f"sync_algorithm {algorithm!r} is not one of {ALGORITHMS}")
    if w:
        out.append(act(Op.DONE_SEND, w))
    else:
        out += [act(Op.DONE_RECV, r) for r in range(1, n)]
        out.append(act(Op.SYNC_CLEAR))
    out.append(act(Op.SYNC_END))
    return out


def lower_sync(
    schedule: Schedule,
    layouts: Sequence[SyncLayout | None],
    algorithm: str = "pipelined",
) -> Schedule:
    """Replace each function's SYNC by its pieces; ``layouts[s]`` None drops stage s's SYNC
    (a stage with nothing to synchronise)."""
    out: Schedule = {}
    for w, actions in schedule.items():
        lowered: list[Action] = []
        for a in actions:
            if a.op is not Op.SYNC:
                lowered.append(a)
                continue
            layout = layouts[a.stage]
            if layout is not None:
                lowered += sync_actions(a.stage, w.replica, layout.world, layout.pieces, algorithm)
        out[w] = lowered
    return out


def add_reports(schedule: Schedule) -> Schedule:
    """Each function ends its step with a report; the client waits for every one."""
    out: Schedule = {}
    for w, actions in schedule.items():
        if w == CLIENT:
            continue
        out[w] = [*actions, Action(Op.REPORT, w.stage, None, w.replica)]
    functions = sorted(w for w in schedule if w != CLIENT)
    feed = schedule.get(CLIENT, [])
    out[CLIENT] = [*feed, *(Action(Op.READ_REPORT, w.stage, None, w.replica) for w in functions)]
    return out


def lower(
    schedule: Schedule,
    layouts: Sequence[SyncLayout | None],
    *,
    sync_algorithm: str = "pipelined",
    reports: bool = True,
) -> Schedule:
    """Every lowering pass: what the executor runs and the simulator replays."""
    lowered = lower_sync(schedule, layouts, sync_algorithm)
    return add_reports(lowered) if reports else lowered


def stage_layouts(
    world: Sequence[int], numel: Sequence[int], itemsize: Sequence[int] | int = 4,
    subchunks: int | None = None, sync_algorithm: str = "pipelined",
) -> list[SyncLayout | None]:  # fmt: skip
    """Each stage's layout: None where a stage has one replica or nothing to synchronise."""
    sizes = [itemsize] * len(world) if isinstance(itemsize, int) else list(itemsize)
    if sync_algorithm == "naive" and subchunks is None:
        subchunks = 1  # the naive algorithm sends each chunk whole
    return [
        sync_layout(m, n, b, subchunks) if n > 1 and m > 0 else None
        for n, m, b in zip(world, numel, sizes, strict=True)
    ]


def lowered_schedule(
    plan: Plan,
    numel: Sequence[int],
    itemsize: Sequence[int] | int = 4,
    *,
    sync_algorithm: str = "pipelined",
) -> Schedule:
    """What every function of ``plan`` runs: its builder's schedule, lowered.

    ``numel[s]``/``itemsize[s]`` are the length and item size of stage s's gradient vector (0
    where it has nothing to synchronise); they fix how its all-reduce is cut.
    """
    layouts = stage_layouts(
        [s.replicas for s in plan.stages], numel, itemsize, sync_algorithm=sync_algorithm
    )
    return lower(schedule_for(plan), layouts, sync_algorithm=sync_algorithm)


def worker_ids(schedule: Schedule) -> list[WorkerId]:
    """The functions of a schedule (the client left out), in order."""
    return sorted(w for w in schedule if w != CLIENT)
