"""The checked form of ``funcpipe.train``'s arguments: every one validated before anything starts.

A bad argument fails here, on the client, with a message naming the value and the fix, before a
byte is written to storage or a function is started (and billed). Defaults live in
:func:`funcpipe.train`'s signature; this object holds what it was called with, normalised.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from funcpipe.client.feed import Batch, split_eval_batches
from funcpipe.client.hygiene import check_list_batches, check_on_nonfinite
from funcpipe.client.jobs import new_job_id, validate_job_id
from funcpipe.client.pricing import Pricing
from funcpipe.errors import ConfigError
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import Platform
from funcpipe.runtime.stage import LossFn, OptimizerFactory
from funcpipe.storage.throttle import LinkConfig

__all__ = ["TrainConfig"]


@dataclass(frozen=True, kw_only=True, eq=False)
class TrainConfig:
    """``funcpipe.train``'s arguments (see there for each one's meaning), checked on creation.

    Creating one raises ConfigError for the first bad argument. On top of the arguments it holds
    what they resolve to: ``total_steps``, ``job`` (the job id: the one given, the resumed one or
    a new one) and ``eval_data``; ``link`` becomes the emulated Lambda link where it is None and
    the functions run in the local emulator.
    """

    model: nn.Sequential
    loss_fn: LossFn
    optimizer: OptimizerFactory
    batches: Iterable[Batch] | None = field(repr=False)
    plan: Plan
    steps: int | None
    platform: str | Platform
    storage: str
    link: LinkConfig | None
    timeout_s: float
    sync_algorithm: str
    overlap: bool
    function_timeout_s: float
    pricing: Pricing
    progress: bool
    job_id: str | None
    on_nonfinite: str
    log_dir: str | os.PathLike[str] | None
    seed: int
    data: dict[str, Any] | None
    batch_size: int | None
    checkpoint_every: int | None
    resume: str | None
    eval_batches: Iterable[Batch] | None = field(repr=False)
    eval_every: int | None
    max_restarts: int
    heartbeat_s: float
    metadata: dict[str, Any] | None
    total_steps: int = field(init=False)  # steps to train: given, or the batches' or data's
    job: str = field(init=False)  # the job id in storage
    # The validation micro-batches and their samples; None without eval_every.
    eval_data: tuple[list[Batch], int] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        model, plan = self.model, self.plan
        if not isinstance(model, nn.Sequential):
            raise ConfigError(
                f"model is a {type(model).__name__}; FuncPipe cuts an nn.Sequential into stages. "
                "Convert it with funcpipe.models.to_sequential(model, example_input)"
            )
        if not isinstance(plan, Plan):
            raise ConfigError("plan must be a funcpipe.Plan")
        plan.check_model(len(model))
        _check_no_shared_parameters(model, plan)
        if self.sync_algorithm not in ("naive", "pipelined"):
            raise ConfigError(
                f"sync_algorithm must be 'naive' or 'pipelined', got {self.sync_algorithm!r}"
            )
        _check_seconds("timeout_s", self.timeout_s)
        self._set("total_steps", self._checked_steps())
        for name in ("checkpoint_every", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):  # fmt: skip
                raise ConfigError(f"{name} must be a positive integer number of steps or None, "
                                  f"got {value!r}")  # fmt: skip
        restarts = self.max_restarts
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {restarts!r}")
        _check_seconds("heartbeat_s", self.heartbeat_s)
        job_id = self.job_id
        if self.resume is not None:
            if job_id is not None and job_id != self.resume:
                raise ConfigError(
                    f"job_id={job_id!r} and resume={self.resume!r} differ: pass only resume"
                )
            job_id = self.resume
        self._set("on_nonfinite", check_on_nonfinite(self.on_nonfinite))
        self._set("job", new_job_id() if job_id is None else validate_job_id(job_id))
        if self.link is None and _emulates_link(self.platform):
            self._set("link", LinkConfig())
        self._set(
            "eval_data", split_eval_batches(self.eval_batches, plan) if self.eval_every else None
        )
        _warm_up(self.optimizer)

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field while the object is being checked (it is frozen afterwards)."""
        object.__setattr__(self, name, value)

    def _checked_steps(self) -> int:
        """The number of steps, with the data source: fed batches or a stored data set."""
        if self.data is not None:
            return _check_stored_data(
                self.data, self.batches, self.batch_size, self.steps, self.plan
            )
        if self.batches is None:
            raise ConfigError(
                "pass batches=[(inputs, targets), ...] (fed by the client) or data=<data ref> "
                "(read from storage by the functions)"
            )
        steps = _resolve_steps(self.steps, self.batches)
        check_list_batches(self.batches, self.plan, steps)
        return steps

    @property
    def eval_micro_batches(self) -> int | None:
        """Micro-batches of the validation pass; None when there is none."""
        return None if self.eval_data is None else len(self.eval_data[0])


def _check_seconds(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


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


def _emulates_link(platform: str | Platform) -> bool:
    """The emulated storage link belongs to the local emulator only, never on a real cloud."""
    from funcpipe.platforms.local import LocalPlatform

    return platform == "local" or isinstance(platform, LocalPlatform)


def _warm_up(optimizer: OptimizerFactory) -> None:
    """Build and step the optimizer once on a dummy parameter in the client.

    torch's first optimizer construction imports ~2 s of modules lazily; doing it before the
    functions are forked means each of them starts with those imports already done. A factory
    that fails, or returns no optimizer, is refused here.
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
