"""``funcpipe`` command line: train on emulated functions, inspect schedules, list models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import torch

from funcpipe import __version__
from funcpipe.client.demo import (
    DEMO_MODEL,
    eval_batches,
    make_job,
    model_info,
    model_names,
    model_profile,
)
from funcpipe.client.deploy import deploy_cmd
from funcpipe.client.jobs import LIVE_WINDOW_S
from funcpipe.client.pricing import AWS_LAMBDA
from funcpipe.client.trace import chrome_trace
from funcpipe.client.train import train
from funcpipe.errors import FuncPipeError, PlanInfeasible
from funcpipe.planning.plan import Plan
from funcpipe.runtime.check import check_schedule
from funcpipe.runtime.schedule import build_schedule, format_schedule
from funcpipe.storage.throttle import LinkConfig

DEFAULT_MICRO_BATCHES = 4
OPTIMIZERS = {
    "sgd": lambda lr: lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda lr: lambda params: torch.optim.Adam(params, lr=lr),
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", prog_name="funcpipe", message="%(prog)s %(version)s"
)
def cli() -> None:
    """FuncPipe: pipelined, data-parallel training on serverless functions."""


def _plan(plan_file: Path | None, num_layers: int, stages: int, replicas: int, memory_mb: int,
          micro_batches: int | None) -> Plan:  # fmt: skip
    if plan_file is not None:
        plan = Plan.from_json(plan_file.read_text())
        if micro_batches is not None and micro_batches != plan.micro_batches:
            raise click.BadParameter(
                f"is {micro_batches} but {plan_file} sets micro_batches {plan.micro_batches}; "
                "drop --micro-batches or change the plan file",
                param_hint="--micro-batches",
            )
        return plan
    return Plan.even(
        num_layers, stages=stages, replicas=replicas, memory_mb=memory_mb,
        micro_batches=DEFAULT_MICRO_BATCHES if micro_batches is None else micro_batches,
    )  # fmt: skip


HAND_MADE = ("stages", "replicas", "memory_mb")
PLAN_TIME_LIMIT_S = 10.0  # `funcpipe train` plans quickly; `funcpipe plan` searches longer


def _hand_made(ctx: click.Context) -> bool:
    """Whether the user gave --stages, --replicas or --memory-mb (a Plan.even plan)."""
    from click.core import ParameterSource

    return any(
        ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT) for name in HAND_MADE
    )


def _planned(model_name: str, batch_size: int, micro_batches: int | None, platform: str,
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
    kind = "image" if model_name == DEMO_MODEL else _kind(model_name)
    iters = max(1, EPOCH_SAMPLES[kind] // batch_size)
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


def _predicted_vs_measured(pred: Any, history: list) -> str:
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


def _check_writable(path: Path | None, option: str = "--json-out") -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"folder {folder} is not writable", param_hint=option)


@cli.command("train")
@click.option(
    "--model",
    "model_name",
    default=DEMO_MODEL,
    show_default=True,
    help=f"model to train: {DEMO_MODEL} or a zoo model (see `funcpipe models`)",
)
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--micro-batches",
    type=click.IntRange(min=1),
    help=f"micro-batches per global batch [default: {DEFAULT_MICRO_BATCHES}]; with --plan the "
    "plan's micro_batches is used, and a different number here is an error",
)
@click.option(
    "--stages",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="pipeline stages (layers split evenly: Plan.even); without --stages, --replicas, "
    "--memory-mb and --plan, the planner chooses the plan",
)
@click.option(
    "--replicas",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="functions per stage (data parallelism; with --stages/--memory-mb a hand-made plan); "
    "ignored with --plan",
)
@click.option(
    "--memory-mb",
    default=2048,
    show_default=True,
    type=int,
    help="memory of each function (a hand-made plan, as --stages); ignored with --plan",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON plan: {"stages": [{"start":0,"end":6,"replicas":2,...}], ...}',
)
@click.option(
    "--optimizer", type=click.Choice(sorted(OPTIMIZERS)), default="adam", show_default=True
)
@click.option("--lr", default=0.002, show_default=True, type=float)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="folder with the real CIFAR-10 binaries / Wikitext-2 raw files; "
    "default: synthetic files in the same formats",
)
@click.option(
    "--storage",
    default="local",
    show_default=True,
    help="storage URL: local (a folder under $FUNCPIPE_STORAGE_DIR, default "
    "~/.cache/funcpipe/storage), local:///path, redis://host:port/db, "
    "s3://bucket/prefix?endpoint_url=... (see docs/storage.md)",
)
@click.option(
    "--bandwidth",
    default=70.0,
    show_default=True,
    type=float,
    help="each function's upload and download bandwidth, MB/s",
)
@click.option(
    "--latency-ms", default=10.0, show_default=True, type=float, help="per-request storage latency"
)
@click.option("--no-throttle", is_flag=True, help="do not emulate function bandwidth")
@click.option(
    "--sync",
    type=click.Choice(["pipelined", "naive"]),
    default="pipelined",
    show_default=True,
    help="gradient synchronisation among a stage's replicas",
)
@click.option(
    "--timeout",
    default=120.0,
    show_default=True,
    type=float,
    help="seconds any wait may take before the job fails",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    help="checkpoint every K steps, so a failure loses at most K steps and `funcpipe resume` "
    "can continue the job after this client dies",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    help="validate every K steps and after the last (CIFAR-10's test batch, or Wikitext-2's "
    "validation split for BERT): loss and accuracy in the table and the progress bar",
)
@click.option(
    "--eval-samples",
    type=click.IntRange(min=1),
    help="validate on the first N samples only [default: the whole split]",
)
@click.option(
    "--function-timeout",
    default=900.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="each function's lifetime limit in seconds; longer jobs hand over to new functions",
)
@click.option(
    "--max-restarts",
    default=3,
    show_default=True,
    type=click.IntRange(min=0),
    help="failed functions replaced (rolling back to the last checkpoint) before giving up",
)
@click.option("--job-id", help="name of the job in storage [default: random]")
@click.option("--resume", "resume_job", is_flag=True, hidden=True)  # set by `funcpipe resume`
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the per-step history as JSON here",
)
@click.option(
    "--trace",
    "trace_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a Chrome trace of every function's compute/upload/download (chrome://tracing)",
)
@click.option(
    "--save",
    "save_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the trained model here as safetensors (load it with funcpipe.load_into)",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="stream the history to DIR/history.csv and TensorBoard files in DIR while training",
)
@click.option(
    "--platform",
    type=click.Choice(["local", "lithops", "aws-lambda"]),
    default="local",
    show_default=True,
    help="where the functions run; the emulated link (--bandwidth) applies to local only",
)
@click.option(
    "--stored-data",
    metavar="NAME",
    help="train on data set NAME uploaded to --storage with `funcpipe data upload`: the "
    "functions read their own micro-batches and the client feeds nothing",
)
@click.option(
    "--on-nonfinite",
    type=click.Choice(["raise", "skip"]),
    default="raise",
    show_default=True,
    help="a NaN/inf loss stops the job at its step (raise), or drops that step's update (skip)",
)
def train_cmd(model_name: str, steps: int, batch_size: int, micro_batches: int | None, stages: int,
              replicas: int, memory_mb: int, plan_file: Path | None, optimizer: str, lr: float,
              data_dir: str | None, storage: str, bandwidth: float, latency_ms: float,
              no_throttle: bool, sync: str, timeout: float, seed: int, json_out: Path | None,
              trace_out: Path | None, save_to: Path | None, log_dir: Path | None,
              platform: str, stored_data: str | None, on_nonfinite: str,
              checkpoint_every: int | None = None, eval_every: int | None = None,
              eval_samples: int | None = None, function_timeout: float = 900.0,
              max_restarts: int = 3, job_id: str | None = None,
              resume_job: bool = False) -> None:  # fmt: skip
    """Train a model on local emulated functions (default: a small CNN on CIFAR-10 data)."""
    # Everything `funcpipe resume` needs to rebuild this job, kept with the job (no storage URL,
    # no output paths).
    options = {k: v for k, v in locals().items()
               if k not in ("json_out", "trace_out", "save_to", "log_dir", "storage",
                            "plan_file", "job_id", "resume_job")}  # fmt: skip
    _check_writable(json_out)
    _check_writable(trace_out, "--trace")
    _check_writable(save_to, "--save")
    job = make_job(model_name, batch_size=batch_size, data_dir=data_dir, seed=seed)
    # The emulated link belongs to local functions; a cloud's functions have a real one.
    emulate = platform == "local" and not no_throttle
    link = LinkConfig(up_mb_s=bandwidth, down_mb_s=bandwidth, latency_s=latency_ms / 1000,
                      enabled=emulate)  # fmt: skip
    planned = None
    if plan_file is None and not _hand_made(click.get_current_context()):
        planned = _planned(model_name, batch_size, micro_batches, platform, link)
        plan = planned.plan
    else:
        plan = _plan(plan_file, len(job.model), stages, replicas, memory_mb, micro_batches)
    plan.check_model(len(job.model))  # before printing the stages, so no wrong plan is shown
    plan.check_batch(batch_size)
    options["plan"] = json.loads(plan.to_json())
    data_ref = _stored_data_ref(storage, stored_data) if stored_data else None
    params = sum(p.numel() for p in job.model.parameters())
    click.echo(f"model     {model_name}: {len(job.model)} layers, {params / 1e6:.2f} M parameters")
    click.echo(f"data      {job.data_note}")
    for i, s in enumerate(plan.stages):
        click.echo(f"stage {i}   layers [{s.start}, {s.end}) on {s.replicas} function(s) of "
                   f"{s.memory_mb} MB")  # fmt: skip
    links = f"{bandwidth:g} MB/s each way" if emulate else "not emulated"
    if data_ref is not None:
        click.echo(f"data      read by the functions from data set {stored_data!r} in storage "
                   f"({data_ref['samples']} samples)")  # fmt: skip
    click.echo(f"pipeline  {plan.micro_batches} micro-batches of a {batch_size}-sample batch; "
               f"links {links}")  # fmt: skip
    evals = None
    if eval_every:
        evals, note = eval_batches(model_name, batch_size=batch_size, data_dir=data_dir,
                                   samples=eval_samples)  # fmt: skip
        click.echo(f"validate  every {eval_every} steps on {note}")
    result = train(job.model, job.loss_fn, optimizer=OPTIMIZERS[optimizer](lr),
                   batches=None if data_ref else job.batches, data=data_ref,
                   batch_size=batch_size if data_ref else None, platform=platform,
                   plan=plan, steps=steps, storage=storage, link=link,
                   timeout_s=timeout, sync_algorithm=sync,
                   on_nonfinite=on_nonfinite, log_dir=log_dir, seed=seed,
                   checkpoint_every=checkpoint_every, eval_batches=evals, eval_every=eval_every,
                   function_timeout_s=function_timeout, max_restarts=max_restarts,
                   job_id=job_id, resume=job_id if resume_job else None,
                   metadata={"cli": options})  # fmt: skip
    if resume_job:
        click.echo(f"resumed   job {job_id} at step {result.history[0].step}")
    for r in result.recoveries:
        lost = (f", {r.redone_steps} step(s) redone, {r.lost_s:.1f} s lost"
                if r.kind == "failure" else "")  # fmt: skip
        click.echo(f"relaunch  {r.kind}: {r.message.splitlines()[0]} -> generation "
                   f"{r.generation} from step {r.resumed_from} (training again after "
                   f"{r.recover_s:.1f} s{lost})")  # fmt: skip
    click.echo(f"{'step':>5} {'loss':>9} {'iter s':>8} {'cost $':>10}"
               + (f" {'val loss':>9} {'val acc':>8}" if eval_every else ""))  # fmt: skip
    for h in result.history:
        line = f"{h.step:>5} {h.loss:>9.4f} {h.iteration_s:>8.3f} {h.cost_usd:>10.6f}"
        if h.val_loss is not None:
            acc = "" if h.val_accuracy is None else f"{h.val_accuracy:.3f}"
            line += f" {h.val_loss:>9.4f} {acc:>8}"
        click.echo(line)
    first, last = result.history[0].loss, result.history[-1].loss
    mean_iter = sum(h.iteration_s for h in result.history) / len(result.history)
    click.echo(f"loss {first:.4f} -> {last:.4f}; mean iteration {mean_iter:.3f} s; "
               f"{AWS_LAMBDA.name} cost of this run ${result.total_cost_usd:.6f}")  # fmt: skip
    parts = {k: sum(getattr(h, k) for h in result.history)
             for k in ("compute_usd", "request_usd", "startup_usd")}  # fmt: skip
    starts = sorted(result.startup_s.values())
    if starts:
        click.echo(f"cost      compute ${parts['compute_usd']:.6f}, requests "
                   f"${parts['request_usd']:.6f}, start-up ${parts['startup_usd']:.6f}; cold "
                   f"start {starts[len(starts) // 2]:.2f} s per function (median)")  # fmt: skip
    if planned is not None:
        click.echo(_predicted_vs_measured(planned.prediction, result.history))
    if json_out is not None:
        json_out.write_text(json.dumps(
            {"plan": json.loads(plan.to_json()), "history": [h.__dict__ for h in result.history]},
            indent=2))  # fmt: skip
    if save_to is not None:
        result.save(save_to)
        click.echo(f"saved     {save_to} (safetensors; funcpipe.load_into(model, path))")
    if trace_out is not None:
        trace_out.write_text(json.dumps(chrome_trace(result.reports)))
        click.echo(f"trace     {trace_out} (open in chrome://tracing or ui.perfetto.dev)")


@cli.command("resume")
@click.argument("job_id")
@click.option("--storage", default="local", show_default=True,
              help="the storage URL the job ran with")  # fmt: skip
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the per-step history (of the resumed steps) as JSON here",
)
@click.option(
    "--save",
    "save_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the trained parameters here (safetensors)",
)
@click.pass_context
def resume_cmd(ctx: click.Context, job_id: str, storage: str, json_out: Path | None,
               save_to: Path | None) -> None:  # fmt: skip
    """Continue a `funcpipe train` job whose client died, from its last checkpoint."""
    import tempfile

    from funcpipe.client.jobs import validate_job_id
    from funcpipe.client.resume import read_job_config
    from funcpipe.runtime import keys
    from funcpipe.storage import open_storage
    from funcpipe.storage.prefixed import PrefixedStorage

    validate_job_id(job_id)
    with open_storage(storage) as root:
        config = read_job_config(PrefixedStorage(root, keys.job_prefix(job_id)), job_id)
    options = dict(config.get("metadata", {}).get("cli") or {})
    if not options:
        raise click.ClickException(
            f"job {job_id!r} was not started by `funcpipe train`: resume it from Python with "
            "funcpipe.train(..., resume=JOB) and the same model, data and plan"
        )
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps(options.pop("plan")))
        ctx.invoke(train_cmd, **options, plan_file=plan_file, storage=storage, json_out=json_out,
                   trace_out=None, save_to=save_to, log_dir=None, job_id=job_id,
                   resume_job=True)  # fmt: skip


def _stored_data_ref(storage: str, name: str) -> dict:
    """The data ref of data set ``name`` in ``storage``, from its index."""
    from funcpipe.storage import open_storage

    with open_storage(storage) as store:
        key = f"datasets/{name}/index.json"
        if not store.exists(key):
            raise click.BadParameter(
                f"no data set {name!r} in {storage}; upload it first with "
                f"`funcpipe data upload --storage {storage} --name {name} SOURCE`",
                param_hint="--stored-data",
            )
        index = json.loads(store.get(key))
    return {k: v for k, v in index.items() if k not in ("inputs", "targets")}


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


@cli.command("schedule")
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
    sched = build_schedule(plan)
    check_schedule(sched)
    click.echo(format_schedule(sched))
    click.echo(f"checked: {sum(len(a) for a in sched.values())} actions, no deadlock")


@cli.command("clean")
@click.option(
    "--storage",
    default="local",
    show_default=True,
    help="storage URL whose jobs/ to clean (as for `funcpipe train --storage`)",
)
@click.option(
    "--older-than",
    default=f"{int(LIVE_WINDOW_S)}s",
    show_default=True,
    help="remove dead jobs idle at least this long: 90s, 10m, 2h, 7d",
)
@click.option("--job", "job_ids", multiple=True, help="only this job id (repeatable)")
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
@click.option("--force", is_flag=True, help="also remove live jobs (a heartbeat within 60 s)")
def clean_cmd(
    storage: str, older_than: str, job_ids: tuple[str, ...], dry_run: bool, force: bool
) -> None:
    """List the jobs in storage and remove the keys that dead jobs left behind.

    A running job refreshes its manifest every 10 s; a job whose last heartbeat is older than
    60 s (its client was killed) or that has no manifest is dead.
    """
    from funcpipe.client.jobs import clean, list_jobs, parse_duration
    from funcpipe.storage import open_storage

    older_than_s = parse_duration(older_than)
    with open_storage(storage) as root:
        jobs = list_jobs(root)
        removed = clean(
            root,
            older_than_s=older_than_s,
            job_ids=job_ids or None,
            force=force,
            dry_run=dry_run,
        )
    gone = {j.job_id for j in removed}
    click.echo(f"{'job':<24} {'objects':>7} {'state':<7} {'idle':>9}  action")
    for job in jobs:
        idle = job.idle_s()
        state = "live" if job.live() else "dead"
        shown = "unknown" if idle is None else f"{idle:.0f}s"
        action = ("would remove" if dry_run else "removed") if job.job_id in gone else "kept"
        click.echo(f"{job.job_id:<24} {job.objects:>7} {state:<7} {shown:>9}  {action}")
    verb = "would remove" if dry_run else "removed"
    objects, kept = sum(j.objects for j in removed), len(jobs) - len(removed)
    click.echo(f"{verb} {len(removed)} job(s), {objects} object(s); kept {kept}")


EPOCH_SAMPLES = {"image": 50_000, "mlm": 36_718}  # CIFAR-10 train images; Wikitext-2 train lines


def _weights(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        a1, a2 = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give two numbers a1,a2 (objective a1*cost_usd + a2*time_s), e.g. 1,0.001"
        ) from None
    return a1, a2


@cli.command("plan")
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

    _check_writable(out, "--out")
    platform = resolve_platform(platform_name)
    prof = (
        Profile.load(profile_file) if profile_file else model_profile(model_name, echo=click.echo)
    )
    if epoch_samples is None:
        kind = "image" if model_name == DEMO_MODEL else _kind(model_name)
        epoch_samples = EPOCH_SAMPLES[kind]
    iters = max(1, epoch_samples // batch_size)
    if budget is not None and per == "epoch":
        budget = budget / iters
    limits = {"max_functions": max_functions, "budget": budget, "deadline": deadline}
    sol = solve(prof, platform, batch_size=batch_size, weights=weights, **limits)
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
                          prediction_budget=sol.predictions, **limits)  # fmt: skip
            rows.append((method, other.best, other.note))
    click.echo("")
    for line in comparison(best, rows):
        click.echo(line)
    if out is not None:
        out.write_text(best.plan.to_json())
        click.echo(f"plan written to {out} (funcpipe train --model {model_name} --plan {out})")


def _kind(name: str) -> str:
    from funcpipe import models

    return models.kind_of(name)


@cli.command("models")
@click.argument("name", required=False)
def models_cmd(name: str | None) -> None:
    """List the models `funcpipe train --model` accepts, with their sizes.

    With NAME, show that model's layers one by one.
    """
    if name is not None:
        info = model_info(name)
        click.echo(f"{info.name}: {info.description}")
        click.echo(f"{'#':>3}  {'layer':<14} {'kind':<22} {'params':>12} {'out MB/sample':>13}")
        for r in info.layers:
            click.echo(f"{r.index:>3}  {r.name[:14]:<14} {r.kind[:22]:<22} {r.params:>12,} "
                       f"{r.output_bytes / 2**20:>13.3f}")  # fmt: skip
        click.echo(f"total {info.params:,} parameters, {info.weights_mb:.1f} MB of weights")
        return
    click.echo(f"{'model':<20} {'layers':>6} {'params':>9} {'weights':>9} {'train state':>11} "
               f"{'act/sample':>10} {'largest layer':>14}  description")  # fmt: skip
    for model in model_names():
        info = model_info(model)
        big = info.largest_layer
        click.echo(
            f"{model:<20} {len(info.layers):>6} {info.params / 1e6:>8.2f}M "
            f"{info.weights_mb:>7.1f}MB {info.train_state_mb:>9.1f}MB "
            f"{info.activations_mb:>8.2f}MB {big.params * 16 / 2**20:>12.1f}MB  {info.description}"
        )
    click.echo(
        "train state = weights + gradients + Adam moments (float32); act/sample = the input and "
        "every layer's output for one sample; largest layer = its train state. A function needs "
        "these plus the runtime (see `funcpipe plan` for a per-stage memory model)."
    )


cli.add_command(deploy_cmd)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FuncPipeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()


@cli.group("data")
def data_group() -> None:
    """Data sets in storage, read by the functions themselves."""


@data_group.command("upload")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--storage", default="local", show_default=True, help="storage URL to upload to")
@click.option("--name", required=True, help="data set name: its keys go under datasets/NAME/")
@click.option(
    "--shard-samples", default=256, show_default=True, type=click.IntRange(min=1),
    help="samples per shard (a function reads the one or two shards holding its micro-batch)",
)  # fmt: skip
@click.option("--shuffle-seed", type=int, default=None, help="shuffle the samples once, seeded")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=3),
              help="Wikitext-2: tokens per sequence")  # fmt: skip
@click.option("--vocab-size", default=30522, show_default=True, type=click.IntRange(min=10),
              help="Wikitext-2: word-piece vocabulary size")  # fmt: skip
def data_upload_cmd(
    source: Path,
    storage: str,
    name: str,
    shard_samples: int,
    shuffle_seed: int | None,
    seq_len: int,
    vocab_size: int,
) -> None:
    """Put SOURCE (a CIFAR-10 binary or Wikitext-2 raw directory, or a .safetensors file with
    'inputs' and 'targets') into storage once, and print its data ref as JSON."""
    from funcpipe.data.stored import upload_dataset

    try:
        ref = upload_dataset(
            storage, name, source, shard_samples=shard_samples, shuffle_seed=shuffle_seed,
            seq_len=seq_len, vocab_size=vocab_size,
        )  # fmt: skip
    except FuncPipeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(ref))
