"""``funcpipe plan``: choose a plan by simulation, beside the baselines' choices."""

from __future__ import annotations

from pathlib import Path

import click

from funcpipe.client.cli.common import check_writable, epoch_samples_of
from funcpipe.client.demo import DEMO_MODEL, model_profile
from funcpipe.errors import PlanInfeasible

__all__ = ["plan_cmd"]


def _weights(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        a1, a2 = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give two numbers a1,a2 (objective a1*cost_usd + a2*time_s), e.g. 1,0.001"
        ) from None
    return a1, a2


@click.command("plan")
@click.option(
    "--model",
    "model_name",
    default=DEMO_MODEL,
    show_default=True,
    help="model to plan for (see `funcpipe models`)",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--platform",
    "platform_name",
    default="aws-lambda",
    show_default=True,
    help="aws-lambda, aws-lambda-arm64, alibaba-fc or local",
)
@click.option(
    "--weights",
    default="1,0.001",
    show_default=True,
    callback=_weights,
    help="a1,a2: minimise a1*cost (USD/iteration) + a2*time (s/iteration)",
)
@click.option("--budget", type=float, help="most USD per iteration (or per epoch, see --per)")
@click.option("--deadline", type=float, help="most seconds per iteration")
@click.option("--max-functions", type=click.IntRange(min=1), help="most functions in total")
@click.option(
    "--per",
    type=click.Choice(["iteration", "epoch"]),
    default="iteration",
    show_default=True,
    help="what --budget is per",
)
@click.option(
    "--epoch-samples",
    type=click.IntRange(min=1),
    help="samples per epoch [default: 50,000 for image models, 36,718 for BERT]",
)
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="use this saved profile (JSON from Profile.save) instead of profiling here",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the chosen plan here (for `funcpipe train --plan`)",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="also run TPDMP-like, LambdaML-like and Bayesian search for comparison",
)
def plan_cmd(model_name: str, batch_size: int, platform_name: str, weights: tuple[float, float],
             budget: float | None, deadline: float | None, max_functions: int | None, per: str,
             epoch_samples: int | None, profile_file: Path | None, out: Path | None,
             baselines: bool) -> None:  # fmt: skip
    """Choose a plan: stages, memory, replicas and micro-batches, by simulation."""
    from funcpipe.client.plan_report import comparison, plan_table, runners_up
    from funcpipe.planning.optimize import resolve_platform, solve
    from funcpipe.planning.profile import Profile

    check_writable(out, "--out")
    platform = resolve_platform(platform_name)
    prof = (
        Profile.load(profile_file) if profile_file else model_profile(model_name, echo=click.echo)
    )
    if epoch_samples is None:
        epoch_samples = epoch_samples_of(model_name)
    iters = max(1, epoch_samples // batch_size)
    if budget is not None and per == "epoch":
        budget = budget / iters
    sol = solve(prof, platform, batch_size=batch_size, weights=weights,
                max_functions=max_functions, budget=budget, deadline=deadline)  # fmt: skip
    best = sol.best
    if best is None:
        raise PlanInfeasible(sol.note)
    click.echo(f"plan for {model_name}, batch {batch_size}, on {platform.name}: "
               f"minimising {weights[0]:g}*cost + {weights[1]:g}*time")  # fmt: skip
    for line in plan_table(best, prof.layer_names, iters):
        click.echo(line)
    click.echo(f"solved in {sol.solve_s:.2f} s: {sol.predictions} plans simulated, "
               f"{sol.nodes} partial plans expanded over {sol.space.num_groups} layer groups; "
               + ("exact: no unsimulated plan can beat it" if sol.extra.get("proven_optimal", True)
                  else f"stopped at the time limit, at most {sol.extra['gap']:.0%} above the "
                  "optimum"))  # fmt: skip
    rows: list = [(f"runner-up {i + 1}", c, "") for i, c in enumerate(runners_up(sol))]
    if baselines:
        for method in ("tpdmp", "lambdaml", "bayes"):
            other = solve(prof, platform, batch_size=batch_size, weights=weights, method=method,
                          prediction_budget=sol.predictions, max_functions=max_functions,
                          budget=budget, deadline=deadline)  # fmt: skip
            rows.append((method, other.best, other.note))
    click.echo("")
    for line in comparison(best, rows):
        click.echo(line)
    if out is not None:
        out.write_text(best.plan.to_json())
        click.echo(f"plan written to {out} (funcpipe train --model {model_name} --plan {out})")
