"""What a job stores about itself so that another client can resume it after its own died.

``job.json`` (inside the job's namespace) holds the plan, the number of steps, the seed and the
checkpoint and heartbeat settings, plus free-form ``metadata`` (the CLI keeps its options there so
``funcpipe resume JOB`` can rebuild the same model and data). Never a storage URL or a password.
Resuming picks the latest complete checkpoint and a generation number above every one used so far,
so nothing the dead client's functions may still write is read as live.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from funcpipe.errors import ConfigError, KeyNotFound
from funcpipe.planning.plan import Plan
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.runtime import keys
from funcpipe.storage.base import Storage

__all__ = ["JOB_CONFIG", "ResumePoint", "find_resume_point", "read_job_config", "write_job_config"]

JOB_CONFIG = "job.json"
_GEN = re.compile(r"^(?:g(\d+)/|ckpt/step\d+/g(\d+)/)")


def write_job_config(shared: Storage, config: dict[str, Any]) -> None:
    shared.put(JOB_CONFIG, json.dumps(config, sort_keys=True).encode())


def read_job_config(shared: Storage, job_id: str) -> dict[str, Any]:
    try:
        return json.loads(shared.get(JOB_CONFIG))
    except KeyNotFound:
        raise ConfigError(
            f"storage holds no resumable job {job_id!r} (no {JOB_CONFIG}): it finished, was "
            "cleaned up, or ran with another storage URL; `funcpipe clean --dry-run` lists jobs"
        ) from None


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: ckpt.Checkpoint | None  # None: from the job's initial weights
    first_step: int
    first_generation: int
    config: dict[str, Any]


def find_resume_point(
    shared: Storage, job_id: str, plan: Plan, *, heartbeat_s: float
) -> ResumePoint:
    """Where ``job_id`` can go on from; refuses a job whose client still beats."""
    config = read_job_config(shared, job_id)
    if config.get("plan") != json.loads(plan.to_json()):
        raise ConfigError(
            f"job {job_id!r} was started with another plan: resume it with the plan it ran "
            f"(stored in its {JOB_CONFIG}: {json.dumps(config.get('plan'))})"
        )
    _refuse_live_client(shared, job_id, float(config.get("heartbeat_s") or heartbeat_s))
    functions = [(s, r) for s, st in enumerate(plan.stages) for r in range(st.replicas)]
    latest = ckpt.latest_checkpoint(shared, functions)
    used = [-1]
    for key in shared.list(""):
        m = _GEN.match(key)
        if m:
            used.append(int(m.group(1) or m.group(2)))
    return ResumePoint(latest, latest.step if latest else 0, max(used) + 1, config)


def _refuse_live_client(shared: Storage, job_id: str, heartbeat_s: float) -> None:
    """A client beats every ``heartbeat_s``; one that beat within three periods is alive."""
    try:
        manifest = json.loads(shared.get(keys.manifest()))
    except (KeyNotFound, ValueError):
        return
    beat = manifest.get("heartbeat")
    if isinstance(beat, int | float):
        idle = time.time() - beat
        if idle < 3 * heartbeat_s + 1:
            raise ConfigError(
                f"job {job_id!r} is still running: its client beat {idle:.1f} s ago (pid "
                f"{manifest.get('pid')} on {manifest.get('host')}); stop it first, or wait "
                f"{3 * heartbeat_s + 1 - idle:.0f} s if it was just killed"
            )
