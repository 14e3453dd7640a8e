"""Deterministic global batches over an indexed data set, and per-replica shards of them.

A shard yields exactly its replica's slice of each global batch (the batch split into `world`
contiguous parts along dim 0), so the shards of all replicas together are the global batches:
nothing is lost or seen twice, and any randomness (shuffling, masking) is drawn once per
global batch from the seed, epoch and step.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from funcpipe.errors import ConfigError

Batch = tuple[Tensor, Tensor]
#: take(sample indices, generator) -> (inputs, targets) for those samples, in that order.
Take = Callable[[Tensor, torch.Generator], Batch]

_MIX = 1_000_003


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * _MIX + p) % (2**63)
    return torch.Generator().manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class Batches:
    """Iterable of `(inputs, targets)` batches; `epochs=None` repeats forever."""

    take: Take
    num_samples: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    epochs: int | None = 1
    drop_last: bool = True
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be positive")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be positive or None (forever)")
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"the data set has {self.num_samples} samples, fewer than batch_size="
                f"{self.batch_size}; use a smaller batch or drop_last=False"
            )

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless Batches (epochs=None) has no length")
        return self.epochs * self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        epochs = itertools.count() if self.epochs is None else range(self.epochs)
        for epoch in epochs:
            if self.shuffle:
                order = torch.randperm(self.num_samples, generator=_generator(self.seed, epoch))
            else:
                order = torch.arange(self.num_samples)
            for step in range(self.batches_per_epoch):
                indices = order[step * self.batch_size : (step + 1) * self.batch_size]
                inputs, targets = self.take(indices, _generator(self.seed, epoch, step, 1))
                if self.world > 1:
                    inputs = inputs.tensor_split(self.world)[self.rank]
                    targets = targets.tensor_split(self.world)[self.rank]
                yield inputs, targets

    def shard(self, rank: int, world: int) -> Batches:
        """The batches of data-parallel replica `rank` out of `world` (a slice of each batch).

        Every batch, the short last one kept by drop_last=False included, must have at least one
        sample per replica: an empty slice would leave a replica with nothing to train on in a
        step the others take, so such a configuration is refused rather than padded or skipped.
        """
        if self.world != 1:
            raise ConfigError("these batches are already a shard; shard the global batches")
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank={rank} must be in [0, world) and world={world} positive")
        if world > self.batch_size:
            raise ConfigError(f"world={world} replicas cannot share batches of {self.batch_size}")
        rest = self.num_samples % self.batch_size
        if not self.drop_last and 0 < rest < world:
            raise ConfigError(
                f"the last batch has {rest} samples, fewer than world={world} replicas, so some "
                f"would get an empty batch; use drop_last=True, or a batch_size or world that "
                f"leaves at least {world} samples in the last batch"
            )
        return dataclasses.replace(self, rank=rank, world=world)
