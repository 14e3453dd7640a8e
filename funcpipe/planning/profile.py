"""What the planner knows about a model: per-layer time, bytes and memory, as plain data.

A :class:`Profile` holds, for every top-level layer of an ``nn.Sequential`` and every measured
micro-batch size, forward and backward time at one or more thread counts, the bytes of the
layer's output (what a cut after it sends), its parameter, gradient and optimizer-state bytes,
and its working memory (tensors saved for backward plus the temporaries of forward+backward).
It answers the planner's questions for any micro-batch size and CPU share:

* micro-batch sizes between measured ones are interpolated linearly, beyond them extrapolated
  along the last measured segment (compute and bytes are close to affine in the batch size);
* a function with ``cpus`` CPU cores runs torch with ``max(1, floor(cpus))`` threads, as the
  local platform does; the time at k threads comes from the measured thread counts (Amdahl's law
  fitted per layer from the first and last measured count when k was not measured), and a
  fractional share stretches it by ``k / cpus`` (a CPU quota lets the threads run that fraction
  of the time).

Profiles are plain data: ``save(path)``/``Profile.load(path)`` round-trip through JSON, so one can
be measured once and shipped with a job. Measuring one is the harness's work
(:func:`funcpipe.planning.profiler.profile`); this module needs neither torch nor storage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from funcpipe.errors import ConfigError

__all__ = ["LayerProfile", "Profile", "threads_for"]

FORMAT = "funcpipe-profile/1"


@dataclass
class LayerProfile:
    """Measurements of one layer; tables are keyed by micro-batch size (and thread count)."""

    name: str
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    forward_s: dict[int, dict[int, float]]  # micro-batch -> threads -> seconds
    backward_s: dict[int, dict[int, float]]
    output_bytes: dict[int, int]  # micro-batch -> bytes of the layer's output
    saved_bytes: dict[int, int]  # micro-batch -> bytes saved for backward (held until then)
    temp_bytes: dict[int, int]  # micro-batch -> peak temporaries of forward + backward
    step_s: dict[int, float] = field(default_factory=dict)  # threads -> optimizer step seconds


def _interp(table: Mapping[int, float], x: float) -> float:
    """Piecewise-linear in ``x`` through the measured points, extrapolated along the end segments;
    with a single point, proportional to ``x``. Never below zero."""
    xs = sorted(table)
    if len(xs) == 1:
        return max(0.0, table[xs[0]] * x / xs[0])
    i = bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return float(table[xs[i]])
    lo, hi = (0, 1) if i == 0 else (len(xs) - 2, len(xs) - 1) if i >= len(xs) else (i - 1, i)
    x0, x1 = xs[lo], xs[hi]
    y0, y1 = table[x0], table[x1]
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if x < x0:  # below the smallest size: no less than proportional scaling of the smallest
        y = max(y, y0 * x / x0)
    return max(0.0, y)


def threads_for(cpus: float, max_threads: int | None = None) -> int:
    """torch threads a function with ``cpus`` cores runs: one per whole core, at least one, at
    most ``max_threads`` (the local platform's rule)."""
    k = max(1, math.floor(cpus + 1e-9))
    return k if max_threads is None else max(1, min(k, max_threads))


def _at_threads(by_threads: dict[int, float], k: int) -> float:
    """Seconds at ``k`` threads: measured, or Amdahl's law fitted to the extreme counts."""
    if k in by_threads:
        return by_threads[k]
    lo, hi = min(by_threads), max(by_threads)
    t_lo, t_hi = by_threads[lo], by_threads[hi]
    # one count measured, or a layer too fast for the clock (ReLU, Flatten): it stays as is
    if lo == hi or t_lo <= 0:
        return t_lo
    # t(k) = t1 * (s + (1 - s) / k); solve s from the two measured counts.
    if k < lo:
        return t_lo * lo / k
    ratio = t_hi / t_lo
    serial = (ratio - lo / hi) / (1 - lo / hi)
    serial = min(1.0, max(0.0, serial))
    t1 = t_lo / (serial + (1 - serial) / lo)
    return t1 * (serial + (1 - serial) / k)


@dataclass
class Profile:
    """What the planner knows about a model (see module docstring). Measure one with
    :func:`funcpipe.profile` or load a saved one with :meth:`load`."""

    layers: list[LayerProfile]
    micro_batch_sizes: list[int]
    threads: list[int]
    input_bytes_table: dict[int, int]  # micro-batch -> encoded input bytes
    target_bytes_table: dict[int, int]  # micro-batch -> encoded target bytes
    runtime_base_mb: float
    meta: dict[str, Any] = field(default_factory=dict)
    # CPU seconds one transfer costs its two ends (encode + write, read + decode), fitted as
    # per request + per byte; on a CPU-starved function these add up.
    transfer_s_per_request: float = 0.0
    transfer_s_per_byte: float = 0.0
    poll_s: float = 0.0  # CPU seconds of one poll for a key that is not there yet
    # Seconds one transfer made by a lane thread adds to the compute it overlaps, beyond its own
    # CPU: compute and lanes share the interpreter lock, which every kernel hands over while a
    # lane wants it, so a model of many small kernels pays the most (see profiler.lanes).
    lane_overhead_s: float = 0.0

    # --- the questions a planner asks -----------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def _time(
        self,
        tables: dict[int, dict[int, float]],
        micro_batch: float,
        cpus: float,
        max_threads: int | None,
    ) -> float:
        if not cpus > 0:
            raise ConfigError(f"cpus must be > 0, got {cpus!r}")
        k = threads_for(cpus, max_threads)
        per_k = {
            t: _interp({mb: tables[mb][t] for mb in tables}, micro_batch) for t in self.threads
        }
        return _at_threads(per_k, k) * max(1.0, k / cpus)

    def forward_s(
        self, layer: int, micro_batch: float, cpus: float, max_threads: int | None = None
    ) -> float:
        """Seconds of ``layer``'s forward on a micro-batch with ``cpus`` cores (and torch
        threads capped at ``max_threads``, see ``PlatformProfile.max_threads``)."""
        return self._time(self.layers[layer].forward_s, micro_batch, cpus, max_threads)

    def backward_s(
        self, layer: int, micro_batch: float, cpus: float, max_threads: int | None = None
    ) -> float:
        """Seconds of ``layer``'s backward (the last layer's includes the loss)."""
        return self._time(self.layers[layer].backward_s, micro_batch, cpus, max_threads)

    def step_s(self, layer: int, cpus: float, max_threads: int | None = None) -> float:
        """Seconds of the optimizer step on ``layer``'s parameters."""
        table = self.layers[layer].step_s
        if not table:
            return 0.0
        k = threads_for(cpus, max_threads)
        return _at_threads(table, k) * max(1.0, k / cpus)

    def activation_bytes(self, layer: int, micro_batch: float) -> float:
        """Bytes of ``layer``'s output for a micro-batch (what a cut after it transfers; the
        gradient coming back has the same size)."""
        return _interp(self.layers[layer].output_bytes, micro_batch)

    def input_bytes(self, micro_batch: float) -> float:
        """Encoded bytes of a micro-batch's inputs (what the client feeds stage 0)."""
        return _interp(self.input_bytes_table, micro_batch)

    def target_bytes(self, micro_batch: float) -> float:
        """Encoded bytes of a micro-batch's targets (what the client feeds the last stage)."""
        return _interp(self.target_bytes_table, micro_batch)

    def transfer_cpu_s(self, nbytes: float) -> float:
        """CPU seconds (at one core) a transfer of ``nbytes`` costs its two ends together."""
        return self.transfer_s_per_request + self.transfer_s_per_byte * nbytes

    def param_bytes(self, layer: int) -> int:
        return self.layers[layer].param_bytes

    def grad_bytes(self, layer: int) -> int:
        return self.layers[layer].grad_bytes

    def optimizer_bytes(self, layer: int) -> int:
        return self.layers[layer].optimizer_bytes

    def saved_bytes(self, layer: int, micro_batch: float) -> float:
        """Bytes ``layer`` keeps from forward until backward for one micro-batch."""
        return _interp(self.layers[layer].saved_bytes, micro_batch)

    def temp_bytes(self, layer: int, micro_batch: float) -> float:
        """Peak temporaries of ``layer``'s forward + backward for one micro-batch."""
        return _interp(self.layers[layer].temp_bytes, micro_batch)

    def working_bytes(self, layer: int, micro_batch: float) -> float:
        """Saved activations + peak temporaries of forward+backward for one micro-batch."""
        return self.saved_bytes(layer, micro_batch) + self.temp_bytes(layer, micro_batch)

    def scaled(self, compute: float) -> Profile:
        """This profile on a CPU ``compute`` times as slow (2.0: every compute second doubles).

        A profile is measured on one machine and at one moment; the functions may run on slower
        or faster cores (a laptop's against Lambda's), or on a host whose speed drifts (a shared
        VM). Scaling every CPU-bound figure (forward, backward, optimizer step, the CPU cost of
        transfers and polls) by one measured ratio carries the profile over; bytes stay as they
        are.
        """
        if not (isinstance(compute, int | float) and math.isfinite(compute) and compute > 0):
            raise ConfigError(f"compute must be a positive number, got {compute!r}")

        def times(table: dict[int, dict[int, float]]) -> dict[int, dict[int, float]]:
            return {mb: {k: t * compute for k, t in by_k.items()} for mb, by_k in table.items()}

        layers = [
            dataclasses.replace(
                layer,
                forward_s=times(layer.forward_s),
                backward_s=times(layer.backward_s),
                step_s={k: t * compute for k, t in layer.step_s.items()},
            )
            for layer in self.layers
        ]
        meta = {**self.meta, "compute_scale": self.meta.get("compute_scale", 1.0) * compute}
        return dataclasses.replace(
            self,
            layers=layers,
            transfer_s_per_request=self.transfer_s_per_request * compute,
            transfer_s_per_byte=self.transfer_s_per_byte * compute,
            poll_s=self.poll_s * compute,
            lane_overhead_s=self.lane_overhead_s * compute,
            meta=meta,
        )

    # --- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"not a FuncPipe profile (format {data.get('format')!r}, expected {FORMAT!r}); "
                "make one with funcpipe.profile(model, sample_batch)"
            )

        def ints(table: dict) -> dict[int, Any]:
            return {int(k): ints(v) if isinstance(v, dict) else v for k, v in table.items()}

        layers = []
        for raw in data["layers"]:
            layer = dict(raw)
            for key in ("forward_s", "backward_s", "output_bytes", "saved_bytes", "temp_bytes",
                        "step_s"):  # fmt: skip
                layer[key] = ints(layer.get(key, {}))
            layers.append(LayerProfile(**layer))
        return cls(
            layers=layers,
            micro_batch_sizes=[int(m) for m in data["micro_batch_sizes"]],
            threads=[int(t) for t in data["threads"]],
            input_bytes_table=ints(data["input_bytes_table"]),
            target_bytes_table=ints(data["target_bytes_table"]),
            runtime_base_mb=float(data["runtime_base_mb"]),
            transfer_s_per_request=float(data.get("transfer_s_per_request", 0.0)),
            transfer_s_per_byte=float(data.get("transfer_s_per_byte", 0.0)),
            poll_s=float(data.get("poll_s", 0.0)),
            lane_overhead_s=float(data.get("lane_overhead_s", 0.0)),
            meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)
