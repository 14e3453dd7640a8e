"""How wrong is the planner's model? Predicted vs measured iteration time on the local emulator.

For each plan below the model is profiled on this machine (``funcpipe.profile``), the plan's
iteration time predicted for the "local" platform with the link the run uses
(``funcpipe.predict``), then the plan is trained with ``funcpipe.train(platform="local")`` and its
steady-state iteration time measured from the functions' own reports: the median period between
the ends of consecutive steps, skipping step 0 (start-up); each plan runs at least ``--steps``
steps and at least ``--seconds`` of predicted steady state (short iterations get more steps, so
one hiccup of the shared host does not decide a plan's figure).

A shared host's speed drifts in spells of seconds to minutes (the same loop 13 ms a step for a
while, then 20 ms), so one profile and one run a minute apart may sample different spells. A
round therefore profiles the model right before the run and again right after it, and predicts
from each (the round's prediction is their mean: both sides of the spell the run saw). Each
plan is profiled and run ``--rounds`` times, the rounds going through every plan before the next
starts (so a plan's rounds are minutes apart), and a plan's figure compares the median of its
predictions with the median of its measurements. The headline is the relative error
|predicted - measured| / measured: its median and worst case over the plans; every round's own
error is kept in the rows (and summarised as ``single_round_*``).

The plans cover 1-4 stages, 1-3 replicas, CPU shares from 0.3 to 2 cores (the host's cores are
shared by all emulated functions, which the model accounts for), a slow link where
communication dominates and a fast one where compute does, on the demo CNN and two zoo models.
The host is shared: other programs slow the emulated functions down. The profile times
single-threaded compute in CPU time (immune to that load), and right before and after each run a
probe job (one spinning process per core, in a cpu cgroup beside the jobs', as LocalPlatform
places functions) measures how many cores a busy job gets now; the prediction the error is
computed from gives the job that many cores (the simulator shares them max-min fairly among its
busy functions, each capped at its CPU quota). Each row also shows the prediction for a quiet
host (all the host's cores).

    python bench/model_error.py [--rounds 3] [--steps 10] [--seconds 4] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from funcpipe import LinkConfig, Plan, Profile, Stage, predict, profile, train
from funcpipe.client.demo import make_job
from funcpipe.planning.platforms import local_platform

FAST = LinkConfig(up_mb_s=1000.0, down_mb_s=1000.0, latency_s=0.002)
DEFAULT = LinkConfig()
SLOW = LinkConfig(up_mb_s=4.0, down_mb_s=4.0, latency_s=0.02)


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    batch_size: int
    plan: Plan
    link: LinkConfig


def _plan(bounds: list[int], replicas: list[int], memory: list[int], micro: int) -> Plan:
    return Plan(
        stages=[
            Stage(start=a, end=b, replicas=r, memory_mb=m)
            for a, b, r, m in zip(bounds, bounds[1:], replicas, memory, strict=False)
        ],
        micro_batches=micro,
    )


CASES = [
    Case("cnn 1 stage, 1 core, fast link", "cnn", 64, _plan([0, 12], [1], [1769], 4), FAST),
    Case("cnn 1 stage, 2 cores", "cnn", 64, _plan([0, 12], [1], [3538], 4), DEFAULT),
    Case(
        "cnn 2 stages, 0.6 core, default link", "cnn", 64,
        _plan([0, 5, 12], [1, 1], [1024, 1024], 4), DEFAULT,
    ),
    Case(
        "cnn 2 stages x 2 replicas, slow link", "cnn", 32,
        _plan([0, 5, 12], [2, 2], [1769, 1769], 4), SLOW,
    ),
    Case(
        "cnn 3 stages, replicas 1-3-2", "cnn", 48,
        _plan([0, 3, 8, 12], [1, 3, 2], [1769, 512, 1024], 6), DEFAULT,
    ),
    Case(
        "resnet101-small 2 stages", "resnet101-small", 32,
        _plan([0, 4, 8], [1, 1], [1769, 1769], 4), DEFAULT,
    ),
    Case(
        "resnet101-small 4 stages, slow link", "resnet101-small", 16,
        _plan([0, 2, 4, 6, 8], [1, 1, 1, 1], [1024, 1024, 1024, 1024], 4), SLOW,
    ),
    Case(
        "bert-large-small 2 stages x 3 replicas", "bert-large-small", 48,
        _plan([0, 3, 6], [3, 3], [768, 768], 6), DEFAULT,
    ),
    Case(
        "bert-large-small 1 stage, fast link", "bert-large-small", 64,
        _plan([0, 6], [1], [1769], 4), FAST,
    ),
]  # fmt: skip


CPU_GROUPS = "/sys/fs/cgroup/cpu/funcpipe"  # where LocalPlatform puts each function's cpu group


def job_cores(seconds: float = 0.7) -> float:
    """Cores an emulated job gets on this shared host right now, as its functions see it.

    LocalPlatform puts every function in a cpu cgroup under ``CPU_GROUPS``/<job>; the kernel
    shares the host between other programs' threads and that tree, then between the jobs in it.
    So the probe is a job of its own: one spinning process per host core in a fresh group beside
    the jobs' (no quota); the cores they get together are what a busy job gets. Without
    writable cgroups the probe processes run ungrouped.
    """
    cores = len(os.sched_getaffinity(0))
    group = os.path.join(CPU_GROUPS, f"probe-{os.getpid()}", "probe")
    try:
        os.makedirs(group)
    except OSError:
        group = ""
    children = []
    for _ in range(cores):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a probe: join the group, spin, report its share of a core
            try:
                os.close(r)
                if group:
                    with open(os.path.join(group, "cgroup.procs"), "w") as f:
                        f.write(str(os.getpid()))
                wall0, cpu0 = time.perf_counter(), time.thread_time()
                while time.perf_counter() - wall0 < seconds:
                    sum(range(1000))
                share = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
                os.write(w, repr(share).encode())
            finally:
                os._exit(0)
        os.close(w)
        children.append((pid, r))
    total = 0.0
    for pid, r in children:
        with os.fdopen(r) as f:
            total += float(f.read() or "0")
        os.waitpid(pid, 0)
    for path in (group, os.path.dirname(group)) if group else ():
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return min(float(cores), total)


def micro_sizes(batch_size: int, micro: int) -> list[int]:
    base, extra = divmod(batch_size, micro)
    return sorted({base + (b < extra) for b in range(micro)})


def measure_once(
    case: Case,
    min_steps: int,
    min_seconds: float,
    repeats: int,
    profile_seconds: float,
) -> dict:
    """Profile the model, train the plan, profile again: one prediction (from the profiles on
    either side of the run) and one measurement."""
    job = make_job(case.model, batch_size=case.batch_size, data_dir=None, seed=0)
    batches = list(itertools.islice(job.batches, min_steps))

    def adam(params: list) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=1e-3)

    sizes = micro_sizes(case.batch_size, case.plan.micro_batches)

    def profiled() -> Profile:
        return profile(
            job.model, batches[0], micro_batch_sizes=sorted({*sizes, max(sizes) * 2}),
            loss_fn=job.loss_fn, optimizer=adam, repeats=repeats, min_seconds=profile_seconds,
        )  # fmt: skip

    t0 = time.perf_counter()
    prof = profiled()
    profile_s = time.perf_counter() - t0
    quiet = predict(case.plan, prof, local_platform(case.link), batch_size=case.batch_size)
    # Short iterations get more steps, so that every plan is measured over similar wall time.
    steps = max(min_steps, math.ceil(min_seconds / quiet.time_s) + 2)
    batches = list(itertools.islice(job.batches, steps))
    before = job_cores()
    result = train(
        job.model, job.loss_fn, optimizer=adam, batches=batches, plan=case.plan, steps=steps,
        link=case.link, progress=False,
    )  # fmt: skip
    available = (before + job_cores()) / 2
    after = profiled()
    ends = [max(r["end"] for r in step) for step in result.reports]
    platform = local_platform(case.link, host_cores=available)
    # One profile right before the run and one right after: the host's speed drifts in spells,
    # and the two together sample the spell the run saw from both sides.
    preds = [predict(case.plan, p, platform, batch_size=case.batch_size) for p in (prof, after)]
    pred = preds[0]
    # Steady state: the median period between consecutive step ends after step 1 (step 0 holds
    # the cold start), robust to a hiccup of the shared host in one step.
    measured = statistics.median(b - a for a, b in itertools.pairwise(ends[1:]))
    return {
        "predicted_s": statistics.mean(p.time_s for p in preds),
        "predicted_before_after_s": [p.time_s for p in preds],
        "measured_s": measured,
        "predicted_quiet_host_s": quiet.time_s,
        "cpu_shares": [round(c, 2) for c in pred.cpus],
        "job_cores": available,
        "compute_share": statistics.mean(
            b.compute_s / pred.time_s for b in pred.breakdown.values()
        ),
        "profile_s": profile_s,
        "steps": steps,
    }


def summarize(case: Case, rounds: list[dict]) -> dict:
    """One plan's row: the typical prediction against the typical measurement.

    Each round's profile and run sample this host's speed at one moment, and its speed drifts
    by tens of percent over seconds to minutes; the median over rounds taken minutes apart is
    what the model is meant to predict (the per-round errors are kept in the row).
    """
    predicted = statistics.median(r["predicted_s"] for r in rounds)
    measured = statistics.median(r["measured_s"] for r in rounds)
    per_round = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rounds]
    return {
        "plan": case.name,
        "model": case.model,
        "batch_size": case.batch_size,
        "stages": case.plan.num_stages,
        "replicas": [s.replicas for s in case.plan.stages],
        "memory_mb": [s.memory_mb for s in case.plan.stages],
        "cpu_shares": rounds[0]["cpu_shares"],
        "link_mb_s": case.link.up_mb_s,
        "predicted_s": round(predicted, 4),
        "measured_s": round(measured, 4),
        "error": round(abs(predicted - measured) / measured, 4),
        "signed_error": round((predicted - measured) / measured, 4),
        "round_predicted_s": [round(r["predicted_s"], 4) for r in rounds],
        "round_predicted_before_after_s": [
            [round(t, 4) for t in r["predicted_before_after_s"]] for r in rounds
        ],
        "round_measured_s": [round(r["measured_s"], 4) for r in rounds],
        "round_errors": [round(e, 4) for e in per_round],
        "job_cores": [round(r["job_cores"], 2) for r in rounds],
        "predicted_quiet_host_s": round(
            statistics.median(r["predicted_quiet_host_s"] for r in rounds), 4
        ),
        "predicted_compute_share": round(statistics.median(r["compute_share"] for r in rounds), 3),
        "profile_s": round(statistics.median(r["profile_s"] for r in rounds), 1),
        "steps": rounds[0]["steps"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="least steps per run (step 0 skipped)")
    ap.add_argument(
        "--seconds", type=float, default=4.0,
        help="least predicted steady-state seconds per run: short iterations get more steps",
    )  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=3,
        help="profile-and-run rounds per plan, interleaved across the plans",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10, help="least profile rounds over the model")
    ap.add_argument(
        "--profile-seconds", type=float, default=1.5,
        help="least seconds of profile rounds per micro-batch size and thread count",
    )  # fmt: skip
    ap.add_argument("--only", nargs="*", help="run only plans whose name contains one of these")
    args = ap.parse_args()
    if args.steps < 3:
        sys.exit("--steps must be >= 3 (step 0 is skipped, and a period needs two ends)")
    if args.rounds < 1:
        sys.exit("--rounds must be >= 1")
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    if not cases:
        sys.exit(f"no plan matches --only {args.only}; plans: {[c.name for c in CASES]}")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {c.name: [] for c in cases}
    # Rounds go through every plan before the next round starts, so each plan's rounds sample
    # the host minutes apart.
    for r in range(args.rounds):
        for case in cases:
            one = measure_once(
                case, args.steps, args.seconds, args.repeats, args.profile_seconds,
            )  # fmt: skip
            runs[case.name].append(one)
            print(
                f"round {r + 1}/{args.rounds}  {case.name:<42} predicted "
                f"{one['predicted_s']:7.3f} s  measured {one['measured_s']:7.3f} s",
                flush=True,
            )
    rows = [summarize(case, runs[case.name]) for case in cases]
    for row in rows:
        print(
            f"{row['plan']:<42} predicted {row['predicted_s']:7.3f} s  measured "
            f"{row['measured_s']:7.3f} s  error {100 * row['error']:5.1f} %  (rounds: "
            + ", ".join(f"{100 * e:.1f} %" for e in row["round_errors"])
            + ")",
            flush=True,
        )
    errors = [r["error"] for r in rows]
    round_errors = [e for r in rows for e in r["round_errors"]]
    summary = {
        "median_error": round(statistics.median(errors), 4),
        "worst_error": round(max(errors), 4),
        "plans": len(rows),
        "rounds": args.rounds,
        "single_round_median_error": round(statistics.median(round_errors), 4),
        "single_round_worst_error": round(max(round_errors), 4),
        "host_cores": len(os.sched_getaffinity(0)),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "min_steps_per_run": args.steps,
        "profile_repeats": args.repeats,
        "profile_seconds": args.profile_seconds,
        "rows": rows,
    }
    print(
        f"median error {100 * summary['median_error']:.1f} %, worst "
        f"{100 * summary['worst_error']:.1f} % over {len(rows)} plans, {args.rounds} rounds each "
        f"(single rounds: median {100 * summary['single_round_median_error']:.1f} %, worst "
        f"{100 * summary['single_round_worst_error']:.1f} %)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
