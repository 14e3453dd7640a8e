"""A lower bound of the simulator's iteration time and objective, cheap enough to search with.

The simulator replays the schedule with serial lanes (one compute, one upload and one download
lane per function), so any chain of work that must happen one after the other bounds its
iteration time from below. For stage s of a plan, with n_s = ceil(M / d_s) micro-batches on its
busiest replica and f, b its forward/backward time of one micro-batch:

    fill_s  = time before micro-batch 0 can reach stage s: the input download, then for every
              earlier stage one forward and one activation upload + download
    drain_s = time micro-batch 0's gradient needs from stage s back to stage 0: per earlier
              stage one gradient upload + download and one backward
    T >= fill_s + n_s (f_s + b_s) + max(sync_s, drain_s + sync_0)      (compute lane)
    T >= fill_s + f_s + upload lane load_s,   T >= download lane load_s  (link lanes)

where sync is the time the gradient all-reduce needs at least on its busier link direction
(it uploads the stage's gradient once and downloads 2(d-1)/d of it) plus the optimizer step.
Cost is bounded by the same time times the memory of all functions, plus the storage requests
every plan must make (`Prices`).
Every term uses the durations the simulator uses (profile times at the function's CPU share,
bytes over the platform's link plus one request latency), so bound <= predict; the tests check
that on random plans, and the search re-checks it on every plan it simulates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from funcpipe.planning.space import SearchSpace, Weights


@dataclass(frozen=True)
class Link:
    up_bps: float
    down_bps: float
    latency_s: float

    def up(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.up_bps

    def down(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.down_bps

    def sync(self, grad_bytes: float, replicas: int) -> float:
        """Least time an all-reduce of ``grad_bytes`` among ``replicas`` functions takes."""
        if replicas <= 1 or grad_bytes <= 0:
            return 0.0
        up = grad_bytes / self.up_bps
        down = 2 * (replicas - 1) / replicas * grad_bytes / self.down_bps
        return max(up, down)


def link_of(platform: Any) -> Link:
    link = platform.link
    return Link(float(link.up_bytes_s), float(link.down_bytes_s), float(link.latency_s))


REPORT_POLL_S = 0.05  # the client polls every function's report this often (client/train.py)


@dataclass(frozen=True)
class Prices:
    """Prices and the storage requests every plan must make, whatever its timing."""

    gb_second: float
    put: float
    get: float
    delete: float = 0.0

    def client(self, micro_batches: int) -> float:
        """The client puts each micro-batch's input and target; functions get + delete them."""
        return 2 * micro_batches * (self.put + self.get + self.delete)

    def stage(self, micro_batches: int, replicas: int, last: bool) -> float:
        """A stage's own requests: one report per function (put; the client gets + deletes it),
        the activations and gradients across the boundary after it (put, get, delete each), and
        at least one piece per replica pair plus the merged chunks when replicas > 1."""
        cost = replicas * (self.put + self.get + self.delete)
        if not last:
            cost += 2 * micro_batches * (self.put + self.get + self.delete)
        if replicas > 1:
            cost += replicas * replicas * self.put + 2 * replicas * (replicas - 1) * self.get
        return cost

    def polls(self, time_s: float) -> float:
        """The client polls for reports all iteration long."""
        return time_s / REPORT_POLL_S * self.get


def prices_of(platform: Any) -> Prices:
    p = platform.prices
    return Prices(float(p.gb_second), float(p.put), float(p.get), float(p.delete))


class Options:
    """Every (end group, memory, replicas) choice for a stage starting at a group, as arrays.

    One instance per micro-batch count M; ``at(i)`` is built once and reused by every node.
    """

    def __init__(self, space: SearchSpace, micro_batches: int, link: Link, prices: Prices) -> None:
        self.space = space
        self.prices = prices
        # More memory at no faster compute only costs more, unless functions share a host's
        # cores (the local emulator), where a larger CPU share changes how they are divided.
        self.dominance = getattr(space.platform, "host_cores", None) is None
        self.m = micro_batches
        self.link = link
        prof = space.profile
        mu = space.micro_batch(micro_batches)
        self.mu = mu
        b = space.bounds
        k_groups = space.num_groups
        self.cpus = [float(space.platform.cpus(m)) for m in space.memory_choices]
        # prefix sums over groups of forward/backward time per memory choice
        nl = prof.num_layers
        fwd = np.array([[prof.forward_s(i, mu, c) for i in range(nl)] for c in self.cpus])
        bwd = np.array([[prof.backward_s(i, mu, c) for i in range(nl)] for c in self.cpus])
        layer_f = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(fwd, axis=1)], axis=1)
        layer_b = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(bwd, axis=1)], axis=1)
        self.F = layer_f[:, list(b)]  # (J, K+1)
        self.B = layer_b[:, list(b)]
        step = getattr(prof, "step_s", None)
        st = np.array([[step(i, c) if step else 0.0 for i in range(nl)] for c in self.cpus])
        layer_st = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(st, axis=1)], axis=1)
        self.ST = layer_st[:, list(b)]  # optimizer step time, prefix
        params = np.cumsum([0.0] + [prof.param_bytes(i) for i in range(nl)])
        self.P = params[list(b)]
        # bytes crossing the boundary after group g-1 (index g), per micro-batch
        self.act = [0.0] + [float(prof.activation_bytes(b[g] - 1, mu)) for g in range(1, k_groups)]
        self.act.append(0.0)
        self.input_dn = link.down(float(prof.input_bytes(mu)))
        self.target_dn = link.down(float(prof.target_bytes(mu)))
        # per group and memory choice: forward + backward of one micro-batch
        group_fb = np.diff(self.F + self.B, axis=1)  # (J, K)
        mems = np.asarray(space.memory_choices, dtype=float)[:, None]
        fits = np.array(
            [[m >= space.need_mb(g, g + 1, micro_batches, micro_batches) for g in range(k_groups)]
             for m in space.memory_choices]
        )  # fmt: skip
        fastest = np.where(fits, group_fb, np.inf).min(axis=0)
        # GB-seconds one micro-batch of a group costs at least, on whichever size it runs
        cheapest = np.where(fits, group_fb * mems / 1024, np.inf).min(axis=0)
        suffix = np.concatenate([np.cumsum(fastest[::-1])[::-1], [0.0]])
        self.rest_fb = suffix  # (K+1,) compute of one micro-batch over groups >= g, fastest
        work = np.concatenate([np.cumsum(cheapest[::-1])[::-1], [0.0]])
        self.rest_gbs = micro_batches * work  # (K+1,) GB-s all micro-batches need, groups >= g
        # Whatever stage holds group g runs it for ceil(M/d) micro-batches and then syncs its
        # gradient among its d replicas: at least min over (d, size) of that, for g alone.
        best = np.full(k_groups, np.inf)
        for d in space.replica_counts(micro_batches):
            n = math.ceil(micro_batches / d)
            for g in range(k_groups):
                sync = link.sync(self.P[g + 1] - self.P[g], d)
                ok = np.array([m >= space.need_mb(g, g + 1, micro_batches, d)
                               for m in space.memory_choices])  # fmt: skip
                if ok.any():
                    best[g] = min(best[g], float((n * group_fb[ok, g]).min()) + sync)
        fwd_fast = np.where(fits, np.diff(self.F, axis=1), np.inf).min(axis=0)
        fwd_prefix = np.concatenate([[0.0], np.cumsum(fwd_fast)])
        # rest_load[k]: from the moment micro-batch 0 reaches group k, the time until the stage
        # holding some later group g finishes (forwards to g at best speed, then g's own load)
        self.rest_load = np.zeros(k_groups + 1)
        for k in range(k_groups):
            self.rest_load[k] = max(
                fwd_prefix[g] - fwd_prefix[k] + best[g] for g in range(k, k_groups)
            )
        self._at: dict[int, dict[str, np.ndarray]] = {}
        self.rest_mem_gb = self._rest_memory()

    def _rest_memory(self) -> list[float]:
        """GB at least one more function needs to hold the groups from g on (for each g)."""
        sp = self.space
        k_groups = sp.num_groups
        out = [0.0] * (k_groups + 1)
        for g in range(k_groups - 1, -1, -1):
            need = sp.need_mb(g, g + 1, self.m, self.m)  # one group, fewest micro-batches held
            fit = [m for m in sp.memory_choices if m >= need]
            own = fit[0] / 1024 if fit else math.inf
            out[g] = max(own, out[g + 1])
        return out

    def boundary(self, g: int) -> float:
        """Upload + download time of one micro-batch's tensor across boundary g (0 at ends)."""
        if g <= 0 or g >= self.space.num_groups:
            return 0.0
        # the key is visible once its bytes are up; the upload's own latency comes after that,
        # so the path pays one request latency, not two
        a = self.act[g]
        return a / self.link.up_bps + self.link.latency_s + a / self.link.down_bps

    def at(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._at:
            self._at[i] = self._build(i)
        return self._at[i]

    def _build(self, i: int) -> dict[str, np.ndarray]:
        sp, link, m = self.space, self.link, self.m
        k_groups = sp.num_groups
        rows: list[tuple] = []
        for k in range(i + 1, k_groups + 1):
            last = k == k_groups
            grad_bytes = self.P[k] - self.P[i]
            a_in, a_out = self.act[i], self.act[k]
            up_mb = (link.up(a_in) if i > 0 else 0.0) + (link.up(a_out) if not last else 0.0)
            dn_mb = (link.down(a_in) if i > 0 else self.input_dn) + (
                link.down(a_out) if not last else self.target_dn
            )
            for d in sp.replica_counts(m):
                need = sp.need_mb(i, k, m, d)
                n = math.ceil(m / d)
                sync = link.sync(grad_bytes, d)
                sync_up = grad_bytes / link.up_bps if d > 1 else 0.0
                sync_dn = 2 * (d - 1) / d * grad_bytes / link.down_bps if d > 1 else 0.0
                kept: list[tuple[float, float, float]] = []
                for j, mem in enumerate(sp.memory_choices):
                    if mem < need:
                        continue
                    f = self.F[j, k] - self.F[j, i]
                    b = self.B[j, k] - self.B[j, i]
                    step = self.ST[j, k] - self.ST[j, i]
                    if self.dominance and any(
                        kf <= f and kb <= b and ks <= step for kf, kb, ks in kept
                    ):
                        continue  # a cheaper size computes at least as fast
                    kept.append((f, b, step))
                    rows.append((k, j, d, mem, f, b, n * (f + b), sync + step,
                                 n * up_mb + sync_up, n * dn_mb + sync_dn,
                                 self.boundary(k), d * mem / 1024,
                                 self.prices.stage(m, d, last)))  # fmt: skip
        names = ("k", "j", "d", "mem", "f", "b", "load", "sync", "up", "down", "cross", "gb",
                 "req")  # fmt: skip
        if not rows:
            return {n: np.zeros(0) for n in names}
        cols = list(zip(*rows, strict=True))
        out = {n: np.asarray(c, dtype=float) for n, c in zip(names, cols, strict=True)}
        out["k"] = out["k"].astype(int)
        out["rest_fb"] = self.rest_fb[out["k"]]
        out["rest_gb"] = np.asarray([self.rest_mem_gb[k] for k in out["k"]])
        out["rest_gbs"] = self.rest_gbs[out["k"]]
        out["rest_load"] = self.rest_load[out["k"]]
        out["last"] = out["k"] == k_groups
        return out


def plan_bound(
    space: SearchSpace,
    micro_batches: int,
    stages: list[tuple[int, int, int, int]],
    link: Link,
    prices: Prices,
    weights: Weights,
) -> tuple[float, float, float]:
    """(time, cost, objective) lower bounds of one full plan given as (i, k, memory, replicas)."""
    opts = Options(space, micro_batches, link, prices)
    fill = opts.input_dn
    drain = 0.0
    sync0 = 0.0
    t = 0.0
    gb = 0.0
    m = micro_batches
    for s, (i, k, mem, d) in enumerate(stages):
        j = space.memory_choices.index(mem)
        last = k == space.num_groups
        f = opts.F[j, k] - opts.F[j, i]
        b = opts.B[j, k] - opts.B[j, i]
        n = math.ceil(m / d)
        g = opts.P[k] - opts.P[i]
        sync = link.sync(g, d) + opts.ST[j, k] - opts.ST[j, i]
        if s == 0:
            sync0 = sync
        a_in, a_out = opts.act[i], opts.act[k]
        up = n * ((link.up(a_in) if i > 0 else 0) + (link.up(a_out) if not last else 0))
        dn = n * ((link.down(a_in) if i > 0 else opts.input_dn)
                  + (link.down(a_out) if not last else opts.target_dn))  # fmt: skip
        if d > 1:
            up += g / link.up_bps
            dn += 2 * (d - 1) / d * g / link.down_bps
        ts = fill + n * (f + b) + max(sync, drain + sync0)
        t = max(t, ts, fill + f + up, dn)
        cross = opts.boundary(k)
        fill += f + cross
        drain += b + cross
        gb += d * mem / 1024
    reqs = prices.client(m) + sum(
        prices.stage(m, d, k == space.num_groups) for _, k, _, d in stages
    )
    cost = prices.gb_second * t * gb + reqs + prices.polls(t)
    return t, cost, weights.of(cost, t)
