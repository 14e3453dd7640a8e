"""Real storage servers for tests: a private redis-server and moto's S3-protocol server.

Both run as subprocesses on free local ports. A server that cannot start fails the test that
needs it, never skips it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen, port: int, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                proc.kill()
                pytest.fail(f"{what} did not start on port {port}\n{tail}")
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def start_redis(workdir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server (``extra`` args, e.g. --requirepass); return it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; install it (Debian/Ubuntu: "
            "apt-get install -y redis-server) to run the Redis storage tests"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    _wait_for_port(proc, port, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start moto's S3 server on a free port; return it, its endpoint and its request log."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"moto's S3 server is not installed ({exc}); run: pip install -e '.[dev]'")
    port = free_port()
    log = workdir / "requests.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_for_port(proc, port, "moto S3 server", log)
    return proc, f"http://127.0.0.1:{port}", log
