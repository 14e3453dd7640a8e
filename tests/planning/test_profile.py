"""The profiler measures every layer; a Profile round-trips through JSON and interpolates."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from torch import nn

import funcpipe
from funcpipe.errors import ConfigError
from funcpipe.planning.profile import Profile
from funcpipe.planning.profiler import profile


def test_profile_measures_every_layer(cnn_profile: Profile) -> None:
    p = cnn_profile
    assert p.num_layers == 12 and p.layer_names[0] == "0:Conv2d"
    assert p.micro_batch_sizes == [2, 4]
    for i in range(p.num_layers):
        assert p.forward_s(i, 4, 1.0) > 0 and p.backward_s(i, 4, 1.0) > 0
    # exact byte counts: conv0 outputs 32x32x32 floats per sample, 3x3x3x32+32 params
    assert p.activation_bytes(0, 4) == 4 * 32 * 32 * 32 * 4
    assert p.activation_bytes(0, 8) == 8 * 32 * 32 * 32 * 4  # linear beyond the measured sizes
    assert p.param_bytes(0) == (3 * 3 * 3 * 32 + 32) * 4 == p.grad_bytes(0)
    assert p.optimizer_bytes(0) == 2 * p.param_bytes(0)  # Adam: two moments
    assert p.param_bytes(1) == 0 and p.optimizer_bytes(1) == 0
    assert p.input_bytes(4) > 4 * 3 * 32 * 32 * 4  # encoded: tensor bytes plus a header
    assert p.input_bytes(4) < 4 * 3 * 32 * 32 * 4 + 1000
    assert p.target_bytes(4) > 0
    # a ReLU saves its output; a conv its input
    assert p.saved_bytes(1, 4) == p.activation_bytes(1, 4)
    assert p.working_bytes(2, 4) >= p.saved_bytes(2, 4) > 0
    # a transfer's CPU cost grows with its size; a poll costs a little CPU
    assert 0 < p.transfer_cpu_s(1000) < p.transfer_cpu_s(10_000_000)
    assert 0 < p.poll_s < 0.01


def test_cpu_share_scaling(cnn_profile: Profile) -> None:
    p = cnn_profile
    one = p.forward_s(0, 4, 1.0)
    assert p.forward_s(0, 4, 0.5) == pytest.approx(2 * one)  # half a core: twice as long
    assert p.forward_s(0, 4, 1.9) == pytest.approx(one)  # one thread cannot use 1.9 cores
    assert p.forward_s(0, 4, 2.0) == pytest.approx(p.layers[0].forward_s[4][max(p.threads)])
    assert p.step_s(0, 1.0) > 0 and p.step_s(1, 1.0) == 0


def test_scaled_profile_is_slower_compute_with_the_same_bytes(cnn_profile: Profile) -> None:
    from funcpipe.planning.platforms import local_platform

    p, slow = cnn_profile, cnn_profile.scaled(1.5)
    assert slow.forward_s(2, 3, 0.7) == pytest.approx(1.5 * p.forward_s(2, 3, 0.7))
    assert slow.backward_s(5, 4, 2.0) == pytest.approx(1.5 * p.backward_s(5, 4, 2.0))
    assert slow.step_s(0, 1.0) == pytest.approx(1.5 * p.step_s(0, 1.0))
    assert slow.transfer_cpu_s(1e6) == pytest.approx(1.5 * p.transfer_cpu_s(1e6))
    assert slow.poll_s == pytest.approx(1.5 * p.poll_s)
    assert slow.lane_overhead_s == pytest.approx(1.5 * p.lane_overhead_s)
    assert slow.activation_bytes(3, 4) == p.activation_bytes(3, 4)
    assert slow.working_bytes(2, 4) == p.working_bytes(2, 4)
    assert slow.scaled(2.0).meta["compute_scale"] == pytest.approx(3.0)
    assert p.forward_s(2, 3, 0.7) == cnn_profile.forward_s(2, 3, 0.7)  # the original is unchanged
    # a compute-bound plan takes longer on slower cores; its memory does not change
    plan = funcpipe.Plan.even(12, stages=1, micro_batches=2)
    fast_pred = funcpipe.predict(plan, p, local_platform(), batch_size=8)
    slow_pred = funcpipe.predict(plan, slow, local_platform(), batch_size=8)
    assert slow_pred.time_s > fast_pred.time_s
    assert slow_pred.memory_mb == fast_pred.memory_mb
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ConfigError, match="positive number"):
            p.scaled(bad)  # type: ignore[arg-type]


def test_json_round_trip(cnn_profile: Profile, tmp_path) -> None:
    path = tmp_path / "cnn.json"
    cnn_profile.save(path)
    back = Profile.load(path)
    assert back == cnn_profile
    assert back.forward_s(3, 3, 0.7) == cnn_profile.forward_s(3, 3, 0.7)
    # a profile saved before lanes' overhead was measured loads with none
    raw = json.loads(path.read_text())
    del raw["lane_overhead_s"]
    path.write_text(json.dumps(raw))
    assert Profile.load(path).lane_overhead_s == 0.0
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ConfigError, match="funcpipe.profile"):
        Profile.load(tmp_path / "bad.json")


def test_interpolation_between_measured_sizes() -> None:
    from funcpipe.planning.profile import _interp

    table = {2: 1.0, 4: 2.0, 8: 3.0}
    assert _interp(table, 3) == pytest.approx(1.5)
    assert _interp(table, 6) == pytest.approx(2.5)
    assert _interp(table, 16) == pytest.approx(5.0)  # along the last segment
    assert _interp({4: 2.0}, 2) == pytest.approx(1.0)  # one point: proportional


def test_tuple_outputs_and_token_inputs() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x * 2

    class Join(nn.Module):
        def forward(self, xs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return xs[0] + xs[1]

    model = nn.Sequential(nn.Embedding(50, 8), Pair(), Join(), nn.Linear(8, 3))
    tokens = torch.randint(0, 50, (4, 5))
    p = profile(model, tokens, repeats=1, runtime_base_mb=1.0, micro_batch_sizes=[2])
    assert p.activation_bytes(1, 2) == 2 * (2 * 5 * 8 * 4)
    assert p.target_bytes(2) == 0


def test_in_place_layers_are_measured_like_their_out_of_place_twins() -> None:
    """nn.ReLU(inplace=True) after a cut writes into a stage's input; the runtime feeds such a
    stage a copy, and the profiler measures the layer the same way."""

    def model(inplace: bool) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 8),
            nn.LeakyReLU(0.1, inplace=inplace), nn.Linear(8, 3),
        )  # fmt: skip

    sample = torch.randn(4, 6)
    kwargs = dict(repeats=1, runtime_base_mb=1.0, micro_batch_sizes=[2, 4], threads=[1])
    in_place = profile(model(True), sample, **kwargs)
    out_of_place = profile(model(False), sample, **kwargs)
    for i in range(5):
        for mb in (2, 4):
            assert in_place.activation_bytes(i, mb) == out_of_place.activation_bytes(i, mb)
            assert in_place.saved_bytes(i, mb) == out_of_place.saved_bytes(i, mb)
            assert in_place.temp_bytes(i, mb) == out_of_place.temp_bytes(i, mb)
    assert in_place.saved_bytes(1, 4) == 4 * 8 * 4  # the ReLU keeps its output


def test_layers_are_timed_in_rounds_for_at_least_min_seconds(monkeypatch) -> None:
    """Every round goes through the whole model (a slow spell hits one round of every layer,
    not every repeat of a few layers), and rounds go on until ``min_seconds`` have passed."""
    import funcpipe.planning.profiler.measure as prof_mod

    calls: list[int] = []

    class Tag(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            self.i, self.lin = i, nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.i)
            return self.lin(x)

    model = nn.Sequential(Tag(0), Tag(1), Tag(2))
    seen: list[int] = []
    real_median = prof_mod.statistics.median
    monkeypatch.setattr(
        prof_mod.statistics, "median", lambda xs: seen.append(len(xs)) or real_median(xs)
    )
    profile(model, torch.randn(2, 4), micro_batch_sizes=[2], threads=[1], repeats=3, warmup=1,
            runtime_base_mb=1.0)  # fmt: skip
    assert calls[:3] == [0, 1, 2]  # the memory pass
    held = prof_mod.IN_FLIGHT
    timed = calls[3 : 3 + 3 * held * 4]  # 3 layers, IN_FLIGHT micro-batches, 4 rounds
    assert timed == [0, 1, 2] * held * 4  # whole passes, layer after layer
    assert seen[:6] == [3] * 6  # one time per kept round (its micro-batches' mean), 3 rounds

    seen.clear()
    started = time.perf_counter()
    profile(model, torch.randn(2, 4), micro_batch_sizes=[2], threads=[1], repeats=3,
            min_seconds=0.3, runtime_base_mb=1.0)  # fmt: skip
    assert time.perf_counter() - started >= 0.3
    assert seen[0] > 3  # more rounds than repeats asked for

    # several micro-batch sizes: every round goes through all of them (a slow spell of the
    # host lands on one round of each size, not on one size)
    sizes: list[int] = []
    model = nn.Sequential(Tag(0), Tag(1))
    model[0].register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    calls.clear()
    profile(model, torch.randn(2, 4), micro_batch_sizes=[1, 2], threads=[1], repeats=2,
            warmup=0, runtime_base_mb=1.0)  # fmt: skip
    timed = sizes[2 : 2 + 2 * 2 * held]  # after the memory pass (one of each size)
    assert timed == ([1] * held + [2] * held) * 2  # round 1: size 1 then 2; round 2: again


class _Spin(torch.autograd.Function):
    """Identity that burns a set amount of CPU time in its forward and its backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fwd_s: float, bwd_s: float) -> torch.Tensor:
        ctx.bwd_s = bwd_s
        _burn(fwd_s)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        _burn(ctx.bwd_s)
        return grad.clone(), None, None


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class _Costly(nn.Module):
    def __init__(self, fwd_s: float, bwd_s: float) -> None:
        super().__init__()
        self.fwd_s, self.bwd_s = fwd_s, bwd_s
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Spin.apply(self.lin(x), self.fwd_s, self.bwd_s)


def test_each_layer_gets_its_own_time_within_a_whole_pass() -> None:
    """Layers are timed inside whole passes; hooks split the backward at layer boundaries, so each
    layer is charged what it spent, not its neighbour's share (an off-by-one swaps these)."""
    costs = [(0.004, 0.012), (0.010, 0.002), (0.001, 0.020)]
    model = nn.Sequential(*(_Costly(f, b) for f, b in costs))
    p = profile(model, torch.randn(2, 4), micro_batch_sizes=[2], threads=[1], repeats=2,
                warmup=1, runtime_base_mb=1.0)  # fmt: skip
    for i, (f, b) in enumerate(costs):
        assert p.forward_s(i, 2, 1.0) == pytest.approx(f, abs=0.0015), i
        assert p.backward_s(i, 2, 1.0) == pytest.approx(b, abs=0.0015), i


class _FirstOfStep(nn.Module):
    """Burns ``cost_s`` in the forward of the first micro-batch after each step only."""

    def __init__(self, cost_s: float) -> None:
        super().__init__()
        self.cost_s, self.lin, self.fresh = cost_s, nn.Linear(4, 4), True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fresh:
            _burn(self.cost_s)
            self.fresh = False
        out = self.lin(x)
        if out.requires_grad:  # a backward through here ends the forwards of a step
            out.register_hook(lambda g: setattr(self, "fresh", True))
        return out


def test_a_step_pays_for_its_slow_first_micro_batch() -> None:
    """A cost that only the first micro-batch of each step pays is spread over the step's
    micro-batches, not dropped as an outlier: a median over every micro-batch would say 0."""
    from funcpipe.planning.profiler import IN_FLIGHT

    model = nn.Sequential(_FirstOfStep(0.008), nn.Linear(4, 4))
    p = profile(model, torch.randn(2, 4), micro_batch_sizes=[2], threads=[1], repeats=3,
                warmup=1, runtime_base_mb=1.0)  # fmt: skip
    assert p.forward_s(0, 2, 1.0) == pytest.approx(0.008 / IN_FLIGHT, abs=0.0008)


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="nn.Sequential"):
        profile(nn.Linear(2, 2), torch.randn(2, 2), runtime_base_mb=1.0)
    with pytest.raises(ConfigError, match="micro_batch_sizes"):
        profile(nn.Sequential(nn.Linear(2, 2)), torch.randn(2, 2), micro_batch_sizes=[0],
                runtime_base_mb=1.0)  # fmt: skip
    with pytest.raises(ConfigError, match="min_seconds"):
        profile(nn.Sequential(nn.Linear(2, 2)), torch.randn(2, 2), min_seconds=-1,
                runtime_base_mb=1.0)  # fmt: skip


def test_exported() -> None:
    assert funcpipe.profile is profile and funcpipe.Profile is Profile


def test_lane_overhead_is_the_extra_pass_time_per_transfer_beside_it(monkeypatch) -> None:
    """A pass that takes 1 ms longer for every transfer a lane thread makes during it is
    measured at 1 ms per transfer; on a single core nothing is measured (the lane would run on
    the pass's core, and its CPU is counted as the transfers' cost already)."""
    import funcpipe.planning.profiler.lanes as prof_mod
    from funcpipe.storage.local_dir import LocalDirStorage

    # The fake pass sleeps instead of computing, so the lane needs no core of its own here:
    # the host is shown as two cores, whatever it has.
    monkeypatch.setattr(prof_mod.os, "sched_getaffinity", lambda _pid: {0, 1})
    puts = [0]
    real_put = LocalDirStorage.put

    def counting_put(self, key, data):  # type: ignore[no-untyped-def]
        puts[0] += 1
        return real_put(self, key, data)

    def fake_round(model, config, loss_fn, f_times, b_times, *, keep):  # type: ignore[no-untyped-def]
        before = puts[0]
        time.sleep(0.01)
        end = time.perf_counter() + 0.001 * (puts[0] - before)  # made during the pass so far
        while time.perf_counter() < end:
            time.sleep(0.0002)

    monkeypatch.setattr(LocalDirStorage, "put", counting_put)
    monkeypatch.setattr(prof_mod, "time_round", fake_round)
    model = nn.Sequential(nn.Linear(4, 4))
    config = (torch.randn(2, 4), None, 1, 1)
    threads = torch.get_num_threads()
    extra = prof_mod.lane_overhead(model, config, None, window_s=0.3, pairs=3)
    assert 0.0005 < extra < 0.0016
    assert torch.get_num_threads() == threads
    assert not [t for t in threading.enumerate() if t.name == "profile-lane"]
    monkeypatch.setattr(prof_mod.os, "sched_getaffinity", lambda _pid: {0})
    assert prof_mod.lane_overhead(model, config, None, window_s=0.3) == 0.0
