"""The reported cost is the bill: list prices times what was used, nothing more or less."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.client.billing import bill_steps
from funcpipe.client.pricing import AWS_LAMBDA

# AWS list prices, us-east-1 (Lambda x86 and S3 Standard), written out by hand on purpose: a
# change of the prices in the code must fail here.
GB_S = 0.0000166667
INVOKE = 0.20 / 1e6
PUT = 0.005 / 1e3
GET = 0.0004 / 1e3
LIST = 0.005 / 1e3  # LIST, and POST such as DeleteObjects, are in the PUT class
DELETE = 0.0  # a single DELETE is free


def _requests(t: dict) -> float:
    return (
        (t.get("puts", 0) + t.get("bulk_deletes", 0)) * PUT
        + (t.get("gets", 0) + t.get("heads", 0)) * GET
        + t.get("lists", 0) * LIST
        + t.get("deletes", 0) * DELETE
    )


def _report(stage, replica, end, traffic, invoked=100.0, ready=102.0):
    return {"stage": stage, "replica": replica, "invoked_at": invoked, "ready_at": ready,
            "end": end, "traffic": traffic}  # fmt: skip


def test_known_lifetimes_give_the_hand_computed_bill() -> None:
    # Two functions: 1024 MB and 2048 MB, three steps each, lives of 10.0004 s and 9.5 s.
    steps = [
        [_report(0, 0, 104.0, {"puts": 3, "gets": 5}), _report(1, 0, 104.5, {"puts": 1})],
        [_report(0, 0, 106.0, {"gets": 7}), _report(1, 0, 106.2, {"lists": 2, "heads": 1})],
        [_report(0, 0, 109.0, {"puts": 2}), _report(1, 0, 108.0, {"bulk_deletes": 1})],
    ]
    lives = [
        _report(0, 0, 110.0004, {"puts": 6, "gets": 12}),  # one put after the last step
        _report(1, 0, 109.5, {"puts": 1, "lists": 2, "heads": 1, "bulk_deletes": 1}),
    ]
    client = [{"puts": 4}, {"gets": 1}, {}]
    bills = bill_steps(steps, lives, {(0, 0): 1024, (1, 0): 2048}, client, AWS_LAMBDA)
    # Billed durations round up to the next millisecond: 10.0004 s -> 10.001 s.
    by_hand = (
        10.001 * 1 * GB_S
        + 9.5 * 2 * GB_S
        + 2 * INVOKE
        + _requests({"puts": 6 + 1 + 4, "gets": 12 + 1, "lists": 2, "heads": 1, "bulk_deletes": 1})
    )
    assert sum(b.total_usd for b in bills) == pytest.approx(by_hand, rel=1e-9)
    # Start-up (invocation to first action, 2 s each) and invocation fees are step 0's.
    assert bills[0].startup_usd == pytest.approx(2 * GB_S + 2 * 2 * GB_S + 2 * INVOKE, rel=1e-9)
    assert bills[1].startup_usd == bills[2].startup_usd == 0
    # Step 1 runs from each function's end of step 0 to its end of step 1.
    assert bills[1].compute_usd == pytest.approx((2.0 * 1 + 1.7 * 2) * GB_S, rel=1e-9)
    step1 = _requests({"gets": 8, "lists": 2, "heads": 1})
    assert bills[1].request_usd == pytest.approx(step1, rel=1e-9)


def test_a_real_run_costs_what_its_functions_used() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    batches = [(torch.randn(8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    plan = Plan(
        stages=[Stage(start=0, end=2, replicas=2, memory_mb=1024), Stage(start=2, end=3)],
        micro_batches=2,
    )
    result = train(
        model,
        nn.CrossEntropyLoss(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        batches=batches,
        plan=plan,
        progress=False,
    )
    memory = {0: 1024, 1: 3008}
    assert len(result.functions) == 3
    by_hand = _requests(result.client_requests)
    for f in result.functions:
        billed = math.ceil(round((f["end"] - f["invoked_at"]) * 1000, 6)) / 1000
        by_hand += billed * memory[f["stage"]] / 1024 * GB_S + INVOKE + _requests(f["traffic"])
        assert 0 < f["ready_at"] - f["invoked_at"] < billed
    total = sum(h.cost_usd for h in result.history)
    assert total == pytest.approx(by_hand, rel=1e-9)
    parts = sum(h.compute_usd + h.request_usd + h.startup_usd for h in result.history)
    assert parts == pytest.approx(total, rel=1e-12)
    assert result.history[0].startup_usd > 0
    assert set(result.startup_s) == {"stage0-replica0", "stage0-replica1", "stage1-replica0"}
