"""The runtime's own memory and start-up time, measured, not guessed.

A Python interpreter with torch loaded, before any model: :func:`measured_runtime` starts a fresh
interpreter, imports torch, runs a tiny forward/backward/optimizer step and reads its resident set
size; the figure is cached per Python and torch version under ``$FUNCPIPE_CACHE`` (default
``~/.cache/funcpipe``). A profile whose runtime base or start-up is not given reads it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from funcpipe.errors import ConfigError

__all__ = ["measured_runtime"]

_PROBE = r"""
import json, time
t0 = time.perf_counter()
import torch
layer = torch.nn.Linear(8, 8)
opt = torch.optim.Adam(layer.parameters())
layer(torch.randn(4, 8)).sum().backward()
opt.step()
ready = time.perf_counter() - t0
rss = peak = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1])
print(json.dumps({"rss_mb": rss / 1024, "peak_mb": peak / 1024, "import_s": ready}))
"""

_measured: dict[str, float] | None = None


def _cache_file() -> Path:
    root = Path(os.environ.get("FUNCPIPE_CACHE", Path.home() / ".cache" / "funcpipe"))
    import torch

    py = ".".join(map(str, sys.version_info[:3]))
    return root / f"runtime-base-py{py}-torch{torch.__version__}.json"


def measured_runtime(*, refresh: bool = False) -> dict[str, float]:
    """RSS (MB = MiB) and start-up seconds of a fresh interpreter after importing torch and
    running a tiny forward/backward/Adam step; measured once per Python/torch, then cached."""
    global _measured
    if _measured is not None and not refresh:
        return _measured
    path = _cache_file()
    if not refresh and path.exists():
        try:
            _measured = {k: float(v) for k, v in json.loads(path.read_text()).items()}
            return _measured
        except (ValueError, OSError, AttributeError):
            pass  # a damaged cache is measured again
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False
    )
    if out.returncode != 0:
        raise ConfigError(
            f"could not measure the runtime's base memory ({sys.executable} failed): "
            f"{out.stderr.strip()[-500:]}"
        )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["process_s"] = time.perf_counter() - started
    _measured = {k: float(v) for k, v in figures.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_measured))
    except OSError:
        pass  # read-only home: measure again next time
    return _measured
