"""What a run costs, computed the way the cloud bills it.

Every function is billed for its whole life, from invocation to its last write (start-up, every
step, the final upload), rounded up to the platform's granularity, times its memory; every
storage request it or the client sent is priced by class (waits' polls included); each invocation
has a fee. Each function's life is cut at its step ends, so step t is charged from the end of
step t-1 (or the invocation) to the end of step t, and the per-step costs add up to the bill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from funcpipe.client.pricing import Pricing

__all__ = ["StepBill", "bill_steps"]

# Request classes as storage.throttle.LinkStats counts them.
_REQUESTS = ("puts", "gets", "heads", "lists", "bulk_deletes", "deletes")


@dataclass(frozen=True)
class StepBill:
    """One step's share of the bill, in USD."""

    compute_usd: float  # function GB-seconds after start-up
    request_usd: float  # storage requests of the functions and the client
    startup_usd: float  # GB-seconds of cold starts plus invocation fees

    @property
    def total_usd(self) -> float:
        return self.compute_usd + self.request_usd + self.startup_usd


def _requests_cost(pricing: Pricing, traffic: dict[str, float]) -> float:
    """S3's classes: PUT, COPY, POST (DeleteObjects) and LIST at one rate, GET and HEAD at
    another; a single DELETE at the delete price (free on S3)."""
    t = {k: traffic.get(k, 0) for k in _REQUESTS}
    return (
        (t["puts"] + t["bulk_deletes"]) * pricing.put_request
        + t["lists"] * pricing.list_request
        + (t["gets"] + t["heads"]) * pricing.get_request
        + t["deletes"] * pricing.delete_request
    )


def bill_steps(
    steps: list[list[dict[str, Any]]],
    lifetimes: list[dict[str, Any]],
    memory_mb: dict[tuple[int, int], int],
    client_traffic: list[dict[str, float]],
    pricing: Pricing,
) -> list[StepBill]:
    """Bill of each step from the functions' step reports and final lifetime records.

    ``steps[i]`` holds one report per function for the i-th step, ``lifetimes`` one record per
    function (``invoked_at``, ``ready_at``, ``end``, total ``traffic``), ``memory_mb`` each
    function's size, ``client_traffic[i]`` the client's requests during step i.
    """
    n = len(steps)
    compute = [0.0] * n
    startup = [0.0] * n
    requests = [_requests_cost(pricing, client_traffic[i]) for i in range(n)]
    life = {(r["stage"], r["replica"]): r for r in lifetimes}
    for who, gb in ((w, m / 1024) for w, m in memory_mb.items()):
        rate = gb * pricing.gb_second
        reports = [next(r for r in step if (r["stage"], r["replica"]) == who) for step in steps]
        first = reports[0]
        startup[0] += (first["ready_at"] - first["invoked_at"]) * rate + pricing.invocation
        previous = first["ready_at"]
        seen = dict.fromkeys(_REQUESTS, 0.0)
        for i, report in enumerate(reports):
            compute[i] += (report["end"] - previous) * rate
            previous = report["end"]
            requests[i] += _requests_cost(pricing, report["traffic"])
            for k in _REQUESTS:
                seen[k] += report["traffic"].get(k, 0)
        record = life.get(who)
        if record is not None:
            # The tail after the last step (final upload) and the rounding of the billed
            # duration go to the last step, so the steps add up to the function's bill.
            grain = pricing.billing_granularity_s
            billed = math.ceil(round((record["end"] - first["invoked_at"]) / grain, 6)) * grain
            compute[-1] += (billed - (previous - first["invoked_at"])) * rate
            tail = {k: record["traffic"].get(k, 0) - seen[k] for k in _REQUESTS}
            requests[-1] += _requests_cost(pricing, tail)
    return [StepBill(c, r, s) for c, r, s in zip(compute, requests, startup, strict=True)]
