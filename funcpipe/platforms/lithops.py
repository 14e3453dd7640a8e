"""Lithops: launch a job's functions through ``lithops.FunctionExecutor``.

Every Lithops compute backend (AWS Lambda, Google Cloud Functions and Cloud Run, IBM Code
Engine, Azure, Alibaba Function Compute, Kubernetes, Knative, ...) then runs FuncPipe: each
function is one ``call_async`` of :func:`funcpipe.runtime.function.run` on its package, and its
Lithops future says how it ended (the function's exception and traceback, or Lithops' time-out).

Without a config the platform uses Lithops' localhost backend, which runs each call in a fresh
interpreter of this Python installation, but only ``worker_processes`` calls at once. The
functions of a pipeline wait for each other, so they must all run at the same time: the platform
sizes ``worker_processes`` from the job's plan, and refuses (never stalls) when a config of the
user's or a remote backend's ``max_workers`` allows fewer.

Cancel writes the function's abort key in the job's storage, which the function watches, and on
the localhost backend also kills its process.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funcpipe.errors import ConfigError
from funcpipe.platforms import control, failures
from funcpipe.platforms.base import FunctionSpec, Invocation, InvocationState, Reason, Status
from funcpipe.platforms.polled import PolledPlatform, PolledRun, not_a_package

__all__ = ["LithopsPlatform"]

#: Extra time a call may take past its timeout before the client gives up on Lithops' report.
TIMEOUT_GRACE_S = 60.0


def run_in_lithops(payload: str, abort_poll_s: float = 1.0) -> dict[str, Any] | None:
    """What each Lithops call runs: the function of ``payload``, stopped by its abort key."""
    invoked_at = time.time()
    package = json.loads(payload)
    root, shared = control.job_storage(package["storage_url"], package["job_id"])
    keys = control.ControlKeys.of(package)
    done = control.watch_abort(shared, keys.abort, poll_s=abort_poll_s)
    try:
        from funcpipe.runtime.function import run

        if control.job_over(shared, keys, package["job_id"]) is not None:
            return None
        try:
            return run(package, invoked_at=invoked_at)
        except Exception:
            # A queued call that starts as its job is deleted finds its package gone: no failure.
            if control.job_over(shared, keys, package["job_id"]) is not None:
                return None
            raise
    finally:
        done.set()
        root.close()


def plan_functions(plan: dict[str, Any]) -> int:
    """How many functions a plan (its JSON form) runs at once."""
    return sum(int(stage.get("replicas", 1)) for stage in plan["stages"])


def load_config(config: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """A Lithops config as a dict: given, read from a Lithops YAML config file, or localhost."""
    if config is None:
        return {"lithops": {"backend": "localhost", "storage": "localhost"}}
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config).expanduser()
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the Lithops config file {str(path)!r}: {exc}") from exc
    except Exception as exc:  # yaml errors
        raise ConfigError(f"{str(path)!r} is not a valid Lithops config file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} is not a Lithops config (a YAML mapping expected)")
    return data


@dataclass
class _Run(PolledRun):
    future: Any = None  # the call's Lithops future
    reported: InvocationState | None = None  # how Lithops says the call ended


class LithopsPlatform(PolledPlatform[_Run]):
    """Functions as Lithops calls; ``config`` is a Lithops config dict or config file path.

    ``poll_s`` bounds how often a running call's status is looked up (each look-up is a read of
    Lithops' storage). ``forward_env`` names environment variables copied from the client into
    each call (Lithops' ``extra_env``), e.g. the HMAC keys a remote backend's functions need for
    FuncPipe's S3-protocol storage; the localhost backend inherits the client's environment.
    """

    timeout_grace_s = TIMEOUT_GRACE_S

    def __init__(
        self,
        config: dict[str, Any] | str | Path | None = None,
        *,
        poll_s: float = 0.25,
        abort_poll_s: float = 1.0,
        forward_env: tuple[str, ...] = (),
    ) -> None:
        super().__init__(poll_s=poll_s)
        self.config = load_config(config)
        lithops_section = self.config.setdefault("lithops", {})
        self.backend = lithops_section.setdefault("backend", "localhost")
        lithops_section.setdefault("log_level", "WARNING")  # FuncPipe reports what matters
        if self.backend == "localhost":
            lithops_section.setdefault("storage", "localhost")
            local = self.config.setdefault("localhost", {}) or {}
            self.config["localhost"] = local
            # The interpreter running FuncPipe, not whatever `python` is first on PATH.
            local.setdefault("runtime", sys.executable)
        self.abort_poll_s = abort_poll_s
        missing = [name for name in forward_env if name not in os.environ]
        if missing:
            raise ConfigError(
                f"forward_env names {missing}, which are not set in this environment; set them "
                "or leave them out"
            )
        self.forward_env = tuple(forward_env)
        self._executor: Any = None
        self.slots = 0  # calls the current executor runs at once

    @classmethod
    def from_env(cls) -> LithopsPlatform:
        """``$FUNCPIPE_LITHOPS_CONFIG`` (a Lithops config file) if set, else localhost.

        ``$FUNCPIPE_LITHOPS_FORWARD_ENV`` (comma-separated names) sets ``forward_env``.
        """
        names = os.environ.get("FUNCPIPE_LITHOPS_FORWARD_ENV", "")
        return cls(
            os.environ.get("FUNCPIPE_LITHOPS_CONFIG") or None,
            forward_env=tuple(n.strip() for n in names.split(",") if n.strip()),
        )

    # --- executor ---------------------------------------------------------------------------

    def _user_slots(self) -> int | None:
        if self.backend == "localhost":
            value = (self.config.get("localhost") or {}).get("worker_processes")
        else:
            value = (self.config.get(self.backend) or {}).get("max_workers")
            value = value or self.config["lithops"].get("max_workers")
        return None if value is None else int(value)

    def _ensure_executor(self, needed: int, active: int) -> Any:
        """An executor that can run ``needed`` functions at once, or ConfigError."""
        if self._executor is not None and self.slots >= needed:
            return self._executor
        user = self._user_slots()
        where = "localhost.worker_processes" if self.backend == "localhost" else "max_workers"
        if user is not None and user < needed:
            raise ConfigError(
                f"this job runs {needed} functions at once, but the Lithops config allows only "
                f"{user} concurrent calls ({where}); the pipeline would stall. Raise {where} to "
                f"at least {needed}, or use a plan with fewer functions"
            )
        if self._executor is not None and active:
            raise ConfigError(
                f"this Lithops platform runs {active} functions of another job with "
                f"{self.slots} slots, and this job needs {needed}; use another LithopsPlatform"
            )
        self._shutdown()
        import lithops

        config = copy.deepcopy(self.config)
        if self.backend == "localhost":
            config["localhost"]["worker_processes"] = max(needed, user or 0)
        try:
            self._executor = lithops.FunctionExecutor(config=config)
        except Exception as exc:
            raise ConfigError(
                f"Lithops could not start its {self.backend!r} backend: {type(exc).__name__}: {exc}"
            ) from exc
        self.slots = max(needed, user or 0) if self.backend == "localhost" else (user or needed)
        return self._executor

    def _shutdown(self) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        try:
            ex.__exit__(None, None, None)  # stops its monitor and, on localhost, its processes
            ex.clean(force=True, on_exit=True)
        except Exception as exc:  # never hide the error that made us close
            print(f"funcpipe: closing the Lithops executor failed: {exc}", file=sys.stderr)

    # --- Platform API -----------------------------------------------------------------------

    def start(self, spec: FunctionSpec, payload: bytes) -> Invocation:
        self._check_open()
        self.limits.check(spec)
        job = self._read_package(spec, payload)
        try:
            needed = plan_functions(job.package["plan"])
        except (ValueError, KeyError, TypeError) as exc:
            raise not_a_package(spec, exc) from exc
        if self.backend != "localhost":
            control.check_reachable(job.storage_url, f"Lithops' {self.backend} backend")
        with self._lock:
            active = sum(1 for r in self._runs.values() if self._state(r).status is Status.RUNNING)
            ex = self._ensure_executor(needed, active)
            if active + 1 > self.slots:
                raise ConfigError(
                    f"function {spec.name!r} would be call {active + 1} running at once on a "
                    f"Lithops executor with {self.slots} slots; it would wait for a slot while "
                    "its peers wait for it. Run fewer jobs at once on one LithopsPlatform"
                )
            shared = self._storage(job.storage_url, job.job_id)
            options: dict[str, Any] = {"timeout": math.ceil(spec.timeout_s)}
            if self.backend != "localhost":  # localhost has no memory setting
                options["runtime_memory"] = spec.memory_mb
            if self.forward_env:
                options["extra_env"] = {name: os.environ[name] for name in self.forward_env}
            future = ex.call_async(
                run_in_lithops,
                (bytes(payload).decode(), self.abort_poll_s),
                include_modules=None,
                **options,
            )
            inv = Invocation.new(spec)
            self._add(_Run(inv, shared, job.keys, time.time(), future=future))
            return inv

    # --- polling ----------------------------------------------------------------------------

    def _stop(self, run: _Run) -> str:
        """On localhost, kill the call's process too (elsewhere it stops at its abort key)."""
        if self.backend != "localhost" or self._executor is None:
            return ""
        try:
            self._executor.compute_handler.clear(job_keys=[run.future.job_key], exception=True)
        except Exception as exc:  # it still stops at its abort key
            return f" (its process could not be killed: {exc})"
        return ""

    def _poll(self, run: _Run) -> None:
        spec, fut = run.inv.spec, run.future
        storage = self._executor.internal_storage if self._executor is not None else None
        try:
            status = fut.status(throw_except=False, internal_storage=storage, check_only=True)
            if status is not None:
                fut.status(throw_except=False, internal_storage=storage)
        except Exception as exc:
            run.reported = InvocationState(
                Status.FAILED,
                Reason.CRASH,
                f"function {spec.name!r}: Lithops could not report its status: "
                f"{type(exc).__name__}: {exc}",
            )
            return
        if fut.error:
            run.reported = _failure(spec, fut)
        elif fut.success or fut.done:
            run.reported = InvocationState(Status.SUCCEEDED)

    def _classify(self, run: _Run, now: float) -> InvocationState:
        if run.reported is not None:
            return run.reported
        if self._overdue(run, now):
            return failures.timed_out(run.inv.spec, " and Lithops reported nothing")
        return InvocationState(Status.RUNNING)


def _failure(spec: FunctionSpec, fut: Any) -> InvocationState:
    """The function's own exception (with its traceback from the worker) as a failed state."""
    exc_type, exc, tb = fut._exception  # Lithops keeps (type, value, traceback) of the call
    if isinstance(exc, TimeoutError) and "maximum time" in str(exc):
        return failures.timed_out(spec, " and Lithops killed it")
    try:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
    except Exception:
        text = f"{getattr(exc_type, '__name__', exc_type)}: {exc}"
    if isinstance(exc, MemoryError):
        return failures.out_of_memory(spec, detail=text)
    return failures.raised(spec, text, transient=failures.is_transient(exc))
