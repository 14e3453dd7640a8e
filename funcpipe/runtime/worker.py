"""The body of one function: open its storage link, run every step, report, hand back the weights.

Everything a function needs arrives in a :class:`WorkerConfig` (plain, JSON-able data) plus the
stage's layers, loss function and optimizer factory, so a cloud backend only has to ship those.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field

from safetensors.torch import save as save_tensors
from torch import nn

from funcpipe.planning.plan import Plan
from funcpipe.runtime import keys
from funcpipe.runtime.executor import Executor
from funcpipe.runtime.schedule import WorkerId, build_schedule
from funcpipe.runtime.stage import LossFn, OptimizerFactory, StageRunner
from funcpipe.storage import open_storage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, ThrottledStorage


@dataclass(frozen=True)
class WorkerConfig:
    job_id: str
    storage_url: str = field(repr=False)  # may carry a password; never printed
    plan_json: str
    stage: int
    replica: int
    steps: int
    timeout_s: float
    link: LinkConfig
    sync_algorithm: str = "pipelined"
    overlap: bool = True

    @property
    def worker(self) -> WorkerId:
        return WorkerId(self.stage, self.replica)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def run_worker(
    cfg: WorkerConfig, layers: nn.Module, loss_fn: LossFn, optimizer: OptimizerFactory
) -> None:
    """Train ``layers`` (this function's stage) for ``cfg.steps`` steps."""
    plan = Plan.from_json(cfg.plan_json)
    s = cfg.stage
    with contextlib.ExitStack() as stack:
        inner = open_storage(cfg.storage_url, deadline_s=cfg.timeout_s)
        stack.callback(inner.close)  # the wrappers below do not close what they wrap
        link = ThrottledStorage(inner, cfg.link)
        storage = PrefixedStorage(link, keys.job_prefix(cfg.job_id))
        runner = StageRunner(
            layers,
            stage=s,
            is_first=s == 0,
            is_last=s == plan.num_stages - 1,
            loss_fn=loss_fn,
            optimizer=optimizer,
        )
        executor = Executor(
            cfg.worker,
            build_schedule(plan)[cfg.worker],
            runner,
            storage,
            replicas=plan.stages[s].replicas,
            timeout_s=cfg.timeout_s,
            sync_algorithm=cfg.sync_algorithm,
            overlap=cfg.overlap,
        )
        layers.train()
        try:
            _train_steps(cfg, executor, link, storage, layers)
        except BaseException:
            executor.close(wait=False)  # a lane may be blocked waiting for a failed peer
            raise
        executor.close()


def _train_steps(
    cfg: WorkerConfig,
    executor: Executor,
    link: ThrottledStorage,
    storage: PrefixedStorage,
    layers: nn.Module,
) -> None:
    s = cfg.stage
    for step in range(cfg.steps):
        before = link.stats.snapshot().as_dict()
        trace = executor.run_step(step)
        after = link.stats.as_dict()
        report = {
            "step": step,
            "stage": s,
            "replica": cfg.replica,
            "start": trace.start,
            "end": trace.end,
            "loss": trace.loss,
            "skipped": trace.skipped,
            "nonfinite": trace.nonfinite,
            "spans": trace.spans,
            "traffic": {k: after[k] - before[k] for k in after},
        }
        storage.put(keys.report(step, s, cfg.replica), json.dumps(report).encode())
    if cfg.replica == 0:
        state = {k: v.detach().clone().contiguous() for k, v in layers.state_dict().items()}
        storage.put(keys.final_state(s), save_tensors(state))
