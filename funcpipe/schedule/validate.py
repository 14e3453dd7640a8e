"""Prove a schedule deadlock-free before any function is launched.

Checked on the lists that run (compute-level or lowered): every get has exactly one matching put
and every put a reader (a summed piece of the all-reduce has one per peer), each action's
dependencies are listed before it, and the wait-for graph the walker's rules
(:mod:`funcpipe.schedule.walk`) imply is acyclic. Its edges:

* the walk: an action cannot start before every earlier inline action (compute, or a transfer
  on a lane of width 0) of its list is done;
* lane order: a queued transfer waits for the transfer ``width`` places before it on its lane
  (a FIFO queue served by ``width`` threads);
* the dependency rule (:func:`~funcpipe.schedule.rules.local_deps`);
* put -> get of the same channel, across functions;
* an unlowered SYNC is a barrier: each replica's SYNC waits for what every replica's waits for.

If a topological order exists, every action can run, so the schedule cannot deadlock.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping

from funcpipe.errors import ScheduleError
from funcpipe.schedule.actions import GETS, PUTS, Action, Lane, Op, Schedule, WorkerId
from funcpipe.schedule.actions import format_schedule as format_schedule
from funcpipe.schedule.channels import Channel, channel
from funcpipe.schedule.lower import lane_widths
from funcpipe.schedule.rules import dependencies
from funcpipe.schedule.walk import inline

Node = tuple[WorkerId, Action]


def check_schedule(schedule: Schedule, widths: Mapping[Lane, int] | None = None) -> list[Node]:
    """Raise ScheduleError if ``schedule`` can deadlock; return a valid execution order.

    ``widths`` are the lanes' thread counts (default: the pipelined all-reduce's).
    """
    widths = lane_widths() if widths is None else widths
    deps = {w: dependencies(acts) for w, acts in schedule.items()}
    _check_duplicates(schedule)
    _check_listed_first(schedule, deps)
    puts = _check_channels(schedule)
    edges = _edges(schedule, deps, puts, widths)
    return _topological_order(schedule, edges)


def _check_duplicates(schedule: Schedule) -> None:
    for worker, actions in schedule.items():
        dup = [a for a, n in Counter(actions).items() if n > 1]
        if dup:
            raise ScheduleError(f"{worker} lists {dup[0]} more than once")


def _check_listed_first(
    schedule: Schedule, deps: dict[WorkerId, dict[Action, list[Action]]]
) -> None:
    """An upload is queued when the walk reaches it, so what it sends must already exist.

    (Compute listed before what it needs is a deadlock of the walk, reported as one.)
    """
    for worker, actions in schedule.items():
        where = {a: i for i, a in enumerate(actions)}
        for i, a in enumerate(actions):
            if a.op not in PUTS:
                continue
            for dep in deps[worker][a]:
                if where[dep] > i:
                    raise ScheduleError(
                        f"{worker} lists {a} before {dep}, which produces what it uploads: "
                        f"move {a} after {dep}"
                    )


def _check_channels(schedule: Schedule) -> dict[Channel, Node]:
    puts: dict[Channel, Node] = {}
    gets: dict[Channel, list[Node]] = defaultdict(list)
    for worker, actions in schedule.items():
        for a in actions:
            if a.op in PUTS:
                ch = channel(a)
                if ch in puts:
                    other = puts[ch]
                    raise ScheduleError(
                        f"{_what(ch)} is uploaded twice: by {other[0]} ({other[1]}) and "
                        f"{worker} ({a})"
                    )
                puts[ch] = (worker, a)
            elif a.op in GETS:
                ch = channel(a)
                if gets[ch] and not ch.readers_may_be_many:
                    other = gets[ch][0]
                    raise ScheduleError(
                        f"{_what(ch)} is downloaded twice: by {other[0]} ({other[1]}) and "
                        f"{worker} ({a})"
                    )
                gets[ch].append((worker, a))
    for ch, nodes in gets.items():
        if ch not in puts:
            worker, a = nodes[0]
            raise ScheduleError(
                f"{worker} waits for {a} but no function uploads it ({_what(ch)}): "
                "it would wait forever"
            )
    for ch, (worker, a) in puts.items():
        if ch not in gets:
            raise ScheduleError(
                f"{worker} uploads {a} but no function downloads it: the object would be "
                "left in storage"
            )
    return puts


def _what(ch: Channel) -> str:
    if ch.micro_batch is not None:
        return f"{ch.kind} of micro-batch {ch.micro_batch} from stage {ch.stage}"
    parts = [f"{ch.kind} of stage {ch.stage}"]
    if ch.src is not None:
        parts.append(f"from replica {ch.src}")
    if ch.dst is not None:
        parts.append(f"for replica {ch.dst}")
    if ch.piece is not None:
        parts.append(f"piece {ch.piece}")
    return " ".join(parts)


def _edges(
    schedule: Schedule,
    deps: dict[WorkerId, dict[Action, list[Action]]],
    puts: dict[Channel, Node],
    widths: Mapping[Lane, int],
) -> dict[Node, set[Node]]:
    """Map each node to the nodes it waits for."""
    preds: dict[Node, set[Node]] = defaultdict(set)
    for worker, actions in schedule.items():
        last_inline: Action | None = None
        in_lane: dict[Lane, list[Action]] = defaultdict(list)
        for a in actions:
            node = (worker, a)
            preds[node]  # every action is a node, even one without predecessors
            if last_inline is not None:
                preds[node].add((worker, last_inline))
            if inline(a, widths):
                last_inline = a
            else:
                queue, width = in_lane[a.lane], max(1, widths.get(a.lane, 1))
                if len(queue) >= width:
                    preds[node].add((worker, queue[-width]))
                queue.append(a)
            for d in deps[worker][a]:
                preds[node].add((worker, d))
            if a.op in GETS:
                preds[node].add(puts[channel(a)])
    _sync_barriers(schedule, preds)
    return preds


def _sync_barriers(schedule: Schedule, preds: dict[Node, set[Node]]) -> None:
    """All unlowered SYNCs of a stage wait for the union of what each of them waits for."""
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
