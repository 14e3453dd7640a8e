"""What a job needs in place before its first function starts.

Its storage namespace (claimed for a new job, or the point a resumed one goes on from), each
stage's code and initial weights, the platform, the function packages, and the clean-up that runs
however the job ends: SIGTERM becomes an interrupt, and the job's keys are deleted.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from funcpipe.client.generations import PackageMaker
from funcpipe.client.resume import ResumePoint, find_resume_point
from funcpipe.client.train_config import TrainConfig
from funcpipe.errors import ConfigError
from funcpipe.plan import Plan
from funcpipe.platforms.base import Platform
from funcpipe.runtime import keys
from funcpipe.runtime.package import FunctionPackage, inline_ref, pack_object
from funcpipe.schedule import Schedule, WorkerId
from funcpipe.storage.base import Storage

__all__ = [
    "claim_namespace",
    "code_refs",
    "delete_job",
    "make_platform",
    "package_maker",
    "put_stage_code",
    "sigterm_as_interrupt",
]


def claim_namespace(root: Storage, shared: Storage, config: TrainConfig) -> ResumePoint | None:
    """The resumed job's point to go on from, or None for a new job whose keys are still free."""
    prefix = keys.job_prefix(config.job)
    if config.resume is not None:
        return find_resume_point(shared, config.job, config.plan, heartbeat_s=config.heartbeat_s)
    if root.list(prefix):
        raise ConfigError(
            f"storage already holds objects under {prefix!r}: job_id {config.job!r} is in use or "
            "was left by a killed run; pick another job_id, `funcpipe resume` it, or remove a "
            f"dead job's keys with `funcpipe clean --job {config.job}`"
        )
    return None


def delete_job(root: Storage, prefix: str) -> None:
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
def sigterm_as_interrupt() -> Iterator[None]:
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


def make_platform(name: str) -> Platform:
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


def put_stage_code(
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


def code_refs(config: TrainConfig) -> dict[str, Any]:
    """The loss and the optimizer factory as they travel in every function's package."""
    return {"loss": inline_ref(config.loss_fn), "optimizer": inline_ref(config.optimizer)}


def package_maker(
    config: TrainConfig,
    code: dict[str, Any],
    layer_refs: list[dict[str, Any]],
    training: Schedule,
    evaluation: Schedule | None = None,
) -> PackageMaker:
    """``make(stage, replica, generation, first_step, settings)``: one function's package JSON,
    carrying that function's checked action lists."""
    plan = config.plan
    plan_data = json.loads(plan.to_json())
    link = dataclasses.asdict(config.link) if config.link is not None else None
    data = None
    if config.data is not None:
        data = {"ref": config.data, "batch_size": config.batch_size,
                "micro_batches": plan.micro_batches}  # fmt: skip

    def make(s: int, r: int, gen: int, first: int, extra: dict[str, Any]) -> bytes:
        return (
            FunctionPackage(
                job_id=config.job,
                storage_url=config.storage,
                plan=plan_data,
                stage=s,
                replica=r,
                generation=gen,
                first_step=first,
                end_step=config.total_steps,
                seed=config.seed,
                timeout_s=config.timeout_s,
                code={**code, "layers": layer_refs[s]},
                link=link,
                sync_algorithm=config.sync_algorithm,
                overlap=config.overlap,
                settings=extra,
                data=data,
                actions=[str(a) for a in training[WorkerId(s, r)]],
                eval_actions=[str(a) for a in evaluation[WorkerId(s, r)]] if evaluation else [],
            )
            .to_json()
            .encode()
        )

    return make
