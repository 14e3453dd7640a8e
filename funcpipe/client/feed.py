"""The client's data path: each step's micro-batches and the validation set, into storage.

What the client uploads, and in which order, is its own list of the checked schedule
(``schedule[CLIENT]``: a ``PUT_INPUT`` and a ``PUT_TARGET`` per micro-batch; reading the
functions' reports is the manager's part of it). Each micro-batch's target carries its share of
the batch as a weight, so the functions' summed losses are the mean over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from funcpipe import codec
from funcpipe.client.hygiene import batch_size, check_batch
from funcpipe.client.replay import Replay
from funcpipe.errors import ConfigError
from funcpipe.plan import Plan
from funcpipe.runtime import keys
from funcpipe.schedule import Action, Channel, Op, channel
from funcpipe.storage.base import Storage

__all__ = ["Batch", "Feeder", "put_eval_data", "split", "split_eval_batches"]

Batch = tuple[Any, Any]
_DATA = (Op.PUT_INPUT, Op.PUT_TARGET)


def split(value: Any, parts: int) -> list[Any]:
    """A Tensor (or tuple of Tensors) cut into ``parts`` pieces along the batch dimension."""
    if isinstance(value, tuple):
        pieces = [torch.tensor_split(t, parts) for t in value]
        return [tuple(p[i] for p in pieces) for i in range(parts)]
    return list(torch.tensor_split(value, parts))


def _put_micro_batches(
    store: Storage,
    client: Sequence[Action],
    key: Callable[[Channel], str],
    pieces: Sequence[Batch],
    total: int,
) -> None:
    """Run the client's data puts: micro-batch b's inputs, or its targets with their weight."""
    for action in client:
        if action.op not in _DATA:
            continue  # the report reads, the manager's
        ch = channel(action)
        assert ch.micro_batch is not None  # channel() refuses a data put without one
        x, y = pieces[ch.micro_batch]
        if action.op is Op.PUT_INPUT:
            store.put(key(ch), codec.encode(x))
        else:
            weight = batch_size(x, "micro-batch") / total
            store.put(key(ch), codec.encode(y, {"weight": repr(weight)}))


class Feeder:
    """Puts one step's micro-batches (inputs for stage 0, targets for the last stage) in storage.

    ``client`` is the client's action list of the checked training schedule; steps from
    ``steps`` on are not fed (stored data: the functions read their own micro-batches).
    """

    def __init__(self, replay: Replay, plan: Plan, steps: int, client: Sequence[Action]) -> None:
        self.replay, self.plan, self.steps, self.client = replay, plan, steps, client

    def feed(self, store: Storage, step: int) -> None:
        if step >= self.steps:
            return
        batch = self.replay.get(step)
        n = check_batch(batch, step, self.plan)
        inputs, targets = batch
        m = self.plan.micro_batches
        pieces = list(zip(split(inputs, m), split(targets, m), strict=True))
        _put_micro_batches(store, self.client, lambda c: keys.transfer(step, c), pieces, n)


def split_eval_batches(eval_batches: Iterable[Batch] | None, plan: Plan) -> tuple[list[Batch], int]:
    """The validation set as micro-batches, checked; returns (micro-batches, samples).

    Each batch is split like a training batch; each micro-batch's loss is weighted by its share
    of all samples, so the pass reports the mean over the whole validation set.
    """
    if eval_batches is None:
        raise ConfigError(
            "eval_every is set but eval_batches is not: pass eval_batches=[(inputs, targets), ...]"
        )
    items = list(eval_batches)
    if not items:
        raise ConfigError("eval_batches is empty: pass at least one (inputs, targets) batch")
    pieces: list[Batch] = []
    for i, batch in enumerate(items):
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ConfigError("each item of eval_batches must be an (inputs, targets) pair")
        n = batch_size(batch[0], f"inputs of eval batch {i}")
        if batch_size(batch[1], f"targets of eval batch {i}") != n:
            raise ConfigError(f"eval batch {i}: inputs and targets have different batch sizes")
        parts = min(plan.micro_batches, n)
        pieces += list(zip(split(batch[0], parts), split(batch[1], parts), strict=True))
    total = sum(batch_size(x, "micro-batch") for x, _ in pieces)
    return pieces, total


def put_eval_data(
    shared: Storage, client: Sequence[Action], pieces: Sequence[Batch], total: int
) -> None:
    """The validation micro-batches into the job's storage, once, by the evaluation schedule's
    client list ``client``."""
    _put_micro_batches(shared, client, lambda c: keys.eval_transfer(0, c), pieces, total)
