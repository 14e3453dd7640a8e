"""How much memory one function of a stage needs: the planner's memory model, in one place.

A function holds its stage's parameters, their gradients and the optimizer state for the whole
step; under the GPipe schedule it also keeps what every one of its micro-batches saved for the
backward pass until that backward runs, so the working set grows with the micro-batches it owns.
Replicas > 1 add one flat gradient buffer for the all-reduce. A stage after the first keeps one
copy of its first micro-batch's input through the first step (fed to learn whether its layers
write into their input: runtime/stage.py). On top sits the runtime's own base (interpreter +
torch), measured per platform.
"""

from __future__ import annotations

from typing import Protocol

MB = 1024 * 1024


class LayerSizes(Protocol):
    """The part of `Profile` the memory model reads."""

    def param_bytes(self, layer: int) -> float: ...

    def optimizer_bytes(self, layer: int) -> float: ...

    def working_bytes(self, layer: int, micro_batch: float) -> float: ...


def stage_memory_mb(
    profile: LayerSizes,
    start: int,
    end: int,
    *,
    micro_batch: float,
    held: int,
    replicas: int,
    base_mb: float,
) -> float:
    """MB (MiB) one function of stage ``[start, end)`` needs holding ``held`` micro-batches.

    parameters + gradients + optimizer state (+ one flat gradient buffer when replicas > 1)
    + ``held`` x the activations saved for backward + the largest layer's temporaries
    (+ one micro-batch's input after the first stage) + the runtime base. A profile without
    saved/temporary bytes counts ``held`` x its working bytes instead.
    """
    layers = range(start, end)
    params = sum(profile.param_bytes(i) for i in layers)
    grads = sum(_grad_bytes(profile, i) for i in layers)
    state = sum(profile.optimizer_bytes(i) for i in layers)
    sync = grads if replicas > 1 else 0.0
    if hasattr(profile, "saved_bytes") and hasattr(profile, "temp_bytes"):
        saved = sum(profile.saved_bytes(i, micro_batch) for i in layers)
        temp = max(profile.temp_bytes(i, micro_batch) for i in layers)
        work = held * saved + temp
    else:
        work = held * sum(profile.working_bytes(i, micro_batch) for i in layers)
    activation = getattr(profile, "activation_bytes", None)
    probe = activation(start - 1, micro_batch) if start > 0 and activation is not None else 0.0
    return base_mb + (params + grads + state + sync + work + probe) / MB


def _grad_bytes(profile: LayerSizes, layer: int) -> float:
    grad = getattr(profile, "grad_bytes", None)
    return grad(layer) if grad is not None else profile.param_bytes(layer)
