"""CIFAR-10 binary format: round trips, corrupt files, storage, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from funcpipe.data import Cifar10, write_synthetic_cifar10
from funcpipe.data.cifar10 import RECORD_BYTES, TRAIN_FILES, encode_batch, normalize, parse_batch
from funcpipe.errors import ConfigError
from funcpipe.storage import LocalDirStorage


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, per_file=20, seed=1)
    return root


def test_record_layout_is_label_then_red_green_blue_planes() -> None:
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    images[1, 0, 0, 1] = 11  # red, row 0, column 1
    images[1, 2, 31, 31] = 99  # last blue pixel
    data = encode_batch(images, np.array([3, 9]))
    assert len(data) == 2 * RECORD_BYTES
    assert data[0] == 3 and data[RECORD_BYTES] == 9
    assert data[RECORD_BYTES + 1 + 1] == 11
    assert data[2 * RECORD_BYTES - 1] == 99
    decoded, labels = parse_batch(data)
    assert np.array_equal(decoded, images) and labels.tolist() == [3, 9]


def test_generated_files_round_trip(cifar_dir: Path) -> None:
    assert sorted(p.name for p in cifar_dir.iterdir()) == sorted(
        [*TRAIN_FILES, "test_batch.bin", "batches.meta.txt"]
    )
    train = Cifar10.load(cifar_dir)
    test = Cifar10.load(cifar_dir, "test")
    assert len(train) == 100 and len(test) == 20
    assert train.images.dtype == torch.uint8 and train.images.shape == (100, 3, 32, 32)
    first, labels = parse_batch((cifar_dir / "data_batch_1.bin").read_bytes())
    assert torch.equal(train.images[:20], torch.from_numpy(first))
    assert torch.equal(train.labels[:20], torch.from_numpy(labels))
    assert (cifar_dir / "data_batch_1.bin").read_bytes() == encode_batch(first, labels)


@pytest.mark.parametrize("cut", [1, RECORD_BYTES - 1, RECORD_BYTES + 5])
def test_truncated_file_is_rejected_with_name_and_format(tmp_path: Path, cut: int) -> None:
    write_synthetic_cifar10(tmp_path, per_file=3)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ConfigError, match=r"data_batch_2\.bin is truncated.*1 label byte"):
        Cifar10.load(tmp_path)


def test_bad_label_and_missing_file_are_named(tmp_path: Path) -> None:
    write_synthetic_cifar10(tmp_path, per_file=3)
    data = bytearray((tmp_path / "test_batch.bin").read_bytes())
    data[RECORD_BYTES] = 42
    (tmp_path / "test_batch.bin").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"test_batch\.bin is corrupt: record 1 has label 42"):
        Cifar10.load(tmp_path, "test")
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(ConfigError, match=r"data_batch_5\.bin is missing; expected a CIFAR-10"):
        Cifar10.load(tmp_path)
    with pytest.raises(ConfigError, match="split='val'"):
        Cifar10.load(tmp_path, "val")


def test_reads_from_storage(tmp_path: Path, cifar_dir: Path) -> None:
    storage = LocalDirStorage(tmp_path / "store")
    write_synthetic_cifar10("datasets/cifar10", per_file=20, seed=1, storage=storage)
    assert storage.exists("datasets/cifar10/data_batch_3.bin")
    from_store = Cifar10.load("datasets/cifar10", storage=storage)
    from_disk = Cifar10.load(cifar_dir)
    assert torch.equal(from_store.images, from_disk.images)
    with pytest.raises(ConfigError, match="storage key 'nowhere/data_batch_1.bin' is missing"):
        Cifar10.load("nowhere", storage=storage)


def test_batches_are_normalised_and_deterministic_per_seed(cifar_dir: Path) -> None:
    data = Cifar10.load(cifar_dir)
    a = list(data.batches(16, seed=7))
    b = list(data.batches(16, seed=7))
    c = list(data.batches(16, seed=8))
    assert len(a) == 6 and a[0][0].shape == (16, 3, 32, 32) and a[0][0].dtype == torch.float32
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert not torch.equal(a[0][1], c[0][1])
    # Each epoch visits every sample once (drop_last drops the 100 % 16 = 4 leftovers).
    seen = torch.cat([t for _, t in data.batches(20, seed=7, epochs=1)])
    assert torch.equal(seen.sort().values, data.labels.sort().values)
    pixel = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(
        pixel.flatten(),
        (1 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2470, 0.2435, 0.2616]),
    )
