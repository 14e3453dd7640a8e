"""Data sets in storage: upload once, each function reads exactly its micro-batch of a step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from funcpipe.client.cli import cli
from funcpipe.data import Cifar10, read_micro_batch, stored_batches, upload_dataset
from funcpipe.data.synthetic import write_synthetic_cifar10
from funcpipe.errors import ConfigError
from funcpipe.storage import Storage, ThrottledStorage, open_storage


def _tensors(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 4, 4, generator=g), torch.arange(n)


@pytest.fixture(params=["local", "redis", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return request.getfixturevalue("s3_server").new_bucket("fp")


def _split_of_batches(batches: Any, step: int, micro_batches: int) -> list:
    x, y = list(batches)[step]
    return list(zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches), strict=True))


def test_micro_batches_read_from_storage_equal_the_split_batches(url: str) -> None:
    inputs, targets = _tensors(50)
    ref = upload_dataset(url, "toy", (inputs, targets), shard_samples=7)
    assert ref == {
        "format": "funcpipe-dataset/1", "prefix": "datasets/toy", "name": "toy",
        "kind": "tensors", "samples": 50, "shard_samples": 7, "shards": 8,
    }  # fmt: skip
    with open_storage(url) as store:
        batches = stored_batches(store, ref, batch_size=12)  # 4 batches; 2 samples dropped
        assert len(batches) == 4
        for step in range(6):  # steps past the epoch wrap around
            expected = _split_of_batches(batches, step % 4, 5)
            for b in range(5):
                x, y = read_micro_batch(store, ref, step, b, batch_size=12, micro_batches=5)
                torch.testing.assert_close(x, expected[b][0], rtol=0, atol=0)
                assert torch.equal(y, expected[b][1])
        # In the stored (= source) order: step 1, micro-batch 0 is samples 12, 13, 14.
        x, y = read_micro_batch(store, ref, 1, 0, batch_size=12, micro_batches=5)
        assert y.tolist() == [12, 13, 14] and torch.equal(x, inputs[12:15])
        assert len(store.list("datasets/toy/")) == 9  # 8 shards + index.json
        index = json.loads(store.get("datasets/toy/index.json"))
        assert index["inputs"] == {"dtype": "float32", "sample_shape": [3, 4, 4]}


def test_a_function_reads_only_the_shards_holding_its_samples(tmp_path: Path) -> None:
    inputs, targets = _tensors(40)
    store = open_storage(str(tmp_path))
    ref = upload_dataset(store, "toy", (inputs, targets), shard_samples=8)
    counted = ThrottledStorage(store)
    read_micro_batch(counted, ref, 0, 0, batch_size=16, micro_batches=2)  # samples 0-7
    assert counted.stats.gets == 1 and counted.stats.bytes_down < inputs.nbytes / 4
    read_micro_batch(counted, ref, 0, 0, batch_size=12, micro_batches=1)  # samples 0-11
    assert counted.stats.gets == 3


def test_cifar10_directory_through_the_cli(tmp_path: Path) -> None:
    write_synthetic_cifar10(tmp_path / "cifar", per_file=20)
    url = str(tmp_path / "store")
    result = CliRunner().invoke(
        cli, ["data", "upload", str(tmp_path / "cifar"), "--storage", url, "--name", "c10",
              "--shard-samples", "32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ref = json.loads(result.output.strip().splitlines()[-1])
    assert ref["kind"] == "cifar10" and ref["samples"] == 100 and ref["shards"] == 4
    local = Cifar10.load(tmp_path / "cifar").batches(16, shuffle=False)
    with open_storage(url) as store:
        for step in (0, 5):
            expected = _split_of_batches(local, step, 4)
            for b in range(4):
                x, y = read_micro_batch(store, ref, step, b, batch_size=16, micro_batches=4)
                assert x.dtype == torch.float32
                torch.testing.assert_close(x, expected[b][0], rtol=0, atol=0)
                assert torch.equal(y, expected[b][1])


def test_safetensors_file_and_shuffled_upload(tmp_path: Path) -> None:
    inputs, targets = _tensors(30)
    path = tmp_path / "data.safetensors"
    save_file({"inputs": inputs, "targets": targets}, str(path))
    store: Storage = open_storage(str(tmp_path / "store"))
    ref = upload_dataset(store, "s", path, shuffle_seed=3, shard_samples=4)
    ys = torch.cat([
        read_micro_batch(store, ref, 0, b, batch_size=30, micro_batches=3)[1] for b in range(3)
    ])  # fmt: skip
    assert sorted(ys.tolist()) == list(range(30)) and ys.tolist() != list(range(30))
    again = upload_dataset(store, "s", path, shuffle_seed=3, shard_samples=4)
    assert again == ref
    assert torch.equal(
        read_micro_batch(store, ref, 0, 1, batch_size=30, micro_batches=3)[1], ys[10:20]
    )


def test_bad_inputs_are_refused_with_the_fix(tmp_path: Path) -> None:
    store = open_storage(str(tmp_path))
    inputs, targets = _tensors(10)
    with pytest.raises(ConfigError, match="same, non-zero number of samples"):
        upload_dataset(store, "x", (inputs, targets[:5]))
    with pytest.raises(ConfigError, match="one key part"):
        upload_dataset(store, "a/b", (inputs, targets))
    with pytest.raises(ConfigError, match="neither a CIFAR-10"):
        upload_dataset(store, "x", tmp_path / "nothing.bin")
    bad = tmp_path / "bad.safetensors"
    save_file({"x": inputs}, str(bad))
    with pytest.raises(ConfigError, match=r"lacks tensor\(s\) \['inputs', 'targets'\]"):
        upload_dataset(store, "x", bad)
    ref = upload_dataset(store, "x", (inputs, targets))
    with pytest.raises(ConfigError, match="micro_batch=3 must be in"):
        read_micro_batch(store, ref, 0, 3, batch_size=4, micro_batches=3)
    with pytest.raises(ConfigError, match="batch_size=11"):
        read_micro_batch(store, ref, 0, 0, batch_size=11, micro_batches=1)
    with pytest.raises(ConfigError, match="not a FuncPipe data ref"):
        read_micro_batch(store, {"prefix": "datasets/x"}, 0, 0, batch_size=4, micro_batches=1)


def test_wikitext2_directory_is_tokenised_once_and_masked_per_micro_batch(tmp_path: Path) -> None:
    from funcpipe.data import WikiText2
    from funcpipe.data.synthetic import write_synthetic_wikitext2

    write_synthetic_wikitext2(tmp_path / "wiki", train_lines=60)
    store = open_storage(str(tmp_path / "store"))
    ref = upload_dataset(store, "wt2", tmp_path / "wiki", seq_len=16, vocab_size=200)
    local = WikiText2.load(tmp_path / "wiki", seq_len=16, vocab_size=200)
    assert ref["kind"] == "wikitext2" and ref["samples"] == len(local)
    assert ref["vocab_size"] == local.vocab_size and ref["mask_probability"] == 0.15
    sequences = local.sequences
    x, y = read_micro_batch(store, ref, 1, 1, batch_size=8, micro_batches=2, seed=4)
    original = sequences[12:16]  # step 1 = samples 8-15; micro-batch 1 = 12-15
    chosen = y != -100
    assert chosen.any(dim=1).all()  # at least one masked token per sequence
    assert torch.equal(y[chosen], original[chosen]) and torch.equal(x[~chosen], original[~chosen])
    again = read_micro_batch(store, ref, 1, 1, batch_size=8, micro_batches=2, seed=4)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)  # any function, same masks
    other = read_micro_batch(store, ref, 1, 1, batch_size=8, micro_batches=2, seed=5)
    assert not torch.equal(other[1], y)
    batches = stored_batches(store, ref, 8, 2, seed=4)
    bx, by = list(batches)[1]
    assert torch.equal(bx[4:], x) and torch.equal(by[4:], y)
