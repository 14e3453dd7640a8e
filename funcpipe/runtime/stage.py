"""Forward and backward of one stage on one micro-batch, with no I/O.

Keeping compute free of storage makes it testable on its own and lets the executor decide when
transfers happen. Values crossing a cut are a Tensor or a tuple of Tensors; gradients travel as a
tuple with ``None`` where an input has no gradient (integer token ids, masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from funcpipe.errors import ConfigError

Value = torch.Tensor | tuple[torch.Tensor, ...]
Grads = tuple[torch.Tensor | None, ...]
LossFn = Callable[[Any, Any], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def as_tuple(value: Value) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _check_value(value: object, where: str) -> None:
    items = value if isinstance(value, tuple) else (value,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ConfigError(
            f"{where} returned a {type(value).__name__}; values crossing a stage boundary must "
            "be a Tensor or a tuple of Tensors"
        )


class StageRunner:
    """Holds a stage's layers, its optimizer and the micro-batches in flight (GPipe keeps all)."""

    def __init__(
        self,
        layers: nn.Module,
        *,
        stage: int,
        is_first: bool,
        is_last: bool,
        loss_fn: LossFn,
        optimizer: OptimizerFactory,
    ) -> None:
        self.layers = layers
        self.stage = stage
        self.is_first = is_first
        self.is_last = is_last
        self.loss_fn = loss_fn
        self.params = [p for p in layers.parameters() if p.requires_grad]
        # torch optimizers reject an empty parameter list; a parameter-free stage has nothing
        # to update, so it simply has no optimizer.
        self.optimizer = optimizer(self.params) if self.params else None
        self._inputs: dict[int, tuple[torch.Tensor, ...]] = {}
        self._outputs: dict[int, Value] = {}
        self.loss_sum = 0.0  # sum over my micro-batches of weight * loss, this step
        # Micro-batches of this step whose loss was not finite: found by the last stage, passed
        # upstream with their gradients, summed across replicas in the sync, so that every
        # function of the job skips the same update (see step()).
        self.nonfinite: set[int] = set()
        self._peers_nonfinite = False
        # Whether the layers write into their input (a first layer such as nn.ReLU(inplace=True),
        # legal in the whole model, where the layer before made a fresh tensor): autograd
        # refuses in-place writes to the leaf a received input is, so such a stage is fed a
        # copy, which the in-place layer then makes its output (as much memory as the whole
        # model holds). None until the first micro-batch, fed a copy, shows it; that copy is
        # kept until its backward (the memory model counts it: planning/memory.py).
        self._writes_input: bool | None = None if not is_first else False

    def forward(self, mb: int, inputs: Value) -> Value:
        items = tuple(
            t.requires_grad_(True) if not self.is_first and t.is_floating_point() else t
            for t in (x.detach() for x in as_tuple(inputs))
        )
        self._inputs[mb] = items
        fed = items
        if self._writes_input is not False:
            fed = tuple(t.clone() if t.requires_grad else t for t in items)
        try:
            out = self.layers(fed if isinstance(inputs, tuple) else fed[0])
        except RuntimeError as exc:
            # Only where the input itself was fed: a stage fed copies, or stage 0 (whose input
            # needs no gradient), hit a parameter or some other leaf, which torch's error names.
            if self._writes_input is not False or self.is_first:
                raise
            if "leaf Variable that requires grad" not in str(exc):
                raise
            raise ConfigError(
                f"stage {self.stage} wrote into its input in place on this micro-batch but not "
                f"on its first ({exc}); make the in-place operation out of place, or start the "
                "stage one layer later"
            ) from exc
        if self._writes_input is None:
            self._writes_input = any(
                f is not t and f._version > 0 for f, t in zip(fed, items, strict=True)
            )
        if not self.is_last:  # only values that cross a cut must be tensors; loss_fn takes any
            _check_value(out, f"stage {self.stage}")
        self._outputs[mb] = out
        return out

    def backward(
        self, mb: int, *, grads: Grads | None = None, targets: Any = None, weight: float = 1.0
    ) -> Grads | None:
        """Backpropagate one micro-batch; return the gradient of its inputs (None at stage 0).

        At the last stage the loss is scaled by ``weight`` = micro-batch size / batch size, so the
        gradients summed over micro-batches and replicas equal those of the whole batch's mean loss.
        """
        out = self._outputs.pop(mb)
        inputs = self._inputs.pop(mb)
        if self.is_last:
            loss = self.loss_fn(out, targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ConfigError("loss_fn must return a scalar tensor (use mean reduction)")
            value = float(loss.detach())
            if not math.isfinite(value):
                self.nonfinite.add(mb)
            self.loss_sum += weight * value
            if loss.requires_grad:
                (loss * weight).backward()
        else:
            assert grads is not None
            pairs = [
                (o, g)
                for o, g in zip(as_tuple(out), grads, strict=True)
                if g is not None and o.requires_grad
            ]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        if self.is_first:
            return None
        return tuple(
            (x.grad if x.grad is not None else torch.zeros_like(x)) if x.requires_grad else None
            for x in inputs
        )

    def eval_forward(self, inputs: Value) -> Value:
        """Forward of one validation micro-batch: no autograd, nothing kept for a backward."""
        with torch.no_grad():
            out = self.layers(inputs)
        if not self.is_last:
            _check_value(out, f"stage {self.stage}")
        return out

    def score(self, out: Any, targets: Any, weight: float) -> tuple[float, int, int]:
        """``weight`` * loss of a validation micro-batch, and (correct, counted) predictions.

        Accuracy exists where the task has one: integer targets with one score per class in the
        output's last dimension (classification, masked language modelling). Targets equal to
        the loss's ``ignore_index`` (-100 by default) are not counted. Otherwise (0, 0).
        """
        with torch.no_grad():
            loss = self.loss_fn(out, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError("loss_fn must return a scalar tensor (use mean reduction)")
        correct = counted = 0
        if (
            isinstance(out, torch.Tensor)
            and isinstance(targets, torch.Tensor)
            and not targets.is_floating_point()
            and out.dim() == targets.dim() + 1
            and out.shape[:-1] == targets.shape
        ):
            keep = targets != getattr(self.loss_fn, "ignore_index", -100)
            correct = int((out.argmax(-1) == targets)[keep].sum())
            counted = int(keep.sum())
        return weight * float(loss), correct, counted

    def flat_grads(self) -> torch.Tensor:
        """All parameter gradients as one vector to sum across replicas.

        A missing gradient counts as zeros, and one flag per parameter (1 if this replica has a
        gradient) is appended: after the sum, a parameter no replica touched gets ``grad=None``
        again, so optimizers skip it exactly as single-process PyTorch would. A last element
        counts this replica's micro-batches with a non-finite loss, so after the sum every
        replica knows whether the step is skipped. float32 unless every parameter is float64,
        so double-precision models stay exact.
        """
        dtype = (
            torch.float64
            if self.params and all(p.dtype == torch.float64 for p in self.params)
            else torch.float32
        )
        values = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p in self.params
        ]
        flags = torch.tensor([p.grad is not None for p in self.params], dtype=dtype)
        bad = torch.tensor([len(self.nonfinite)], dtype=dtype)
        return torch.cat([*values, flags, bad])

    def set_flat_grads(self, flat: torch.Tensor) -> None:
        """Inverse of :meth:`flat_grads` after the cross-replica sum."""
        self._peers_nonfinite = bool(flat[-1] > 0)
        flat = flat[:-1]
        flags = flat[flat.numel() - len(self.params) :]
        offset = 0
        for p, flag in zip(self.params, flags, strict=True):
            n = p.numel()
            chunk = flat[offset : offset + n]
            p.grad = chunk.view_as(p).to(p.dtype).clone() if flag > 0 else None
            offset += n

    def sync_size(self) -> tuple[int, int]:
        """Length and item size of :meth:`flat_grads`' vector (see :func:`sync_size`)."""
        return sync_size(self.params)

    @property
    def skips_step(self) -> bool:
        """Whether this step's update is dropped: some micro-batch's loss was not finite."""
        return bool(self.nonfinite) or self._peers_nonfinite

    def step(self) -> float:
        """Apply the optimizer, unless a loss of this step was not finite (then every function
        drops the update, keeping all stages and replicas consistent); return and reset this
        step's loss share."""
        if self.optimizer is not None:
            if not self.skips_step:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        loss, self.loss_sum = self.loss_sum, 0.0
        self.nonfinite.clear()
        self._peers_nonfinite = False
        self._inputs.clear()
        self._outputs.clear()
        return loss


def sync_size(params: Sequence[torch.Tensor]) -> tuple[int, int]:
    """Length and item size of the vector :meth:`StageRunner.flat_grads` synchronises, from the
    trainable parameters alone, so the client lowers a stage's SYNC as its functions cut it;
    (0, 4) for a stage with nothing to synchronise."""
    if not params:
        return 0, 4
    itemsize = 8 if all(p.dtype == torch.float64 for p in params) else 4
    return sum(p.numel() for p in params) + len(params) + 1, itemsize
