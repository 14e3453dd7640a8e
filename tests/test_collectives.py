"""all_reduce through storage: exact results, no leftover keys, clear errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from funcpipe.errors import ConfigError, StorageTimeout
from funcpipe.runtime.collectives import all_reduce, default_subchunks, split_sizes
from funcpipe.storage import LinkConfig, LocalDirStorage, Storage, ThrottledStorage

FAST = LinkConfig(up_mb_s=1000.0, down_mb_s=1000.0, latency_s=0.0005)


def _run(store: Storage, inputs: list[torch.Tensor], **kw) -> list[torch.Tensor]:
    """One thread per participant, each behind its own link onto the shared store."""
    world = len(inputs)
    results: list[torch.Tensor | None] = [None] * world
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        link = ThrottledStorage(store, FAST)
        try:
            results[rank] = all_reduce(link, inputs[rank], rank=rank, world=world, **kw)
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def _inputs(world: int, numel: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(numel, generator=g) * 10 ** (r % 3) for r in range(world)]


def test_split_sizes_follow_the_chunking_rule() -> None:
    assert split_sizes(10, 3) == [4, 3, 3]
    assert split_sizes(2, 4) == [1, 1, 0, 0]
    assert split_sizes(0, 3) == [0, 0, 0]
    assert sum(split_sizes(1001, 7)) == 1001


def test_default_subchunks_grow_with_size() -> None:
    assert default_subchunks(100, 4) == 1
    assert default_subchunks(16_000_000, 4) == 16
    assert default_subchunks(16_000_000, 2) > default_subchunks(16_000_000, 8)
    assert default_subchunks(10**10, 2) == 64


CASES = [(1, 7), (2, 1), (2, 9), (3, 2), (3, 100), (4, 0), (4, 3), (4, 1001), (5, 4), (5, 777)]


VARIANTS = [("naive", None), ("pipelined", 1), ("pipelined", None), ("pipelined", 4)]


@pytest.mark.parametrize("algorithm,subchunks", VARIANTS)
@pytest.mark.parametrize("op", ["mean", "sum"])
@pytest.mark.parametrize("world,numel", CASES)
def test_all_reduce_matches_torch_and_leaves_no_keys(
    tmp_path: Path, world: int, numel: int, algorithm: str, op: str, subchunks: int | None
) -> None:
    store = LocalDirStorage(tmp_path)
    inputs = _inputs(world, numel)
    before = [x.clone() for x in inputs]
    results = _run(store, inputs, key_prefix="job/step0/stage1", algorithm=algorithm, op=op,
                   timeout=20.0, subchunks=subchunks)  # fmt: skip
    stacked = torch.stack(inputs).double()
    expected = (stacked.mean(0) if op == "mean" else stacked.sum(0)).float()
    for r, out in enumerate(results):
        assert out.dtype == torch.float32 and out.shape == (numel,)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(out, results[0]), f"rank {r} differs from rank 0"
        assert torch.equal(inputs[r], before[r]), "input was modified"
    if world > 1:
        ref = torch.stack(inputs).mean(0) if op == "mean" else torch.stack(inputs).sum(0)
        torch.testing.assert_close(results[0], ref, rtol=1e-6, atol=1e-5)
    assert store.list("") == []


def test_algorithms_give_bit_identical_results(tmp_path: Path) -> None:
    store = LocalDirStorage(tmp_path)
    inputs = _inputs(3, 50_000, seed=1)
    naive = _run(store, inputs, key_prefix="a", algorithm="naive")
    paper = _run(store, inputs, key_prefix="b", algorithm="pipelined", subchunks=1)
    fine = _run(store, inputs, key_prefix="c", algorithm="pipelined", subchunks=7)
    assert torch.equal(naive[0], paper[0]) and torch.equal(naive[0], fine[0])
    assert store.list("") == []


@pytest.mark.parametrize("algorithm", ["naive", "pipelined"])
def test_float64_stays_float64_and_exact(tmp_path: Path, algorithm: str) -> None:
    store = LocalDirStorage(tmp_path)
    inputs = [x.double() / 3 for x in _inputs(3, 1001, seed=2)]
    results = _run(store, inputs, key_prefix="f64", algorithm=algorithm, op="sum")
    expected = inputs[0] + inputs[1] + inputs[2]
    for out in results:
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    assert store.list("") == []


def test_world_of_one_returns_a_copy(tmp_path: Path) -> None:
    store = LocalDirStorage(tmp_path)
    x = torch.randn(5)
    out = all_reduce(store, x, rank=0, world=1, key_prefix="p")
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    assert store.list("") == []


@pytest.mark.parametrize("algorithm", ["naive", "pipelined"])
def test_missing_peer_times_out_naming_the_key(tmp_path: Path, algorithm: str) -> None:
    store = LocalDirStorage(tmp_path)
    with pytest.raises(StorageTimeout, match=r"rank 0 of 3.*'dead/rs/0/2/0'.*replica 2"):
        all_reduce(store, torch.ones(6), rank=0, world=3, key_prefix="dead", algorithm=algorithm,
                   timeout=0.3, subchunks=1)  # fmt: skip


def test_mismatched_lengths_are_reported(tmp_path: Path) -> None:
    store = LocalDirStorage(tmp_path)
    with pytest.raises(Exception, match="same length"):
        _run(store, [torch.ones(8), torch.ones(10)], key_prefix="m", timeout=2.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tensor": torch.ones(2, 2)}, "1-D float32 or float64"),
        ({"tensor": torch.ones(4, dtype=torch.float16)}, "1-D float32 or float64"),
        ({"rank": 3}, "rank"),
        ({"world": 0}, "world"),
        ({"algorithm": "ring"}, "algorithm"),
        ({"op": "max"}, "op"),
        ({"timeout": 0}, "timeout"),
        ({"subchunks": 0}, "subchunks"),
        ({"key_prefix": "/bad"}, "invalid storage key"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"tensor": torch.ones(4), "rank": 0, "world": 2, "key_prefix": "ok"} | kwargs
    tensor = args.pop("tensor")
    with pytest.raises(ConfigError, match=match):
        all_reduce(LocalDirStorage(tmp_path), tensor, **args)


def _each_rank(fn, world: int) -> dict[int, BaseException]:
    """Run fn(rank) on one thread per rank; return the exception each rank raised."""
    errors: dict[int, BaseException] = {}

    def body(rank: int) -> None:
        try:
            fn(rank)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors[rank] = exc

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_a_failed_all_reduce_stops_its_threads_and_writes_nothing_after(tmp_path: Path) -> None:
    """Once every rank has raised and the caller deleted the prefix, nothing comes back."""
    from funcpipe.storage import MemoryStorage

    store = MemoryStorage()
    slow_up = LinkConfig(up_mb_s=2.0, down_mb_s=1000.0, latency_s=0.0)
    sizes = [2_000_000, 1_999_996]  # a caller bug: the replicas disagree on the length

    def rank(r: int) -> None:
        all_reduce(ThrottledStorage(store, slow_up), torch.ones(sizes[r]), rank=r, world=2,
                   key_prefix="job/step0", subchunks=4, timeout=5.0)  # fmt: skip

    errors = _each_rank(rank, 2)
    assert set(errors) == {0, 1} and all("same length" in str(e) for e in errors.values())
    store.delete_prefix("job/")
    time.sleep(1.0)
    assert store.list("") == []
    assert not [t.name for t in threading.enumerate() if t.name.startswith("allreduce")]


def test_an_upload_error_is_raised_by_the_rank_that_hit_it(monkeypatch) -> None:
    """A failed upload must surface as itself, not later as a peer's timeout."""
    import funcpipe.runtime.lanes as lanes
    from funcpipe.storage import MemoryStorage

    real_wait = lanes.wait

    def slow_wait(*args, **kwargs):  # widens the window in which an upload can fail unseen
        done = real_wait(*args, **kwargs)
        time.sleep(0.05)
        return done

    monkeypatch.setattr(lanes, "wait", slow_wait)

    class FailingPut(MemoryStorage):
        def put(self, key: str, data: bytes) -> None:
            if key == "j/s/rs/1/0/1":
                time.sleep(0.02)
                raise OSError("upload failed: disk full")
            if key.startswith("j/s/rs/0/1/"):
                time.sleep(0.3)
            super().put(key, data)

    store = FailingPut()

    def rank(r: int) -> None:
        all_reduce(store, torch.ones(10), rank=r, world=2, key_prefix="j/s", subchunks=4,
                   timeout=3.0)  # fmt: skip

    errors = _each_rank(rank, 2)
    assert isinstance(errors[0], OSError) and "disk full" in str(errors[0])
