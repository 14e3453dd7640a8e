"""``funcpipe.train``: run a plan on functions and hand back the trained model.

The client validates everything up front, puts each step's micro-batches into storage, launches one
function per (stage, replica), watches their reports and their health, and finally gathers each
stage's parameters into a copy of the model. Whatever happens, the job's functions are stopped and
its storage keys deleted.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from torch import nn
from tqdm.auto import tqdm

from funcpipe import codec
from funcpipe.client.billing import StepBill, bill_steps
from funcpipe.client.history_log import HistoryLog
from funcpipe.client.hygiene import (
    batch_size,
    check_batch,
    check_list_batches,
    check_on_nonfinite,
    nonfinite_step,
)
from funcpipe.client.jobs import Heartbeat, new_job_id, validate_job_id
from funcpipe.client.manager import FunctionManager, Recovery, Replay
from funcpipe.client.pricing import AWS_LAMBDA, Pricing
from funcpipe.client.resume import find_resume_point, write_job_config
from funcpipe.errors import ConfigError
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import Platform
from funcpipe.runtime import keys
from funcpipe.runtime.check import check_schedule
from funcpipe.runtime.lifecycle import eval_due
from funcpipe.runtime.package import FunctionPackage, inline_ref, pack_object
from funcpipe.runtime.schedule import Channel, WorkerId, build_schedule
from funcpipe.runtime.stage import LossFn, OptimizerFactory
from funcpipe.storage import open_storage
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, ThrottledStorage

Batch = tuple[Any, Any]
# Extra patience for the first step: every function starts a fresh interpreter and imports torch
# (seconds each; many at once on a small machine share its cores). A function that dies while
# starting is still noticed at once through the platform.
STARTUP_GRACE_S = 600.0


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
    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            f"model is a {type(model).__name__}; FuncPipe cuts an nn.Sequential into stages. "
            "Convert it with funcpipe.models.to_sequential(model, example_input)"
        )
    if not isinstance(plan, Plan):
        raise ConfigError("plan must be a funcpipe.Plan")
    plan.check_model(len(model))
    _check_no_shared_parameters(model, plan)
    if sync_algorithm not in ("naive", "pipelined"):
        raise ConfigError(f"sync_algorithm must be 'naive' or 'pipelined', got {sync_algorithm!r}")
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if data is not None:
        steps = _check_stored_data(data, batches, batch_size, steps, plan)
    elif batches is None:
        raise ConfigError(
            "pass batches=[(inputs, targets), ...] (fed by the client) or data=<data ref> "
            "(read from storage by the functions)"
        )
    else:
        steps = _resolve_steps(steps, batches)
        check_list_batches(batches, plan, steps)
    for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):  # fmt: skip
            raise ConfigError(f"{name} must be a positive integer number of steps or None, "
                              f"got {value!r}")  # fmt: skip
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
    if not (isinstance(heartbeat_s, int | float) and math.isfinite(heartbeat_s)
            and heartbeat_s > 0):  # fmt: skip
        raise ConfigError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s!r}")
    if resume is not None:
        if job_id is not None and job_id != resume:
            raise ConfigError(f"job_id={job_id!r} and resume={resume!r} differ: pass only resume")
        job_id = resume
    on_nonfinite = check_on_nonfinite(on_nonfinite)
    schedule = build_schedule(plan)
    check_schedule(schedule)
    job_id = new_job_id() if job_id is None else validate_job_id(job_id)
    if link is None and _emulates_link(platform):
        link = LinkConfig()
    _warm_up(optimizer)
    code = {"loss": inline_ref(loss_fn), "optimizer": inline_ref(optimizer)}

    root = open_storage(storage, deadline_s=timeout_s)  # bounds every request, retries too
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(root.close)
        if not root.shared_across_processes:
            raise ConfigError(
                f"storage {storage!r} lives inside one process, but every function runs in its "
                "own: use storage='local' (a shared directory) or a server such as redis:// or "
                "s3://"
            )
        prefix = keys.job_prefix(job_id)
        # The client's own requests (data, reports, weights) are priced too: count them.
        shared = ThrottledStorage(PrefixedStorage(root, prefix), LinkConfig(enabled=False))
        point = None
        if resume is not None:
            point = find_resume_point(shared, job_id, plan, heartbeat_s=heartbeat_s)
        elif root.list(prefix):
            raise ConfigError(
                f"storage already holds objects under {prefix!r}: job_id {job_id!r} is in use or "
                "was left by a killed run; pick another job_id, `funcpipe resume` it, or remove a "
                f"dead job's keys with `funcpipe clean --job {job_id}`"
            )
        cleanup.callback(_delete_job, root, prefix)
        cleanup.enter_context(Heartbeat(root, job_id, period_s=heartbeat_s))
        plat = _make_platform(platform) if isinstance(platform, str) else platform
        if isinstance(platform, str):
            cleanup.callback(plat.close)
        cleanup.enter_context(_sigterm_as_interrupt())
        log = cleanup.enter_context(HistoryLog(log_dir)) if log_dir is not None else None
        if point is None:
            write_job_config(shared, {
                "plan": json.loads(plan.to_json()), "steps": steps, "seed": seed,
                "checkpoint_every": checkpoint_every, "heartbeat_s": heartbeat_s,
                "eval_every": eval_every, "metadata": metadata or {},
            })  # fmt: skip
        first_step = point.first_step if point else 0
        if first_step >= steps:
            raise ConfigError(
                f"job {job_id!r} has a checkpoint of step {first_step}, at or past steps={steps}: "
                "nothing is left to train"
            )
        layer_refs = _put_stage_code(model, plan, shared, keep_existing=point is not None)
        settings: dict[str, Any] = {"client_deadline_s": 10 * heartbeat_s}
        eval_scale = _put_eval_data(eval_batches, plan, shared) if eval_every else None
        if eval_scale:
            settings["eval"] = {"every": eval_every, "micro_batches": eval_scale[0]}
        # An endless Batches (the CLI's) has no length; stored data needs no feeding at all.
        replay = Replay(batches if batches is not None else (), first_step)
        if point is not None and point.checkpoint is not None:
            replay.release_before(first_step)
        feeder = _Feeder(replay, plan, 0 if data is not None else steps)
        memory = {(s, r): st.memory_mb for s, st in enumerate(plan.stages)
                  for r in range(st.replicas)}  # fmt: skip

        def payload(s: int, r: int, gen: int, first: int, extra: dict[str, Any]) -> bytes:
            return (
                FunctionPackage(
                    job_id=job_id,
                    storage_url=storage,
                    plan=json.loads(plan.to_json()),
                    stage=s,
                    replica=r,
                    generation=gen,
                    first_step=first,
                    end_step=steps,
                    seed=seed,
                    timeout_s=timeout_s,
                    code={**code, "layers": layer_refs[s]},
                    link=dataclasses.asdict(link) if link is not None else None,
                    sync_algorithm=sync_algorithm,
                    overlap=overlap,
                    settings=extra,
                    data=(
                        None
                        if data is None
                        else {
                            "ref": data,
                            "batch_size": batch_size,
                            "micro_batches": plan.micro_batches,
                        }
                    ),
                )
                .to_json()
                .encode()
            )

        manager = FunctionManager(
            platform=plat,
            plan=plan,
            shared=shared,
            make_payload=payload,
            feed=feeder.feed,
            total_steps=steps,
            timeout_s=timeout_s,
            function_timeout_s=function_timeout_s,
            heartbeat_s=heartbeat_s,
            heartbeat_deadline_s=5 * heartbeat_s,
            # A function that has not begun its first step: a slow cold start on a busy host is
            # not a hang. Past its time limit the platform ends it and says so (a "timeout").
            startup_deadline_s=min(function_timeout_s + 30, max(STARTUP_GRACE_S, 5 * heartbeat_s)),
            max_restarts=max_restarts,
            checkpoint_every=checkpoint_every,
            settings=settings,
            first_generation=point.first_generation if point else 0,
        )
        cleanup.callback(manager.cancel_all)
        counted = shared.stats.snapshot()
        reports: list[list[dict[str, Any]]] = []
        made_by: list[int] = []  # the generation that ran each step
        client_traffic: list[dict[str, float]] = []
        evals: dict[int, tuple[float, float | None]] = {}
        skipped: list[bool] = []
        logged = first_step - 1
        with tqdm(total=steps, initial=first_step, desc="training", unit="step",
                  disable=not progress) as bar:  # fmt: skip

            def on_reports(t: int, step_reports: list[dict[str, Any]]) -> None:
                nonlocal counted, logged
                i = t - first_step
                if i < len(reports):  # rolled back: these steps are redone
                    del reports[i:], made_by[i:], client_traffic[i:], skipped[i:]
                    bar.n = t
                skipped.append(nonfinite_step(t, step_reports, on_nonfinite))
                now = shared.stats.snapshot()
                client_traffic.append(_traffic_delta(now, counted))
                counted = now
                reports.append(step_reports)
                made_by.append(manager.gen.number)  # type: ignore[union-attr]
                if log is not None and t > logged:  # a redone step is logged once
                    bill = bill_steps(reports[-1:], [], memory, client_traffic[-1:], pricing)[0]
                    stats = _step_stats(t, step_reports, plan, bill, client_traffic[-1])
                    log.write(dataclasses.replace(stats, skipped=skipped[-1]))
                    logged = t
                bar.set_postfix(_postfix(reports, plan, evals), refresh=False)
                bar.update(1)

            def on_eval(t: int, scores: list[dict[str, Any]]) -> None:
                loss = sum(x["loss"] for x in scores)
                counted_ = sum(x["counted"] for x in scores)
                acc = sum(x["correct"] for x in scores) / counted_ if counted_ else None
                evals[t] = (loss, acc)
                bar.set_postfix(_postfix(reports, plan, evals))

            finals = manager.run(
                first_step,
                point.checkpoint if point else None,
                on_reports,
                on_eval=on_eval if eval_scale else None,
                eval_due=lambda b: eval_due(b, eval_every, steps),
                on_checkpoint=lambda c: replay.release_before(c.step),
            )
        gen = manager.gen
        assert gen is not None
        lifetimes = manager.wait_keys(
            [keys.lifetime(s, r) for s, r in manager.functions], "the functions' last records"
        )
        gen.lifetimes.extend(lifetimes)
        for inv in gen.invocations.values():
            manager.platform.join(inv, timeout=timeout_s)
        # The last step also pays for the final upload and each function's rounding.
        client_traffic[-1] = _add_traffic(
            client_traffic[-1], _traffic_delta(shared.stats.snapshot(), counted)
        )
        history = _history(reports, made_by, manager, memory, client_traffic, pricing, plan,
                           first_step, evals, skipped)  # fmt: skip
        if log is not None:
            log.finish(history)
        startup = {
            str(WorkerId(x["stage"], x["replica"])): x["ready_at"] - x["invoked_at"]
            for x in lifetimes
        }
        trained = copy.deepcopy(model)
        for stage, data in zip(plan.stages, finals, strict=True):
            trained[stage.start : stage.end].load_state_dict(load_tensors(data))
        totals = {k: sum(c.get(k, 0) for c in client_traffic) for k in _REQUEST_KINDS}
        lives = [x for g in manager.generations for x in g.lifetimes]
        return TrainResult(trained, history, plan, job_id, reports, startup, lives, totals,
                           recoveries=manager.recoveries,
                           checkpoints=manager.checkpoint_writes)  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _delete_job(root: Storage, prefix: str) -> None:
    """Delete the job's keys; a failure here must not hide the error that ended the job."""
    in_flight = sys.exc_info()[1]
    try:
        root.delete_prefix(prefix)
    except Exception as exc:
        if in_flight is None:
            raise
        job_id = prefix.rstrip("/").rsplit("/", 1)[-1]
        warnings.warn(
            f"could not delete {prefix!r} after a failure: {exc}. Its keys expire on their own "
            f"where the store has a TTL or lifecycle rule (docs/storage.md); once the store "
            f"answers again, `funcpipe clean --job {job_id} --force --storage URL` "
            "removes them now",
            stacklevel=2,
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while training, so cleanup runs on `kill` too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_no_shared_parameters(model: nn.Sequential, plan: Plan) -> None:
    """Refuse plans that cut between layers sharing a parameter (e.g. tied embeddings).

    Each stage would train its own copy and the copies would silently diverge.
    """
    owner: dict[int, tuple[int, int]] = {}
    for s, stage in enumerate(plan.stages):
        for layer in range(stage.start, stage.end):
            for p in model[layer].parameters():
                first = owner.setdefault(id(p), (s, layer))
                if first[0] != s:
                    raise ConfigError(
                        f"layers {first[1]} and {layer} share a parameter (tied weights) but the "
                        f"plan puts them in stages {first[0]} and {s}, which would train diverging "
                        "copies: keep both layers in one stage, or untie the weights "
                        "(e.g. tie_weights=False for funcpipe.models BERT)"
                    )


def _check_stored_data(
    data: dict[str, Any],
    batches: Any,
    batch_size: int | None,
    steps: int | None,
    plan: Plan,
) -> int:
    """Validate a data ref and its batch size up front; return the number of steps."""
    from funcpipe.data.stored import micro_batch_range

    if batches is not None:
        raise ConfigError("pass either batches (fed by the client) or data (in storage), not both")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(
            f"data= needs batch_size=<samples per step> (a positive integer), got {batch_size!r}"
        )
    plan.check_batch(batch_size)
    micro_batch_range(data, 0, 0, batch_size=batch_size, micro_batches=plan.micro_batches)
    if steps is None:
        steps = int(data["samples"]) // batch_size  # one epoch
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _resolve_steps(steps: int | None, batches: Iterable[Batch]) -> int:
    if steps is None:
        try:
            steps = len(batches)  # type: ignore[arg-type]
        except TypeError:
            raise ConfigError("steps is not set and batches has no len(); pass steps=N") from None
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    try:
        available = len(batches)  # type: ignore[arg-type]
    except TypeError:
        return steps  # a stream: running out is reported when it happens
    if available < steps:
        raise ConfigError(
            f"steps={steps} but batches holds only {available}: pass steps <= {available} "
            "or more batches"
        )
    return steps


def _warm_up(optimizer: OptimizerFactory) -> None:
    """Build and step the optimizer once on a dummy parameter in the client.

    torch's first optimizer construction imports ~2 s of modules lazily; doing it before the
    functions are forked means each of them starts with those imports already done.
    """
    dummy = nn.Parameter(torch.zeros(1))
    try:
        opt = optimizer([dummy])
    except Exception as exc:
        raise ConfigError(f"the optimizer factory failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer must be a factory returning a torch.optim.Optimizer, e.g. "
            "optimizer=lambda params: torch.optim.Adam(params, lr=1e-3)"
        )
    dummy.grad = torch.zeros(1)
    try:
        opt.step()
    except Exception as exc:
        raise ConfigError(f"the optimizer's step failed: {type(exc).__name__}: {exc}") from exc


def _make_platform(name: str) -> Platform:
    if name == "local":
        from funcpipe.platforms.local import LocalPlatform

        return LocalPlatform()
    if name == "lithops":
        from funcpipe.platforms.lithops import LithopsPlatform

        return LithopsPlatform.from_env()
    if name == "aws-lambda":
        from funcpipe.platforms.aws_lambda import AwsLambdaPlatform

        return AwsLambdaPlatform.from_env()
    raise ConfigError(f"unknown platform {name!r}; available: 'local', 'lithops', 'aws-lambda'")


def _emulates_link(platform: str | Platform) -> bool:
    """The emulated storage link belongs to the local emulator only, never on a real cloud."""
    from funcpipe.platforms.local import LocalPlatform

    return platform == "local" or isinstance(platform, LocalPlatform)


def _put_stage_code(
    model: nn.Sequential, plan: Plan, shared: Storage, *, keep_existing: bool = False
) -> list[dict[str, Any]]:
    """Each stage's layers as a skeleton for the payload, their tensors as safetensors in storage.

    Tensors never travel pickled, and the functions never unpickle anything from storage.
    """
    refs = []
    for s, stage in enumerate(plan.stages):
        pickled, tensors = pack_object(model[stage.start : stage.end])
        if not (keep_existing and shared.exists(keys.initial_weights(s))):  # resumed: the job's own
            shared.put(keys.initial_weights(s), tensors)
        refs.append(
            {
                "pickle": base64.b64encode(pickled).decode("ascii"),
                "weights": keys.initial_weights(s),
            }
        )
    return refs


_REQUEST_KINDS = ("puts", "gets", "heads", "lists", "bulk_deletes", "deletes")


def _traffic_delta(now: Any, before: Any) -> dict[str, float]:
    a, b = now.as_dict(), before.as_dict()
    return {k: a.get(k, 0) - b.get(k, 0) for k in _REQUEST_KINDS}


def _add_traffic(x: dict[str, float], y: dict[str, float]) -> dict[str, float]:
    return {k: x.get(k, 0) + y.get(k, 0) for k in _REQUEST_KINDS}


def _split(value: Any, parts: int) -> list[Any]:
    if isinstance(value, tuple):
        pieces = [torch.tensor_split(t, parts) for t in value]
        return [tuple(p[i] for p in pieces) for i in range(parts)]
    return list(torch.tensor_split(value, parts))


class _Feeder:
    """Puts one step's micro-batches (inputs for stage 0, targets for the last stage) in storage."""

    def __init__(self, replay: Replay, plan: Plan, steps: int) -> None:
        self.replay, self.plan, self.steps = replay, plan, steps

    def feed(self, store: Storage, step: int) -> None:
        if step >= self.steps:
            return
        batch = self.replay.get(step)
        n = check_batch(batch, step, self.plan)
        inputs, targets = batch
        m = self.plan.micro_batches
        for b, (x, y) in enumerate(zip(_split(inputs, m), _split(targets, m), strict=True)):
            size = batch_size(x, "micro-batch")
            store.put(keys.transfer(step, Channel("input", -1, b)), codec.encode(x))
            store.put(
                keys.transfer(step, Channel("target", -1, b)),
                codec.encode(y, {"weight": repr(size / n)}),
            )


def _put_eval_data(
    eval_batches: Iterable[Batch] | None, plan: Plan, shared: Storage
) -> tuple[int, int]:
    """Validation micro-batches into the job's storage, once; returns (micro-batches, samples).

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
    pieces = []
    for i, batch in enumerate(items):
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ConfigError("each item of eval_batches must be an (inputs, targets) pair")
        n = batch_size(batch[0], f"inputs of eval batch {i}")
        if batch_size(batch[1], f"targets of eval batch {i}") != n:
            raise ConfigError(f"eval batch {i}: inputs and targets have different batch sizes")
        parts = min(plan.micro_batches, n)
        pieces += list(zip(_split(batch[0], parts), _split(batch[1], parts), strict=True))
    total = sum(batch_size(x, "micro-batch") for x, _ in pieces)
    for b, (x, y) in enumerate(pieces):
        size = batch_size(x, "micro-batch")
        shared.put(keys.eval_transfer(0, Channel("input", -1, b)), codec.encode(x))
        shared.put(
            keys.eval_transfer(0, Channel("target", -1, b)),
            codec.encode(y, {"weight": repr(size / total)}),
        )
    return len(pieces), total


def _postfix(
    reports: list[list[dict[str, Any]]], plan: Plan, evals: dict[int, tuple[float, float | None]]
) -> dict[str, str]:
    out: dict[str, str] = {}
    if reports:
        last = plan.num_stages - 1
        out["loss"] = f"{sum(r['loss'] for r in reports[-1] if r['stage'] == last):.4f}"
        step = reports[-1]
        out["iter"] = f"{max(r['end'] for r in step) - min(r['start'] for r in step):.2f}s"
    if evals:
        loss, acc = evals[max(evals)]
        out["val_loss"] = f"{loss:.4f}"
        if acc is not None:
            out["val_acc"] = f"{acc:.3f}"
    return out


def _history(
    reports: list[list[dict[str, Any]]],
    made_by: list[int],
    manager: FunctionManager,
    memory: dict[tuple[int, int], int],
    client_traffic: list[dict[str, float]],
    pricing: Pricing,
    plan: Plan,
    first_step: int,
    evals: dict[int, tuple[float, float | None]],
    skipped: list[bool],
) -> list[StepStats]:
    """Each step's stats, billed per generation (each one's functions have their own lives)."""
    lives = {g.number: g.lifetimes for g in manager.generations}
    history: list[StepStats] = []
    i = 0
    while i < len(reports):
        j = i
        while j < len(reports) and made_by[j] == made_by[i]:
            j += 1
        bills = bill_steps(reports[i:j], lives.get(made_by[i], []), memory,
                           client_traffic[i:j], pricing)  # fmt: skip
        for k in range(i, j):
            t = first_step + k
            stats = _step_stats(t, reports[k], plan, bills[k - i], client_traffic[k])
            stats = dataclasses.replace(stats, skipped=skipped[k])
            if t in evals:
                stats = dataclasses.replace(stats, val_loss=evals[t][0], val_accuracy=evals[t][1])
            history.append(stats)
        i = j
    return history


def _step_stats(
    t: int,
    reports: list[dict[str, Any]],
    plan: Plan,
    bill: StepBill,
    client: dict[str, float],
) -> StepStats:
    start = min(r["start"] for r in reports)
    end = max(r["end"] for r in reports)
    last = plan.num_stages - 1
    loss = sum(r["loss"] for r in reports if r["stage"] == last)
    requests = sum(client.values()) + sum(
        r["traffic"].get(k, 0) for r in reports for k in _REQUEST_KINDS
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
