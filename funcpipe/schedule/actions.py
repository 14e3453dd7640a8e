"""The action IR: what one function (or the client) does, as plain, hashable, printable data.

A schedule is one ordered list of :class:`Action` per :class:`WorkerId`. Builders
(:mod:`funcpipe.schedule.build`) write compute-level lists, whose ``SYNC`` is one opaque
collective; lowering (:mod:`funcpipe.schedule.lower`) turns them into what runs: ``SYNC`` cut
into the pieces of the pipelined scatter-reduce, a ``REPORT`` ending each step, the client's
feeding and report reads. Every action prints as one line that :func:`parse_action` reads back,
so a lowered list can travel in a function's package as text.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple


class Op(str, Enum):
    PUT_INPUT = "put_input"  # client: upload a micro-batch's inputs
    PUT_TARGET = "put_target"  # client: upload a micro-batch's targets
    LOAD_INPUT = "load_input"  # first stage: download inputs
    LOAD_TARGET = "load_target"  # last stage: download targets
    RECV_ACT = "recv_act"  # download the previous stage's output
    FORWARD = "forward"
    SEND_ACT = "send_act"  # upload my output for the next stage
    RECV_GRAD = "recv_grad"  # download the gradient of my output
    BACKWARD = "backward"  # last stage: loss + backward
    SEND_GRAD = "send_grad"  # upload the gradient of my input for the previous stage
    SYNC = "sync"  # scatter-reduce gradients among the stage's replicas (before lowering)
    STEP = "step"  # optimizer step
    EVAL_FORWARD = "eval_forward"  # forward only, no autograd; the last stage scores the output
    # The pieces SYNC is lowered into (see funcpipe.schedule.lower).
    SYNC_BEGIN = "sync_begin"  # flatten this replica's gradients into one vector
    SR_SEND = "sr_send"  # upload piece p of chunk `dst` of my vector, for replica dst
    SR_RECV = "sr_recv"  # download replica src's piece p of my chunk
    REDUCE = "reduce"  # add that piece into my chunk's sum
    AG_SEND = "ag_send"  # publish summed piece p of my chunk, for every peer
    AG_RECV = "ag_recv"  # download replica src's summed piece p
    GATHER = "gather"  # copy it into my result
    DONE_SEND = "done_send"  # replica > 0: everything of this sync is read and written
    DONE_RECV = "done_recv"  # replica 0: wait for replica src's done flag
    SYNC_CLEAR = "sync_clear"  # replica 0: delete the sync's keys, all peers being done
    SYNC_END = "sync_end"  # the summed vector back into the gradients
    REPORT = "report"  # a function's report of the step, ending it
    READ_REPORT = "read_report"  # client: wait for (poll) one function's report


class Lane(str, Enum):
    """Where an action runs: inline on the walking thread, or queued on a transfer lane."""

    COMPUTE = "compute"
    UPLOAD = "upload"
    DOWNLOAD = "download"
    SYNC_UP = "sync_up"  # the all-reduce's uploads
    SYNC_DOWN = "sync_down"  # the all-reduce's downloads


LANE: dict[Op, Lane] = {
    Op.PUT_INPUT: Lane.UPLOAD,
    Op.PUT_TARGET: Lane.UPLOAD,
    Op.LOAD_INPUT: Lane.DOWNLOAD,
    Op.LOAD_TARGET: Lane.DOWNLOAD,
    Op.RECV_ACT: Lane.DOWNLOAD,
    Op.FORWARD: Lane.COMPUTE,
    Op.SEND_ACT: Lane.UPLOAD,
    Op.RECV_GRAD: Lane.DOWNLOAD,
    Op.BACKWARD: Lane.COMPUTE,
    Op.SEND_GRAD: Lane.UPLOAD,
    Op.SYNC: Lane.COMPUTE,
    Op.STEP: Lane.COMPUTE,
    Op.EVAL_FORWARD: Lane.COMPUTE,
    Op.SYNC_BEGIN: Lane.COMPUTE,
    Op.SR_SEND: Lane.SYNC_UP,
    Op.SR_RECV: Lane.SYNC_DOWN,
    Op.REDUCE: Lane.COMPUTE,
    Op.AG_SEND: Lane.SYNC_UP,
    Op.AG_RECV: Lane.SYNC_DOWN,
    Op.GATHER: Lane.COMPUTE,
    Op.DONE_SEND: Lane.COMPUTE,  # a flag put by the walking thread itself
    Op.DONE_RECV: Lane.SYNC_DOWN,
    Op.SYNC_CLEAR: Lane.COMPUTE,
    Op.SYNC_END: Lane.COMPUTE,
    Op.REPORT: Lane.COMPUTE,
    Op.READ_REPORT: Lane.DOWNLOAD,
}

#: Ops that write one object to storage, and ops that wait for one and read it; which thread
#: runs them is the lane's business (a lane of width 0 runs its actions inline).
PUTS = frozenset(
    {Op.PUT_INPUT, Op.PUT_TARGET, Op.SEND_ACT, Op.SEND_GRAD, Op.SR_SEND, Op.AG_SEND,
     Op.DONE_SEND, Op.REPORT}
)  # fmt: skip
GETS = frozenset(
    {Op.LOAD_INPUT, Op.LOAD_TARGET, Op.RECV_ACT, Op.RECV_GRAD, Op.SR_RECV, Op.AG_RECV,
     Op.DONE_RECV, Op.READ_REPORT}
)  # fmt: skip


class WorkerId(NamedTuple):
    """A function of the job; the client that feeds data is stage -1."""

    stage: int
    replica: int

    def __str__(self) -> str:
        return "client" if self.stage < 0 else f"stage{self.stage}-replica{self.replica}"


CLIENT = WorkerId(-1, 0)


class Action(NamedTuple):
    """One step of one function's work: ``Action(Op.FORWARD, stage=1, micro_batch=3)``.

    The all-reduce's pieces name the replicas they move data between (``src``, ``dst``) and the
    piece (``piece``); a client's ``READ_REPORT`` names the function whose report it reads as
    ``stage`` and ``src`` (its replica).
    """

    op: Op
    stage: int
    micro_batch: int | None = None
    src: int | None = None
    dst: int | None = None
    piece: int | None = None

    def __str__(self) -> str:
        parts = [self.op.value]
        if self.micro_batch is not None:
            parts.append(f" mb{self.micro_batch}")
        if self.src is not None:
            parts.append(f" from{self.src}")
        if self.dst is not None:
            parts.append(f" to{self.dst}")
        if self.piece is not None:
            parts.append(f" p{self.piece}")
        return "".join(parts) + f"@s{self.stage}"

    @property
    def lane(self) -> Lane:
        return LANE[self.op]


_TEXT = re.compile(
    r"(?P<op>[a-z_]+)(?: mb(?P<mb>\d+))?(?: from(?P<src>\d+))?(?: to(?P<dst>\d+))?"
    r"(?: p(?P<piece>\d+))?@s(?P<stage>-?\d+)"
)


def parse_action(text: str) -> Action:
    """The action ``str(action)`` printed: ``parse_action("forward mb3@s1")``."""
    m = _TEXT.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not an action (e.g. 'forward mb3@s1', 'sr_send to2 p0@s1')")
    try:
        op = Op(m["op"])
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ValueError(f"{text!r}: unknown op {m['op']!r}; known ops: {known}") from None

    def num(name: str) -> int | None:
        return None if m[name] is None else int(m[name])

    return Action(op, int(m["stage"]), num("mb"), num("src"), num("dst"), num("piece"))


Schedule = dict[WorkerId, list[Action]]


def format_schedule(schedule: Schedule) -> str:
    """One line per function, for error messages and debugging."""
    return "\n".join(
        f"{str(w):>18}: " + " ".join(str(a) for a in acts) for w, acts in sorted(schedule.items())
    )
