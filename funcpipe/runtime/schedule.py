"""The pipeline schedule as plain data: one ordered action list per function.

The same lists drive the executor inside each function and any simulator or checker, so what is
checked is what runs. Semantics (the contract every consumer follows):

* Each function walks its list in order. A transfer action (lane ``upload`` or ``download``) is
  handed to that lane's FIFO queue and the walk continues; a compute action blocks the walk until
  its dependencies (:func:`local_deps`) are done, then runs.
* The upload and download lanes each work through their queue in order, so compute, upload and
  download of different micro-batches overlap: communication is a pipeline stage of its own.
* A download completes only after the matching upload (same :func:`channel`) has completed.
* ``SYNC`` is a collective among the replicas of one stage: all of them must reach it.

The order follows GPipe as adapted by FuncPipe: prefetch all my inputs, forward every micro-batch
(uploading each output as soon as it exists), prefetch all output gradients in reverse order,
backward in reverse order (uploading each input gradient), then synchronise gradients among the
stage's replicas and step the optimizer.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from funcpipe.planning.plan import Plan


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
    SYNC = "sync"  # scatter-reduce gradients among the stage's replicas
    STEP = "step"  # optimizer step
    EVAL_FORWARD = "eval_forward"  # forward only, no autograd; the last stage scores the output


class Lane(str, Enum):
    COMPUTE = "compute"
    UPLOAD = "upload"
    DOWNLOAD = "download"


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
}


class WorkerId(NamedTuple):
    """A function of the job; the client that feeds data is stage -1."""

    stage: int
    replica: int

    def __str__(self) -> str:
        return "client" if self.stage < 0 else f"stage{self.stage}-replica{self.replica}"


CLIENT = WorkerId(-1, 0)


class Action(NamedTuple):
    """One step of one function's work: ``Action(Op.FORWARD, stage=1, micro_batch=3)``."""

    op: Op
    stage: int
    micro_batch: int | None = None

    def __str__(self) -> str:
        mb = "" if self.micro_batch is None else f" mb{self.micro_batch}"
        return f"{self.op.value}{mb}@s{self.stage}"

    @property
    def lane(self) -> Lane:
        return LANE[self.op]


Schedule = dict[WorkerId, list[Action]]


class Channel(NamedTuple):
    """What a transfer carries; an upload and a download match when their channels are equal."""

    kind: str  # "input" | "target" | "act" | "grad"
    stage: int  # the producing stage (-1 for client data)
    micro_batch: int


def channel(action: Action) -> Channel:
    """The channel an upload writes or a download reads."""
    op, s, b = action.op, action.stage, action.micro_batch
    if b is None:
        raise ValueError(f"{action} is not a transfer")
    if op in (Op.PUT_INPUT, Op.LOAD_INPUT):
        return Channel("input", -1, b)
    if op in (Op.PUT_TARGET, Op.LOAD_TARGET):
        return Channel("target", -1, b)
    if op is Op.SEND_ACT:
        return Channel("act", s, b)
    if op is Op.RECV_ACT:
        return Channel("act", s - 1, b)
    if op is Op.SEND_GRAD:
        return Channel("grad", s, b)
    if op is Op.RECV_GRAD:
        return Channel("grad", s + 1, b)
    raise ValueError(f"{action} is not a transfer")


def local_deps(action: Action, actions: list[Action]) -> list[Action]:
    """Actions of the same function that must be done before ``action`` can start.

    The one dependency rule of the runtime: the executor waits for exactly these (and takes the
    downloaded values among them as the action's inputs), the checker builds its graph from them
    and the planner's simulator replays them. Derived from the list itself (a last stage has no
    RECV_GRAD, a first stage no RECV_ACT), so
    a hand-written or generated schedule needs no separate dependency table.
    """
    present = set(actions)
    op, s, b = action.op, action.stage, action.micro_batch

    def have(*candidates: Action) -> list[Action]:
        return [c for c in candidates if c in present]

    if op is Op.FORWARD:
        return have(Action(Op.RECV_ACT, s, b), Action(Op.LOAD_INPUT, s, b))
    if op is Op.EVAL_FORWARD:
        return have(
            Action(Op.RECV_ACT, s, b), Action(Op.LOAD_INPUT, s, b), Action(Op.LOAD_TARGET, s, b)
        )
    if op is Op.SEND_ACT:
        return have(Action(Op.FORWARD, s, b), Action(Op.EVAL_FORWARD, s, b))
    if op is Op.BACKWARD:
        return have(
            Action(Op.FORWARD, s, b), Action(Op.RECV_GRAD, s, b), Action(Op.LOAD_TARGET, s, b)
        )
    if op is Op.SEND_GRAD:
        return have(Action(Op.BACKWARD, s, b))
    if op is Op.SYNC:
        return [a for a in actions if a.op is Op.BACKWARD]
    if op is Op.STEP:
        syncs = [a for a in actions if a.op is Op.SYNC]
        return syncs or [a for a in actions if a.op is Op.BACKWARD]
    return []


def build_schedule(plan: Plan) -> Schedule:
    """FuncPipe's GPipe-style schedule for ``plan``, including the client's data uploads."""
    last = plan.num_stages - 1
    schedule: Schedule = {
        CLIENT: [
            a
            for b in range(plan.micro_batches)
            for a in (Action(Op.PUT_INPUT, 0, b), Action(Op.PUT_TARGET, last, b))
        ]
    }
    for s, stage in enumerate(plan.stages):
        for r in range(stage.replicas):
            mine = plan.micro_batches_of(s, r)
            actions: list[Action] = []
            actions += [Action(Op.RECV_ACT if s > 0 else Op.LOAD_INPUT, s, b) for b in mine]
            if s == last:
                actions += [Action(Op.LOAD_TARGET, s, b) for b in mine]
            for b in mine:
                actions.append(Action(Op.FORWARD, s, b))
                if s < last:
                    actions.append(Action(Op.SEND_ACT, s, b))
            if s < last:
                actions += [Action(Op.RECV_GRAD, s, b) for b in reversed(mine)]
            for b in reversed(mine):
                actions.append(Action(Op.BACKWARD, s, b))
                if s > 0:
                    actions.append(Action(Op.SEND_GRAD, s, b))
            if stage.replicas > 1:
                actions.append(Action(Op.SYNC, s))
            actions.append(Action(Op.STEP, s))
            schedule[WorkerId(s, r)] = actions
    return schedule


def build_eval_schedule(plan: Plan, micro_batches: int) -> Schedule:
    """Forward-only pass of ``micro_batches`` validation micro-batches through the pipeline.

    Micro-batch b belongs to replica b mod d_s, as in training. Each function keeps a window of
    downloads in flight (its share of one global batch's micro-batches), so memory stays that of
    a training step however large the validation set is; the last stage scores each micro-batch
    (loss, and accuracy where the task has one) instead of sending it on.
    """
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"micro_batches must be a positive integer, got {micro_batches!r}")
    last = plan.num_stages - 1
    schedule: Schedule = {
        CLIENT: [
            a
            for b in range(micro_batches)
            for a in (Action(Op.PUT_INPUT, 0, b), Action(Op.PUT_TARGET, last, b))
        ]
    }
    for s, stage in enumerate(plan.stages):
        for r in range(stage.replicas):
            mine = list(range(r, micro_batches, stage.replicas))
            window = max(1, len(plan.micro_batches_of(s, r)))

            def loads(b: int, s: int = s) -> list[Action]:
                out = [Action(Op.RECV_ACT if s > 0 else Op.LOAD_INPUT, s, b)]
                return out + [Action(Op.LOAD_TARGET, s, b)] if s == last else out

            actions = [a for b in mine[:window] for a in loads(b)]
            for i, b in enumerate(mine):
                actions.append(Action(Op.EVAL_FORWARD, s, b))
                if s < last:
                    actions.append(Action(Op.SEND_ACT, s, b))
                if i + window < len(mine):
                    actions += loads(mine[i + window])
            schedule[WorkerId(s, r)] = actions
    return schedule


def format_schedule(schedule: Schedule) -> str:
    """One line per function, for error messages and debugging."""
    return "\n".join(
        f"{str(w):>18}: " + " ".join(str(a) for a in acts) for w, acts in sorted(schedule.items())
    )
