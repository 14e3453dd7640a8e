"""Prove a schedule deadlock-free before any function is launched.

Two checks: every download has exactly one matching upload (and every upload a reader), and the
dependency graph implied by the execution semantics in :mod:`funcpipe.runtime.schedule` is acyclic.
The graph's edges are

* the walk: an action cannot start before every earlier *compute* action of its list is done;
* lane order: a transfer waits for the earlier transfers of its lane (FIFO queues);
* local dependencies (:func:`~funcpipe.runtime.schedule.local_deps`);
* upload -> download of the same channel, across functions;
* SYNC is a barrier: each replica's SYNC waits for what every replica's SYNC waits for.

If a topological order exists, every action can run, so the schedule cannot deadlock.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

from funcpipe.errors import ScheduleError
from funcpipe.runtime.schedule import (
    Action,
    Channel,
    Lane,
    Op,
    Schedule,
    WorkerId,
    channel,
    format_schedule,
    local_deps,
)

Node = tuple[WorkerId, Action]


def check_schedule(schedule: Schedule) -> list[Node]:
    """Raise ScheduleError if ``schedule`` can deadlock; return a valid execution order."""
    _check_duplicates(schedule)
    _check_producers_first(schedule)
    uploads = _check_channels(schedule)
    edges = _edges(schedule, uploads)
    return _topological_order(schedule, edges)


def _check_duplicates(schedule: Schedule) -> None:
    for worker, actions in schedule.items():
        dup = [a for a, n in Counter(actions).items() if n > 1]
        if dup:
            raise ScheduleError(f"{worker} lists {dup[0]} more than once")


def _check_producers_first(schedule: Schedule) -> None:
    """An upload is queued when the walk reaches it, so what it sends must already exist."""
    for worker, actions in schedule.items():
        for i, a in enumerate(actions):
            if a.lane is not Lane.UPLOAD:
                continue
            for dep in local_deps(a, actions):
                if actions.index(dep) > i:
                    raise ScheduleError(
                        f"{worker} lists {a} before {dep}, which produces what it uploads: "
                        f"move {a} after {dep}"
                    )


def _check_channels(schedule: Schedule) -> dict[Channel, Node]:
    uploads: dict[Channel, Node] = {}
    downloads: dict[Channel, Node] = {}
    for worker, actions in schedule.items():
        for a in actions:
            if a.lane is Lane.COMPUTE:
                continue
            table = uploads if a.lane is Lane.UPLOAD else downloads
            ch = channel(a)
            if ch in table:
                other = table[ch]
                raise ScheduleError(
                    f"{ch.kind} of micro-batch {ch.micro_batch} from stage {ch.stage} is "
                    f"{a.lane.value}ed twice: by {other[0]} ({other[1]}) and {worker} ({a})"
                )
            table[ch] = (worker, a)
    for ch, (worker, a) in downloads.items():
        if ch not in uploads:
            raise ScheduleError(
                f"{worker} waits for {a} but no function uploads it "
                f"({ch.kind} of micro-batch {ch.micro_batch} from stage {ch.stage}): "
                "it would wait forever"
            )
    for ch, (worker, a) in uploads.items():
        if ch not in downloads:
            raise ScheduleError(
                f"{worker} uploads {a} but no function downloads it: the object would be "
                "left in storage"
            )
    return uploads


def _edges(schedule: Schedule, uploads: dict[Channel, Node]) -> dict[Node, set[Node]]:
    """Map each node to the nodes it waits for."""
    preds: dict[Node, set[Node]] = defaultdict(set)
    for worker, actions in schedule.items():
        last_compute: Action | None = None
        last_in_lane: dict[Lane, Action] = {}
        for a in actions:
            node = (worker, a)
            preds[node]  # every action is a node, even one without predecessors
            if last_compute is not None:
                preds[node].add((worker, last_compute))
            if a.lane is not Lane.COMPUTE and a.lane in last_in_lane:
                preds[node].add((worker, last_in_lane[a.lane]))
            for d in local_deps(a, actions):
                preds[node].add((worker, d))
            if a.lane is Lane.DOWNLOAD:
                preds[node].add(uploads[channel(a)])
            if a.lane is Lane.COMPUTE:
                last_compute = a
            else:
                last_in_lane[a.lane] = a

    # Barrier: all SYNCs of a stage wait for the union of what each of them waits for.
    syncs: dict[int, list[Node]] = defaultdict(list)
    for worker, actions in schedule.items():
        for a in actions:
            if a.op is Op.SYNC:
                syncs[a.stage].append((worker, a))
    for stage, nodes in syncs.items():
        replicas = {w for w, _ in nodes}
        members = {w for w in schedule if w.stage == stage}
        if replicas != members:
            missing = ", ".join(str(w) for w in sorted(members - replicas))
            raise ScheduleError(
                f"SYNC of stage {stage} is missing on {missing}: the other replicas would wait "
                "for it forever"
            )
        union = set().union(*(preds[n] for n in nodes))
        for n in nodes:
            preds[n] |= union - {n}
    return preds


def _topological_order(schedule: Schedule, preds: dict[Node, set[Node]]) -> list[Node]:
    succs: dict[Node, list[Node]] = defaultdict(list)
    waiting = {n: len(p) for n, p in preds.items()}
    for n, ps in preds.items():
        for p in ps:
            succs[p].append(n)
    ready = deque(n for n, k in waiting.items() if k == 0)
    order: list[Node] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for m in succs[n]:
            waiting[m] -= 1
            if waiting[m] == 0:
                ready.append(m)
    if len(order) < len(preds):
        stuck = _first_stuck(schedule, {n for n, k in waiting.items() if k > 0})
        raise ScheduleError(
            "schedule can deadlock: these functions never get past the action shown\n"
            + "\n".join(f"  {w}: {a}" for w, a in stuck)
            + "\nfull schedule:\n"
            + format_schedule(schedule)
        )
    return order


def _first_stuck(schedule: Schedule, blocked: set[Node]) -> list[Node]:
    out = []
    for worker, actions in sorted(schedule.items()):
        for a in actions:
            if (worker, a) in blocked:
                out.append((worker, a))
                break
    return out
