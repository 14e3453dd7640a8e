"""The memory pass: what each layer outputs, saves for backward and needs for temporaries.

One forward of every layer per micro-batch size, each layer fed its input as a stage receives
it, with autograd's saved-tensor hooks counting what backward will keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from funcpipe import codec
from funcpipe.planning.profiler.tensors import copied, detached, nbytes

__all__ = ["ByteTables", "SavedCounter", "measure_bytes"]


class SavedCounter:
    """Counts bytes autograd saves for backward, skipping parameters and repeats."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.skip = {p.data_ptr() for p in params}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr() if t.device.type == "cpu" else id(t)
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += t.untyped_storage().nbytes()
        return t


@dataclass
class ByteTables:
    """Bytes by micro-batch size: one table per layer for ``output``, ``saved`` and ``temp``."""

    output: list[dict[int, int]]  # the layer's output: what a cut after it sends
    saved: list[dict[int, int]]  # held from forward until backward
    temp: list[dict[int, int]]  # peak temporaries of forward + backward
    inputs: dict[int, int]  # encoded inputs of a micro-batch
    targets: dict[int, int]  # encoded targets (0 without targets)


def measure_bytes(model: nn.Sequential, batches: dict[int, tuple[Any, Any]]) -> ByteTables:
    """The byte tables of ``model`` at every micro-batch size of ``batches`` (size -> its
    inputs, and its targets or None)."""
    n = len(model)
    out_bytes: list[dict[int, int]] = [{} for _ in range(n)]
    saved: list[dict[int, int]] = [{} for _ in range(n)]
    temp: list[dict[int, int]] = [{} for _ in range(n)]
    in_table: dict[int, int] = {}
    tgt_table: dict[int, int] = {}
    for mb, (x_mb, y_mb) in batches.items():
        in_table[mb] = len(codec.encode(x_mb))
        tgt_table[mb] = len(codec.encode(y_mb, {"weight": "0.5"})) if y_mb is not None else 0
        x = x_mb
        for i, layer in enumerate(model):
            counter = SavedCounter(list(layer.parameters()))
            # A copy of the input, as the runtime feeds a stage that writes into its input
            # (nn.ReLU(inplace=True)); autograd refuses in-place writes to a leaf.
            fed = detached(x, grad=False) if i == 0 else copied(detached(x, grad=True))
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                out = layer(fed)
            out_bytes[i][mb] = nbytes(out)
            saved[i][mb] = counter.total
            # temporaries: the output's gradient and the input's gradient coexist with the
            # output during backward
            temp[i][mb] = nbytes(out) + (nbytes(x) if i > 0 else 0)
            x = detached(out, grad=False)
    return ByteTables(out_bytes, saved, temp, in_table, tgt_table)
