"""The sacred test: pipelined, data-parallel training equals plain single-process PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.models import to_sequential
from funcpipe.platforms import LocalPlatform

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0
        nn.ReLU(),  # 1
        nn.MaxPool2d(2),  # 2
        nn.Flatten(),  # 3
        nn.Linear(4 * 4 * 4, 16),  # 4
        nn.Tanh(),  # 5
        nn.Linear(16, 5),  # 6
    )


def make_batches(n_steps: int, batch: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 5, (batch,), generator=g))
        for _ in range(n_steps)
    ]


OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}

PLANS = {
    "1x1": Plan(stages=[Stage(start=0, end=7)], micro_batches=2),
    "2x1": Plan(stages=[Stage(start=0, end=4), Stage(start=4, end=7)], micro_batches=3),
    "2x2": Plan(
        stages=[Stage(start=0, end=4, replicas=2), Stage(start=4, end=7, replicas=2)],
        micro_batches=4,
    ),
    "3-stages-1-2-3": Plan(
        stages=[
            Stage(start=0, end=2, replicas=1),
            Stage(start=2, end=5, replicas=2),
            Stage(start=5, end=7, replicas=3),
        ],
        micro_batches=4,
    ),
    # Stage 1 holds only ReLU, MaxPool2d and Flatten: no parameters at all.
    "parameter-free-stage": Plan(
        stages=[
            Stage(start=0, end=1),
            Stage(start=1, end=4, replicas=2),
            Stage(start=4, end=7),
        ],
        micro_batches=3,
    ),
}


def reference(model, loss_fn, make_opt, batches):
    model = copy.deepcopy(model)
    opt = make_opt(list(model.parameters()))
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def assert_trains_like_pytorch(
    model: nn.Module,
    batches: list,
    plan: Plan,
    *,
    optimizer=OPTIMIZERS["sgd-momentum"],
    loss_fn=None,
    atol: float = 1e-5,
    **train_options,
):
    """Train with FuncPipe and in one process; every parameter and loss must agree."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    result = train(
        model, loss_fn, optimizer=optimizer, batches=batches, plan=plan, steps=len(batches),
        link=FAST_LINK, progress=False, timeout_s=60, **train_options,
    )  # fmt: skip
    expected, losses = reference(model, loss_fn, optimizer, batches)
    got = dict(result.model.named_parameters())
    assert got.keys() == dict(expected.named_parameters()).keys()
    for name, p in expected.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=0, atol=atol, msg=name)
    assert [h.loss for h in result.history] == pytest.approx(losses, abs=atol)
    return result


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_pipeline_equals_single_process(plan_name: str, opt_name: str) -> None:
    model = make_model()
    assert_trains_like_pytorch(model, make_batches(3), PLANS[plan_name],
                               optimizer=OPTIMIZERS[opt_name])  # fmt: skip
    # The input model is left as it was.
    torch.testing.assert_close(model[0].weight, make_model()[0].weight)


@pytest.mark.parametrize("start", ["fresh", "forkserver"])
def test_fresh_and_forked_functions_both_equal_single_process(start: str) -> None:
    """The suite forks most jobs' functions from a warm server (tests/conftest.py); the
    default, a fresh interpreter per function, must compute the same."""
    assert_trains_like_pytorch(make_model(), make_batches(3), PLANS["3-stages-1-2-3"],
                               optimizer=OPTIMIZERS["adam"],
                               platform=LocalPlatform(start=start))  # fmt: skip


def test_uneven_micro_batches_are_exact() -> None:
    """11 samples in 4 micro-batches (3, 3, 3, 2): weights by size keep the update exact."""
    plan = Plan(stages=[Stage(start=0, end=4, replicas=2), Stage(start=4, end=7)], micro_batches=4)
    assert_trains_like_pytorch(make_model(), make_batches(2, batch=11), plan)


def test_blocking_transfers_compute_the_same() -> None:
    """overlap=False (the benchmark baseline) runs the same schedule, so the maths is unchanged."""
    assert_trains_like_pytorch(make_model(), make_batches(2), PLANS["3-stages-1-2-3"],
                               optimizer=OPTIMIZERS["adam"], overlap=False)  # fmt: skip


def test_naive_sync_is_exact_too() -> None:
    plan = Plan(stages=[Stage(start=0, end=7, replicas=3)], micro_batches=3)
    assert_trains_like_pytorch(make_model(), make_batches(2), plan, optimizer=OPTIMIZERS["adam"],
                               sync_algorithm="naive")  # fmt: skip


class WithUnused(nn.Module):
    """A layer holding a parameter that never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class DictHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x)}


def test_untouched_parameters_are_skipped_like_pytorch_does() -> None:
    """AdamW would decay a zero gradient; PyTorch skips grad=None, and so must every replica."""
    torch.manual_seed(0)
    model = nn.Sequential(WithUnused(), nn.ReLU(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))] * 3
    plan = Plan(stages=[Stage(start=0, end=2, replicas=2), Stage(start=2, end=3)], micro_batches=4)

    def adamw(p):
        return torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)

    result = assert_trains_like_pytorch(model, batches, plan, optimizer=adamw, atol=1e-6)
    assert torch.equal(dict(result.model.named_parameters())["0.unused"], torch.ones(3))


def test_last_stage_may_return_anything_its_loss_accepts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), DictHead())
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g))] * 2

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out["logits"], y)

    plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3)], micro_batches=2)
    assert_trains_like_pytorch(model, batches, plan, loss_fn=loss_fn)


class Block(nn.Module):
    """A torchvision-style block: its ReLU is one in-place module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.fc2(self.relu(self.fc1(x)))))


@pytest.mark.parametrize("built", ["sequential", "traced"])
def test_a_stage_may_begin_with_an_in_place_layer(built: str) -> None:
    """nn.ReLU(inplace=True) is legal in a whole model (the layer before made a fresh tensor)
    but writes into the leaf a stage receives when a cut falls before it."""
    torch.manual_seed(0)
    if built == "sequential":
        model = nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8),
            nn.LeakyReLU(0.1, inplace=True), nn.Linear(8, 3),
        )  # fmt: skip
    else:
        model = to_sequential(Block(), torch.randn(2, 6))  # cut before every module call
    assert len(model) == 5
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))] * 3
    plan = Plan(
        stages=[Stage(start=0, end=1), Stage(start=1, end=3, replicas=2), Stage(start=3, end=5)],
        micro_batches=4,
    )
    assert_trains_like_pytorch(model, batches, plan, optimizer=OPTIMIZERS["adam"])


@pytest.mark.parametrize("plan_name", ["2x2", "3-stages-1-2-3"])
def test_1f1b_equals_single_process(plan_name: str) -> None:
    """1F1B reorders each function's work; what it computes stays single-process PyTorch's."""
    base = PLANS[plan_name]
    plan = Plan(stages=base.stages, micro_batches=base.micro_batches + 1, schedule="1f1b")
    assert_trains_like_pytorch(make_model(), make_batches(3), plan, optimizer=OPTIMIZERS["adam"])
