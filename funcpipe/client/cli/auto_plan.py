"""The planner's choice for a ``funcpipe train`` run given no plan, and how the run bore it out."""

from __future__ import annotations

from typing import Any

import click

from funcpipe.client.cli.common import epoch_samples_of
from funcpipe.client.demo import model_profile
from funcpipe.errors import PlanInfeasible
from funcpipe.storage.throttle import LinkConfig

__all__ = ["PLAN_TIME_LIMIT_S", "choose_plan", "predicted_vs_measured"]

PLAN_TIME_LIMIT_S = 10.0  # `funcpipe train` plans quickly; `funcpipe plan` searches longer


def choose_plan(model_name: str, batch_size: int, micro_batches: int | None, platform: str,
                link: LinkConfig) -> Any:  # fmt: skip
    """The planner's choice for this run: profile the model (cached), then `solve` for the
    platform the job runs on (the local emulator with this run's link, or AWS Lambda)."""
    from funcpipe.client.plan_report import plan_table
    from funcpipe.planning.optimize import solve
    from funcpipe.planning.platforms import get_platform, local_platform

    prof = model_profile(model_name, echo=click.echo)
    # lithops' localhost backend runs its functions on this host too
    target = get_platform("aws-lambda") if platform == "aws-lambda" else local_platform(link)
    sol = solve(prof, target, batch_size=batch_size, time_limit_s=PLAN_TIME_LIMIT_S,
                micro_batch_counts=None if micro_batches is None else [micro_batches])  # fmt: skip
    best = sol.best
    if best is None:
        raise PlanInfeasible(sol.note + "; or give a plan: --plan FILE or --stages/--replicas")
    iters = max(1, epoch_samples_of(model_name) // batch_size)
    exact = (
        "optimal: no plan of the search space predicts better"
        if sol.extra.get("proven_optimal", True)
        else f"best found in the time limit, at most {sol.extra['gap']:.0%} above the optimum"
    )
    click.echo(f"planner   {sol.predictions} plans simulated in {sol.solve_s:.1f} s for "
               f"{target.name} ({exact}); minimising 1*cost + 0.001*time per iteration; "
               "--stages/--replicas/--memory-mb or --plan give your own")  # fmt: skip
    for line in plan_table(best, prof.layer_names, iters):
        click.echo(f"          {line}")
    return best


def predicted_vs_measured(pred: Any, history: list) -> str:
    """The planner's prediction beside what the run measured (steady state: steps after 0)."""
    steady = [h.iteration_s for h in history[1:]] or [history[0].iteration_s]
    steady = sorted(steady)
    measured = steady[len(steady) // 2]
    err = (pred.time_s - measured) / measured if measured > 0 else float("nan")
    cost = sorted(h.cost_usd for h in history[1:] or history)[len(steady) // 2]
    return (
        f"predicted {pred.time_s:.3f} s and ${pred.cost_usd:.6f} per iteration; measured "
        f"{measured:.3f} s and ${cost:.6f} (median of {len(steady)} step(s) after the first): "
        f"prediction {err:+.0%} off"
    )
