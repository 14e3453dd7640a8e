"""One training job from its first key to its result: launch, feed, monitor, collect.

The job's storage namespace is claimed (or a resumed job's found), its code and weights put
there, and the :class:`~funcpipe.client.manager.FunctionManager` runs its steps while the
:class:`~funcpipe.client.feed.Feeder` puts the data and the
:class:`~funcpipe.client.monitor.Monitor` takes the reports. Whatever happens, the job's functions
are stopped and its storage keys deleted.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tqdm.auto import tqdm

from funcpipe.client.collect import collect
from funcpipe.client.feed import Feeder, put_eval_data
from funcpipe.client.history_log import HistoryLog
from funcpipe.client.jobs import Heartbeat
from funcpipe.client.launch import (
    claim_namespace,
    code_refs,
    delete_job,
    make_platform,
    package_maker,
    put_stage_code,
    sigterm_as_interrupt,
)
from funcpipe.client.manager import FunctionManager
from funcpipe.client.monitor import Monitor
from funcpipe.client.replay import Replay
from funcpipe.client.results import TrainResult
from funcpipe.client.resume import write_job_config
from funcpipe.client.train_config import TrainConfig
from funcpipe.errors import ConfigError
from funcpipe.runtime import keys
from funcpipe.runtime.lifecycle import eval_due
from funcpipe.schedule import CLIENT, Schedule
from funcpipe.storage import open_storage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, ThrottledStorage

__all__ = ["STARTUP_GRACE_S", "run_job"]

# Extra patience for the first step: every function starts a fresh interpreter and imports torch
# (seconds each; many at once on a small machine share its cores). A function that dies while
# starting is still noticed at once through the platform.
STARTUP_GRACE_S = 600.0


def run_job(config: TrainConfig, training: Schedule, evaluation: Schedule | None) -> TrainResult:
    """Run the checked job ``config`` whose checked schedules are ``training`` and, with
    validation, ``evaluation``; the client feeds data by its own list of each."""
    plan, job_id, steps = config.plan, config.job, config.total_steps
    heartbeat_s, timeout_s = config.heartbeat_s, config.timeout_s
    code = code_refs(config)
    root = open_storage(config.storage, deadline_s=timeout_s)  # bounds every request, retries too
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(root.close)
        if not root.shared_across_processes:
            raise ConfigError(
                f"storage {config.storage!r} lives inside one process, but every function runs "
                "in its own: use storage='local' (a shared directory) or a server such as "
                "redis:// or s3://"
            )
        prefix = keys.job_prefix(job_id)
        # The client's own requests (data, reports, weights) are priced too: count them.
        shared = ThrottledStorage(PrefixedStorage(root, prefix), LinkConfig(enabled=False))
        point = claim_namespace(root, shared, config)
        cleanup.callback(delete_job, root, prefix)
        cleanup.enter_context(Heartbeat(root, job_id, period_s=heartbeat_s))
        platform = config.platform
        plat = make_platform(platform) if isinstance(platform, str) else platform
        if isinstance(platform, str):
            cleanup.callback(plat.close)
        cleanup.enter_context(sigterm_as_interrupt())
        log_dir = config.log_dir
        log = cleanup.enter_context(HistoryLog(log_dir)) if log_dir is not None else None
        if point is None:
            write_job_config(shared, {
                "plan": json.loads(plan.to_json()), "steps": steps, "seed": config.seed,
                "checkpoint_every": config.checkpoint_every, "heartbeat_s": heartbeat_s,
                "eval_every": config.eval_every, "metadata": config.metadata or {},
            })  # fmt: skip
        first_step = point.first_step if point else 0
        if first_step >= steps:
            raise ConfigError(
                f"job {job_id!r} has a checkpoint of step {first_step}, at or past steps={steps}: "
                "nothing is left to train"
            )
        layer_refs = put_stage_code(config.model, plan, shared, keep_existing=point is not None)
        settings: dict[str, Any] = {"client_deadline_s": 10 * heartbeat_s}
        if config.eval_data is not None:
            if evaluation is None:
                raise ValueError("a job that validates needs its checked evaluation schedule")
            pieces, samples = config.eval_data
            put_eval_data(shared, evaluation[CLIENT], pieces, samples)
            settings["eval"] = {"every": config.eval_every, "micro_batches": len(pieces)}
        # An endless Batches (the CLI's) has no length; stored data needs no feeding at all.
        batches = config.batches
        replay = Replay(batches if batches is not None else (), first_step)
        if point is not None and point.checkpoint is not None:
            replay.release_before(first_step)
        fed_steps = 0 if config.data is not None else steps
        feeder = Feeder(replay, plan, fed_steps, training[CLIENT])
        memory = {(s, r): st.memory_mb for s, st in enumerate(plan.stages)
                  for r in range(st.replicas)}  # fmt: skip
        function_timeout_s = config.function_timeout_s
        manager = FunctionManager(
            platform=plat,
            plan=plan,
            shared=shared,
            make_payload=package_maker(config, code, layer_refs, training, evaluation),
            client=training[CLIENT],
            feed=feeder.feed,
            total_steps=steps,
            timeout_s=timeout_s,
            function_timeout_s=function_timeout_s,
            heartbeat_s=heartbeat_s,
            heartbeat_deadline_s=5 * heartbeat_s,
            # A function that has not begun its first step: a slow cold start on a busy host is
            # not a hang. Past its time limit the platform ends it and says so (a "timeout").
            startup_deadline_s=min(function_timeout_s + 30, max(STARTUP_GRACE_S, 5 * heartbeat_s)),
            max_restarts=config.max_restarts,
            checkpoint_every=config.checkpoint_every,
            settings=settings,
            first_generation=point.first_generation if point else 0,
        )
        cleanup.callback(manager.cancel_all)

        def generation() -> int:
            assert manager.gen is not None
            return manager.gen.number

        with tqdm(total=steps, initial=first_step, desc="training", unit="step",
                  disable=not config.progress) as bar:  # fmt: skip
            monitor = Monitor(plan=plan, first_step=first_step, shared=shared, memory=memory,
                              pricing=config.pricing, on_nonfinite=config.on_nonfinite, log=log,
                              bar=bar, generation=generation)  # fmt: skip
            finals = manager.run(
                first_step,
                point.checkpoint if point else None,
                monitor.on_reports,
                on_eval=monitor.on_eval if config.eval_data is not None else None,
                eval_due=lambda b: eval_due(b, config.eval_every, steps),
                on_checkpoint=lambda c: replay.release_before(c.step),
            )
        return collect(config, manager, monitor, finals, memory)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow
