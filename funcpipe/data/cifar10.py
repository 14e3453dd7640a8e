"""CIFAR-10 in its official binary format.

The binary release (cifar-10-binary.tar.gz, folder cifar-10-batches-bin/) holds
`data_batch_1.bin` ... `data_batch_5.bin` (training) and `test_batch.bin`, each a sequence of
3073-byte records: one label byte (0-9), then 1024 red, 1024 green and 1024 blue pixel bytes of
a 32x32 image in row-major order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from funcpipe.data.batches import Batches
from funcpipe.data.source import DataSource, as_source, read_file
from funcpipe.errors import ConfigError

RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FORMAT = (
    "a CIFAR-10 binary batch: records of 1 label byte (0-9) + 3072 pixel bytes (from "
    "cifar-10-binary.tar.gz at https://www.cs.toronto.edu/~kriz/cifar.html, folder "
    "cifar-10-batches-bin/; or write synthetic files with funcpipe.data.write_synthetic_cifar10)"
)
# Per-channel mean and standard deviation of the CIFAR-10 training images (pixel values / 255).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def parse_batch(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode one binary batch into uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise ConfigError(
            f"CIFAR-10 file {name} is truncated or corrupt: {len(data)} bytes is not a positive "
            f"multiple of {RECORD_BYTES}; expected {FORMAT}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        bad = int(np.argmax(labels >= len(CLASSES)))
        raise ConfigError(
            f"CIFAR-10 file {name} is corrupt: record {bad} has label {labels[bad]} (must be "
            f"0-9); expected {FORMAT}"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def encode_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary-batch bytes of uint8 images (N, 3, 32, 32) and labels 0-9 (N,)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise ConfigError(f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ConfigError("labels must be one int in 0-9 per image")
    records = np.empty((images.shape[0], RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(images.shape[0], -1)
    return records.tobytes()


def normalize(images: Tensor) -> Tensor:
    """uint8 images -> float32, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@dataclass(frozen=True)
class Cifar10:
    """A CIFAR-10 split in memory: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""

    images: Tensor
    labels: Tensor

    @classmethod
    def load(
        cls, location: str | Path | DataSource, split: str = "train", *, storage: Any = None
    ) -> Cifar10:
        """Read `split` ("train" or "test") from a directory, or a key prefix with `storage`."""
        files = {"train": TRAIN_FILES, "test": TEST_FILES}.get(split)
        if files is None:
            raise ConfigError(f"split={split!r} must be 'train' or 'test'")
        source = as_source(location, storage=storage)
        parts = [parse_batch(read_file(source, f, FORMAT), source.describe(f)) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return cls(torch.from_numpy(images), torch.from_numpy(labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        drop_last: bool = True,
    ) -> Batches:
        """Global batches of normalised float32 images and int64 labels."""

        def take(indices: Tensor, _: torch.Generator) -> tuple[Tensor, Tensor]:
            return normalize(self.images[indices]), self.labels[indices]

        return Batches(take, len(self), batch_size, seed, shuffle, epochs, drop_last)
