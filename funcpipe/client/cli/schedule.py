"""``funcpipe schedule``: print each function's action list for a plan, checked."""

from __future__ import annotations

from pathlib import Path

import click

from funcpipe.client.cli.common import DEFAULT_MICRO_BATCHES
from funcpipe.plan import Plan
from funcpipe.schedule import check_schedule, format_schedule, schedule_for

__all__ = ["schedule_cmd"]


def _replica_counts(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(r) for r in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a number or a comma-separated list of numbers such as 1,2,3"
        ) from None
    if any(c < 1 for c in counts):
        raise click.BadParameter(f"{value!r}: every stage needs at least 1 replica")
    return counts


@click.command("schedule")
@click.option("--stages", default=2, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--replicas",
    default="2",
    show_default=True,
    callback=_replica_counts,
    help="functions per stage: one number for all stages, or one per stage (1,2,3)",
)
@click.option(
    "--micro-batches", default=DEFAULT_MICRO_BATCHES, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="check this JSON plan file instead of --stages/--replicas/--micro-batches",
)
def schedule_cmd(
    stages: int, replicas: list[int], micro_batches: int, plan_file: Path | None
) -> None:
    """Print each function's action list for a plan and prove it deadlock-free."""
    from funcpipe.planning.plan import Stage

    if plan_file is not None:
        _print_schedule(Plan.from_json(plan_file.read_text()))
        return
    if len(replicas) == 1:
        replicas = replicas * stages
    elif len(replicas) != stages:
        raise click.BadParameter(
            f"gives {len(replicas)} counts but --stages is {stages}: give one number, "
            f"or exactly {stages} comma-separated ones",
            param_hint="--replicas",
        )
    plan = Plan(stages=[Stage(start=i, end=i + 1, replicas=d) for i, d in enumerate(replicas)],
                micro_batches=micro_batches)  # fmt: skip
    _print_schedule(plan)


def _print_schedule(plan: Plan) -> None:
    sched = schedule_for(plan)
    check_schedule(sched)
    click.echo(format_schedule(sched))
    click.echo(f"checked: {sum(len(a) for a in sched.values())} actions, no deadlock")
