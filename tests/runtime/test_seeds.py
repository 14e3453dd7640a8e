"""Random state comes from the job seed and (step, stage, micro-batch), never from the replica."""

from __future__ import annotations

import torch
from test_equivalence import FAST_LINK
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.runtime.seeds import forward_seed


def test_seeds_differ_per_micro_batch_and_step_and_repeat() -> None:
    seeds = {forward_seed(7, t, s, b) for t in range(3) for s in range(2) for b in range(4)}
    assert len(seeds) == 3 * 2 * 4
    assert forward_seed(7, 1, 0, 2) == forward_seed(7, 1, 0, 2) != forward_seed(8, 1, 0, 2)


def _train_with_dropout(replicas: int, seed: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))] * 2
    plan = Plan(stages=[Stage(start=0, end=3, replicas=replicas)], micro_batches=2)
    return train(
        model, nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        batches=batches, plan=plan, link=FAST_LINK, progress=False, timeout_s=60, seed=seed,
    ).model  # fmt: skip


def test_dropout_does_not_depend_on_the_number_of_replicas_but_on_the_seed() -> None:
    one, two = _train_with_dropout(1, seed=5), _train_with_dropout(2, seed=5)
    for (name, a), b in zip(one.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    other = _train_with_dropout(1, seed=6)
    assert not torch.allclose(one[0].weight, other[0].weight)
