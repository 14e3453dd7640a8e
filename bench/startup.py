"""Cold start of a function: a fresh interpreter from its package, against a fork of the client.

FuncPipe starts every function as a new interpreter from its job package alone, as a real
platform does: the interpreter, torch and the package are loaded and paid for by the function.
The old local platform forked the client instead, which started in milliseconds because the
client had everything loaded already (and which no cloud can do). Both are measured here on the
same machine in the same run:

* ``fork``: time from fork of this process (torch imported, a stage built) to the child's first
  forward on the stage (what the old local platform's functions paid);
* ``fresh``: time from invocation to first action (``ready_at - invoked_at``) of each function of
  a real 20-step demo job (demo CNN, 2 stages x 2 replicas), read from ``result.startup_s``;

and the share of the demo's wall time and bill that start-up takes; then

* ``forkserver``: the same demo on ``LocalPlatform(start="forkserver")``, functions forked from a
  server that imported torch once (no op run, so no OpenMP pool to inherit), the development and
  test-suite mode; measured on a second job, once the server is up.

    python bench/startup.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.client.demo import demo_cnn
from funcpipe.platforms import LocalPlatform


def fork_start(repeats: int) -> list[float]:
    """Seconds from fork to the first forward, as the old platform's functions started."""
    # One thread: a child forked after OpenMP's thread pool has started deadlocks in its first
    # parallel op (the reason the fork start is gone), so the pool must never start here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = demo_cnn()
    x = torch.randn(16, 3, 32, 32)
    model(x)  # the client has run torch before forking, as train() did
    times = []
    for _ in range(repeats):
        read_fd, write_fd = os.pipe()
        t0 = time.time()
        pid = os.fork()
        if pid == 0:  # child: one forward, then report when it started it
            os.close(read_fd)
            with torch.no_grad():
                model[:6](x[:1])
            os.write(write_fd, repr(time.time()).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            first = float(f.read())
        os.waitpid(pid, 0)
        times.append(first - t0)
    torch.set_num_threads(threads)
    return times


def demo_run(steps: int, start: str = "fresh") -> dict:
    torch.manual_seed(0)
    model = demo_cnn()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(steps)
    ]
    plan = Plan(
        stages=[Stage(start=0, end=6, replicas=2, memory_mb=2048),
                Stage(start=6, end=12, replicas=2, memory_mb=2048)],
        micro_batches=4,
    )  # fmt: skip
    t0 = time.time()
    result = train(
        model, nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        batches=batches, plan=plan, progress=False, platform=LocalPlatform(start=start),
    )  # fmt: skip
    wall = time.time() - t0
    startup = list(result.startup_s.values())
    total = sum(h.cost_usd for h in result.history)
    return {
        "startup_s": startup,
        "wall_s": wall,
        "startup_share_of_wall": max(startup) / wall,
        "startup_share_of_cost": sum(h.startup_usd for h in result.history) / total,
        "cost_usd": total,
        "mean_iteration_s": statistics.mean(h.iteration_s for h in result.history[1:]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    forks = fork_start(args.repeats)
    print(f"fork start (old local platform): median {statistics.median(forks) * 1000:.1f} ms")
    demo = demo_run(args.steps)
    fresh = statistics.median(demo["startup_s"])
    print(f"fresh interpreter from the package: median {fresh:.2f} s per function "
          f"({fresh / statistics.median(forks):.0f}x the fork start)")  # fmt: skip
    print(
        f"{args.steps}-step demo: wall {demo['wall_s']:.1f} s, of which start-up "
        f"{demo['startup_share_of_wall']:.0%}; start-up is {demo['startup_share_of_cost']:.1%} "
        f"of the ${demo['cost_usd']:.6f} bill; mean iteration {demo['mean_iteration_s']:.3f} s"
    )
    demo_run(2, "forkserver")  # starts this process's server
    served = demo_run(args.steps, "forkserver")
    warm = statistics.median(served["startup_s"])
    print(f"forked from the warm server: median {warm:.3f} s per function "
          f"({fresh / warm:.0f}x faster than fresh); wall {served['wall_s']:.1f} s")  # fmt: skip
    print(json.dumps({
        "fork_start_s": statistics.median(forks),
        "forkserver_start_s": warm,
        "fresh_over_forkserver": fresh / warm,
        "forkserver_demo_wall_s": served["wall_s"],
        "fresh_start_s": fresh,
        "fresh_over_fork": fresh / statistics.median(forks),
        "demo_steps": args.steps,
        "demo_wall_s": demo["wall_s"],
        "startup_share_of_wall": demo["startup_share_of_wall"],
        "startup_share_of_cost": demo["startup_share_of_cost"],
        "demo_cost_usd": demo["cost_usd"],
        "cpus": len(os.sched_getaffinity(0)),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
