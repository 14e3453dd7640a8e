"""Per-layer cost of an ``nn.Sequential``: time, bytes and memory, measured on this machine.

For every top-level layer and every micro-batch size a plan may use, :func:`profile` measures
forward and backward time at one or more thread counts, the bytes of the layer's output (what a
cut after it sends), its parameter, gradient and optimizer-state bytes, and its working memory
(tensors saved for backward plus the temporaries of forward+backward). A :class:`Profile` answers
the planner's questions for any micro-batch size and CPU share:

* micro-batch sizes between measured ones are interpolated linearly, beyond them extrapolated
  along the last measured segment (compute and bytes are close to affine in the batch size);
* a function with ``cpus`` CPU cores runs torch with ``max(1, floor(cpus))`` threads, as the
  local platform does; the time at k threads comes from the measured thread counts (Amdahl's law
  fitted per layer from the first and last measured count when k was not measured), and a
  fractional share stretches it by ``k / cpus`` (a CPU quota lets the threads run that fraction
  of the time).

Profiles are plain data: ``save(path)``/``Profile.load(path)`` round-trip through JSON, so one can
be measured once and shipped with a job.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import platform as _host
import statistics
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from funcpipe import codec
from funcpipe.errors import ConfigError

__all__ = ["LayerProfile", "Profile", "profile"]

FORMAT = "funcpipe-profile/1"
# The timing holds this many micro-batches' activations, as a GPipe stage does between its
# forwards and backwards, unless they exceed IN_FLIGHT_BYTES.
IN_FLIGHT = 4
IN_FLIGHT_BYTES = 1 << 30


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


def _interp(table: dict[int, float], x: float) -> float:
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
    if lo == hi or t_lo <= 0:  # one count measured, or too fast for the clock
        return t_lo
    # t(k) = t1 * (s + (1 - s) / k); solve s from the two measured counts.
    if k < lo:
        return t_lo * lo / k
    if t_lo <= 0:  # a layer too fast to measure (ReLU, Flatten) stays free
        return t_lo
    ratio = t_hi / t_lo
    serial = (ratio - lo / hi) / (1 - lo / hi) if hi != lo else 1.0
    serial = min(1.0, max(0.0, serial))
    t1 = t_lo / (serial + (1 - serial) / lo)
    return t1 * (serial + (1 - serial) / k)


@dataclass
class Profile:
    """What the planner knows about a model (see module docstring). Build with :func:`profile`."""

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
    # lane wants it, so a model of many small kernels pays the most (see _lane_overhead).
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


# --- measuring -------------------------------------------------------------------------------


def _tensors(value: Any) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value) if isinstance(t, torch.Tensor))


def _take(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch, repeating samples if the batch is smaller."""

    def one(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] >= n:
            return t[:n].clone()
        reps = math.ceil(n / t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:n].clone()

    return tuple(one(t) for t in value) if isinstance(value, tuple) else one(value)


def _detached(value: Any, grad: bool) -> Any:
    items = tuple(
        t.detach().requires_grad_(grad and t.is_floating_point()) for t in _tensors(value)
    )
    return items if isinstance(value, tuple) else items[0]


def _copied(value: Any) -> Any:
    """``value`` with every Tensor cloned (a clone of a leaf is not one)."""
    if isinstance(value, tuple | list):
        return type(value)(_copied(v) for v in value)
    return value.clone() if isinstance(value, torch.Tensor) else value


def _grad_like(out: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs = [t for t in _tensors(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs, [torch.ones_like(t) for t in outs]


class _SavedCounter:
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


def _clock(threads: int) -> Callable[[], float]:
    """A clock other load on the host does not inflate: the calling thread's CPU time when torch
    runs on it alone; with a pool of k threads, the process's CPU time / k (the pool's threads
    spin while they wait, so on an idle host this is close to wall time)."""
    if threads == 1:
        return time.thread_time
    return lambda: time.process_time() / threads


def _typical_time(
    fn: Callable[[], Any], repeats: int, warmup: int, clock: Callable[[], float]
) -> tuple[float, Any]:
    """Median time of ``repeats`` runs after ``warmup``, and the last result.

    The median, not the minimum: a model sums the times of many layers, and per-layer minima
    (each from whichever repeat was luckiest) add up to less than any real pass takes on a
    host shared with other work.
    """
    times, result = [], None
    for i in range(warmup + repeats):
        t0 = clock()
        result = fn()
        if i >= warmup:
            times.append(clock() - t0)
    return statistics.median(times), result


Config = tuple[Any, Any, int, int]  # a micro-batch's inputs and targets, threads, micro-batches


def _time_in_rounds(
    model: nn.Sequential,
    configs: list[Config],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    *,
    repeats: int,
    warmup: int,
    min_seconds: float = 0.0,
) -> list[tuple[list[list[float]], list[list[float]]]]:
    """Forward and backward times of every layer for every config, in rounds: each round runs
    every config through the whole model; ``warmup`` rounds are not kept, then at least
    ``repeats`` rounds and at least ``min_seconds`` of them.

    A config runs as a GPipe stage does: the forwards of its micro-batches, then their
    backwards in reverse order, each one whole pass through the model (no layer is cut from the
    graph). A layer's forward is timed around its call; its backward is the time between the
    gradient of its output being ready and the gradient of its input being ready (hooks on the
    layer outputs mark these moments). Timed one by one instead, each layer alone with its
    output's gradient allocated on its clock, the demo CNN's layers summed to 1.1-1.2 times its
    pass.

    Rounds, not all repeats of one layer (or one micro-batch size) back to back: a shared host's
    speed drifts over seconds, and the model sums the layers' times and compares sizes and
    thread counts. Timed one after the other, a slow spell lands on a few layers or on one size;
    timed in rounds, it lands on one round of every layer of every config, and each median
    across rounds comes from the same typical rounds as every other.

    A round's time for a layer is its mean over the round's micro-batches; the median is taken
    across rounds. The first micro-batches of a step run slower than the rest (in a bert-like
    model's training function: the first forward +28 %, the first backward +22 %), and a median
    over every micro-batch would drop them; a step pays for all of them.
    """
    n = len(model)
    times = [([[] for _ in range(n)], [[] for _ in range(n)]) for _ in configs]
    started, r = 0.0, 0
    while r < warmup + repeats or time.perf_counter() - started < min_seconds:
        if r == warmup:
            started = time.perf_counter()
        for config, (f_times, b_times) in zip(configs, times, strict=True):
            _time_round(model, config, loss_fn, f_times, b_times, keep=r >= warmup)
        r += 1
    return times


def _time_round(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    f_times: list[list[float]],
    b_times: list[list[float]],
    *,
    keep: bool,
) -> None:
    """One round of one config (see :func:`_time_in_rounds`); appends its times when ``keep``."""
    n = len(model)
    inputs, targets, threads, micro = config
    torch.set_num_threads(threads)
    clock = _clock(threads)
    passes: list[tuple[Any, list[float | None]]] = []
    f_sum, b_sum = [0.0] * n, [0.0] * n
    for _ in range(micro):
        x, ready = inputs, [None] * n
        for i, layer in enumerate(model):
            t0 = clock()
            x = layer(x)
            f_sum[i] += clock() - t0
            for v in _tensors(x):
                if isinstance(v, torch.Tensor) and v.requires_grad:
                    v.register_hook(_marker(ready, i, clock))
        passes.append((x, ready))
    for out, ready in reversed(passes):
        if loss_fn is None:  # no loss: the backward starts from a gradient of ones
            outs, ones = _grad_like(out)
        start = clock()
        if loss_fn is not None:
            loss = loss_fn(out, targets)
            if loss.requires_grad:
                loss.backward()
        elif outs:
            torch.autograd.backward(outs, ones)
        end = clock()
        # ready[i]: when the gradient of layer i's output was complete (a layer whose
        # output needs none has no backward, nor has any layer before it). Layer i's
        # backward begins then (the last layer's at the start) and ends when layer
        # i-1's output gradient is complete (the first layer's at the end).
        marks = [end if m is None else m for m in ready]
        began = [*marks[:-1], start]
        finished = [end, *marks[:-1]]
        for i in range(n):
            b_sum[i] += max(0.0, finished[i] - began[i])
    # A step ends here: its gradients go, and the next pass's first backward makes them
    # anew (the runtime's optimizer step zeroes them the same way).
    model.zero_grad(set_to_none=True)
    if keep:
        for i in range(n):
            f_times[i].append(f_sum[i] / micro)
            b_times[i].append(b_sum[i] / micro)


def _marker(ready: list[float | None], i: int, clock: Callable[[], float]) -> Callable[[Any], None]:
    """A tensor hook noting when the gradient of layer ``i``'s output is ready (the last of
    them, for a layer with several outputs)."""

    def hook(_grad: Any) -> None:
        ready[i] = clock()

    return hook


def _consistent(by_threads: dict[int, float]) -> None:
    """Keep the time at k threads between perfect speed-up and none over one thread's."""
    if 1 not in by_threads:
        return
    one = by_threads[1]
    for k, t in by_threads.items():
        by_threads[k] = min(max(t, one / k), one)


def _transfer_cost(repeats: int) -> tuple[float, float, float]:
    """CPU seconds of one transfer through local storage (encode, write, read, decode, delete),
    at a small and a large size, and of one poll for a missing key; returns (per request, per
    byte, per poll).

    A transfer goes the way a function makes it: through the storage layers a function stacks
    (link accounting, the job's and generation's prefixes), with the put, the wait and decode,
    and the delete each handed to a thread pool as the executor's lanes do; the cost is the
    process's CPU time, every thread included.
    """
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from funcpipe.errors import KeyNotFound
    from funcpipe.storage.local_dir import LocalDirStorage
    from funcpipe.storage.prefixed import PrefixedStorage
    from funcpipe.storage.throttle import LinkConfig, ThrottledStorage

    sizes = (4096, 1 << 22)
    costs = []
    with (
        tempfile.TemporaryDirectory(prefix="funcpipe-profile-") as root,
        ThreadPoolExecutor(1) as lane,
        ThreadPoolExecutor(1) as deleter,
    ):
        base = LocalDirStorage(root)
        link = ThrottledStorage(base, LinkConfig(enabled=False))
        store = PrefixedStorage(PrefixedStorage(link, "jobs/profile/"), "g0/")
        for n in sizes:
            tensor = torch.ones(n // 4)

            def once(tensor: torch.Tensor = tensor) -> None:
                lane.submit(lambda: store.put("probe", codec.encode(tensor))).result()
                lane.submit(lambda: codec.decode(store.wait("probe", 5.0))).result()
                deleter.submit(store.delete, "probe").result()

            # cheap, and noisy at a few repeats (thread hand-offs): take many
            costs.append(_typical_time(once, max(repeats, 15), 2, time.process_time)[0])

        def polls(n: int = 100) -> None:
            for _ in range(n):
                with contextlib.suppress(KeyNotFound):
                    store.get("missing")

        poll = _typical_time(polls, max(repeats, 3), 1, time.thread_time)[0] / 100
        base.close()
    per_byte = max(0.0, (costs[1] - costs[0]) / (sizes[1] - sizes[0]))
    return max(0.0, costs[0] - per_byte * sizes[0]), per_byte, poll


def _lane_overhead(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    window_s: float,
    pairs: int = 3,
) -> float:
    """Wall seconds one transfer on a lane thread adds to a training pass it overlaps.

    A function's lanes store, read, decode and delete tensors while its main thread computes.
    Both need the interpreter lock, which torch hands over around every kernel: while a lane
    wants it, each kernel launch of the compute thread becomes a hand-over. A pass of a few
    large kernels hardly notices, one of many small kernels does (on this project's 2-core VM,
    micro-batches 4-16: the demo CNN 0-0.8 ms per transfer, bert-large-small 0.6-1.9 ms, where
    a transfer itself costs about 1 ms of CPU; docs/planner.md). Measured as such:
    windows of passes alone and beside a thread transferring a micro-batch every 5 ms through
    local storage, alternated ``pairs`` times; the median over pairs of the extra time per
    pass, divided by the transfers made during one pass. Needs a second core for the lane
    (on one, the pass would also pay the lane's CPU, which the transfer cost already counts):
    0 on a single-core host.
    """
    if len(os.sched_getaffinity(0)) < 2:
        return 0.0
    previous_threads = torch.get_num_threads()
    try:
        return _extra_per_transfer(model, config, loss_fn, window_s, pairs)
    finally:
        torch.set_num_threads(previous_threads)


def _extra_per_transfer(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    window_s: float,
    pairs: int,
) -> float:
    import tempfile
    import threading

    from funcpipe.storage.local_dir import LocalDirStorage

    inputs = config[0]

    def window() -> float:
        """Median wall seconds of a pass, over ``window_s`` (at least two passes)."""
        times, end = [], time.perf_counter() + window_s
        sink: tuple[list[list[float]], list[list[float]]] = ([[]], [[]])
        while time.perf_counter() < end or len(times) < 2:
            t0 = time.perf_counter()
            _time_round(model, config, loss_fn, *sink, keep=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with tempfile.TemporaryDirectory(prefix="funcpipe-profile-") as root:
        store = LocalDirStorage(root)
        payload = codec.encode(inputs)
        extra = []
        for _ in range(pairs):
            alone = window()
            stop, done = threading.Event(), [0]

            def lane(stop: threading.Event = stop, done: list[int] = done) -> None:
                while not stop.wait(0.005):
                    store.put("lane", payload)
                    codec.decode(store.get("lane"))
                    store.delete("lane")
                    done[0] += 1

            thread = threading.Thread(target=lane, name="profile-lane", daemon=True)
            t0 = time.perf_counter()
            thread.start()
            try:
                beside = window()
            finally:
                stop.set()
                thread.join()
            elapsed = time.perf_counter() - t0
            per_pass = done[0] * beside / elapsed if elapsed > 0 else 0.0
            if per_pass > 0:
                extra.append((beside - alone) / per_pass)
        store.close()
    return max(0.0, statistics.median(extra)) if extra else 0.0


def _default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def profile(
    model: nn.Sequential,
    sample_batch: Any,
    *,
    micro_batch_sizes: Sequence[int] | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    threads: Sequence[int] | None = None,
    repeats: int = 3,
    warmup: int = 1,
    min_seconds: float = 0.0,
    runtime_base_mb: float | None = None,
) -> Profile:
    """Measure ``model`` layer by layer on this machine.

    ``sample_batch`` is an ``(inputs, targets)`` pair as ``train`` takes (targets may be None),
    or an inputs Tensor (then the last layer's backward starts from a gradient of ones and
    targets cost nothing).
    ``micro_batch_sizes`` default to 1, half and all of the sample's size; samples are repeated
    when a size exceeds the sample. ``threads`` default to 1 and 2 when the host has two cores
    or more (time at other shares is fitted from them). ``loss_fn`` (needs targets) is timed as
    part of the last layer's backward. ``optimizer`` (default Adam) sizes the optimizer state and
    times its step. The model itself is not modified (a copy is measured).
    Layers are timed inside whole training passes, several micro-batches in flight as in a
    GPipe stage, in rounds, each through the whole model at every micro-batch size and
    thread count: at least ``repeats`` rounds and at least ``min_seconds`` per size and thread
    count of them (all interleaved): on a host whose speed drifts, a longer profile samples the
    speed a run will see, not one moment of it, and every size and count sample the same.
    Last, on a host with two cores or more, what a lane thread's transfers add to a pass at the
    smallest size (``Profile.lane_overhead_s``, in windows of a third of ``min_seconds``, at
    least 0.1 s; see ``_lane_overhead``).
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ConfigError(
            "profile needs a non-empty nn.Sequential; convert a model with "
            "funcpipe.models.to_sequential(model, example_input)"
        )
    if isinstance(sample_batch, tuple | list) and len(sample_batch) == 2:
        inputs, targets = sample_batch
    else:
        inputs, targets = sample_batch, None
    if loss_fn is not None and targets is None:
        raise ConfigError("loss_fn needs targets: pass sample_batch=(inputs, targets)")
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in _tensors(inputs)):
        raise ConfigError("sample_batch inputs must be a Tensor (or tuple) with the batch first")
    size = _tensors(inputs)[0].shape[0]
    sizes = sorted(set(micro_batch_sizes or {1, max(1, size // 2), size}))
    if any(not isinstance(m, int) or m < 1 for m in sizes):
        raise ConfigError(f"micro_batch_sizes must be positive ints, got {list(sizes)}")
    cores = len(os.sched_getaffinity(0))
    counts = sorted(set(threads or ([1, 2] if cores >= 2 else [1])))
    if any(not isinstance(k, int) or k < 1 for k in counts):
        raise ConfigError(f"threads must be positive ints, got {counts}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if not min_seconds >= 0:
        raise ConfigError(f"min_seconds must be >= 0, got {min_seconds}")
    if runtime_base_mb is None:
        from funcpipe.planning.platforms import measured_runtime

        runtime_base_mb = measured_runtime()["rss_mb"]

    model = copy.deepcopy(model)
    model.train()
    make_opt = optimizer or _default_optimizer
    n = len(model)
    fwd: list[dict[int, dict[int, float]]] = [{} for _ in range(n)]
    bwd: list[dict[int, dict[int, float]]] = [{} for _ in range(n)]
    out_bytes: list[dict[int, int]] = [{} for _ in range(n)]
    saved: list[dict[int, int]] = [{} for _ in range(n)]
    temp: list[dict[int, int]] = [{} for _ in range(n)]
    in_table: dict[int, int] = {}
    tgt_table: dict[int, int] = {}
    previous_threads = torch.get_num_threads()
    try:
        batches = {
            mb: (_take(inputs, mb), _take(targets, mb) if targets is not None else None)
            for mb in sizes
        }
        for mb in sizes:
            x_mb, y_mb = batches[mb]
            in_table[mb] = len(codec.encode(x_mb))
            tgt_table[mb] = len(codec.encode(y_mb, {"weight": "0.5"})) if y_mb is not None else 0
            x = x_mb
            for i, layer in enumerate(model):
                counter = _SavedCounter(list(layer.parameters()))
                # A copy of the input, as the runtime feeds a stage that writes into its input
                # (nn.ReLU(inplace=True)); autograd refuses in-place writes to a leaf.
                fed = _detached(x, grad=False) if i == 0 else _copied(_detached(x, grad=True))
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                    out = layer(fed)
                out_bytes[i][mb] = _nbytes(out)
                saved[i][mb] = counter.total
                # temporaries: the output's gradient and the input's gradient coexist with the
                # output during backward
                temp[i][mb] = _nbytes(out) + (_nbytes(x) if i > 0 else 0)
                x = _detached(out, grad=False)
        # A stage holds several micro-batches' activations at once; so does the timing, within
        # a memory budget (one when a pass alone exceeds it).
        held = {
            mb: max(1, min(IN_FLIGHT, IN_FLIGHT_BYTES // max(1, sum(
                saved[i][mb] + out_bytes[i][mb] for i in range(n)))))
            for mb in sizes
        }  # fmt: skip
        configs = [(mb, k) for mb in sizes for k in counts]
        timed = _time_in_rounds(
            model, [(*batches[mb], k, held[mb]) for mb, k in configs], loss_fn,
            repeats=repeats, warmup=warmup, min_seconds=min_seconds * len(configs),
        )  # fmt: skip
        for (mb, k), (f_times, b_times) in zip(configs, timed, strict=True):
            for i in range(n):
                fwd[i].setdefault(mb, {})[k] = statistics.median(f_times[i])
                bwd[i].setdefault(mb, {})[k] = statistics.median(b_times[i])
        for tables in (*fwd, *bwd):
            for by_threads in tables.values():
                _consistent(by_threads)
        layers = []
        for i, layer in enumerate(model):
            params = [p for p in layer.parameters() if p.requires_grad]
            p_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
            g_bytes = sum(p.numel() * p.element_size() for p in params)
            opt_bytes, step = 0, {}
            if params:
                opt = make_opt(params)
                for p in params:
                    p.grad = torch.zeros_like(p)
                for k in counts:
                    torch.set_num_threads(k)
                    step[k], _ = _typical_time(opt.step, repeats, warmup, _clock(k))
                opt_bytes = sum(
                    v.numel() * v.element_size()
                    for state in opt.state.values()
                    for v in state.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0
                )
                layer.zero_grad(set_to_none=True)
                _consistent(step)
            layers.append(
                LayerProfile(
                    name=f"{i}:{type(layer).__name__}",
                    param_bytes=p_bytes,
                    grad_bytes=g_bytes,
                    optimizer_bytes=opt_bytes,
                    forward_s=fwd[i],
                    backward_s=bwd[i],
                    output_bytes=out_bytes[i],
                    saved_bytes=saved[i],
                    temp_bytes=temp[i],
                    step_s=step,
                )
            )
    finally:
        torch.set_num_threads(previous_threads)
    per_request, per_byte, poll = _transfer_cost(repeats)
    smallest = sizes[0]
    lane_overhead = _lane_overhead(
        model, (*batches[smallest], 1, held[smallest]), loss_fn, max(0.1, min_seconds / 3)
    )
    return Profile(
        layers=layers,
        micro_batch_sizes=sizes,
        threads=counts,
        input_bytes_table=in_table,
        target_bytes_table=tgt_table,
        runtime_base_mb=float(runtime_base_mb),
        transfer_s_per_request=per_request,
        transfer_s_per_byte=per_byte,
        poll_s=poll,
        lane_overhead_s=lane_overhead,
        meta={
            "torch": torch.__version__,
            "host": _host.node(),
            "cpu": _host.processor() or _host.machine(),
            "host_cores": cores,
            "repeats": repeats,
            "min_seconds": min_seconds,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
