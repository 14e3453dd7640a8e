"""How fast a job notices a lost function and is training again, and what checkpoints cost.

Three runs of the same job (default: ResNet-101-small on the demo plan, 2 stages x 2 functions
of 2048 MB, 4 micro-batches of a 64-sample batch, Lambda-like 70 MB/s links):

1. **baseline**: no checkpoints;
2. **checkpointed**: ``checkpoint_every=10``. The checkpoint overhead is the time the writing
   functions spend on their pieces (each piece's manifest records it; the pipeline waits for the
   slowest), per step, as a fraction of the baseline's median iteration time. The end-to-end
   difference of the two runs' median intervals is printed too, but it is noisy on a busy host;
3. **faults**: a function is killed with SIGKILL in a forward pass, later another one is frozen
   with SIGSTOP in a backward pass (failpoints). *detect* is the fault's time (written by the
   failpoint) to the client's verdict; *recover* is the verdict to the first step reported by the
   relaunched generation (cold start, restore, and redoing the steps since the checkpoint).

    python bench/recovery.py [--model resnet101-small] [--steps 21] [--heartbeat 2]

The last line is one JSON object: detect_s, recover_s (worst of kill and hang),
checkpoint_overhead, and the figures per fault.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from funcpipe import LinkConfig, Plan, train
from funcpipe.client.demo import make_job
from funcpipe.client.manager import Recovery
from funcpipe.client.train import TrainResult
from funcpipe.runtime import failpoints


def run(args: argparse.Namespace, **kw) -> TrainResult:
    job = make_job(args.model, batch_size=args.batch_size, data_dir=None, seed=0)
    plan = Plan.even(len(job.model), stages=2, replicas=2, memory_mb=2048, micro_batches=4)
    return train(
        job.model, job.loss_fn, optimizer=lambda p: __import__("torch").optim.Adam(p, lr=2e-3),
        batches=job.batches, plan=plan, steps=args.steps, link=LinkConfig(),
        heartbeat_s=args.heartbeat, progress=False, **kw,
    )  # fmt: skip


def median_interval(result: TrainResult) -> float:
    return statistics.median(h.iteration_s for h in result.history[1:])


def fault_figures(event: Recovery, marker: Path) -> dict[str, float]:
    fault_at = float(marker.read_text())
    return {"detect_s": event.detected_at - fault_at, "recover_s": event.recover_s}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet101-small")
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--heartbeat", type=float, default=2.0)
    args = ap.parse_args(argv)
    print(
        f"{args.model}, demo plan (2 stages x 2 functions of 2048 MB, 4 micro-batches of "
        f"{args.batch_size}), 70 MB/s links, {args.steps} steps, heartbeat {args.heartbeat:g} s"
    )

    base = run(args)
    base_iter = median_interval(base)
    print(f"baseline      median iteration {base_iter:.3f} s")

    ckpt = run(args, checkpoint_every=10)
    writes = [s for _, s in ckpt.checkpoints]
    per_step = (max(writes) if writes else 0.0) / 10
    overhead = per_step / base_iter
    e2e = (median_interval(ckpt) - base_iter) / base_iter
    print(
        f"checkpointed  every 10 steps: slowest piece write {max(writes, default=0):.3f} s -> "
        f"{overhead:.1%} of an iteration per step (end to end: {e2e:+.1%}, noisy)"
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
        faulty = run(args, checkpoint_every=3, max_restarts=3)
        wall = time.monotonic() - t0
        del os.environ[failpoints.ENV]
        failures = [r for r in faulty.recoveries if r.kind == "failure"]
        by_reason = {r.reason: r for r in failures}
        figures = {"kill": fault_figures(by_reason["crash"], kill),
                   "hang": fault_figures(by_reason["hang"], stop)}  # fmt: skip
    same = all(
        (a == b).all() for a, b in zip(faulty.model.state_dict().values(),
                                       base.model.state_dict().values(), strict=True)
    )  # fmt: skip
    for name, f in figures.items():
        print(
            f"{name:<13} detected after {f['detect_s']:.2f} s, training again "
            f"{f['recover_s']:.2f} s later"
        )
    print(f"faults run    {wall:.0f} s; final parameters equal the baseline's: {same}")
    print(json.dumps({
        "detect_s": round(max(f["detect_s"] for f in figures.values()), 3),
        "recover_s": round(max(f["recover_s"] for f in figures.values()), 3),
        "checkpoint_overhead": round(overhead, 4),
        "checkpoint_overhead_end_to_end": round(e2e, 4),
        "iteration_s": round(base_iter, 3),
        "kill": {k: round(v, 3) for k, v in figures["kill"].items()},
        "hang": {k: round(v, 3) for k, v in figures["hang"].items()},
        "equal_parameters": same,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
