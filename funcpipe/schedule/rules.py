"""The one dependency rule: what an action waits for before it starts.

The walker (:mod:`funcpipe.schedule.walk`) waits for exactly these, the checker builds its graph
from them, and both interpreters (the executor, the simulator) see them through the walker. They
are derived from the list itself (a last stage has no RECV_GRAD, a first stage no RECV_ACT), so a
hand-written or generated schedule needs no separate dependency table.
"""

from __future__ import annotations

from collections import defaultdict

from funcpipe.schedule.actions import PUTS, Action, Op


class _Index:
    """A list's actions as a set and by op, so each action's rule is a few lookups."""

    def __init__(self, actions: list[Action]) -> None:
        self.present = set(actions)
        self.by_op: dict[Op, list[Action]] = defaultdict(list)
        for a in actions:
            self.by_op[a.op].append(a)
        self.puts = [a for a in actions if a.op in PUTS and a.op is not Op.REPORT]

    def have(self, *candidates: Action) -> list[Action]:
        return [c for c in candidates if c in self.present]

    def all_of(self, *ops: Op) -> list[Action]:
        return [a for op in ops for a in self.by_op.get(op, ())]


def activations_held(actions: list[Action]) -> int:
    """Most micro-batches whose forward is done and backward is not, along the list: what a
    function holds saved activations for at its peak (all of its own under GPipe)."""
    held = peak = 0
    for a in actions:
        if a.op is Op.FORWARD:
            held += 1
            peak = max(peak, held)
        elif a.op is Op.BACKWARD:
            held -= 1
    return peak


def local_deps(action: Action, actions: list[Action]) -> list[Action]:
    """Actions of the same list that must be done before ``action`` can start."""
    return _deps(action, _Index(actions))


def dependencies(actions: list[Action]) -> dict[Action, list[Action]]:
    """:func:`local_deps` of every action of ``actions`` (one pass over the list)."""
    index = _Index(actions)
    return {a: _deps(a, index) for a in actions}


def _deps(action: Action, ix: _Index) -> list[Action]:
    op, s, b = action.op, action.stage, action.micro_batch
    if op is Op.FORWARD:
        return ix.have(Action(Op.RECV_ACT, s, b), Action(Op.LOAD_INPUT, s, b))
    if op is Op.EVAL_FORWARD:
        return ix.have(
            Action(Op.RECV_ACT, s, b), Action(Op.LOAD_INPUT, s, b), Action(Op.LOAD_TARGET, s, b)
        )
    if op is Op.SEND_ACT:
        return ix.have(Action(Op.FORWARD, s, b), Action(Op.EVAL_FORWARD, s, b))
    if op is Op.BACKWARD:
        return ix.have(
            Action(Op.FORWARD, s, b), Action(Op.RECV_GRAD, s, b), Action(Op.LOAD_TARGET, s, b)
        )
    if op is Op.SEND_GRAD:
        return ix.have(Action(Op.BACKWARD, s, b))
    if op in (Op.SYNC, Op.SYNC_BEGIN):
        return ix.all_of(Op.BACKWARD)
    if op is Op.SR_SEND:
        return ix.all_of(Op.SYNC_BEGIN)
    if op is Op.REDUCE:
        recv = Action(Op.SR_RECV, s, None, action.src, action.dst, action.piece)
        return ix.all_of(Op.SYNC_BEGIN) + ix.have(recv)
    if op is Op.AG_SEND:
        # published once the last peer's piece is added: the last REDUCE of that piece
        return [a for a in ix.all_of(Op.REDUCE) if a.piece == action.piece][-1:]
    if op is Op.GATHER:
        return ix.have(Action(Op.AG_RECV, s, None, action.src, None, action.piece))
    if op is Op.DONE_SEND:
        # "done" means nothing of mine is in flight: my uploads are across, my reads are made
        return ix.all_of(Op.SR_SEND, Op.AG_SEND, Op.GATHER)
    if op is Op.DONE_RECV:
        return ix.all_of(Op.SR_SEND, Op.AG_SEND)
    if op is Op.SYNC_CLEAR:
        return ix.all_of(Op.DONE_RECV, Op.GATHER)
    if op is Op.SYNC_END:
        return ix.all_of(Op.REDUCE, Op.GATHER, Op.DONE_SEND, Op.SYNC_CLEAR)
    if op is Op.STEP:
        return ix.all_of(Op.SYNC_END) or ix.all_of(Op.SYNC) or ix.all_of(Op.BACKWARD)
    if op is Op.REPORT:
        return list(ix.puts)  # the step ends when everything it wrote is across
    return []
