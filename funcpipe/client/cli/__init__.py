"""``funcpipe`` command line: train on emulated functions, inspect schedules, list models.

One module per command (``train``, ``resume``, ``plan``, ``schedule``, ``clean``, ``models``,
``data``; ``deploy`` lives with the deployment code), gathered here under one group.
"""

from __future__ import annotations

import sys

import click

from funcpipe import __version__
from funcpipe.client.cli.clean import clean_cmd
from funcpipe.client.cli.data import data_group
from funcpipe.client.cli.models import models_cmd
from funcpipe.client.cli.plan import plan_cmd
from funcpipe.client.cli.resume import resume_cmd
from funcpipe.client.cli.schedule import schedule_cmd
from funcpipe.client.cli.train import train_cmd
from funcpipe.client.deploy import deploy_cmd
from funcpipe.errors import FuncPipeError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", prog_name="funcpipe", message="%(prog)s %(version)s"
)
def cli() -> None:
    """FuncPipe: pipelined, data-parallel training on serverless functions."""


for _command in (train_cmd, resume_cmd, schedule_cmd, clean_cmd, plan_cmd, models_cmd,
                 deploy_cmd, data_group):  # fmt: skip
    cli.add_command(_command)


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
