"""``funcpipe resume``: continue a ``funcpipe train`` job whose client died."""

from __future__ import annotations

import json
from pathlib import Path

import click

from funcpipe.client.cli.train import train_cmd

__all__ = ["resume_cmd"]


@click.command("resume")
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
