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

The GPipe cycle through the last micro-batch M-1 bounds it too. Every replica takes its
micro-batches in ascending order forwards and descending backwards, so M-1 is the last forward and
the first backward of its replica at every stage. From the moment stage 0 starts a step: M-1 goes
forward through every stage and back, and on the way some serial resource (a compute lane, an
upload or a download lane) first serves the n - 1 other micro-batches of its replica; then stage 0
synchronises, steps and writes its report before it can start the next step:

    T >= path of one micro-batch forward and back (compute, encode, bytes, latency, decode)
         + max over forward resources (n - 1) x busy time per micro-batch
         + max over backward resources (n - 1) x busy time per micro-batch
         + sync_0 + one request latency (the report)

For a partial plan the stages still to come add at least their fastest forward and backward.
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

from funcpipe.planning.space import SearchSpace, Weights, runtime_base_mb
from funcpipe.runtime.collectives import default_subchunks


@dataclass(frozen=True)
class Link:
    """A function's link as the simulator sees it; a request may get up to a burst of its
    bytes across at once (an idle link's token bucket), so every byte term leaves that out."""

    up_bps: float
    down_bps: float
    latency_s: float
    up_burst: float = 0.0
    down_burst: float = 0.0

    def up_bytes(self, nbytes: float, requests: int = 1) -> float:
        return max(0.0, nbytes - requests * self.up_burst) / self.up_bps

    def down_bytes(self, nbytes: float, requests: int = 1) -> float:
        return max(0.0, nbytes - requests * self.down_burst) / self.down_bps

    def up(self, nbytes: float) -> float:
        return self.latency_s + self.up_bytes(nbytes)

    def down(self, nbytes: float) -> float:
        return self.latency_s + self.down_bytes(nbytes)

    def sync_lanes(self, grad_bytes: float, replicas: int) -> tuple[float, float]:
        """Least upload and download time of one replica's all-reduce of ``grad_bytes``: it
        sends its n - 1 pieces and its reduced chunk, and fetches n - 1 pieces and n - 1
        reduced chunks (each chunk in ``k`` sub-chunks, one request each)."""
        if replicas <= 1 or grad_bytes <= 0:
            return 0.0, 0.0
        numel = int(grad_bytes // 4) + 1
        k = max(1, min(default_subchunks(numel, replicas, 4), numel // replicas))
        up = self.up_bytes(grad_bytes, replicas * k)
        down = self.down_bytes(2 * (replicas - 1) / replicas * grad_bytes, 2 * (replicas - 1) * k)
        return up, down

    def sync(self, grad_bytes: float, replicas: int) -> float:
        """Least time an all-reduce of ``grad_bytes`` among ``replicas`` functions takes."""
        return max(self.sync_lanes(grad_bytes, replicas))


def link_of(platform: Any) -> Link:
    link = platform.link
    return Link(
        float(link.up_bytes_s), float(link.down_bytes_s), float(link.latency_s),
        float(getattr(link, "up_burst_bytes", 0.0)), float(getattr(link, "down_burst_bytes", 0.0)),
    )  # fmt: skip


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

    def stage(self, micro_batches: int, replicas: int, last: bool, subchunks: int = 1) -> float:
        """A stage's own requests: one report per function (put; the client gets + deletes it),
        the activations and gradients across the boundary after it (put, get, delete each), and
        the all-reduce's when replicas > 1 (``subchunks`` pieces per chunk, as the runtime's
        `all_reduce` splits them; 0 when the stage has no gradient)."""
        d, k = replicas, subchunks
        cost = d * (self.put + self.get + self.delete)
        if not last:
            cost += 2 * micro_batches * (self.put + self.get + self.delete)
        if d > 1 and k > 0:
            # reduce-scatter pieces, reduced chunks, done flags; gets of pieces, merged chunks and
            # flags; deletes of pieces, flags and (replica 0) the merged chunks
            cost += (d * d * k + d - 1) * self.put
            cost += (2 * d * (d - 1) * k + d - 1) * self.get
            cost += (d * (d - 1) * k + d - 1 + d * k) * self.delete
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
        # Under a CPU quota per period (the local emulator's CFS bandwidth control) a share below
        # one core still runs its thread at full speed while the period's quota lasts, so a
        # single action can take as little as its one-thread time.
        quota = getattr(space.platform, "cpu_quota_period_s", None)
        speed = [1.0 if quota and c < 1 - 1e-9 else c for c in self.cpus]
        # prefix sums over groups of forward/backward time per memory choice
        nl = prof.num_layers
        cap = getattr(space.platform, "max_threads", None)
        fwd = np.array([[prof.forward_s(i, mu, c, cap) for i in range(nl)] for c in speed])
        bwd = np.array([[prof.backward_s(i, mu, c, cap) for i in range(nl)] for c in speed])
        layer_f = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(fwd, axis=1)], axis=1)
        layer_b = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(bwd, axis=1)], axis=1)
        self.F = layer_f[:, list(b)]  # (J, K+1)
        self.B = layer_b[:, list(b)]
        step = getattr(prof, "step_s", None)
        st = np.array([[step(i, c, cap) if step else 0.0 for i in range(nl)] for c in speed])
        layer_st = np.concatenate([np.zeros((len(self.cpus), 1)), np.cumsum(st, axis=1)], axis=1)
        self.ST = layer_st[:, list(b)]  # optimizer step time, prefix
        params = np.cumsum([0.0] + [prof.param_bytes(i) for i in range(nl)])
        self.P = params[list(b)]
        grads = np.cumsum([0.0] + [_grad(prof, i) for i in range(nl)])
        self.G = grads[list(b)]
        # bytes crossing the boundary after group g-1 (index g), per micro-batch
        self.act = [0.0] + [float(prof.activation_bytes(b[g] - 1, mu)) for g in range(1, k_groups)]
        self.act.append(0.0)
        # CPU seconds a transfer costs its two ends (encode before the upload, decode after the
        # download; the simulator spends half at each end)
        self.xfer = getattr(prof, "transfer_cpu_s", None) or (lambda nbytes: 0.0)
        self.input_dn = self.dn_busy(float(prof.input_bytes(mu)))
        self.target_dn = self.dn_busy(float(prof.target_bytes(mu)))
        # GB every function still to come needs at least: the state of the layers it holds
        state = [
            (prof.param_bytes(i) + _grad(prof, i) + prof.optimizer_bytes(i)) / 2**30
            for i in range(nl)
        ]  # fmt: skip
        state_suffix = np.concatenate([np.cumsum(state[::-1])[::-1], [0.0]])
        base_gb = runtime_base_mb(prof, space.platform) / 1024
        self.rest_state_gb = [
            float(state_suffix[b[g]]) + base_gb if g < k_groups else 0.0
            for g in range(k_groups + 1)
        ]  # fmt: skip
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
            out[g] = max(own, out[g + 1], self.rest_state_gb[g])
        return out

    def up_busy(self, nbytes: float) -> float:
        """How long one upload holds its function's upload lane: encode, bytes, latency."""
        return self.xfer(nbytes) / 2 + self.link.up(nbytes)

    def dn_busy(self, nbytes: float) -> float:
        """How long one download holds its download lane: latency, bytes, decode."""
        return self.link.down(nbytes) + self.xfer(nbytes) / 2

    def boundary(self, g: int) -> float:
        """Upload + download time of one micro-batch's tensor across boundary g (0 at ends)."""
        if g <= 0 or g >= self.space.num_groups:
            return 0.0
        # the key is visible once its bytes are up; the upload's own latency comes after that,
        # so the path pays one request latency, not two
        a = self.act[g]
        return self.xfer(a) + self.link.up_bytes(a) + self.link.latency_s + self.link.down_bytes(a)

    def row(self, i: int, k: int, j: int, d: int) -> tuple[float, ...]:
        """The bound's terms for one stage: groups [i, k) on memory choice j with d replicas."""
        sp, link, m = self.space, self.link, self.m
        last = k == sp.num_groups
        grad_bytes = self.P[k] - self.P[i]
        a_in, a_out = self.act[i], self.act[k]
        up_in = self.up_busy(a_in) if i > 0 else 0.0
        up_out = self.up_busy(a_out) if not last else 0.0
        dn_in = self.dn_busy(a_in) if i > 0 else self.input_dn
        dn_out = self.dn_busy(a_out) if not last else self.target_dn
        n = math.ceil(m / d)
        sync = link.sync(grad_bytes, d)
        sync_up, sync_dn = link.sync_lanes(grad_bytes, d)
        f = self.F[j, k] - self.F[j, i]
        b = self.B[j, k] - self.B[j, i]
        step = self.ST[j, k] - self.ST[j, i]
        mem = sp.memory_choices[j]
        # per micro-batch, the busiest serial resource of the forward and the backward pass
        fx = max(f, up_out, dn_in)
        bx = max(b, up_in, dn_out if not last else 0.0)
        return (k, j, d, mem, f, b, n * (f + b), sync + step, n * (up_in + up_out) + sync_up,
                n * (dn_in + dn_out) + sync_dn, self.boundary(k), d * mem / 1024,
                self.prices.stage(m, d, last, self.subchunks(i, k, d)), (n - 1) * fx,
                (n - 1) * bx)  # fmt: skip

    def subchunks(self, i: int, k: int, d: int) -> int:
        """Pieces per chunk the all-reduce of groups [i, k) among d replicas uses (0: none)."""
        numel = int((self.G[k] - self.G[i]) // 4)
        if d <= 1 or numel <= 0:
            return 0
        numel += 1  # the runtime's flag element
        if numel < d:
            return 1
        return max(1, min(default_subchunks(numel, d, 4), numel // d))

    def at(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._at:
            self._at[i] = self._build(i)
        return self._at[i]

    def _build(self, i: int) -> dict[str, np.ndarray]:
        sp, m = self.space, self.m
        k_groups = sp.num_groups
        rows: list[tuple] = []
        for k in range(i + 1, k_groups + 1):
            for d in sp.replica_counts(m):
                need = sp.need_mb(i, k, m, d)
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
                    rows.append(self.row(i, k, j, d))
        if not rows:
            return {n: np.zeros(0) for n in ROW}
        cols = list(zip(*rows, strict=True))
        out = {n: np.asarray(c, dtype=float) for n, c in zip(ROW, cols, strict=True)}
        return self._with_rest(out)

    def _with_rest(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        k_groups = self.space.num_groups
        out["k"] = out["k"].astype(int)
        out["rest_fb"] = self.rest_fb[out["k"]]
        out["rest_gb"] = np.asarray([self.rest_mem_gb[k] for k in out["k"]])
        out["rest_gbs"] = self.rest_gbs[out["k"]]
        out["rest_load"] = self.rest_load[out["k"]]
        out["last"] = out["k"] == k_groups
        return out

    def one(self, i: int, k: int, j: int, d: int) -> dict[str, np.ndarray]:
        """`at`'s arrays for exactly one stage choice (even one `at` leaves out as dominated)."""
        out = {n: np.asarray([v], dtype=float) for n, v in zip(ROW, self.row(i, k, j, d),
                                                                 strict=True)}  # fmt: skip
        return self._with_rest(out)


ROW = ("k", "j", "d", "mem", "f", "b", "load", "sync", "up", "down", "cross", "gb", "req", "fx",
       "bx")  # fmt: skip


@dataclass(frozen=True)
class Partial:
    """The bound's state after the first stages of a plan (see the module docstring).

    fill: when micro-batch 0 can start at the next stage at the earliest; drain: the way of a
    gradient from there back to stage 0; sync0: stage 0's sync + step; t: the time bound so
    far; gb: memory of the chosen functions; maxf/maxb: the largest (n - 1) x busy time of a
    forward / backward resource so far.
    """

    fill: float
    drain: float = 0.0
    sync0: float = 0.0
    t: float = 0.0
    gb: float = 0.0
    funcs: float = 0.0
    reqs: float = 0.0
    maxf: float = 0.0
    maxb: float = 0.0


def extend(
    node: Partial, a: dict[str, np.ndarray], first: bool, prices: Prices, latency_s: float
) -> dict[str, np.ndarray]:
    """Bounds of ``node`` extended by each stage choice in ``a`` (arrays, one entry per choice).

    Returns the new state's fields (fill, drain, sync0, t, gb, funcs, reqs, maxf, maxb) and the
    time, cost and completion bounds ``t_lb`` and ``cost_lb``.
    """
    sync0 = a["sync"] if first else np.full(a["sync"].shape, node.sync0)
    ts = node.fill + a["load"] + np.maximum(a["sync"], node.drain + sync0)
    ts = np.maximum(ts, np.maximum(node.fill + a["f"] + a["up"], a["down"]))
    t_part = np.maximum(node.t, ts)
    fill = node.fill + a["f"] + a["cross"]
    drain = node.drain + a["b"] + a["cross"]
    maxf = np.maximum(node.maxf, a["fx"])
    maxb = np.maximum(node.maxb, a["bx"])
    rest = np.where(a["last"], 0.0, a["rest_fb"])
    cycle = fill + rest + drain + maxf + maxb + sync0 + latency_s
    rest_t = np.where(a["last"], 0.0, fill + a["rest_load"])
    t_lb = np.maximum(np.maximum(t_part, rest_t), cycle)
    gb = node.gb + a["gb"]
    funcs = node.funcs + a["d"]
    reqs = node.reqs + a["req"]
    # the functions still to come live the whole iteration: at least their memory times the
    # time bound, and at least the GB-seconds their compute needs
    rest_gb = np.maximum(t_lb * a["rest_gb"], a["rest_gbs"])
    cost_lb = prices.gb_second * (t_lb * gb + rest_gb) + reqs + prices.polls(t_lb)
    return {"fill": fill, "drain": drain, "sync0": sync0, "t": t_part, "gb": gb, "funcs": funcs,
            "reqs": reqs, "maxf": maxf, "maxb": maxb, "t_lb": t_lb, "cost_lb": cost_lb}  # fmt: skip


def plan_bound(
    space: SearchSpace,
    micro_batches: int,
    stages: list[tuple[int, int, int, int]],
    link: Link,
    prices: Prices,
    weights: Weights,
    opts: Options | None = None,
) -> tuple[float, float, float]:
    """(time, cost, objective) lower bounds of one full plan given as (i, k, memory, replicas)."""
    opts = opts or Options(space, micro_batches, link, prices)
    node = Partial(fill=opts.input_dn, reqs=prices.client(micro_batches))
    t = cost = 0.0
    for s, (i, k, mem, d) in enumerate(stages):
        a = opts.one(i, k, space.memory_choices.index(mem), d)
        new = extend(node, a, s == 0, prices, link.latency_s)
        node = Partial(**{f: float(new[f][0]) for f in Partial.__dataclass_fields__})
        t, cost = float(new["t_lb"][0]), float(new["cost_lb"][0])
    return t, cost, weights.of(cost, t)


def _grad(prof: Any, layer: int) -> float:
    grad = getattr(prof, "grad_bytes", None)
    return grad(layer) if grad is not None else prof.param_bytes(layer)
