"""Every storage key the runtime uses, in one place.

All keys are relative to the job's namespace (``jobs/<job_id>/``, applied by a PrefixedStorage), so
two jobs sharing a bucket never see each other's objects and one ``delete_prefix`` cleans a job up.
"""

from __future__ import annotations

from funcpipe.runtime.schedule import Channel

#: Every job's keys live under this prefix.
JOBS_ROOT = "jobs/"


def job_prefix(job_id: str) -> str:
    return f"{JOBS_ROOT}{job_id}/"


def manifest() -> str:
    """The client's start time and last heartbeat, so ``funcpipe clean`` can tell live from dead."""
    return "manifest"


def transfer(step: int, ch: Channel) -> str:
    """Key of a micro-batch's inputs, targets, activation or gradient in one step."""
    return f"step{step}/{ch.kind}/s{ch.stage}/mb{ch.micro_batch}"


def sync_prefix(step: int, stage: int) -> str:
    """Namespace of one stage's gradient synchronisation in one step."""
    return f"step{step}/sync/s{stage}"


def report(step: int, stage: int, replica: int) -> str:
    """A function's report of one step (loss, timings, traffic), read by the client's monitor."""
    return f"step{step}/report/s{stage}r{replica}"


def final_state(stage: int) -> str:
    """The trained parameters and buffers of one stage, written by its replica 0."""
    return f"final/s{stage}"


def eval_transfer(boundary: int, ch: Channel) -> str:
    """Key of a validation transfer; inputs and targets are stored once and read every time."""
    if ch.kind in ("input", "target"):
        return f"evaldata/{ch.kind}/mb{ch.micro_batch}"
    return f"eval{boundary}/{ch.kind}/s{ch.stage}/mb{ch.micro_batch}"


def eval_report(boundary: int, stage: int, replica: int) -> str:
    """A last-stage function's validation scores after ``boundary`` steps."""
    return f"eval{boundary}/report/s{stage}r{replica}"


def generation_prefix(generation: int) -> str:
    """Namespace of one generation of the job's functions, inside the job's namespace.

    A relaunch starts a new generation; a late write from a function of an older one lands in
    its own namespace and can never be read as a live one.
    """
    return f"g{generation}/"


def initial_weights(stage: int) -> str:
    """A stage's starting tensors (safetensors), written by the client before launch."""
    return f"package/s{stage}.safetensors"


def lifetime(stage: int, replica: int) -> str:
    """A function's last record: when it was invoked, ready and done, and its total traffic."""
    return f"lifetime/s{stage}r{replica}"
