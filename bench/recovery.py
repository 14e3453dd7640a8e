"""How fast a job notices a lost function and is training again, and what checkpoints cost.

Two runs of the same job (default: ResNet-101-small on the demo plan, 2 stages x 2 functions
of 2048 MB, 4 micro-batches of a 64-sample batch, Lambda-like 70 MB/s links):

1. **uninterrupted**, ``checkpoint_every=10``. Its baseline, measured in the same run, is the
   median *period* of its steps (one step's last report to the next's, the time a step really
   costs) away from checkpoints. The checkpoint overhead per step is the slowest function's write
   of its piece (its manifest records it; every function writes between two steps and the
   pipeline waits for the slowest) divided by 10, as a fraction of that period. As a check, the
   overhead *observed*: how much longer the periods that contain a checkpoint are than the median,
   per step. Its cold start is the yardstick for the recoveries below.
2. **faults**, ``checkpoint_every=3``: a function is killed with SIGKILL in a forward pass, later
   another one is frozen with SIGSTOP in a backward pass (failpoints). *detect* is the fault's
   time (written by the failpoint) to the client's verdict; *recover* is the verdict to the first
   step reported by the relaunched generation, in parts: the client's clean-up, the new
   functions' cold start (invocation to ready, checkpoint restored), and the rest (feeding two
   steps, the first redone step). *expected* is what a relaunch cannot avoid: the uninterrupted
   run's cold start plus one period; a recovery far above it would be a bug, not load.
   Its final parameters must equal the uninterrupted run's.

    python bench/recovery.py [--model resnet101-small] [--steps 21] [--heartbeat 2] [--quick]

``--quick`` (12 steps of 16 samples, 1 s heartbeats) checks that the benchmark works; its
figures are not the headline ones. The last line is one JSON object: detect_s, recover_s (worst
of kill and hang), checkpoint_overhead, and the figures behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from funcpipe import LinkConfig, Plan, train
from funcpipe.client.demo import make_job
from funcpipe.client.manager import Recovery
from funcpipe.client.train import TrainResult
from funcpipe.runtime import failpoints

EVERY = 10  # the checkpoint interval the overhead target is stated for
FAULT_EVERY = 3  # the faulty run's interval: each fault redoes at most this many steps


def run(args: argparse.Namespace, **kw) -> TrainResult:
    job = make_job(args.model, batch_size=args.batch_size, data_dir=None, seed=0)
    plan = Plan.even(len(job.model), stages=2, replicas=2, memory_mb=2048, micro_batches=4)
    return train(
        job.model, job.loss_fn, optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
        batches=job.batches, plan=plan, steps=args.steps, link=LinkConfig(),
        heartbeat_s=args.heartbeat, progress=False, **kw,
    )  # fmt: skip


def periods(result: TrainResult) -> dict[int, float]:
    """Each step's period: the end of its last function's work minus the previous step's."""
    ends = {h.step: max(r["end"] for r in reps) for h, reps in zip(result.history, result.reports,
                                                                    strict=True)}  # fmt: skip
    return {t: ends[t] - ends[t - 1] for t in ends if t - 1 in ends}


def checkpoint_figures(result: TrainResult) -> dict[str, float]:
    """The overhead per step from the write times, and as observed in the periods."""
    per = periods(result)
    boundaries = {step for step, _ in result.checkpoints}
    plain = [p for t, p in per.items() if t not in boundaries]
    period = statistics.median(plain)
    writes = [s for _, s in result.checkpoints]
    if not writes:
        raise SystemExit("the uninterrupted run completed no checkpoint: run more than 10 steps")
    write = max(writes)
    excess = [per[b] - period for b in boundaries if b in per]
    return {
        "period_s": period,
        "write_s": write,
        "overhead": write / EVERY / period,
        "observed": statistics.mean(excess) / EVERY / period if excess else float("nan"),
    }


def fault_figures(event: Recovery, marker: Path, cold_s: float, period_s: float) -> dict:
    fault_at = float(marker.read_text())
    startup = event.startup_s or 0.0
    expected = cold_s + period_s
    return {
        "detect_s": event.detected_at - fault_at,
        "recover_s": event.recover_s,
        "relaunch_s": event.relaunch_s,
        "startup_s": startup,
        "rest_s": event.recover_s - event.relaunch_s - startup,
        "expected_s": expected,
        "recover_vs_expected": event.recover_s / expected,
        "redone_steps": event.redone_steps,
        "lost_s": event.lost_s,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet101-small")
    ap.add_argument("--steps", type=int, default=None, help="default 21 (12 with --quick)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (16 with --quick)")
    ap.add_argument("--heartbeat", type=float, default=None, help="default 2 s (1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a short run that checks the benchmark")
    args = ap.parse_args(argv)
    quick = {"steps": 12, "batch_size": 16, "heartbeat": 1.0}
    full = {"steps": 21, "batch_size": 64, "heartbeat": 2.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.steps < 11:
        ap.error("--steps must be at least 11: the faults are at steps 4 and 9, a checkpoint at 10")
    print(
        f"{args.model}, demo plan (2 stages x 2 functions of 2048 MB, 4 micro-batches of "
        f"{args.batch_size}), 70 MB/s links, {args.steps} steps, heartbeat {args.heartbeat:g} s"
        + (" (--quick)" if args.quick else "")
    )

    clean = run(args, checkpoint_every=EVERY)
    cold = max(clean.startup_s.values())
    ck = checkpoint_figures(clean)
    print(f"uninterrupted median period {ck['period_s']:.3f} s, cold start {cold:.2f} s")
    print(
        f"checkpoint    every {EVERY} steps: slowest piece write {ck['write_s']:.3f} s -> "
        f"{ck['overhead']:.2%} of a period per step (observed in the periods: "
        f"{ck['observed']:+.2%})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        kill, stop = Path(tmp, "kill"), Path(tmp, "stop")
        os.environ[failpoints.ENV] = json.dumps([
            {"function": "stage1-replica0", "at": "forward mb 0, step 4", "signal": "KILL",
             "once": str(kill)},
            {"function": "stage0-replica1", "at": "backward mb 1, step 9", "signal": "STOP",
             "once": str(stop)},
        ])  # fmt: skip
        t0 = time.monotonic()
        try:
            faulty = run(args, checkpoint_every=FAULT_EVERY, max_restarts=3)
        finally:
            del os.environ[failpoints.ENV]
        wall = time.monotonic() - t0
        failures = [r for r in faulty.recoveries if r.kind == "failure"]
        by_reason = {r.reason: r for r in failures}
        figures = {
            "kill": fault_figures(by_reason["crash"], kill, cold, ck["period_s"]),
            "hang": fault_figures(by_reason["hang"], stop, cold, ck["period_s"]),
        }
    same = all(
        torch.equal(a, b) for a, b in zip(faulty.model.state_dict().values(),
                                          clean.model.state_dict().values(), strict=True)
    )  # fmt: skip
    for name, f in figures.items():
        print(
            f"{name:<13} detected after {f['detect_s']:.2f} s, training again "
            f"{f['recover_s']:.2f} s later = clean-up {f['relaunch_s']:.2f} s + cold "
            f"start {f['startup_s']:.2f} s + feeding and first step {f['rest_s']:.2f} s "
            f"({f['recover_vs_expected']:.2f}x the expected {f['expected_s']:.2f} s); "
            f"{f['redone_steps']} finished steps redone, {f['lost_s']:.2f} s of work lost"
        )
    print(f"faults run    {wall:.0f} s; final parameters equal the uninterrupted run's: {same}")
    r3 = lambda x: round(x, 3)  # noqa: E731
    print(json.dumps({
        "detect_s": r3(max(f["detect_s"] for f in figures.values())),
        "recover_s": r3(max(f["recover_s"] for f in figures.values())),
        "checkpoint_overhead": round(ck["overhead"], 4),
        "checkpoint_overhead_observed": round(ck["observed"], 4),
        "checkpoint_write_s": r3(ck["write_s"]),
        "period_s": r3(ck["period_s"]),
        "cold_start_s": r3(cold),
        "kill": {k: r3(v) for k, v in figures["kill"].items()},
        "hang": {k: r3(v) for k, v in figures["hang"].items()},
        "equal_parameters": same,
        "quick": args.quick,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
