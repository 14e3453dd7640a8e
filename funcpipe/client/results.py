"""What a training run hands back: each step's stats and the trained model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from funcpipe.client.billing import StepBill
from funcpipe.client.handover import Recovery
from funcpipe.planning.plan import Plan

__all__ = ["REQUEST_KINDS", "StepStats", "TrainResult", "step_stats"]

# The storage requests a step's traffic counts, each priced (the client's and the functions').
REQUEST_KINDS = ("puts", "gets", "heads", "lists", "bulk_deletes", "deletes")


@dataclass(frozen=True)
class StepStats:
    """One training step as the client saw it."""

    step: int
    loss: float  # the whole batch's mean loss, before this step's update
    iteration_s: float  # first function starting the step to last one finishing it
    cost_usd: float  # what the step would cost on the priced cloud (the three parts below)
    bytes_up: int
    bytes_down: int
    requests: int
    skipped: bool = False  # the loss was not finite and on_nonfinite="skip" dropped the update
    compute_usd: float = 0.0  # functions' GB-seconds after start-up
    request_usd: float = 0.0  # every storage request, polls and the client's included
    startup_usd: float = 0.0  # cold starts' GB-seconds and invocation fees (step 0 only)
    val_loss: float | None = None  # validation loss after this step's update, when evaluated
    val_accuracy: float | None = None  # its accuracy, where the task has one


@dataclass
class TrainResult:
    model: nn.Sequential
    history: list[StepStats]
    plan: Plan
    job_id: str
    reports: list[list[dict[str, Any]]] = field(default_factory=list, repr=False)
    # Each function's cold start: invocation to its first action, in seconds.
    startup_s: dict[str, float] = field(default_factory=dict)
    # Each function's last record (invoked_at, ready_at, end, total traffic) and the client's
    # request counts: everything the bill is computed from.
    functions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    client_requests: dict[str, float] = field(default_factory=dict)
    # Every relaunch: planned ones past the time limit and recoveries from failures.
    recoveries: list[Recovery] = field(default_factory=list)
    # Each complete checkpoint: (its step, seconds its slowest piece took to write).
    checkpoints: list[tuple[int, float]] = field(default_factory=list)

    @property
    def total_cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.history)

    @property
    def losses(self) -> list[float]:
        return [s.loss for s in self.history]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the trained parameters to ``path`` as safetensors, with the plan and the job's
        facts as JSON metadata; ``funcpipe.load_into(module, path)`` loads them back into the
        Sequential or into the module ``to_sequential`` converted."""
        from funcpipe.client.save import save_model

        info = {
            "plan": json.loads(self.plan.to_json()),
            "job_id": self.job_id,
            "steps": len(self.history),
            "losses": self.losses,
        }
        return save_model(self.model, path, info)


def step_stats(
    t: int,
    reports: list[dict[str, Any]],
    plan: Plan,
    bill: StepBill,
    client: dict[str, float],
) -> StepStats:
    """Step ``t`` from its functions' reports, its bill and the client's own requests."""
    start = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    last = plan.num_stages - 1
    loss = sum(r["loss"] for r in reports if r["stage"] == last)
    requests = sum(client.values()) + sum(
        r["traffic"].get(k, 0) for r in reports for k in REQUEST_KINDS
    )
    return StepStats(
        step=t,
        loss=loss,
        iteration_s=end - start,
        cost_usd=bill.total_usd,
        bytes_up=int(sum(r["traffic"].get("bytes_up", 0) for r in reports)),
        bytes_down=int(sum(r["traffic"].get("bytes_down", 0) for r in reports)),
        requests=int(requests),
        compute_usd=bill.compute_usd,
        request_usd=bill.request_usd,
        startup_usd=bill.startup_usd,
    )
