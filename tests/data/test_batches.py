"""Batches: epochs, shuffling, and sharding without overlap or loss."""

from __future__ import annotations

import pytest
import torch

from funcpipe.data import Batches
from funcpipe.errors import ConfigError


def _identity_take(indices: torch.Tensor, generator: torch.Generator):
    noise = torch.rand(len(indices), generator=generator)  # randomness drawn per global batch
    return indices.clone(), noise


@pytest.mark.parametrize(("batch_size", "world"), [(8, 2), (9, 3), (10, 4), (6, 1)])
def test_shards_partition_every_global_batch(batch_size: int, world: int) -> None:
    batches = Batches(_identity_take, 50, batch_size, seed=3, epochs=2)
    whole = list(batches)
    shards = [list(batches.shard(r, world)) for r in range(world)]
    assert all(len(s) == len(whole) == len(batches) for s in shards)
    for step, (inputs, noise) in enumerate(whole):
        parts = [s[step] for s in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), inputs)  # no loss, no overlap
        assert torch.equal(torch.cat([p[1] for p in parts]), noise)  # same random draws
        assert len(set(torch.cat([p[0] for p in parts]).tolist())) == batch_size


def test_epochs_reshuffle_and_cover_the_data() -> None:
    batches = Batches(_identity_take, 12, 4, seed=0, epochs=2)
    steps = [x for x, _ in batches]
    first, second = torch.cat(steps[:3]), torch.cat(steps[3:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(12))
    assert not torch.equal(first, second)
    ordered = [x for x, _ in Batches(_identity_take, 12, 5, shuffle=False, drop_last=False)]
    assert [len(x) for x in ordered] == [5, 5, 2] and torch.equal(
        torch.cat(ordered), torch.arange(12)
    )


def test_endless_batches_keep_going() -> None:
    it = iter(Batches(_identity_take, 4, 2, epochs=None))
    assert len([next(it) for _ in range(7)]) == 7


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Batches(_identity_take, 3, 4), "fewer than batch_size=4"),
        (lambda: Batches(_identity_take, 3, 0), "batch_size=0"),
        (lambda: Batches(_identity_take, 8, 4).shard(2, 2), "rank=2"),
        (lambda: Batches(_identity_take, 8, 4).shard(0, 5), "world=5"),
        (lambda: Batches(_identity_take, 8, 4).shard(0, 2).shard(0, 2), "already a shard"),
        (
            lambda: Batches(_identity_take, 10, 4, drop_last=False).shard(0, 4),
            r"last batch has 2 samples.*world=4.*drop_last=True",
        ),
    ],
)
def test_bad_arguments_are_named(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_short_last_batch_is_sharded_when_every_replica_gets_a_sample() -> None:
    batches = Batches(_identity_take, 11, 4, shuffle=False, drop_last=False)
    shards = [list(batches.shard(r, 3)) for r in range(3)]
    assert [[len(x) for x, _ in s] for s in shards] == [[2, 2, 1], [1, 1, 1], [1, 1, 1]]
    assert torch.equal(
        torch.cat([x for s in zip(*shards, strict=True) for x, _ in s]), torch.arange(11)
    )
