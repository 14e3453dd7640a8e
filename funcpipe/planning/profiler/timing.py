"""Timing layers inside whole training passes, in rounds, on a clock other load does not inflate.

A layer's time is what it costs inside a pass as a stage runs it (several micro-batches in
flight, gradients made and dropped per step), not alone; see :func:`time_in_rounds` for why
rounds and which statistic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from funcpipe.planning.profiler.tensors import grad_like, tensors

__all__ = [
    "Config",
    "Times",
    "clock_for",
    "consistent",
    "time_in_rounds",
    "time_round",
    "typical_time",
]


def clock_for(threads: int) -> Callable[[], float]:
    """A clock other load on the host does not inflate: the calling thread's CPU time when torch
    runs on it alone; with a pool of k threads, the process's CPU time / k (the pool's threads
    spin while they wait, so on an idle host this is close to wall time)."""
    if threads == 1:
        return time.thread_time
    return lambda: time.process_time() / threads


def typical_time(
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
Times = tuple[list[list[float]], list[list[float]]]  # per layer: forward, backward seconds


def time_in_rounds(
    model: nn.Sequential,
    configs: list[Config],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    *,
    repeats: int,
    warmup: int,
    min_seconds: float = 0.0,
) -> list[Times]:
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
    times: list[Times] = [([[] for _ in range(n)], [[] for _ in range(n)]) for _ in configs]
    started, r = 0.0, 0
    while r < warmup + repeats or time.perf_counter() - started < min_seconds:
        if r == warmup:
            started = time.perf_counter()
        for config, (f_times, b_times) in zip(configs, times, strict=True):
            time_round(model, config, loss_fn, f_times, b_times, keep=r >= warmup)
        r += 1
    return times


def time_round(
    model: nn.Sequential,
    config: Config,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    f_times: list[list[float]],
    b_times: list[list[float]],
    *,
    keep: bool,
) -> None:
    """One round of one config (see :func:`time_in_rounds`); appends its times when ``keep``."""
    n = len(model)
    inputs, targets, threads, micro = config
    torch.set_num_threads(threads)
    clock = clock_for(threads)
    passes: list[tuple[Any, list[float | None]]] = []
    f_sum, b_sum = [0.0] * n, [0.0] * n
    for _ in range(micro):
        x = inputs
        ready: list[float | None] = [None] * n
        for i, layer in enumerate(model):
            t0 = clock()
            x = layer(x)
            f_sum[i] += clock() - t0
            for v in tensors(x):
                if isinstance(v, torch.Tensor) and v.requires_grad:
                    v.register_hook(_marker(ready, i, clock))
        passes.append((x, ready))
    for out, ready in reversed(passes):
        if loss_fn is None:  # no loss: the backward starts from a gradient of ones
            outs, ones = grad_like(out)
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


def consistent(by_threads: dict[int, float]) -> None:
    """Keep the time at k threads between perfect speed-up and none over one thread's."""
    if 1 not in by_threads:
        return
    one = by_threads[1]
    for k, t in by_threads.items():
        by_threads[k] = min(max(t, one / k), one)
