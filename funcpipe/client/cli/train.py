"""``funcpipe train``: train a model on functions, with a plan given or chosen by the planner."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from funcpipe.client.cli.auto_plan import choose_plan, predicted_vs_measured
from funcpipe.client.cli.common import DEFAULT_MICRO_BATCHES, check_writable
from funcpipe.client.demo import DEMO_MODEL, eval_batches, make_job
from funcpipe.client.pricing import AWS_LAMBDA
from funcpipe.client.train import train
from funcpipe.plan import Plan
from funcpipe.runtime.trace import chrome_trace
from funcpipe.storage.throttle import LinkConfig

__all__ = ["OPTIMIZERS", "train_cmd"]

OPTIMIZERS = {
    "sgd": lambda lr: lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda lr: lambda params: torch.optim.Adam(params, lr=lr),
}


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


def _hand_made(ctx: click.Context) -> bool:
    """Whether the user gave --stages, --replicas or --memory-mb (a Plan.even plan)."""
    from click.core import ParameterSource

    return any(
        ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT) for name in HAND_MADE
    )


@click.command("train")
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
    check_writable(json_out)
    check_writable(trace_out, "--trace")
    check_writable(save_to, "--save")
    job = make_job(model_name, batch_size=batch_size, data_dir=data_dir, seed=seed)
    # The emulated link belongs to local functions; a cloud's functions have a real one.
    emulate = platform == "local" and not no_throttle
    link = LinkConfig(up_mb_s=bandwidth, down_mb_s=bandwidth, latency_s=latency_ms / 1000,
                      enabled=emulate)  # fmt: skip
    planned = None
    if plan_file is None and not _hand_made(click.get_current_context()):
        planned = choose_plan(model_name, batch_size, micro_batches, platform, link)
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
        click.echo(predicted_vs_measured(planned.prediction, result.history))
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
