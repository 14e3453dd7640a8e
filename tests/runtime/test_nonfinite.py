"""A non-finite loss stops the job at its step, or (on request) drops that step's update on
every function alike; bad list batches fail before any function starts."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.errors import ConfigError, NonFiniteLoss
from funcpipe.storage.local_dir import LocalDirStorage

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)
ADAM = lambda p: torch.optim.Adam(p, lr=1e-2)  # noqa: E731 - a step count in its state

PLANS = {
    "2x2": Plan(
        stages=[Stage(start=0, end=4, replicas=2), Stage(start=4, end=7, replicas=2)],
        micro_batches=4,
    ),
    "3-stages-1-2-3": Plan(
        stages=[
            Stage(start=0, end=2),
            Stage(start=2, end=5, replicas=2),
            Stage(start=5, end=7, replicas=3),
        ],
        micro_batches=4,
    ),  # fmt: skip
}


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5),
    )  # fmt: skip


def make_batches(n: int, *, poisoned: int | None = None, sample: int = 5):
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))
        for _ in range(n)
    ]
    if poisoned is not None:  # one NaN in one sample: only that sample's micro-batch is NaN
        batches[poisoned][0][sample, 0, 0, 0] = float("nan")
    return batches


def flagged_loss(out: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy, plus a gradient-free +inf on micro-batches holding a flagged sample: the
    loss is not finite but every gradient is, so only the skip flag can stop the update."""
    y, flag = targets
    extra = torch.tensor(float("inf") if bool(flag.any()) else 0.0)
    return nn.functional.cross_entropy(out, y) + extra


def run(batches, plan: Plan, root, loss_fn=None, **kw):
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return train(make_model(), loss_fn, optimizer=ADAM, batches=batches, plan=plan,
                 link=FAST_LINK, progress=False, timeout_s=60, storage=f"local://{root}",
                 **kw)  # fmt: skip


def test_a_nan_loss_stops_the_job_at_its_step(tmp_path) -> None:
    with pytest.raises(NonFiniteLoss) as err:
        run(make_batches(4, poisoned=2), PLANS["2x2"], tmp_path)
    assert err.value.step == 2 and err.value.micro_batches == (2,)  # sample 5 of 8 -> mb 2
    msg = str(err.value)
    assert msg.startswith("step 2: the loss is nan (micro-batch 2)")
    assert "on_nonfinite='skip'" in msg
    assert LocalDirStorage(tmp_path).list("") == []


@pytest.mark.parametrize("poison", ["nan-input", "inf-loss-finite-grads"])
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_skip_drops_the_update_on_every_function(tmp_path, plan_name: str, poison: str) -> None:
    """Only one replica of each stage sees the bad micro-batch, yet all skip the update: the
    result equals single-process Adam that never stepped on the poisoned batch."""
    if poison == "nan-input":
        batches, loss_fn = make_batches(4, poisoned=1), None
    else:
        batches = [(x, (y, torch.zeros(8, dtype=torch.bool))) for x, y in make_batches(4)]
        batches[1][1][1][5] = True
        loss_fn = flagged_loss
    result = run(batches, PLANS[plan_name], tmp_path, loss_fn, on_nonfinite="skip")
    assert [h.skipped for h in result.history] == [False, True, False, False]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    model = copy.deepcopy(make_model())
    opt = ADAM(list(model.parameters()))
    for i, (x, y) in enumerate(batches):
        if i == 1:
            continue
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(x), y[0] if isinstance(y, tuple) else y).backward()
        opt.step()
    got = dict(result.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=0, atol=1e-5, msg=name)


def test_on_nonfinite_is_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="on_nonfinite must be 'raise'"):
        run(make_batches(1), PLANS["2x2"], tmp_path, on_nonfinite="ignore")


def test_a_short_third_batch_fails_before_any_function_starts(tmp_path) -> None:
    batches = make_batches(4)
    batches[2] = (batches[2][0][:3], batches[2][1][:3])
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"batch 2: micro_batches is 4 but a batch has only 3"):
        run(batches, PLANS["2x2"], tmp_path / "store")
    assert time.monotonic() - t0 < 2
    assert not (tmp_path / "store").exists()  # storage was never even opened


def test_a_malformed_list_batch_is_named(tmp_path) -> None:
    batches = make_batches(3)
    batches[1] = (batches[1][0], batches[1][1][:5])
    with pytest.raises(ConfigError, match="batch 1: inputs and targets have different"):
        run(batches, PLANS["2x2"], tmp_path / "store")
    batches[1] = batches[1][0]  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match=r"batch 1: each item of batches must be an \(inputs"):
        run(batches, PLANS["2x2"], tmp_path / "store")
