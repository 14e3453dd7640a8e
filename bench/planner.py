"""The co-optimiser against the baselines on the paper's models, AWS Lambda profile.

For each model: the exact optimiser's solve time, objective (1 * USD + 0.001 * s per iteration),
predicted time and cost, beside the TPDMP-like partitioner, LambdaML-like data parallelism and
Bayesian / random black-box search given as many simulations as the optimiser used. Every
figure is the simulator's (`funcpipe.predict`), the same for all methods, so the ratios compare
the choices, not the models. Target: every optimiser solve <= 30 s on this machine.

Profiles are read from bench/profiles/<model>.json: full-size zoo models measured once on this
machine with `funcpipe.profile` at two small micro-batch sizes (1-2 samples, or 2-4 where
BatchNorm needs two samples) and 1 and 2 threads; larger micro-batches are extrapolated by the
profile. Each file's "meta.made_by" gives the exact call. `--profile-missing` measures any that
are absent (slow: minutes per model on two cores).

    .venv/bin/python bench/planner.py [--models resnet101,...] [--profile-missing]
    .venv/bin/python bench/planner.py --predicts 40   # time one predict on sampled plans instead

The last line is one JSON object: max_solve_s and one row per model and method (with
``--predicts N``: the slowest predict per model, of N plans sampled from the search space as the
optimiser meets them, the seed plans and random memory-feasible ones, plus the largest plan).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from funcpipe import models
from funcpipe.planning.baselines import seed_stages
from funcpipe.planning.optimize import DEFAULT_WEIGHTS, solve
from funcpipe.planning.platforms import get_platform
from funcpipe.planning.profile import Profile
from funcpipe.planning.profiler import profile
from funcpipe.planning.simulate import predict
from funcpipe.planning.space import SearchSpace, build_space

HERE = Path(__file__).resolve().parent
PROFILES = HERE / "profiles"
# Batch sizes: the paper's examples train with global batches of 64 (AmoebaNet-D, BERT) and
# shows ResNet-101 at 256.
MODELS = {"resnet101": 256, "amoebanet-d18": 64, "amoebanet-d36": 64, "bert-large": 64}
PROFILE_SIZES = {"resnet101": [1, 2], "bert-large": [1, 2]}  # others: [2, 4] (BatchNorm)
BASELINES = ("tpdmp", "lambdaml", "bayes", "random")
TARGET_S = 30.0
# The search space of every method: the memory sizes the paper's code deploys on AWS, stages cut
# at 8 merged layer groups, micro-batch counts dividing the batch up to 16 (the paper's examples
# use micro-batches of 4 samples in a batch of 64).
SPACE = {
    "memory_choices": (1024, 2048, 3072, 4096, 5120, 6144, 8192, 10240),
    "max_groups": 8,
    "max_micro_batches": 16,
}


def load_profile(name: str, make: bool) -> Profile:
    path = PROFILES / f"{name}.json"
    if path.is_file():
        return Profile.load(path)
    if not make:
        sys.exit(f"{path} is missing: run with --profile-missing to measure it here")
    sizes = PROFILE_SIZES.get(name, [2, 4])
    torch.manual_seed(0)
    task = models.task_for(name)
    print(f"profiling {name} at micro-batches {sizes} (slow)", flush=True)
    prof = profile(models.build(name), task.make_batch(max(sizes)), micro_batch_sizes=sizes,
                   loss_fn=task.loss_fn, threads=[1, 2], repeats=1, warmup=1)  # fmt: skip
    prof.meta["made_by"] = (
        f"profile(models.build({name!r}), task_for({name!r}).make_batch({max(sizes)}), "
        f"micro_batch_sizes={sizes}, threads=[1, 2], repeats=1, warmup=1)"
    )
    PROFILES.mkdir(exist_ok=True)
    prof.save(path)
    return prof


def _row(model: str, batch: int, method: str, sol, optimum: float | None) -> dict:
    best = sol.best
    row = {
        "model": model,
        "batch_size": batch,
        "method": method,
        "solve_s": round(sol.solve_s, 3),
        "predictions": sol.predictions,
        # a baseline that reached the time limit (25 s) before its search space was done
        "stopped_at_time_limit": bool(sol.extra.get("stopped", False)),
    }
    if best is None:
        return {**row, "feasible": False, "note": sol.note}
    p = best.plan
    return {
        **row,
        "feasible": True,
        "objective": best.objective,
        "time_s": round(best.prediction.time_s, 4),
        "cost_usd": best.prediction.cost_usd,
        "vs_optimal": round(best.objective / optimum, 4) if optimum else 1.0,
        "stages": [[s.start, s.end, s.memory_mb, s.replicas] for s in p.stages],
        "micro_batches": p.micro_batches,
    }


def sample_plans(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[int, list]]:
    """``n`` plans of ``space``: half of the optimiser's seed plans, random memory-feasible plans
    for the rest, and the largest plan (every group a stage, as many replicas as micro-batches)."""
    rng = random.Random(seed)
    seeds = seed_stages(space)
    plans = [(m, list(st)) for m, st in rng.sample(seeds, min(len(seeds), n // 2))]
    k, top = space.num_groups, max(space.micro_batch_counts)
    largest = [(i, i + 1, space.memory_choices[-1], top) for i in range(k)]
    if all(mem >= space.need_mb(i, j, top, d) for i, j, mem, d in largest):
        plans.append((top, largest))
    while len(plans) < n:
        m = rng.choice(space.micro_batch_counts)
        cuts = sorted(rng.sample(range(1, k), rng.randint(1, k) - 1))
        bounds = [0, *cuts, k]
        stages = [(i, j, rng.choice(space.memory_choices), rng.choice(space.replica_counts(m)))
                  for i, j in zip(bounds, bounds[1:], strict=False)]  # fmt: skip
        if all(mem >= space.need_mb(i, j, m, d) for i, j, mem, d in stages):
            plans.append((m, stages))
    return plans


def time_predicts(names: list[str], n: int, make: bool) -> None:
    """The slowest single predict of each model over ``sample_plans``."""
    platform = get_platform("aws-lambda")
    rows = []
    for name in names:
        batch = MODELS[name]
        prof = load_profile(name, make)
        space = build_space(prof, platform, batch_size=batch, **SPACE)
        times = []
        for m, stages in sample_plans(space, n):
            plan = space.plan(m, stages)
            t0 = time.perf_counter()
            predict(plan, prof, platform, batch_size=batch)
            times.append((time.perf_counter() - t0, m, stages))
        slowest = max(times, key=lambda t: t[0])
        print(f"{name:<14} {len(times)} plans: slowest predict {slowest[0]:.2f} s "
              f"(M={slowest[1]}, {len(slowest[2])} stages, "
              f"{sum(d for *_, d in slowest[2])} functions), median "
              f"{sorted(t[0] for t in times)[len(times) // 2]:.3f} s", flush=True)  # fmt: skip
        rows.append({"model": name, "plans": len(times), "max_predict_s": round(slowest[0], 3),
                     "slowest": {"micro_batches": slowest[1], "stages": slowest[2]}})  # fmt: skip
    print(json.dumps({"max_predict_s": max(r["max_predict_s"] for r in rows), "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--profile-missing", action="store_true")
    ap.add_argument("--predicts", type=int, default=0, metavar="N",
                    help="time predict on N sampled plans per model, no solves")  # fmt: skip
    args = ap.parse_args()
    if args.predicts:
        time_predicts(args.models.split(","), args.predicts, args.profile_missing)
        return
    platform = get_platform("aws-lambda")
    rows = []
    print(f"objective = {DEFAULT_WEIGHTS[0]:g} * USD + {DEFAULT_WEIGHTS[1]:g} * s per iteration; "
          f"platform {platform.name}; every figure from the simulator")  # fmt: skip
    header = (f"{'model':<14} {'B':>4} {'method':<9} {'solve s':>8} {'sims':>5} "
              f"{'time s':>8} {'cost $':>10} {'objective':>10} {'x opt':>6}  plan")  # fmt: skip
    print(header)
    for name in args.models.split(","):
        batch = MODELS[name]
        prof = load_profile(name, args.profile_missing)
        opt = solve(prof, platform, batch_size=batch, **SPACE)
        optimum = opt.best.objective if opt.best else None
        model_rows = [_row(name, batch, "optimal", opt, optimum)]
        model_rows[0]["nodes"] = opt.nodes
        model_rows[0]["layer_groups"] = opt.space.num_groups
        model_rows[0]["bound_violations"] = opt.extra.get("bound_violations", 0)
        model_rows[0]["proven_optimal"] = opt.extra.get("proven_optimal", True)
        model_rows[0]["gap"] = opt.extra.get("gap", 0.0)
        model_rows[0]["seeds_simulated"] = opt.extra.get("seeds_simulated", 0)
        for method in BASELINES:
            t0 = time.perf_counter()
            sol = solve(prof, platform, batch_size=batch, method=method,
                        prediction_budget=opt.predictions, **SPACE)  # fmt: skip
            sol.solve_s = time.perf_counter() - t0
            model_rows.append(_row(name, batch, method, sol, optimum))
        for r in model_rows:
            if r["feasible"]:
                shape = " ".join(f"[{a},{b})x{d}@{m}" for a, b, m, d in r["stages"])
                print(f"{name:<14} {batch:>4} {r['method']:<9} {r['solve_s']:>8.2f} "
                      f"{r['predictions']:>5} {r['time_s']:>8.3f} {r['cost_usd']:>10.6f} "
                      f"{r['objective']:>10.6f} {r['vs_optimal']:>6.2f}  M={r['micro_batches']} "
                      f"{shape}", flush=True)  # fmt: skip
            else:
                print(f"{name:<14} {batch:>4} {r['method']:<9} {r['solve_s']:>8.2f} "
                      f"{r['predictions']:>5}  infeasible: {r['note']}", flush=True)  # fmt: skip
        rows.extend(model_rows)
    solves = [r["solve_s"] for r in rows if r["method"] == "optimal"]
    others = [r["solve_s"] for r in rows if r["method"] != "optimal"]
    ratios = [r["vs_optimal"] for r in rows if r["method"] != "optimal" and r["feasible"]]
    print(f"optimiser: max solve {max(solves):.2f} s (target {TARGET_S:g} s), proven optimal on "
          f"{sum(bool(r.get('proven_optimal')) for r in rows)} of {len(solves)} models; every "
          f"baseline's objective / optimiser's >= {min(ratios):.4f}; baselines' max solve "
          f"{max(others):.2f} s")  # fmt: skip
    summary = {
        "max_solve_s": max(solves),
        "max_baseline_solve_s": max(others),
        "min_baseline_vs_optimal": min(ratios),
        "target_s": TARGET_S,
        "all_within_target": max(solves) <= TARGET_S,
        "weights": list(DEFAULT_WEIGHTS),
        "space": {k: list(v) if isinstance(v, tuple) else v for k, v in SPACE.items()},
        "platform": platform.name,
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
