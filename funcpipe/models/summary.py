"""Per-layer parameters and boundary sizes, computed on the meta device (nothing allocated).

The planner needs, for every legal cut, how many bytes cross it; a shape-only forward pass
gives that for full-size models that would not fit in memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerSummary:
    index: int
    name: str
    kind: str
    params: int
    output_shapes: tuple[tuple[int, ...], ...]
    output_bytes: int


def layer_summary(model: nn.Sequential, example_input: Tensor) -> list[LayerSummary]:
    """One row per layer: its parameters and the shapes/bytes of what it hands to the next.

    Runs on the meta device, so build the model under `with torch.device("meta"):` for
    full-size networks; `example_input` may be a real tensor (only its shape and dtype count).
    Parameters shared with an earlier layer (tied weights) are counted only there.
    """
    was_training = model.training
    model.eval()  # shapes are the same; BatchNorm would reject batch 1 at 1x1 resolution
    try:
        return _rows(model, example_input)
    finally:
        model.train(was_training)


def _rows(model: nn.Sequential, example_input: Tensor) -> list[LayerSummary]:
    seen: set[int] = set()
    rows = []
    value: Tensor | tuple[Tensor, ...] = example_input.to("meta")
    on_meta = model if all(p.is_meta for p in model.parameters()) else None
    with torch.no_grad():
        for index, (name, layer) in enumerate(model.named_children()):
            params = 0
            for p in layer.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params += p.numel()
            runner = layer if on_meta is not None else _meta_copy(layer)
            value = runner(value)
            outs = value if isinstance(value, tuple) else (value,)
            rows.append(
                LayerSummary(
                    index=index,
                    name=name,
                    kind=type(layer).__name__,
                    params=params,
                    output_shapes=tuple(tuple(t.shape) for t in outs),
                    output_bytes=sum(t.numel() * t.element_size() for t in outs),
                )
            )
    return rows


def _meta_copy(layer: nn.Module) -> nn.Module:
    return copy.deepcopy(layer).to("meta").eval()
