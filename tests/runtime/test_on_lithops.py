"""Whole jobs on the lithops platform, with Lithops' localhost backend (no cloud, no docker).

Every function is a Lithops call that runs in a fresh interpreter of this Python installation.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_equivalence import OPTIMIZERS, PLANS, assert_trains_like_pytorch, make_batches, make_model
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.errors import FunctionFailed
from funcpipe.platforms.lithops import LithopsPlatform


def test_training_on_lithops_equals_single_process(tmp_path) -> None:
    plat = LithopsPlatform()
    try:
        assert_trains_like_pytorch(
            make_model(), make_batches(3), PLANS["2x2"], optimizer=OPTIMIZERS["adam"],
            platform=plat, storage=str(tmp_path / "store"),
        )  # fmt: skip
        # Four functions at once: the localhost backend was given four worker processes.
        assert plat.slots == 4
    finally:
        plat.close()


def test_training_by_name(tmp_path) -> None:
    assert_trains_like_pytorch(
        make_model(), make_batches(2), PLANS["2x1"], platform="lithops",
        storage=str(tmp_path / "store"),
    )  # fmt: skip


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("shapes do not line up in Boom")


class Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(120)
        return x


def _two_stage(model: nn.Sequential) -> Plan:
    n = len(model)
    return Plan(stages=[Stage(start=0, end=n // 2), Stage(start=n // 2, end=n)], micro_batches=2)


def test_a_failing_function_reports_its_traceback(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), Boom(), nn.Linear(8, 5))
    plat = LithopsPlatform()
    started = time.monotonic()
    with pytest.raises(FunctionFailed) as err:
        train(model, nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["sgd-momentum"],
              batches=make_batches(2), plan=_two_stage(model), platform=plat,
              storage=str(tmp_path / "store"), progress=False, timeout_s=60)  # fmt: skip
    plat.close()
    assert "stage1-replica0" in str(err.value)
    assert "ValueError: shapes do not line up in Boom" in str(err.value)
    assert time.monotonic() - started < 60  # at once, not after the other's waits time out


def test_a_function_past_its_timeout_is_reported(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), Slow(), nn.Linear(192, 5))
    plat = LithopsPlatform()
    with pytest.raises(FunctionFailed) as err:
        train(model, nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["sgd-momentum"],
              batches=make_batches(1), plan=_two_stage(model), platform=plat,
              storage=str(tmp_path / "store"), progress=False, timeout_s=60,
              function_timeout_s=8)  # fmt: skip
    plat.close()
    # Both stages run past 8 s (stage 1 waits for stage 0): whichever is seen first is named.
    assert err.value.reason == "timeout" and "ran past its timeout of 8 s" in str(err.value)
