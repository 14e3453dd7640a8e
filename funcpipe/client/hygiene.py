"""Input checks the client makes before and while training: non-finite losses, list batches.

A bad batch should fail on the client, before any function starts and bills, with a message
naming the batch; a non-finite loss should stop the job at its step instead of training on to
NaN weights (or, on request, drop that step's update everywhere and go on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from funcpipe.errors import ConfigError, NonFiniteLoss
from funcpipe.planning.plan import Plan

NONFINITE_MODES = ("raise", "skip")


def check_on_nonfinite(mode: object) -> str:
    if mode not in NONFINITE_MODES:
        raise ConfigError(
            f"on_nonfinite must be 'raise' (stop the job at the step) or 'skip' (drop that "
            f"step's update on every function and go on), got {mode!r}"
        )
    return mode


def nonfinite_step(step: int, reports: list[dict[str, Any]], mode: str) -> bool:
    """Whether step ``step`` was skipped; raise NonFiniteLoss for it in 'raise' mode.

    The functions have already dropped the step's update together (the last stage flags the
    micro-batch, its gradient carries the flag upstream, the replicas sum it in the sync).
    """
    if not any(r.get("skipped") for r in reports):
        return False
    if mode == "skip":
        return True
    micro = tuple(sorted({b for r in reports for b in r.get("nonfinite", ())}))
    loss = sum(r["loss"] for r in reports if r.get("nonfinite"))
    which = f" (micro-batch {', '.join(map(str, micro))})" if micro else ""
    raise NonFiniteLoss(
        f"step {step}: the loss is {loss if not math.isfinite(loss) else 'not finite'}{which}; "
        f"the job stopped there and step {step}'s update was applied nowhere. Check the "
        "inputs and targets of that batch for NaN/inf, lower the learning rate, or pass "
        "on_nonfinite='skip' (CLI: --on-nonfinite skip) to drop such steps and go on",
        step=step,
        micro_batches=micro,
    )


def batch_size(value: Any, what: str) -> int:
    """The batch size (dimension 0) of a Tensor or tuple of Tensors; ConfigError otherwise."""
    items = value if isinstance(value, tuple) else (value,)
    if not items or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in items):
        raise ConfigError(
            f"{what} must be a Tensor (or tuple of Tensors) with the batch as dimension 0"
        )
    sizes = {t.shape[0] for t in items}
    if len(sizes) != 1:
        raise ConfigError(f"{what} tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def check_batch(batch: Any, step: int, plan: Plan) -> int:
    """Check one (inputs, targets) global batch against the plan; return its size."""
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ConfigError(f"batch {step}: each item of batches must be an (inputs, targets) pair")
    inputs, targets = batch
    n = batch_size(inputs, f"inputs of batch {step}")
    if batch_size(targets, f"targets of batch {step}") != n:
        raise ConfigError(f"batch {step}: inputs and targets have different batch sizes")
    try:
        plan.check_batch(n)
    except ConfigError as exc:
        raise ConfigError(f"batch {step}: {exc}") from None
    return n


def check_list_batches(batches: Iterable[Any], plan: Plan, steps: int) -> None:
    """Check every batch of a list or tuple up front, before any function starts; a stream
    (generator, DataLoader) is checked batch by batch as it is fed."""
    if isinstance(batches, list | tuple):
        for step, batch in enumerate(batches[:steps]):
            check_batch(batch, step, plan)
