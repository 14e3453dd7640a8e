"""``funcpipe.train``: run a plan on functions and hand back the trained model.

The client validates everything up front (:class:`~funcpipe.client.train_config.TrainConfig`),
checks the schedules the functions will run, then runs the job
(:mod:`funcpipe.client.job_lifecycle`): it puts each step's micro-batches into storage, launches
one function per (stage, replica), watches their reports and their health, and finally gathers
each stage's parameters into a copy of the model. Whatever happens, the job's functions are
stopped and its storage keys deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from torch import nn

from funcpipe.client.feed import Batch
from funcpipe.client.handover import Recovery
from funcpipe.client.job_lifecycle import STARTUP_GRACE_S, run_job
from funcpipe.client.pricing import AWS_LAMBDA, Pricing
from funcpipe.client.results import StepStats, TrainResult
from funcpipe.client.train_config import TrainConfig
from funcpipe.plan import Plan
from funcpipe.platforms.base import Platform
from funcpipe.runtime.stage import LossFn, OptimizerFactory, sync_size
from funcpipe.schedule import (
    Schedule,
    build_eval_schedule,
    check_schedule,
    lane_widths,
    lowered_schedule,
)
from funcpipe.storage.throttle import LinkConfig

__all__ = [
    "STARTUP_GRACE_S",
    "Batch",
    "Recovery",
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "train",
]


def train(
    model: nn.Sequential,
    loss_fn: LossFn,
    *,
    optimizer: OptimizerFactory,
    batches: Iterable[Batch] | None = None,
    plan: Plan,
    steps: int | None = None,
    platform: str | Platform = "local",
    storage: str = "local",
    link: LinkConfig | None = None,
    timeout_s: float = 120.0,
    sync_algorithm: str = "pipelined",
    overlap: bool = True,
    function_timeout_s: float = 900.0,
    pricing: Pricing = AWS_LAMBDA,
    progress: bool = True,
    job_id: str | None = None,
    on_nonfinite: str = "raise",
    log_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    data: dict[str, Any] | None = None,
    batch_size: int | None = None,
    checkpoint_every: int | None = None,
    resume: str | None = None,
    eval_batches: Iterable[Batch] | None = None,
    eval_every: int | None = None,
    max_restarts: int = 3,
    heartbeat_s: float = 2.0,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``plan`` for ``steps`` steps, one global batch from ``batches`` each.

    The update of every step equals one single-process step of ``optimizer`` on the whole batch
    (micro-batch losses are weighted by their size). ``link`` sets each function's storage
    bandwidth and latency (default: Lambda-like 70 MB/s each way); ``timeout_s`` bounds every wait.
    ``function_timeout_s`` is each function's lifetime limit (Lambda's 900 s by default).
    ``overlap=False`` makes every transfer block where it is listed (a baseline for measuring what
    overlapping communication with compute buys; results are identical).
    A step whose loss is NaN or infinite raises NonFiniteLoss naming the step
    (``on_nonfinite="raise"``), or has its update dropped by every function while training goes
    on (``"skip"``; the step's ``StepStats.skipped`` is True).
    ``log_dir`` streams each step of the history to ``<log_dir>/history.csv`` and to TensorBoard
    event files there while training (needs ``pip install 'funcpipe[tensorboard]'``).
    ``seed`` seeds every function's random state per (step, stage, micro-batch), so dropout
    differs between micro-batches and a run repeats exactly, whatever the number of replicas.
    ``link`` defaults to the emulated Lambda link on the local platform and to no emulation on a
    real cloud, whose link is real.
    ``data`` (a data ref from :func:`funcpipe.data.upload_dataset` or ``funcpipe data upload``,
    uploaded to the same ``storage``) replaces ``batches``: the first and last stages' functions
    then read their own micro-batches of ``batch_size`` samples from storage, and the client
    leaves the data path (step t reads the t-th batch in stored order, see
    :mod:`funcpipe.data.stored`).
    The input model is left untouched; ``result.model`` is a trained copy.

    Reliability (docs/reliability.md): ``checkpoint_every=k`` checkpoints every k steps; functions
    also checkpoint and hand over to a new generation before ``function_timeout_s``, so a job of
    any length runs. A function that crashes, is lost or stops beating for five ``heartbeat_s``
    is replaced and the job rolls back to its last complete checkpoint, at most ``max_restarts``
    times. ``resume=JOB`` continues a job whose client died, from its last checkpoint (pass the
    same model, loss, optimizer, batches and plan; the stored weights win). ``metadata`` is
    JSON-able data kept with the job for whoever resumes it.
    ``eval_batches`` with ``eval_every=k`` runs a forward-only validation pass through the same
    pipeline after every k steps and after the last: ``val_loss`` (and ``val_accuracy`` where the
    task has one) in ``result.history`` and the progress bar.
    """
    config = TrainConfig(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        batches=batches,
        plan=plan,
        steps=steps,
        platform=platform,
        storage=storage,
        link=link,
        timeout_s=timeout_s,
        sync_algorithm=sync_algorithm,
        overlap=overlap,
        function_timeout_s=function_timeout_s,
        pricing=pricing,
        progress=progress,
        job_id=job_id,
        on_nonfinite=on_nonfinite,
        log_dir=log_dir,
        seed=seed,
        data=data,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        resume=resume,
        eval_batches=eval_batches,
        eval_every=eval_every,
        max_restarts=max_restarts,
        heartbeat_s=heartbeat_s,
        metadata=metadata,
    )
    training, evaluation = _checked_schedules(config)
    return run_job(config, training, evaluation)


def _checked_schedules(config: TrainConfig) -> tuple[Schedule, Schedule | None]:
    """What every function will run, checked before any function starts: the plan's schedule
    lowered (its all-reduce cut as each stage's gradients are, a report ending each step) and,
    when the job validates, the evaluation schedule; no deadlock, every download matched by an
    upload. Each function receives its own list in its package; the client feeds data by its
    own list (``schedule[CLIENT]``) of each.
    """
    plan, model = config.plan, config.model
    sizes = [
        sync_size([p for p in model[st.start : st.end].parameters() if p.requires_grad])
        for st in plan.stages
    ]
    schedule = lowered_schedule(
        plan,
        [n for n, _ in sizes],
        [b for _, b in sizes],
        sync_algorithm=config.sync_algorithm,
    )
    check_schedule(schedule, lane_widths(config.sync_algorithm))
    evaluation = None
    if config.eval_micro_batches is not None:
        evaluation = build_eval_schedule(plan, config.eval_micro_batches)
        check_schedule(evaluation, lane_widths(config.sync_algorithm))
    return schedule, evaluation
