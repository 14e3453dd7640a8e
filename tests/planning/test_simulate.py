"""The simulator on cases that can be worked out by hand, and its outputs' shapes."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

import funcpipe
from funcpipe import Plan, Stage
from funcpipe.errors import ConfigError
from funcpipe.planning.platforms import AWS_LAMBDA, LinkProfile
from funcpipe.planning.profile import LayerProfile, Profile
from funcpipe.planning.sim.cpu import _Cpu
from funcpipe.planning.sim.kernel import _Kernel
from funcpipe.planning.sim.link import _Link, _noticed
from funcpipe.planning.simulate import REPORT_BYTES_PER_ACTION, predict
from funcpipe.storage import base as storage_base
from funcpipe.storage import throttle
from funcpipe.storage.memory import MemoryStorage

MB = 4  # every micro-batch has 4 samples


def layer(name: str, fwd: float, bwd: float, out: int, params: int = 0, step: float = 0.0):
    return LayerProfile(
        name=name, param_bytes=params, grad_bytes=params, optimizer_bytes=2 * params,
        forward_s={MB: {1: fwd}}, backward_s={MB: {1: bwd}}, output_bytes={MB: out},
        saved_bytes={MB: out}, temp_bytes={MB: out}, step_s={1: step} if params else {},
    )  # fmt: skip


def hand_profile(*layers: LayerProfile, inputs: int = 100_000, targets: int = 10_000) -> Profile:
    return Profile(
        layers=list(layers), micro_batch_sizes=[MB], threads=[1],
        input_bytes_table={MB: inputs}, target_bytes_table={MB: targets}, runtime_base_mb=100.0,
    )  # fmt: skip


# one core at 1769 MB, a 1 MB/s link with 10 ms per request, no start-up
SLOW = AWS_LAMBDA.replace(
    link=LinkProfile(up_bytes_s=1e6, down_bytes_s=1e6, latency_s=0.01),
    startup_s=0.0, runtime_base_mb_value=100.0,
)  # fmt: skip


def test_one_stage_exact_time() -> None:
    prof = hand_profile(layer("l0", 0.2, 0.3, 1000, params=4000, step=0.05))
    plan = Plan(stages=[Stage(start=0, end=1, memory_mb=1769)], micro_batches=1)
    pred = predict(plan, prof, SLOW, batch_size=MB)
    # LOAD_INPUT 0.01 + 0.1 s; LOAD_TARGET (queued behind it) ends at 0.13, hidden by FORWARD
    # 0.11..0.31; BACKWARD 0.31..0.61; STEP ..0.66; report PUT 0.01 s + 5 actions * 90 B / 1 MB/s
    report = 0.01 + 5 * REPORT_BYTES_PER_ACTION / 1e6
    assert pred.time_s == pytest.approx(0.66 + report, abs=1e-9)
    assert pred.first_iteration_s == pytest.approx(0.66, abs=1e-9)
    b = pred.breakdown["stage0-replica0"]
    assert b.compute_s == pytest.approx(0.55)
    assert b.communication_s == pytest.approx(0.11)
    assert b.sync_s == 0
    gb = 1769 / 1024
    # cost: time x GB x price + requests (2 GETs+DELETEs, report PUT, client feeding + polling)
    assert pred.cost_usd > pred.time_s * gb * SLOW.prices.gb_second
    assert pred.requests["puts"] == 1 + 2  # report + client feeding two objects
    # params + grads + Adam state + what the micro-batch saved + its temporaries
    assert pred.memory_mb == [pytest.approx(100 + (4 * 4000 + 1000 + 1000) / 2**20)]


def test_half_a_core_doubles_compute() -> None:
    prof = hand_profile(layer("l0", 0.2, 0.3, 1000))
    fast = predict(Plan(stages=[Stage(start=0, end=1, memory_mb=1769)]), prof, SLOW)
    slow = predict(Plan(stages=[Stage(start=0, end=1, memory_mb=1769 // 2 + 1)]), prof, SLOW)
    assert slow.breakdown["stage0-replica0"].compute_s == pytest.approx(
        2 * fast.breakdown["stage0-replica0"].compute_s, rel=1e-3
    )


def test_two_stages_transfer_is_bandwidth_plus_latency_plus_a_poll() -> None:
    prof = hand_profile(layer("a", 0.1, 0.1, 200_000), layer("b", 0.1, 0.1, 10))
    plan = Plan(
        stages=[Stage(start=0, end=1, memory_mb=1769), Stage(start=1, end=2, memory_mb=1769)]
    )
    pred = predict(plan, prof, SLOW, batch_size=MB)
    spans = {s[0]: s for r in pred.reports[0] for s in r["spans"]}
    send = spans["send_act mb0@s0"]
    recv = spans["recv_act mb0@s1"]
    # the activation (200 KB + header) crosses at 1 MB/s, is visible 0.2 s after the forward,
    # then the receiver notices it (polls come every 10 ms latency + <= 10 ms pause), pays
    # 10 ms and downloads it in 0.2 s
    assert send[3] - send[2] == pytest.approx(0.2002 + 0.01)
    assert 0.2 + 0.01 + 0.2 <= recv[3] - send[2] <= 0.2 + 0.01 + 0.2 + 0.0202


class _Clock:
    """A virtual clock for ``time.monotonic``/``time.sleep`` that publishes a key at a set time."""

    def __init__(self, store: MemoryStorage, key: str, visible: float) -> None:
        self.now, self.store, self.key, self.visible = 0.0, store, key, visible

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.now < self.visible <= self.now + seconds:
            self.store.put(self.key, b"x")
        self.now += seconds


@pytest.mark.parametrize("visible", [0.0, 0.0003, 0.004, 0.0105, 0.03, 0.0701, 0.25, 1.0])
@pytest.mark.parametrize("latency", [0.0, 0.01, 0.05])
def test_a_wait_notices_a_key_when_the_runtime_does(monkeypatch, visible, latency) -> None:
    """The simulator's poll times are those of ``Storage.wait`` over a throttled link, where a
    poll that misses still pays the request latency (run on a virtual clock: exact, not timed)."""
    inner = MemoryStorage()
    clock = _Clock(inner, "k", visible)
    if visible == 0.0:
        inner.put("k", b"x")
    monkeypatch.setattr(storage_base, "time", clock)
    monkeypatch.setattr(throttle, "time", clock)
    link = throttle.ThrottledStorage(inner, throttle.LinkConfig(latency_s=latency))
    link.wait("k", timeout=10.0)
    # the wait returns one latency after the poll that found the key (1 byte: no stream time)
    assert clock.now == pytest.approx(_noticed(0.0, visible, latency) + latency, abs=1e-9)


class _VirtualTime:
    """``time.monotonic``/``time.sleep`` on a virtual clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("rate", [4e6, 70e6])
def test_a_link_crosses_bytes_when_the_emulators_token_bucket_does(monkeypatch, rate) -> None:
    """The simulated link is the emulator's token bucket: an idle link lets a burst through at
    once, then the rate applies (requests one after another, on a virtual clock)."""
    clock = _VirtualTime()
    monkeypatch.setattr(throttle, "time", clock)
    link = throttle.ThrottledStorage(MemoryStorage(), throttle.LinkConfig(up_mb_s=rate / 1e6))
    kernel = _Kernel()
    model = _Link(kernel, rate, throttle.burst_bytes(rate))
    requests = [(0.0, 10_000), (0.0, 500_000), (0.3, 5_000), (0.3001, 200_000), (2.0, 1_000_000)]
    ends: list[float] = []
    for start, nbytes in requests:
        clock.now = max(clock.now, start)  # one request after another, as on a lane
        link._stream(link._up, nbytes)
        kernel.at(max([start, *ends[-1:]]), lambda n=nbytes: model.send(n, ends.append))
        kernel.run()
        assert ends[-1] == pytest.approx(clock.now, abs=1e-9)
    assert ends[0] == 0.0  # the first request fit in the burst: it took no time


def test_requests_in_flight_share_a_link() -> None:
    """Concurrent requests share the rate (the token bucket serves their slices in turn), so
    two equal requests started together both finish when both are across."""
    kernel = _Kernel()
    link = _Link(kernel, 1e6)  # 1 MB/s, no burst
    ends: dict[str, float] = {}
    kernel.at(0.0, lambda: link.send(1e6, lambda t: ends.setdefault("a", t)))
    kernel.at(0.0, lambda: link.send(1e6, lambda t: ends.setdefault("b", t)))
    kernel.at(0.5, lambda: link.send(1e5, lambda t: ends.setdefault("small", t)))
    kernel.run()
    # 0.5 s: 0.25 MB each of a and b; then three share it: the small one's 0.1 MB takes 0.3 s
    assert ends["small"] == pytest.approx(0.8)
    assert ends["a"] == pytest.approx(2.1) and ends["b"] == pytest.approx(2.1)


def test_cpu_contention_on_a_shared_host() -> None:
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=1)
    a, b = cpu.run(1.0, 1.0), cpu.run(1.0, 1.0)
    kernel.run()
    assert a.time == pytest.approx(2.0) and b.time == pytest.approx(2.0)
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=2)
    a, b = cpu.run(1.0, 1.0), cpu.run(3.0, 1.0)
    kernel.run()
    assert a.time == pytest.approx(1.0) and b.time == pytest.approx(3.0)
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=1)
    a, b = cpu.run(1.0, 0.25), cpu.run(1.0, 1.0)  # a quarter-core function keeps its quarter
    kernel.run()
    # b runs at 0.75 until a is done at 1.0, then alone: 0.25 of work left
    assert a.time == pytest.approx(1.0) and b.time == pytest.approx(1.25)


def test_replicas_sync_and_scale(cnn_profile: Profile) -> None:
    plan1 = Plan.even(12, stages=2, replicas=1, memory_mb=1769, micro_batches=4)
    plan2 = Plan.even(12, stages=2, replicas=2, memory_mb=1769, micro_batches=4)
    p1 = predict(plan1, cnn_profile, "aws-lambda", batch_size=16)
    p2 = predict(plan2, cnn_profile, "aws-lambda", batch_size=16)
    assert p2.breakdown["stage0-replica1"].sync_s > 0
    assert p1.breakdown["stage0-replica0"].sync_s == 0
    assert p2.requests["lists"] > 0  # replica 0 deletes the merged pieces
    assert len(p2.memory_mb) == 2 and all(m > 300 for m in p2.memory_mb)  # base 300 MB + model


def test_trace_has_the_train_trace_format(cnn_profile: Profile) -> None:
    plan = Plan.even(12, stages=3, replicas=2, memory_mb=1024, micro_batches=4)
    pred = predict(plan, cnn_profile, "local", batch_size=16)
    trace = json.loads(json.dumps(pred.trace()))
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {f"stage{s}-replica{r}" for s in range(3) for r in range(2)}
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["cat"] for e in spans} == {"compute", "upload", "download"}
    assert any(e["name"] == "sync@s1" for e in spans)


def test_errors(cnn_profile: Profile) -> None:
    with pytest.raises(ConfigError, match="layers"):
        predict(Plan.even(5, stages=1), cnn_profile, "aws-lambda")
    with pytest.raises(ConfigError, match="unknown platform"):
        predict(Plan.even(12, stages=1), cnn_profile, "nowhere")


def test_exported() -> None:
    assert funcpipe.predict is predict and funcpipe.Prediction.__name__ == "Prediction"


def test_a_quota_per_period_lets_a_short_burst_run_at_full_speed() -> None:
    """Under a CFS quota (half a core, 100 ms periods, one thread), compute coming out of a wait
    runs at full speed for up to one period's quota, then at the share's rate; and a plan's
    time grows smoothly with its compute (no jump by a whole period for a few percent more)."""
    quota = SLOW.replace(cpu_quota_period_s=0.1, max_threads=1)
    half = Plan(stages=[Stage(start=0, end=1, memory_mb=885)])  # 0.5 cores
    short = predict(half, hand_profile(layer("l0", 0.02, 0.02, 1000)), quota)
    assert short.breakdown["stage0-replica0"].compute_s == pytest.approx(0.04, rel=1e-3)
    # 1 s of compute: the first 50 ms of quota at full speed, the rest at half speed
    long = predict(half, hand_profile(layer("l0", 0.5, 0.5, 1000)), quota)
    assert long.breakdown["stage0-replica0"].compute_s == pytest.approx(0.05 + 2 * 0.95, rel=1e-2)
    times = [
        predict(half, hand_profile(layer("l0", 0.1 * f, 0.1 * f, 1000)), quota).time_s
        for f in (1.0, 1.01, 1.02, 1.03, 1.04, 1.05, 1.06, 1.07, 1.08, 1.09, 1.1)
    ]
    steps = [b / a - 1 for a, b in itertools.pairwise(times)]
    assert all(0 <= d < 0.02 for d in steps), steps


@pytest.mark.parametrize(("memory_mb", "threads"), [(1769, 1), (5307, 3)])
def test_a_function_at_its_quota_pays_for_its_transfers_out_of_its_compute(
    memory_mb: int, threads: int
) -> None:
    """A function whose threads use all of its quota (one core with one thread; exactly three
    cores with three) pays for the CPU its lane threads spend reading and decoding while it
    computes: CFS throttles the whole group. What they spend while it waits costs nothing."""
    prof = dataclasses.replace(
        hand_profile(layer("l0", 0.2, 0.3, 1000)), transfer_s_per_request=0.02
    )
    plan = Plan(stages=[Stage(start=0, end=1, memory_mb=memory_mb)], micro_batches=1)
    free = predict(plan, prof, SLOW.replace(max_threads=threads), batch_size=MB)
    quota = SLOW.replace(cpu_quota_period_s=0.1, max_threads=threads)
    paid = predict(plan, prof, quota, batch_size=MB)
    assert paid.cpus == [pytest.approx(threads)]
    assert free.breakdown["stage0-replica0"].compute_s == pytest.approx(0.5)
    # The input is read before the forward (free). The target's read and decode (half of a
    # 0.02 s request; the other half is the writer's) runs during the forward, on the quota
    # that all the function's threads share.
    assert paid.breakdown["stage0-replica0"].compute_s == pytest.approx(0.5 + 0.01 / threads)
    assert paid.time_s == pytest.approx(free.time_s + 0.01 / threads)


@pytest.mark.parametrize("period", [None, 0.1])
def test_transfers_overlapping_compute_slow_it_by_the_lanes_overhead(period) -> None:
    """Each end of a transfer whose CPU work overlaps a compute action adds half the profile's
    lane_overhead_s to that compute (with or without a CPU quota); transfers made while the
    function waits add nothing."""
    prof = hand_profile(layer("l0", 0.2, 0.3, 1000))
    plan = Plan(stages=[Stage(start=0, end=1, memory_mb=1769)], micro_batches=1)
    platform = SLOW.replace(cpu_quota_period_s=period, max_threads=1)
    free = predict(plan, prof, platform, batch_size=MB)
    slowed = predict(plan, dataclasses.replace(prof, lane_overhead_s=0.02), platform, batch_size=MB)
    # The input arrives before the forward (the function waits: free); the target arrives
    # during it (0.13 s into the 0.11-0.31 s forward): 0.01 s more compute, once a step.
    assert free.breakdown["stage0-replica0"].compute_s == pytest.approx(0.5)
    assert slowed.breakdown["stage0-replica0"].compute_s == pytest.approx(0.51)
    assert slowed.time_s == pytest.approx(free.time_s + 0.01)


def test_other_programs_and_fewer_cores_slow_a_local_job() -> None:
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=2, background=2.0)  # two busy threads of other programs
    a = cpu.run(1.0, 1.0)
    kernel.run()
    assert a.time == pytest.approx(1.5)  # a third of the two cores each: 2/3 of a core
    prof = hand_profile(layer("l0", 0.2, 0.3, 1000))
    plan = Plan(stages=[Stage(start=0, end=1, memory_mb=1769)])
    from funcpipe.planning.platforms import local_platform

    quiet = predict(plan, prof, local_platform(host_cores=2))
    starved = predict(plan, prof, local_platform(host_cores=0.5))
    assert starved.breakdown["stage0-replica0"].compute_s == pytest.approx(
        2 * quiet.breakdown["stage0-replica0"].compute_s
    )


def test_a_starved_pool_runs_like_one_thread() -> None:
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=0.5)
    # 1 s on its two cores, 1.5 s on one: on half a core it takes 3 s
    a = cpu.run(1.0, 2.0, one_core=1.5)
    kernel.run()
    assert a.time == pytest.approx(3.0)


def test_predict_module_is_the_public_predict() -> None:
    from funcpipe.planning import predict as module

    assert module.predict is funcpipe.predict and module.Prediction is funcpipe.Prediction


def test_transfers_cost_cpu_at_both_ends() -> None:
    prof = hand_profile(layer("l0", 0.2, 0.3, 1000, params=4000, step=0.05))
    prof.transfer_s_per_request = 0.01  # 5 ms at each end of every transfer
    plan = Plan(stages=[Stage(start=0, end=1, memory_mb=1769)], micro_batches=1)
    pred = predict(plan, prof, SLOW, batch_size=MB)
    # LOAD_INPUT now ends 5 ms later (decoding), which delays the whole step; the report's
    # upload spends 5 ms encoding before it is sent
    report = 0.005 + 0.01 + 5 * REPORT_BYTES_PER_ACTION / 1e6
    assert pred.time_s == pytest.approx(0.665 + report, abs=1e-9)


def test_waiting_downloads_poll_on_the_cpu() -> None:
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores=1.0)
    cpu.poll_cores = 0.5  # an absurdly expensive poller, to make the effect plain
    cpu.poll(+1)
    a = cpu.run(1.0, 1.0)
    kernel.at(1.0, lambda: cpu.poll(-1))
    kernel.run()
    # half a core until t=1 (0.5 done), then the whole core for the other 0.5
    assert a.time == pytest.approx(1.5)
