"""Channels: what a put writes and a get reads, so uploads and downloads can be matched."""

from __future__ import annotations

from typing import NamedTuple

from funcpipe.schedule.actions import GETS, PUTS, Action, Op


class Channel(NamedTuple):
    """What a transfer carries; a put and a get match when their channels are equal.

    ``kind`` is "input" | "target" | "act" | "grad" (one reader each, who deletes it), "rs" |
    "ag" | "done" (the all-reduce's; replica 0 deletes them all) or "report" (read by the
    client). ``stage`` is the producing stage (-1 for client data).
    """

    kind: str
    stage: int
    micro_batch: int | None = None
    src: int | None = None  # the replica that writes it (all-reduce, report)
    dst: int | None = None  # the replica that reads it (all-reduce scatter)
    piece: int | None = None

    @property
    def readers_may_be_many(self) -> bool:
        """A summed piece is read by every peer; everything else by exactly one reader."""
        return self.kind == "ag"


def channel(action: Action) -> Channel:
    """The channel a put writes or a get reads."""
    op, s, b = action.op, action.stage, action.micro_batch
    if op not in PUTS and op not in GETS:
        raise ValueError(f"{action} is not a transfer")
    if op in (Op.PUT_INPUT, Op.LOAD_INPUT):
        return Channel("input", -1, _need(b, action))
    if op in (Op.PUT_TARGET, Op.LOAD_TARGET):
        return Channel("target", -1, _need(b, action))
    if op is Op.SEND_ACT:
        return Channel("act", s, _need(b, action))
    if op is Op.RECV_ACT:
        return Channel("act", s - 1, _need(b, action))
    if op is Op.SEND_GRAD:
        return Channel("grad", s, _need(b, action))
    if op is Op.RECV_GRAD:
        return Channel("grad", s + 1, _need(b, action))
    if op in (Op.SR_SEND, Op.SR_RECV):
        return Channel("rs", s, src=action.src, dst=action.dst, piece=action.piece)
    if op in (Op.AG_SEND, Op.AG_RECV):
        return Channel("ag", s, src=action.src, piece=action.piece)
    if op in (Op.DONE_SEND, Op.DONE_RECV):
        return Channel("done", s, src=action.src)
    return Channel("report", s, src=action.src)  # REPORT, READ_REPORT


def _need(b: int | None, action: Action) -> int:
    if b is None:
        raise ValueError(f"{action} names no micro-batch")
    return b
