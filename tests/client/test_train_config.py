"""train() checks every argument and both schedules before any function starts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from funcpipe.client import train as train_module
from funcpipe.client.train_config import TrainConfig
from funcpipe.errors import ConfigError, ScheduleError
from funcpipe.plan import Plan, Stage
from funcpipe.schedule import Op, build_eval_schedule, check_schedule


def _never(*args, **kwargs):
    raise AssertionError("the job started although a check should have stopped it")


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


PLAN = Plan(stages=[Stage(start=0, end=2, replicas=2), Stage(start=2, end=3)], micro_batches=2)
BATCHES = [(torch.randn(8, 4), torch.randn(8, 2))] * 2
SGD = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731


def test_the_evaluation_schedule_is_checked_before_any_function_starts(
    monkeypatch, tmp_path
) -> None:
    checked = []

    def refuse_eval(schedule, *args, **kwargs):
        checked.append(schedule)
        if any(a.op is Op.EVAL_FORWARD for acts in schedule.values() for a in acts):
            raise ScheduleError("seeded: the evaluation schedule is refused")
        return check_schedule(schedule, *args, **kwargs)

    monkeypatch.setattr(train_module, "check_schedule", refuse_eval)
    monkeypatch.setattr(train_module, "run_job", _never)
    evals = [(torch.randn(5, 4), torch.randn(5, 2)), (torch.randn(3, 4), torch.randn(3, 2))]
    with pytest.raises(ScheduleError, match="seeded"):
        train_module.train(_model(), nn.MSELoss(), optimizer=SGD, batches=BATCHES, plan=PLAN,
                           storage=f"local://{tmp_path}", progress=False, eval_batches=evals,
                           eval_every=1)  # fmt: skip
    # Each eval batch is split like a training batch: 2 + 2 micro-batches.
    assert len(checked) == 2 and checked[1] == build_eval_schedule(PLAN, 4)


def test_without_validation_only_the_training_schedule_is_checked(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(train_module, "run_job", lambda *args: seen.append(args))
    train_module.train(_model(), nn.MSELoss(), optimizer=SGD, batches=BATCHES, plan=PLAN,
                       storage=f"local://{tmp_path}", progress=False)  # fmt: skip
    ((config, training, evaluation),) = seen
    assert evaluation is None and config.eval_data is None
    assert sum(1 for a in training[(1, 0)] if a.op is Op.BACKWARD) == 2


def _config(**changes) -> TrainConfig:
    arguments = dict(
        model=_model(), loss_fn=nn.MSELoss(), optimizer=SGD, batches=BATCHES, plan=PLAN,
        steps=None, platform="local", storage="local", link=None, timeout_s=120.0,
        sync_algorithm="pipelined", overlap=True, function_timeout_s=900.0, pricing=None,
        progress=False, job_id=None, on_nonfinite="raise", log_dir=None, seed=0, data=None,
        batch_size=None, checkpoint_every=None, resume=None, eval_batches=None, eval_every=None,
        max_restarts=3, heartbeat_s=2.0, metadata=None,
    )  # fmt: skip
    return TrainConfig(**{**arguments, **changes})


def test_the_config_resolves_steps_job_and_link() -> None:
    config = _config()
    assert config.total_steps == 2 and config.job and config.link is not None
    assert _config(resume="older-job").job == "older-job"
    with pytest.raises(ConfigError, match="pass only resume"):
        _config(resume="older-job", job_id="another")
    with pytest.raises(ConfigError, match="eval_every is set but eval_batches is not"):
        _config(eval_every=2)
    with pytest.raises(ConfigError, match="max_restarts must be an integer >= 0, got -1"):
        _config(max_restarts=-1)
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
