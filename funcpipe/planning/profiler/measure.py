"""``profile(model, sample_batch)``: measure a model layer by layer into a :class:`Profile`.

The passes, in order: the memory pass (bytes of outputs, saved tensors, temporaries and the
encoded batch), the timing rounds (forward and backward of every layer at every micro-batch
size and thread count), each layer's optimizer step, the CPU cost of a transfer and of a poll,
and what a lane thread's transfers add to a pass.
"""

from __future__ import annotations

import copy
import os
import platform as _host
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from funcpipe.errors import ConfigError
from funcpipe.planning.platforms import measured_runtime
from funcpipe.planning.profile import LayerProfile, Profile
from funcpipe.planning.profiler.lanes import lane_overhead
from funcpipe.planning.profiler.memory import measure_bytes
from funcpipe.planning.profiler.tensors import take, tensors
from funcpipe.planning.profiler.timing import clock_for, consistent, time_in_rounds, typical_time
from funcpipe.planning.profiler.transfer import transfer_cost

__all__ = ["IN_FLIGHT", "IN_FLIGHT_BYTES", "profile"]

# The timing holds this many micro-batches' activations, as a GPipe stage does between its
# forwards and backwards, unless they exceed IN_FLIGHT_BYTES.
IN_FLIGHT = 4
IN_FLIGHT_BYTES = 1 << 30


def _default_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _optimizer_step(
    params: list[nn.Parameter],
    make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    counts: list[int],
    repeats: int,
    warmup: int,
) -> tuple[int, dict[int, float]]:
    """Bytes of the optimizer state of ``params`` and seconds of its step at each thread count
    (the step runs on zero gradients, which it leaves on the parameters)."""
    opt_bytes, step = 0, {}
    if params:
        opt = make_opt(params)
        for p in params:
            p.grad = torch.zeros_like(p)
        for k in counts:
            torch.set_num_threads(k)
            step[k], _ = typical_time(opt.step, repeats, warmup, clock_for(k))
        opt_bytes = sum(
            v.numel() * v.element_size()
            for state in opt.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor) and v.dim() > 0
        )
        consistent(step)
    return opt_bytes, step


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
    least 0.1 s; see :func:`~funcpipe.planning.profiler.lanes.lane_overhead`).
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
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors(inputs)):
        raise ConfigError("sample_batch inputs must be a Tensor (or tuple) with the batch first")
    size = tensors(inputs)[0].shape[0]
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
        runtime_base_mb = measured_runtime()["rss_mb"]

    model = copy.deepcopy(model)
    model.train()
    make_opt = optimizer or _default_optimizer
    n = len(model)
    fwd: list[dict[int, dict[int, float]]] = [{} for _ in range(n)]
    bwd: list[dict[int, dict[int, float]]] = [{} for _ in range(n)]
    previous_threads = torch.get_num_threads()
    try:
        batches = {
            mb: (take(inputs, mb), take(targets, mb) if targets is not None else None)
            for mb in sizes
        }
        sized = measure_bytes(model, batches)
        out_bytes, saved = sized.output, sized.saved
        # A stage holds several micro-batches' activations at once; so does the timing, within
        # a memory budget (one when a pass alone exceeds it).
        held = {
            mb: max(1, min(IN_FLIGHT, IN_FLIGHT_BYTES // max(1, sum(
                saved[i][mb] + out_bytes[i][mb] for i in range(n)))))
            for mb in sizes
        }  # fmt: skip
        configs = [(mb, k) for mb in sizes for k in counts]
        timed = time_in_rounds(
            model, [(*batches[mb], k, held[mb]) for mb, k in configs], loss_fn,
            repeats=repeats, warmup=warmup, min_seconds=min_seconds * len(configs),
        )  # fmt: skip
        for (mb, k), (f_times, b_times) in zip(configs, timed, strict=True):
            for i in range(n):
                fwd[i].setdefault(mb, {})[k] = statistics.median(f_times[i])
                bwd[i].setdefault(mb, {})[k] = statistics.median(b_times[i])
        for tables in (*fwd, *bwd):
            for by_threads in tables.values():
                consistent(by_threads)
        layers = []
        for i, layer in enumerate(model):
            params = [p for p in layer.parameters() if p.requires_grad]
            opt_bytes, step = _optimizer_step(params, make_opt, counts, repeats, warmup)
            if params:
                layer.zero_grad(set_to_none=True)
            layers.append(
                LayerProfile(
                    name=f"{i}:{type(layer).__name__}",
                    param_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
                    grad_bytes=sum(p.numel() * p.element_size() for p in params),
                    optimizer_bytes=opt_bytes,
                    forward_s=fwd[i],
                    backward_s=bwd[i],
                    output_bytes=out_bytes[i],
                    saved_bytes=saved[i],
                    temp_bytes=sized.temp[i],
                    step_s=step,
                )
            )
    finally:
        torch.set_num_threads(previous_threads)
    per_request, per_byte, poll = transfer_cost(repeats)
    smallest = sizes[0]
    lanes_s = lane_overhead(
        model, (*batches[smallest], 1, held[smallest]), loss_fn, max(0.1, min_seconds / 3)
    )
    return Profile(
        layers=layers,
        micro_batch_sizes=sizes,
        threads=counts,
        input_bytes_table=sized.inputs,
        target_bytes_table=sized.targets,
        runtime_base_mb=float(runtime_base_mb),
        transfer_s_per_request=per_request,
        transfer_s_per_byte=per_byte,
        poll_s=poll,
        lane_overhead_s=lanes_s,
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
