"""``funcpipe clean``: list the jobs in storage and remove what dead ones left behind."""

from __future__ import annotations

import click

from funcpipe.client.jobs import LIVE_WINDOW_S

__all__ = ["clean_cmd"]


@click.command("clean")
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
