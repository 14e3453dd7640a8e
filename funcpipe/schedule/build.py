"""Schedule builders: a plan in, one compute-level action list per function out.

A builder lists, for every function, what it computes and which transfers it makes, in the
order it walks them; ``SYNC`` stays one action (lowering cuts it into pieces). A new schedule is
one new builder registered in :data:`SCHEDULES`: the executor, the simulator and the checker run
it with no other change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from funcpipe.errors import ConfigError
from funcpipe.schedule.actions import CLIENT, Action, Op, Schedule, WorkerId

if TYPE_CHECKING:
    from funcpipe.plan import Plan

Builder = Callable[["Plan"], Schedule]


def client_feed(plan: Plan, micro_batches: int) -> list[Action]:
    """The client puts every micro-batch's inputs (for stage 0) and targets (for the last)."""
    last = plan.num_stages - 1
    return [
        a
        for b in range(micro_batches)
        for a in (Action(Op.PUT_INPUT, 0, b), Action(Op.PUT_TARGET, last, b))
    ]


def build_schedule(plan: Plan) -> Schedule:
    """FuncPipe's GPipe-style schedule for ``plan``, including the client's data uploads.

    Each function prefetches all its inputs, runs every forward (uploading each output as soon
    as it exists), prefetches its output gradients in reverse order, runs the backwards in
    reverse order (uploading each input gradient), then synchronises gradients among the stage's
    replicas and steps the optimizer.
    """
    last = plan.num_stages - 1
    schedule: Schedule = {CLIENT: client_feed(plan, plan.micro_batches)}
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
    schedule: Schedule = {CLIENT: client_feed(plan, micro_batches)}
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


def build_1f1b(plan: Plan) -> Schedule:
    """One forward, one backward (PipeDream-flush): stage s runs the forwards of its first
    ``stages - s`` micro-batches, then a backward and a forward in turn, then the last backwards,
    so a function holds at most ``stages - s`` micro-batches' activations instead of all of its
    own. A replicated stage's order is cut among its replicas (each takes its own micro-batches
    in the stage's order), so the replicas keep the order that makes the pipeline deadlock-free.

    Downloads are listed in the order the computations need them, a warm-up's worth ahead (the
    lanes are FIFO queues: one listed before what it is needed after could stall the lane), and
    each output goes up as soon as it exists. The step, the sync and the client are GPipe's.
    """
    last, m = plan.num_stages - 1, plan.micro_batches
    schedule: Schedule = {CLIENT: client_feed(plan, m)}
    for s, stage in enumerate(plan.stages):
        warm = min(plan.num_stages - s, m)
        order = [(Op.FORWARD, b) for b in range(warm)]
        for b in range(warm, m):
            order += [(Op.BACKWARD, b - warm), (Op.FORWARD, b)]
        order += [(Op.BACKWARD, b) for b in range(m - warm, m)]
        for r in range(stage.replicas):
            mine = [(op, b) for op, b in order if b % stage.replicas == r]
            ahead = next(i for i, (op, _) in enumerate(mine) if op is Op.BACKWARD)
            schedule[WorkerId(s, r)] = _one_f_one_b_list(s, last, mine, ahead, stage.replicas)
    return schedule


def _one_f_one_b_list(
    s: int, last: int, order: list[tuple[Op, int]], ahead: int, replicas: int
) -> list[Action]:
    def needs(op: Op, b: int) -> list[Action]:
        if op is Op.FORWARD:
            return [Action(Op.RECV_ACT if s > 0 else Op.LOAD_INPUT, s, b)]
        return [Action(Op.LOAD_TARGET if s == last else Op.RECV_GRAD, s, b)]

    actions = [a for op, b in order[: ahead + 1] for a in needs(op, b)]
    for i, (op, b) in enumerate(order):
        actions.append(Action(op, s, b))
        if op is Op.FORWARD and s < last:
            actions.append(Action(Op.SEND_ACT, s, b))
        if op is Op.BACKWARD and s > 0:
            actions.append(Action(Op.SEND_GRAD, s, b))
        if i + ahead + 1 < len(order):
            actions += needs(*order[i + ahead + 1])
    if replicas > 1:
        actions.append(Action(Op.SYNC, s))
    actions.append(Action(Op.STEP, s))
    return actions


#: Training schedules by name; a plan's ``schedule`` names one of these.
SCHEDULES: dict[str, Builder] = {"gpipe": build_schedule, "1f1b": build_1f1b}


def schedule_for(plan: Plan) -> Schedule:
    """The compute-level schedule of ``plan``, by the builder its ``schedule`` names."""
    return get_schedule(plan.schedule)(plan)


def get_schedule(name: str) -> Builder:
    """The builder registered as ``name``; the error lists the known names."""
    try:
        return SCHEDULES[name]
    except KeyError:
        known = ", ".join(sorted(SCHEDULES))
        raise ConfigError(f"unknown schedule {name!r}; known schedules: {known}") from None
