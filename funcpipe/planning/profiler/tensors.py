"""A batch as the profiler handles it: a Tensor, or a tuple of them, with the batch first."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["copied", "detached", "grad_like", "nbytes", "take", "tensors"]


def tensors(value: Any) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(value) if isinstance(t, torch.Tensor))


def take(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch, repeating samples if the batch is smaller."""

    def one(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] >= n:
            return t[:n].clone()
        reps = math.ceil(n / t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:n].clone()

    return tuple(one(t) for t in value) if isinstance(value, tuple) else one(value)


def detached(value: Any, grad: bool) -> Any:
    items = tuple(t.detach().requires_grad_(grad and t.is_floating_point()) for t in tensors(value))
    return items if isinstance(value, tuple) else items[0]


def copied(value: Any) -> Any:
    """``value`` with every Tensor cloned (a clone of a leaf is not one)."""
    if isinstance(value, tuple | list):
        return type(value)(copied(v) for v in value)
    return value.clone() if isinstance(value, torch.Tensor) else value


def grad_like(out: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs = [t for t in tensors(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs, [torch.ones_like(t) for t in outs]
