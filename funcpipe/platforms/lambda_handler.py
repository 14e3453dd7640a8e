"""The AWS Lambda handler: run one function of a FuncPipe job from its invocation event.

The container image (deploy/aws-lambda/Dockerfile) sets ``CMD`` to
``funcpipe.platforms.lambda_handler.handler``. The client invokes it asynchronously, so nothing
it returns reaches anyone: everything the client learns comes from the control records the
handler writes in the job's storage (see :mod:`funcpipe.platforms.control`).

One invocation, in order:

1. restore the payload parts the client put in storage (data only, checked by SHA-256);
2. claim the function's attempt key with a create-only write; a retried invocation (Lambda
   retries failed asynchronous invocations) finds it taken and exits at once, touching nothing;
3. write ``started``, then a heartbeat every few seconds while watching the abort key and the
   remaining time; abort or time-out writes the final status and ends the process;
4. run :func:`funcpipe.runtime.function.run` on the package, then write ``done`` or ``failed``
   with the traceback, and the billed duration (from handler entry, or from module load on a
   cold start, to the end; 1 ms granularity).

``python -m funcpipe.platforms.lambda_handler --timeout-s 900 < event.json`` runs the handler in
a fresh interpreter with a stand-in for Lambda's context (what the tests do, and a way to try an
event without AWS).
"""

from __future__ import annotations

import time

_LOADED_AT = time.time()  # a cold start's billed duration begins with the module's import

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

__all__ = ["LocalContext", "handle", "handler"]

_cold = True
#: Lambda's init phase (importing this module in a fresh container) lasts at most 10 s.
MAX_INIT_S = 10.0


class LocalContext:
    """The parts of Lambda's context object the handler uses, for running it off AWS."""

    def __init__(self, timeout_s: float = 900.0, memory_mb: int = 2048) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = str(memory_mb)
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda's entry point (``CMD ["funcpipe.platforms.lambda_handler.handler"]``)."""
    return handle(event, context)


def handle(
    event: dict[str, Any] | str | bytes,
    context: Any,
    *,
    stop: Callable[[str], None] | None = None,
    heartbeat_s: float | None = None,
    abort_poll_s: float | None = None,
) -> dict[str, Any]:
    """Run the function in ``event``; ``stop`` replaces ending the process on abort/time-out.

    The heartbeat and abort-poll periods come from the event (the client chose them), unless
    given here.
    """
    global _cold
    entered = time.time()
    started_at = _LOADED_AT if _cold and entered - _LOADED_AT <= MAX_INIT_S else entered
    _cold = False
    from funcpipe.errors import ConfigError
    from funcpipe.platforms import control, offload

    if isinstance(event, str | bytes):
        event = json.loads(event)
    if not isinstance(event, dict) or event.get("funcpipe") != 1 or "package" not in event:
        raise ConfigError(
            "this Lambda runs FuncPipe functions only: the event must be what "
            "funcpipe's aws-lambda platform sends"
        )
    package = event["package"]
    periods = event.get("control") or {}
    heartbeat_s = heartbeat_s or float(periods.get("heartbeat_s", 10.0))
    abort_poll_s = abort_poll_s or float(periods.get("abort_poll_s", 1.0))
    root, shared = control.job_storage(package["storage_url"], package["job_id"])
    try:
        keys = control.ControlKeys.of(package)
        attempt = getattr(context, "aws_request_id", None) or control.attempt_id()
        if (ended := _job_ended(shared, keys, package)) is not None:
            return {"state": ended, "attempt": attempt}
        record = json.dumps({"attempt": attempt, "at": entered}).encode()
        if not control.claim(shared, keys.claim, record):
            # A retry of an invocation that already ran (or runs): leave every key alone.
            print(f"funcpipe: {keys.prefix} was already claimed; this attempt exits", flush=True)
            return {"state": "duplicate", "attempt": attempt}
        try:
            package = offload.restore_payload(package, shared)
        except Exception:
            # The job may have ended between the check above and the claim: then the payload is
            # gone with it, which is no failure of this function.
            if (ended := _job_ended(shared, keys, package, written=True)) is not None:
                return {"state": ended, "attempt": attempt}
            raise
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        memory = getattr(context, "memory_limit_in_mb", None)
        guard = control.FunctionGuard(
            shared,
            keys,
            attempt=attempt,
            started_at=started_at,
            memory_mb=int(memory) if memory else None,
            remaining_s=(lambda: remaining() / 1000) if remaining else None,
            stop=stop,
            heartbeat_s=heartbeat_s,
            abort_poll_s=abort_poll_s,
        )
        guard.start()
        from funcpipe.runtime.function import run

        try:
            run(package, invoked_at=started_at)
        except Exception as exc:
            if (ended := _job_ended(shared, keys, package, written=True)) is not None:
                guard.finish(None, write=False)
                return {"state": ended, "attempt": attempt}
            guard.finish(exc)
            raise
        except BaseException as exc:
            guard.finish(exc)
            raise
        guard.finish(None)
        return {"state": "done", "attempt": attempt}
    finally:
        root.close()


def _job_ended(
    shared: Any, keys: Any, package: dict[str, Any], *, written: bool = False
) -> str | None:
    """``cancelled`` or ``gone`` when the job ended before this function could run, else None.

    ``written``: this attempt already wrote its claim and status; they are removed again if the
    job is gone (see :func:`funcpipe.platforms.control.job_over`).
    """
    from funcpipe.platforms import control

    wrote = (keys.status, keys.claim) if written else ()
    why = control.job_over(shared, keys, package.get("job_id", "?"), wrote=wrote)
    if why is None:
        return None
    return "cancelled" if why == "cancelled" else "gone"


def _exit_for_state(state: str) -> int:
    """Exit status of ``python -m funcpipe.platforms.lambda_handler`` for a handler result."""
    from funcpipe.platforms.control import CANCELLED_EXIT
    from funcpipe.runtime.heartbeat import CLIENT_GONE_EXIT

    return {"cancelled": CANCELLED_EXIT, "gone": CLIENT_GONE_EXIT}.get(state, 0)


def main(argv: list[str] | None = None) -> int:
    """Run the handler on an event read from stdin, in this fresh interpreter."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--memory-mb", type=int, default=2048)
    args = parser.parse_args(argv)
    event = json.loads(sys.stdin.buffer.read())
    context = LocalContext(args.timeout_s, args.memory_mb)
    try:
        result = handle(event, context)
    except BaseException as exc:
        print(f"funcpipe: the function failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return _exit_for_state(result.get("state", ""))


if __name__ == "__main__":
    sys.exit(main())
