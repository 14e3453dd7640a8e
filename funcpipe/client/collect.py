"""After the last step: the functions' last records, each step's bill, the trained model."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from safetensors.torch import load as load_tensors

from funcpipe.client.billing import bill_steps
from funcpipe.client.manager import FunctionManager
from funcpipe.client.monitor import Monitor
from funcpipe.client.results import REQUEST_KINDS, StepStats, TrainResult, step_stats
from funcpipe.client.train_config import TrainConfig
from funcpipe.runtime import keys
from funcpipe.schedule import WorkerId

__all__ = ["collect"]


def collect(
    config: TrainConfig,
    manager: FunctionManager,
    monitor: Monitor,
    finals: list[bytes],
    memory: dict[tuple[int, int], int],
) -> TrainResult:
    """The run's result once every stage has written its final weights (``finals``)."""
    plan = config.plan
    gen = manager.gen
    assert gen is not None
    lifetimes = manager.wait_keys(
        [keys.lifetime(s, r) for s, r in manager.functions], "the functions' last records"
    )
    gen.lifetimes.extend(lifetimes)
    for inv in gen.invocations.values():
        manager.platform.join(inv, timeout=config.timeout_s)
    monitor.count_last_requests()
    history = _history(config, manager, monitor, memory)
    if monitor.log is not None:
        monitor.log.finish(history)
    startup = {
        str(WorkerId(x["stage"], x["replica"])): x["ready_at"] - x["invoked_at"] for x in lifetimes
    }
    trained = copy.deepcopy(config.model)
    for stage, weights in zip(plan.stages, finals, strict=True):
        trained[stage.start : stage.end].load_state_dict(load_tensors(weights))
    traffic = monitor.client_traffic
    totals = {k: sum(c.get(k, 0) for c in traffic) for k in REQUEST_KINDS}
    lives = [x for g in manager.generations for x in g.lifetimes]
    return TrainResult(trained, history, plan, config.job, monitor.reports, startup, lives, totals,
                       recoveries=manager.recoveries,
                       checkpoints=manager.checkpoint_writes)  # fmt: skip


def _history(
    config: TrainConfig,
    manager: FunctionManager,
    monitor: Monitor,
    memory: dict[tuple[int, int], int],
) -> list[StepStats]:
    """Each step's stats, billed per generation (each one's functions have their own lives)."""
    reports, made_by, traffic = monitor.reports, monitor.made_by, monitor.client_traffic
    lives: dict[int, list[dict[str, Any]]] = {g.number: g.lifetimes for g in manager.generations}
    history: list[StepStats] = []
    i = 0
    while i < len(reports):
        j = i
        while j < len(reports) and made_by[j] == made_by[i]:
            j += 1
        bills = bill_steps(reports[i:j], lives.get(made_by[i], []), memory, traffic[i:j],
                           config.pricing)  # fmt: skip
        for k in range(i, j):
            t = monitor.first_step + k
            stats = step_stats(t, reports[k], config.plan, bills[k - i], traffic[k])
            stats = dataclasses.replace(stats, skipped=monitor.skipped[k])
            if t in monitor.evals:
                val_loss, val_accuracy = monitor.evals[t]
                stats = dataclasses.replace(stats, val_loss=val_loss, val_accuracy=val_accuracy)
            history.append(stats)
        i = j
    return history
