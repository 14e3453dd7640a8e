"""The body of one function: load its package, run its steps, report, hand back the weights.

Everything arrives in a :class:`~funcpipe.runtime.package.FunctionPackage` (plain data) whose
code references are resolved here, inside the function: the stage's layers are a skeleton from
the invocation payload filled with weights read from the job's storage as safetensors.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from safetensors.torch import save as save_tensors
from torch import nn

from funcpipe.errors import ConfigError
from funcpipe.plan import Plan
from funcpipe.runtime import keys
from funcpipe.runtime.executor import Executor, StepTrace
from funcpipe.runtime.lifecycle import Lifecycle
from funcpipe.runtime.package import FunctionPackage, resolve
from funcpipe.runtime.stage import StageRunner
from funcpipe.schedule.actions import Action, Op, WorkerId, parse_action
from funcpipe.storage import open_storage
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, ThrottledStorage

__all__ = ["load_layers", "run_package"]


def load_layers(pkg: FunctionPackage, shared: Storage) -> nn.Module:
    """The stage's layers: the skeleton from the payload, tensors from the job's storage."""
    ref = pkg.code["layers"]
    weights = shared.get(ref["weights"]) if "weights" in ref else None
    layers = resolve(ref, weights)
    if not isinstance(layers, nn.Module):
        raise TypeError(f"the layers of stage {pkg.stage} are a {type(layers).__name__}")
    return layers


def run_package(pkg: FunctionPackage, *, invoked_at: float | None = None) -> dict[str, Any]:
    """Train this function's stage for steps ``first_step .. end_step - 1``; return its summary."""
    invoked_at = time.time() if invoked_at is None else invoked_at
    plan = Plan.from_json(json.dumps(pkg.plan))
    s, worker = pkg.stage, WorkerId(pkg.stage, pkg.replica)
    with contextlib.ExitStack() as stack:
        inner = open_storage(pkg.storage_url, deadline_s=pkg.timeout_s)
        stack.callback(inner.close)  # the wrappers below do not close what they wrap
        link = ThrottledStorage(
            inner, LinkConfig(**pkg.link) if pkg.link else LinkConfig(enabled=False)
        )
        shared = PrefixedStorage(link, keys.job_prefix(pkg.job_id))
        storage = PrefixedStorage(shared, keys.generation_prefix(pkg.generation))
        life = Lifecycle(pkg, shared, storage)  # first: heartbeats cover the start-up too
        stack.callback(life.close)
        layers = load_layers(pkg, shared)
        runner = StageRunner(
            layers,
            stage=s,
            is_first=s == 0,
            is_last=s == plan.num_stages - 1,
            loss_fn=resolve(pkg.code["loss"]),
            optimizer=resolve(pkg.code["optimizer"]),
        )
        executor = Executor(
            worker,
            _actions(pkg, "actions"),
            runner,
            storage,
            replicas=plan.stages[s].replicas,
            timeout_s=pkg.timeout_s,
            sync_algorithm=pkg.sync_algorithm,
            overlap=pkg.overlap,
            seed=pkg.seed,
            loader=_data_loader(pkg, link) if pkg.data is not None else None,
            eval_actions=_actions(pkg, "eval_actions"),
            data_storage=shared,
        )
        life.restore(layers, runner)
        layers.train()
        ready_at = time.time()
        try:
            for step in life.steps(executor, layers):
                _run_step(pkg, step, executor, link, storage, invoked_at, ready_at)
        except BaseException:
            executor.close(wait=False)  # a lane may be blocked waiting for a failed peer
            raise
        executor.close()
        if pkg.replica == 0 and life.reached_end:
            state = {k: v.detach().clone().contiguous() for k, v in layers.state_dict().items()}
            storage.put(keys.final_state(s), save_tensors(state))
        # Written last, so the bill covers the whole life: start-up, every step, the last upload.
        summary: dict[str, Any] = {
            "stage": s,
            "replica": pkg.replica,
            "invoked_at": invoked_at,
            "ready_at": ready_at,
            "end": time.time(),
            "traffic": link.stats.as_dict(),
        }
        summary["traffic"]["puts"] += 1  # this very put
        storage.put(keys.lifetime(s, pkg.replica), json.dumps(summary).encode())
        return summary
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _actions(pkg: FunctionPackage, which: str) -> list[Action]:
    """This function's lowered list, as the client checked it (text, one action a line)."""
    lines = getattr(pkg, which)
    if which == "actions" and not lines:
        raise ConfigError(
            f"the package of {pkg.name} holds no action list: packages are made by "
            "funcpipe.train, which checks every function's schedule and ships it"
        )
    return [parse_action(line) for line in lines]


def _run_step(
    pkg: FunctionPackage,
    step: int,
    executor: Executor,
    link: ThrottledStorage,
    storage: Storage,
    invoked_at: float,
    ready_at: float,
) -> None:
    before = link.stats.snapshot().as_dict()

    def write(trace: StepTrace) -> None:
        body = _report(pkg, trace, before, link, invoked_at, ready_at)
        storage.put(keys.report(step, pkg.stage, pkg.replica), body)

    executor.run_step(step, report=write)


def _report(
    pkg: FunctionPackage,
    trace: StepTrace,
    before: dict[str, Any],
    link: ThrottledStorage,
    invoked_at: float,
    ready_at: float,
) -> bytes:
    """The step's report: loss, timings, this step's traffic (the report's own put included)."""
    after = link.stats.as_dict()
    report: dict[str, Any] = {
        "step": trace.step,
        "stage": pkg.stage,
        "replica": pkg.replica,
        "invoked_at": invoked_at,
        "ready_at": ready_at,
        "start": trace.start,
        "end": trace.end,
        "loss": trace.loss,
        "skipped": trace.skipped,
        "nonfinite": trace.nonfinite,
        "spans": trace.spans,
        "traffic": {k: after[k] - before[k] for k in after},
    }
    report["traffic"]["puts"] += 1  # the report itself
    return json.dumps(report).encode()


def _data_loader(pkg: FunctionPackage, root: Storage):
    """This function's own micro-batches, read from a data set in storage (no client feeding).

    A one-stage function needs both inputs and targets of a micro-batch: one read serves both.
    """
    from funcpipe.data.stored import read_micro_batch

    data = pkg.data or {}
    ref, batch_size, micro = data["ref"], int(data["batch_size"]), int(data["micro_batches"])
    cache: dict[tuple[int, int], tuple[Any, Any]] = {}

    def load(step: int, action: Action) -> tuple[Any, dict[str, str]]:
        b = int(action.micro_batch or 0)
        pair = cache.pop((step, b), None)
        if pair is None:
            pair = read_micro_batch(
                root, ref, step, b, batch_size=batch_size, micro_batches=micro, seed=pkg.seed
            )
            if pkg.stage == 0 and pkg.stage == len(pkg.plan["stages"]) - 1:
                cache[(step, b)] = pair  # the other of LOAD_INPUT / LOAD_TARGET comes next
        if action.op is Op.LOAD_INPUT:
            return pair[0], {}
        weight = int(pair[1].shape[0]) / batch_size
        return pair[1], {"weight": repr(weight)}

    return load
