"""A client that dies or is interrupted leaves no function processes and no cgroup folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from funcpipe.platforms import LocalPlatform

REPO = Path(__file__).resolve().parents[2]

CLIENT = textwrap.dedent(
    """
    import sys, time
    from funcpipe.platforms import FunctionSpec, LocalPlatform
    from funcpipe.runtime.function import call_payload

    p = LocalPlatform()
    inv = p.start(FunctionSpec("orphan", 256, 60), call_payload(lambda: time.sleep(60)))
    pid = p._runs[inv.id].process.pid
    print(pid, *p._group_dirs.values(), flush=True)
    if sys.argv[1] == "interrupt":
        raise KeyboardInterrupt
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already stopped


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _alive(pid)


def _start_client(mode: str) -> tuple[subprocess.Popen, int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    if not line:
        proc.kill()
        pytest.fail(f"client did not start: {proc.communicate(timeout=30)[1]}")
    return proc, int(line[0]), line[1:]


def test_interrupted_client_cleans_up_at_exit() -> None:
    proc, pid, groups = _start_client("interrupt")
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert _wait_dead(pid)
    for g in groups:
        assert not os.path.exists(g)


def test_killed_client_takes_its_functions_along() -> None:
    proc, pid, groups = _start_client("kill")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _wait_dead(pid)  # PR_SET_PDEATHSIG
    if groups:  # no atexit ran; the next platform sweeps what the dead client left
        with LocalPlatform(cpu_per_gb=None):
            for g in groups:
                if "/memory/" in g:
                    assert not os.path.exists(g)
