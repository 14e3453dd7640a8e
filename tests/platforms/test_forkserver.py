"""LocalPlatform(start="forkserver"): functions forked from a warm server behave like fresh ones."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.errors import ConfigError
from funcpipe.platforms import FunctionSpec, LocalPlatform, Status, set_activity
from funcpipe.platforms.local import START_ENV
from funcpipe.platforms.local.forkserver import forkserver
from funcpipe.runtime.function import call_payload

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def platform():
    p = LocalPlatform(start="forkserver")
    yield p
    p.close()


def _run(p: LocalPlatform, fn, name: str = "f", memory_mb: int = 512, timeout_s: float = 30.0):
    inv = p.start(FunctionSpec(name, memory_mb, timeout_s), call_payload(fn))
    return p.join(inv, timeout=60.0)


def test_training_equals_fresh_interpreters(tmp_path: Path) -> None:
    def job(start: str) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))
                   for _ in range(4)]  # fmt: skip
        plan = Plan(stages=[Stage(start=0, end=2, replicas=2), Stage(start=2, end=4)],
                    micro_batches=2)  # fmt: skip
        return train(model, nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.Adam(p),
                     batches=batches, plan=plan, platform=LocalPlatform(start=start),
                     storage=f"local://{tmp_path / start}", progress=False).model  # fmt: skip

    fresh, forked = job("fresh"), job("forkserver")
    for (name, a), b in zip(fresh.state_dict().items(), forked.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_parallel_torch_ops_do_not_deadlock() -> None:
    """The server never runs a torch op, so a fork does not inherit a dead OpenMP pool."""

    def fn() -> None:
        assert torch.get_num_threads() == 2
        x = torch.randn(8, 16, 64, 64, requires_grad=True)
        nn.Conv2d(16, 32, 3)(x).relu().sum().backward()

    with LocalPlatform(start="forkserver", torch_threads=2) as platform:
        st = _run(platform, fn, memory_mb=3600, timeout_s=60)  # two cores' share
    assert st.status is Status.SUCCEEDED, st.message


def test_each_function_draws_its_own_random_state(platform: LocalPlatform, tmp_path: Path) -> None:
    def draw(path: Path):
        return lambda: path.write_text(json.dumps([random.random(), float(np.random.rand())]))

    outs = [tmp_path / f"r{i}" for i in range(2)]
    for out in outs:
        assert _run(platform, draw(out)).status is Status.SUCCEEDED
    a, b = (json.loads(o.read_text()) for o in outs)
    assert a[0] != b[0] and a[1] != b[1]


def test_function_gets_the_client_environment_cwd_and_output(
    platform: LocalPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    monkeypatch.setenv("FUNCPIPE_TEST_VALUE", "seen-by-the-function")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "env"

    def fn() -> None:
        print("hello from the function", flush=True)
        out.write_text(json.dumps([os.environ.get("FUNCPIPE_TEST_VALUE"), os.getcwd(),
                                   os.environ.get("OMP_NUM_THREADS")]))  # fmt: skip

    assert _run(platform, fn, memory_mb=1769).status is Status.SUCCEEDED
    assert json.loads(out.read_text()) == ["seen-by-the-function", str(tmp_path), "1"]
    assert "hello from the function" in capfd.readouterr().out


def test_crash_timeout_and_memory_are_classified(platform: LocalPlatform) -> None:
    def crash() -> None:
        set_activity("recv act")
        os.kill(os.getpid(), signal.SIGSEGV)

    st = _run(platform, crash, name="stage2")
    assert (st.status, st.reason) == (Status.FAILED, "crash")
    assert "SIGSEGV" in st.message and "'recv act'" in st.message

    st = _run(platform, lambda: time.sleep(30), timeout_s=1.0)
    assert (st.status, st.reason) == (Status.FAILED, "timeout"), st.message

    def grow() -> None:
        set_activity("forward mb 0")
        torch.ones(600 * 1024 * 1024 // 4).add_(1)

    st = _run(platform, grow, name="stage1-replica0", memory_mb=400)
    assert (st.status, st.reason) == (Status.FAILED, "memory"), st.message
    assert "exceeded its memory cap of 400 MB" in st.message


def test_cancel_ends_a_forked_function(platform: LocalPlatform) -> None:
    inv = platform.start(FunctionSpec("slow", 256, 60), call_payload(lambda: time.sleep(60)))
    time.sleep(0.5)
    platform.cancel(inv)
    st = platform.state(inv)
    assert (st.status, st.reason) == (Status.CANCELLED, "cancelled")
    pid = platform._runs[inv.id].process.pid
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_bad_start_mode_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'fresh'.*'forkserver'"):
        LocalPlatform(start="warm")
    monkeypatch.setenv(START_ENV, "zygote")
    with pytest.raises(ConfigError, match="FUNCPIPE_LOCAL_START"):
        LocalPlatform()


def test_one_server_per_client_process() -> None:
    assert forkserver() is forkserver()


CLIENT = textwrap.dedent(
    """
    import time
    from funcpipe.platforms import FunctionSpec, LocalPlatform
    from funcpipe.runtime.function import call_payload

    p = LocalPlatform(start="forkserver", cpu_per_gb=None)
    inv = p.start(FunctionSpec("orphan", 256, 60), call_payload(lambda: time.sleep(60)))
    print(p._runs[inv.id].process.pid, flush=True)
    time.sleep(60)
    """
)


def test_killed_client_takes_its_forked_functions_along() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline().split()
    if not line:
        proc.kill()
        pytest.fail(f"client did not start: {proc.communicate(timeout=30)[1]}")
    pid = int(line[0])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    end = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()  # the server saw its socket close
