"""Checkpoints round-trip exactly, and a checkpoint is complete or ignored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from funcpipe.errors import StorageError
from funcpipe.runtime import checkpoint as ck
from funcpipe.storage.memory import MemoryStorage


def _trained(seed: int) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    layers = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.Adam(layers.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        layers(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return layers, opt


def _step(layers: nn.Module, opt: torch.optim.Optimizer) -> None:
    torch.manual_seed(7)
    layers(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()


def test_round_trip_continues_exactly() -> None:
    store = MemoryStorage()
    layers, opt = _trained(0)
    ck.write_piece(store, step=3, generation=1, stage=0, replica=0, layers=layers,
                   optimizer=opt, seed=0)  # fmt: skip
    fresh = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2, betas=(0.8, 0.95))
    ck.restore(store, ck.Checkpoint(3, 1), stage=0, replica=0, layers=fresh, optimizer=fresh_opt)
    assert fresh_opt.param_groups[0]["betas"] == (0.8, 0.95)
    ref, ref_opt = copy.deepcopy((layers, opt))  # one deepcopy keeps params shared
    _step(ref, ref_opt)
    _step(fresh, fresh_opt)
    for (name, a), b in zip(ref.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_other_replicas_keep_their_own_buffers() -> None:
    store = MemoryStorage()
    layers, opt = _trained(0)
    other, _ = _trained(1)  # a replica whose BatchNorm statistics differ
    other.load_state_dict({**other.state_dict(), **{
        k: v for k, v in layers.state_dict().items() if "running" not in k}})  # fmt: skip
    for r, (mod, o) in enumerate([(layers, opt), (other, None)]):
        ck.write_piece(store, step=5, generation=0, stage=2, replica=r, layers=mod,
                       optimizer=o, seed=0)  # fmt: skip
    fresh = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ck.restore(store, ck.Checkpoint(5, 0), stage=2, replica=1, layers=fresh, optimizer=None)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, other.state_dict()[name]), name


def test_only_complete_checkpoints_count() -> None:
    store = MemoryStorage()
    layers, opt = _trained(0)
    functions = [(0, 0), (1, 0), (1, 1)]

    def write(step: int, gen: int, which: list[tuple[int, int]]) -> None:
        for s, r in which:
            ck.write_piece(store, step=step, generation=gen, stage=s, replica=r, layers=layers,
                           optimizer=opt if r == 0 else None, seed=0)  # fmt: skip

    write(2, 0, functions)
    write(4, 0, functions[:2])  # one manifest missing: incomplete
    write(4, 1, functions)
    assert ck.complete_checkpoints(store, functions) == [ck.Checkpoint(2, 0), ck.Checkpoint(4, 1)]

    # A crash between the piece and its manifest leaves a piece nobody reads.
    def crash() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ck.write_piece(store, step=6, generation=1, stage=0, replica=0, layers=layers,
                       optimizer=opt, seed=0, before_manifest=crash)  # fmt: skip
    write(6, 1, functions[1:])
    assert ck.latest_checkpoint(store, functions) == ck.Checkpoint(4, 1)

    assert ck.prune_checkpoints(store, ck.Checkpoint(4, 1)) > 0
    assert ck.complete_checkpoints(store, functions) == [ck.Checkpoint(4, 1)]
    assert any(k.startswith("ckpt/step000000006/") for k in store.list(""))  # newer: kept


def test_corrupted_piece_is_refused() -> None:
    store = MemoryStorage()
    layers, opt = _trained(0)
    ck.write_piece(store, step=1, generation=0, stage=0, replica=0, layers=layers,
                   optimizer=opt, seed=0)  # fmt: skip
    key = ck.piece_key(1, 0, 0, 0)
    data = bytearray(store.get(key))
    data[-1] ^= 0xFF
    store.put(key, bytes(data))
    with pytest.raises(StorageError, match="does not match its manifest"):
        ck.restore(store, ck.Checkpoint(1, 0), stage=0, replica=0, layers=layers, optimizer=opt)
