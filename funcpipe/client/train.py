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
import time
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
from funcpipe.client.pricing import AWS_LAMBDA, Pricing
from funcpipe.errors import ConfigError, FunctionFailed, MemoryExceeded, StorageTimeout
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import FunctionSpec, Invocation, Platform, Status
from funcpipe.runtime import keys
from funcpipe.runtime.check import check_schedule
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
STARTUP_GRACE_S = 120.0


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
        if root.list(prefix):
            raise ConfigError(
                f"storage already holds objects under {prefix!r}: job_id {job_id!r} is in use or "
                "was left by a killed run; pick another job_id, or remove a dead job's keys with "
                f"`funcpipe clean --job {job_id}`"
            )
        # The client's own requests (data, reports, weights) are priced too: count them.
        shared = ThrottledStorage(PrefixedStorage(root, prefix), LinkConfig(enabled=False))
        cleanup.callback(_delete_job, root, prefix)
        cleanup.enter_context(Heartbeat(root, job_id))
        jobs = PrefixedStorage(shared, keys.generation_prefix(0))
        plat = _make_platform(platform) if isinstance(platform, str) else platform
        if isinstance(platform, str):
            cleanup.callback(plat.close)
        invocations: dict[WorkerId, Invocation] = {}
        cleanup.callback(lambda: [plat.cancel(inv) for inv in invocations.values()])
        cleanup.enter_context(_sigterm_as_interrupt())
        log = cleanup.enter_context(HistoryLog(log_dir)) if log_dir is not None else None

        # `batches or ()` would ask an endless Batches (the CLI's) for its length.
        source = iter(batches) if batches is not None else iter(())
        feeder = _Feeder(source, plan, jobs, 0 if data is not None else steps)
        # Data for the first two steps is in storage before any function starts.
        counted = shared.stats.snapshot()
        feeder.feed(0)
        feeder.feed(1)
        layer_refs = _put_stage_code(model, plan, shared)
        memory: dict[tuple[int, int], int] = {}
        for s, stage in enumerate(plan.stages):
            for r in range(stage.replicas):
                pkg = FunctionPackage(
                    job_id=job_id,
                    storage_url=storage,
                    plan=json.loads(plan.to_json()),
                    stage=s,
                    replica=r,
                    first_step=0,
                    end_step=steps,
                    seed=seed,
                    timeout_s=timeout_s,
                    code={**code, "layers": layer_refs[s]},
                    link=dataclasses.asdict(link) if link is not None else None,
                    sync_algorithm=sync_algorithm,
                    overlap=overlap,
                    settings={"total_steps": steps},
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
                spec = FunctionSpec(pkg.name, stage.memory_mb, function_timeout_s)
                invocations[WorkerId(s, r)] = plat.start(spec, pkg.to_json().encode())
                memory[(s, r)] = stage.memory_mb

        monitor = _Monitor(plat, invocations, plan, jobs, timeout_s)
        history: list[StepStats] = []
        reports: list[list[dict[str, Any]]] = []
        client_traffic: list[dict[str, float]] = []
        with tqdm(total=steps, desc="training", unit="step", disable=not progress) as bar:
            for t in range(steps):
                step_reports = monitor.wait_all(
                    [keys.report(t, s, r) for s, r in invocations],
                    f"step {t}",
                    grace_s=STARTUP_GRACE_S if t == 0 else 0.0,
                )
                skipped = nonfinite_step(t, step_reports, on_nonfinite)
                feeder.feed(t + 2)
                # The client's requests since the last step (data it fed, reports it polled).
                now = shared.stats.snapshot()
                client_traffic.append(_traffic_delta(now, counted))
                counted = now
                reports.append(step_reports)
                bill = bill_steps(reports, [], memory, client_traffic, pricing)[t]
                stats = _step_stats(t, step_reports, plan, bill, client_traffic[t])
                stats = dataclasses.replace(stats, skipped=skipped)
                history.append(stats)
                if log is not None:
                    log.write(stats)
                bar.set_postfix(
                    loss=f"{history[-1].loss:.4f}",
                    iter=f"{history[-1].iteration_s:.2f}s",
                    cost=f"${sum(h.cost_usd for h in history):.5f}",
                )
                bar.update(1)
        finals = monitor.wait_all(
            [keys.final_state(s) for s in range(plan.num_stages)], "final weights", raw=True
        )
        lifetimes = monitor.wait_all(
            [keys.lifetime(s, r) for s, r in invocations], "the functions' last records"
        )
        for inv in invocations.values():
            monitor.join(inv)
        # The last step also pays for the final upload and each function's rounding.
        client_traffic[-1] = _add_traffic(
            client_traffic[-1], _traffic_delta(shared.stats.snapshot(), counted)
        )
        bills = bill_steps(reports, lifetimes, memory, client_traffic, pricing)
        history = [
            _step_stats(t, r, plan, b, c)
            for t, (r, b, c) in enumerate(zip(reports, bills, client_traffic, strict=True))
        ]
        startup = {
            str(WorkerId(x["stage"], x["replica"])): x["ready_at"] - x["invoked_at"]
            for x in lifetimes
        }
        trained = copy.deepcopy(model)
        for stage, data in zip(plan.stages, finals, strict=True):
            trained[stage.start : stage.end].load_state_dict(load_tensors(data))
        totals = {k: sum(c.get(k, 0) for c in client_traffic) for k in _REQUEST_KINDS}
        return TrainResult(trained, history, plan, job_id, reports, startup, lifetimes, totals)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _delete_job(root: Storage, prefix: str) -> None:
    """Delete the job's keys; a failure here must not hide the error that ended the job."""
    in_flight = sys.exc_info()[1]
    try:
        root.delete_prefix(prefix)
    except Exception as exc:
        if in_flight is None:
            raise
        warnings.warn(f"could not delete {prefix!r} after a failure: {exc}", stacklevel=2)


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
    raise ConfigError(f"unknown platform {name!r}; available: 'local'")


def _emulates_link(platform: str | Platform) -> bool:
    """The emulated storage link belongs to the local emulator only, never on a real cloud."""
    from funcpipe.platforms.local import LocalPlatform

    return platform == "local" or isinstance(platform, LocalPlatform)


def _put_stage_code(model: nn.Sequential, plan: Plan, shared: Storage) -> list[dict[str, Any]]:
    """Each stage's layers as a skeleton for the payload, their tensors as safetensors in storage.

    Tensors never travel pickled, and the functions never unpickle anything from storage.
    """
    refs = []
    for s, stage in enumerate(plan.stages):
        pickled, tensors = pack_object(model[stage.start : stage.end])
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

    def __init__(self, it: Iterator[Batch], plan: Plan, jobs: Storage, steps: int) -> None:
        self.it, self.plan, self.jobs, self.steps = it, plan, jobs, steps

    def feed(self, step: int) -> None:
        if step >= self.steps:
            return
        try:
            batch = next(self.it)
        except StopIteration:
            raise ConfigError(
                f"batches ran out after {step} steps but steps={self.steps}: "
                "pass more batches or fewer steps"
            ) from None
        n = check_batch(batch, step, self.plan)
        inputs, targets = batch
        m = self.plan.micro_batches
        for b, (x, y) in enumerate(zip(_split(inputs, m), _split(targets, m), strict=True)):
            size = batch_size(x, "micro-batch")
            self.jobs.put(keys.transfer(step, Channel("input", -1, b)), codec.encode(x))
            self.jobs.put(
                keys.transfer(step, Channel("target", -1, b)),
                codec.encode(y, {"weight": repr(size / n)}),
            )


class _Monitor:
    """Waits for keys while watching every function, so a dead one fails the job at once."""

    POLL_S = 0.05  # the client is not on the critical path: data is fed two steps ahead

    def __init__(
        self,
        platform: Platform,
        invocations: dict[WorkerId, Invocation],
        plan: Plan,
        jobs: Storage,
        timeout_s: float,
    ) -> None:
        self.platform, self.invocations, self.plan = platform, invocations, plan
        self.jobs, self.timeout_s = jobs, timeout_s

    def check_health(self) -> None:
        for worker, inv in self.invocations.items():
            state = self.platform.state(inv)
            if state.status in (Status.FAILED, Status.CANCELLED):
                raise self._failure(worker, state)

    def _failure(self, worker: WorkerId, state: Any) -> FunctionFailed:
        s = worker.stage
        stage = self.plan.stages[s]
        where = f"function '{worker}' (stage {s}, replica {worker.replica})"
        if state.reason == "memory":
            # The platform's message names the function, its cap, peak and activity; add the
            # plan-level fix.
            return MemoryExceeded(
                f"{where}: {state.message}\nfix: it needs more than {stage.memory_mb} MB; raise "
                f"stages[{s}].memory_mb, or shrink its share of the work (more micro-batches, "
                "fewer layers in the stage)",
                function=str(worker),
                reason="memory",
            )
        hint = ""
        if state.reason == "timeout":
            hint = (
                "\nfix: a function lives at most its platform's time limit (900 s on Lambda) "
                "and resuming a job from a checkpoint is not supported yet; train fewer steps "
                "per job, or shorten each step (more replicas, smaller batches)"
            )
        return FunctionFailed(
            f"{where} failed ({state.reason}): {state.message}{hint}",
            function=str(worker),
            reason=state.reason,
        )

    def wait_all(
        self, wanted: list[str], what: str, *, raw: bool = False, grace_s: float = 0.0
    ) -> list[Any]:
        """Read and delete every key in ``wanted`` once it exists; fail fast on a dead function.

        Only the first missing key is polled (keys tend to appear in order), which keeps the
        number of billable requests per poll at one.
        """
        found: list[Any] = []
        patience = self.timeout_s + 30
        since = time.monotonic()
        deadline = since + patience + grace_s
        while len(found) < len(wanted):
            self.check_health()
            key = wanted[len(found)]
            if self.jobs.exists(key):
                data = self.jobs.get(key)
                self.jobs.delete(key)
                found.append(data if raw else json.loads(data))
                since = time.monotonic()
                deadline = since + patience
            elif time.monotonic() > deadline:
                missing = ", ".join(wanted[len(found) :])
                raise StorageTimeout(
                    f"no progress on {what} for {time.monotonic() - since:.0f} s; still waiting "
                    f"for {missing}. Raise timeout_s if steps are this slow."
                )
            else:
                time.sleep(self.POLL_S)
        return found

    def join(self, inv: Invocation) -> None:
        state = self.platform.join(inv, timeout=self.timeout_s)
        if state.status is not Status.SUCCEEDED:
            worker = next(w for w, i in self.invocations.items() if i is inv)
            raise self._failure(worker, state)


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
