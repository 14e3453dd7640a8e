"""A failing function fails the whole job promptly, names itself, and leaves no keys behind."""

from __future__ import annotations

import re
import time

import pytest
import torch
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.errors import ConfigError, FunctionFailed, MemoryExceeded
from funcpipe.storage.local_dir import LocalDirStorage

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in a user layer")


class Hog(nn.Module):
    """Allocates and touches ~800 MB, far more than a 512 MB function has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(200_000_000)
        return x + big[:1].sum() * 0


def run(model: nn.Sequential, plan: Plan, root, **kw):
    torch.manual_seed(0)
    batches = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(2)]
    return train(
        model,
        nn.MSELoss(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        batches=batches,
        plan=plan,
        steps=2,
        storage=f"local://{root}",
        link=FAST_LINK,
        progress=False,
        timeout_s=30,
        **kw,
    )


def test_function_that_raises_fails_the_job(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), Boom(), nn.Linear(4, 2))
    plan = Plan(stages=[Stage(start=0, end=1), Stage(start=1, end=3, replicas=2)], micro_batches=2)
    t0 = time.monotonic()
    with pytest.raises(FunctionFailed) as err:
        run(model, plan, tmp_path, job_id="raise-test")
    assert time.monotonic() - t0 < 150  # below the first wait (30 + 30 s + start-up grace)
    msg = str(err.value)
    assert "stage1-replica" in msg and "boom in a user layer" in msg and "Traceback" in msg
    assert err.value.function in ("stage1-replica0", "stage1-replica1")
    assert LocalDirStorage(tmp_path).list("") == []


def test_function_over_its_memory_cap_fails_the_job(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), Hog(), nn.Linear(4, 2))
    plan = Plan(
        stages=[Stage(start=0, end=2, memory_mb=1024), Stage(start=2, end=4, memory_mb=512)],
        micro_batches=2,
    )
    t0 = time.monotonic()
    with pytest.raises(MemoryExceeded) as err:
        run(model, plan, tmp_path, job_id="oom-test")
    assert time.monotonic() - t0 < 150
    msg = str(err.value)
    assert "stage1-replica0" in msg and "512 MB" in msg and "stages[1].memory_mb" in msg
    assert "forward mb 0" in msg
    assert LocalDirStorage(tmp_path).list("") == []


class Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(30)
        return x


def test_function_past_its_time_limit_fails_the_job(tmp_path) -> None:
    # One step outlasts the lifetime: no relaunch could help.
    model = nn.Sequential(nn.Linear(4, 4), Slow(), nn.Linear(4, 2))
    plan = Plan(stages=[Stage(start=0, end=1), Stage(start=1, end=3)], micro_batches=2)
    t0 = time.monotonic()
    with pytest.raises(FunctionFailed) as err:
        # The limit counts the cold start too (a few seconds), as on Lambda; with
        # max_restarts=0 the job does not try again.
        run(model, plan, tmp_path, function_timeout_s=10, job_id="slow-test", max_restarts=0)
    assert time.monotonic() - t0 < 150
    assert err.value.reason == "timeout"
    assert err.value.function in ("stage0-replica0", "stage1-replica0")
    msg = str(err.value)
    assert f"'{err.value.function}'" in msg and "raise function_timeout_s" in msg
    assert LocalDirStorage(tmp_path).list("") == []


def test_successful_job_leaves_no_keys(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = Plan(stages=[Stage(start=0, end=2, replicas=2), Stage(start=2, end=3)], micro_batches=2)
    result = run(model, plan, tmp_path)
    assert len(result.history) == 2
    assert all(h.cost_usd > 0 and h.iteration_s > 0 for h in result.history)
    # The client's requests are priced too: it fed both steps (2 micro-batches x inputs and
    # targets each) before step 0 was reported.
    functions = sum(r["traffic"]["puts"] + r["traffic"]["gets"] for r in result.reports[0])
    assert result.history[0].requests >= functions + 2 * 2 * 2
    assert LocalDirStorage(tmp_path).list("") == []


def test_bad_inputs_get_clear_errors(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="set stages\\[-1\\].end = 2"):
        run(model, Plan(stages=[Stage(start=0, end=3)]), tmp_path)
    with pytest.raises(ConfigError, match="to_sequential"):
        train(
            nn.Linear(4, 2),
            nn.MSELoss(),
            optimizer=torch.optim.SGD,
            batches=[],
            plan=Plan(stages=[Stage(start=0, end=1)]),
            steps=1,
        )
    with pytest.raises(ConfigError, match="only 8 samples"):
        run(model, Plan(stages=[Stage(start=0, end=2, replicas=1)], micro_batches=9), tmp_path)
    two = [(torch.randn(8, 4), torch.randn(8, 2))] * 2
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    one_stage = Plan(stages=[Stage(start=0, end=2)])
    common = dict(plan=one_stage, storage=f"local://{tmp_path}", progress=False)
    with pytest.raises(ConfigError, match="steps=3 but batches holds only 2"):
        train(model, nn.MSELoss(), optimizer=sgd, batches=two, steps=3, **common)
    with pytest.raises(ConfigError, match="batches ran out after 2 steps"):
        train(model, nn.MSELoss(), optimizer=sgd, batches=iter(two), steps=3, **common)
    with pytest.raises(ConfigError, match="optimizer factory failed: ValueError"):
        bad_lr = lambda p: torch.optim.SGD(p, lr=-1)  # noqa: E731
        train(model, nn.MSELoss(), optimizer=bad_lr, batches=two, steps=1, **common)
    with pytest.raises(ConfigError, match="timeout_s must be a positive number"):
        train(model, nn.MSELoss(), optimizer=sgd, batches=two, steps=1, timeout_s=float("nan"),
              **common)  # fmt: skip
    with pytest.raises(ConfigError, match="lives inside one process"):
        train(model, nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
              batches=[(torch.randn(8, 4), torch.randn(8, 2))],
              plan=Plan(stages=[Stage(start=0, end=2)]), storage="memory://",
              progress=False)  # fmt: skip
    assert LocalDirStorage(tmp_path).list("") == []


def test_plan_that_cuts_tied_weights_is_refused(tmp_path) -> None:
    first, last = nn.Linear(4, 4), nn.Linear(4, 4)
    last.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), last, nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="layers 0 and 2 share a parameter"):
        run(model, Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=4)]), tmp_path)
    # Within one stage the tie is fine.
    run(model, Plan(stages=[Stage(start=0, end=3), Stage(start=3, end=4)]), tmp_path)


def test_a_job_id_in_use_is_refused(tmp_path) -> None:
    LocalDirStorage(tmp_path).put("jobs/taken/step0/report/s0r0", b"{}")
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="job_id 'taken' is in use"):
        run(model, Plan(stages=[Stage(start=0, end=1)]), tmp_path, job_id="taken")
    # Nothing of the other job was touched.
    assert LocalDirStorage(tmp_path).list("") == ["jobs/taken/step0/report/s0r0"]


SIGTERM_SCRIPT = """
import sys, torch
from torch import nn
from funcpipe import LinkConfig, Plan, Stage, train

class Slow(nn.Module):
    def forward(self, x):
        import time; time.sleep(0.2)
        return x

model = nn.Sequential(nn.Linear(4, 4), Slow(), nn.Linear(4, 2))
plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3)], micro_batches=2)
batches = [(torch.randn(8, 4), torch.randn(8, 2))] * 200
print("ready", flush=True)
train(model, nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), batches=batches,
      plan=plan, storage=sys.argv[1], link=LinkConfig(latency_s=0.0), progress=False)
"""


def test_sigterm_stops_the_job_and_deletes_its_keys(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    store = LocalDirStorage(tmp_path / "store")
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, f"local://{tmp_path / 'store'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not store.list(""):  # the client has fed the first steps
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(1.0)  # functions are running
        assert proc.poll() is None and store.list("")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert store.list("") == []


def test_function_capped_below_the_runtime_footprint_fails_with_memory_exceeded(tmp_path) -> None:
    """Python and torch alone hold ~230 MB; a 160 MB function cannot even start, as on Lambda."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    plan = Plan(stages=[Stage(start=0, end=1), Stage(start=1, end=2, memory_mb=160)])
    with pytest.raises(MemoryExceeded) as err:
        run(model, plan, tmp_path, job_id="tiny-test")
    msg = str(err.value)
    assert err.value.function == "stage1-replica0"
    assert "'stage1-replica0'" in msg and "cap of 160 MB" in msg
    peak = re.search(r"peak (\d+) MB", msg)
    assert peak is not None and int(peak.group(1)) >= 150, msg
    assert LocalDirStorage(tmp_path).list("") == []
