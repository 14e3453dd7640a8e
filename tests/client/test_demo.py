"""The demo job: its data cache survives interruptions and races; each model gets its data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from funcpipe.client.demo import COMPLETE, make_job, synthetic_cache
from funcpipe.data.cifar10 import Cifar10
from funcpipe.data.synthetic import write_synthetic_cifar10
from funcpipe.errors import ConfigError


def _writer(calls: list[Path]):
    def write(folder: Path) -> None:
        calls.append(folder)
        write_synthetic_cifar10(folder, per_file=10)

    return write


def _only_cache_left(parent: Path, name: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [name], "temporary folders left behind"


def test_writes_once_then_reuses(tmp_path) -> None:
    calls: list[Path] = []
    where = tmp_path / "cache" / "cifar10-synthetic"
    assert synthetic_cache(where, _writer(calls)) == where
    assert synthetic_cache(where, _writer(calls)) == where
    assert len(calls) == 1 and calls[0] != where  # written elsewhere, then renamed into place
    assert (where / COMPLETE).is_file() and len(Cifar10.load(where, "train")) == 50
    _only_cache_left(where.parent, where.name)


def test_empty_existing_folder_is_filled(tmp_path) -> None:
    where = tmp_path / "cifar10-synthetic"
    where.mkdir()
    synthetic_cache(where, _writer([]))
    assert len(Cifar10.load(where, "train")) == 50
    _only_cache_left(tmp_path, where.name)


def test_half_written_folder_is_replaced(tmp_path) -> None:
    where = tmp_path / "cifar10-synthetic"
    where.mkdir()
    (where / "data_batch_1.bin").write_bytes(b"\0" * 100)  # an interrupted first run
    with pytest.raises(ConfigError):
        Cifar10.load(where, "train")
    synthetic_cache(where, _writer([]))
    assert len(Cifar10.load(where, "train")) == 50
    _only_cache_left(tmp_path, where.name)


def test_losing_the_race_uses_the_winners_files(tmp_path) -> None:
    where = tmp_path / "cifar10-synthetic"

    def slow_writer(folder: Path) -> None:
        # Another process finishes first while this one is still writing.
        where.mkdir()
        (where / "winner").write_text("theirs")
        (where / COMPLETE).touch()
        write_synthetic_cifar10(folder, per_file=10)

    assert synthetic_cache(where, slow_writer) == where
    assert (where / "winner").read_text() == "theirs"
    _only_cache_left(tmp_path, where.name)


def test_interrupted_writer_leaves_nothing_half_done(tmp_path) -> None:
    where = tmp_path / "cifar10-synthetic"

    def failing_writer(folder: Path) -> None:
        (folder / "data_batch_1.bin").write_bytes(b"\0" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthetic_cache(where, failing_writer)
    assert list(tmp_path.iterdir()) == []
    synthetic_cache(where, _writer([]))
    assert len(Cifar10.load(where, "train")) == 50


def test_each_model_gets_its_kind_of_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path))
    image = make_job("resnet101-small", batch_size=4, data_dir=None, seed=0)
    inputs, targets = next(iter(image.batches))
    assert inputs.shape == (4, 3, 32, 32) and inputs.dtype == torch.float32
    assert "CIFAR-10" in image.data_note and "samples)" in image.data_note

    text = make_job("bert-large-small", batch_size=4, data_dir=None, seed=0)
    ids, labels = next(iter(text.batches))
    assert ids.shape == labels.shape == (4, 16) and ids.dtype == torch.int64
    assert (labels == -100).any() and (labels != -100).any()
    assert "Wikitext-2" in text.data_note and "samples)" in text.data_note
    assert (tmp_path / "wikitext-2-synthetic" / COMPLETE).is_file()


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'.*cnn"):
        make_job("nope", batch_size=4, data_dir=None, seed=0)
