"""``funcpipe deploy``: put the FuncPipe image on AWS Lambda, one function per memory size.

A Lambda's memory is part of its configuration, so a plan whose stages use 2048 and 3008 MB
needs two functions, ``NAME-2048mb`` and ``NAME-3008mb``; the aws-lambda platform invokes the
one of each function's size. The command also prints the least-privilege policy for the
functions' execution role: the job keys under the storage prefix and the functions' logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import click

from funcpipe.errors import ConfigError
from funcpipe.planning.plan import Plan

__all__ = ["deploy_cmd", "parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix?...``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"--storage must be an s3://bucket/prefix URL, got {url!r}")
    return parts.netloc, parts.path.strip("/")


@click.command("deploy")
@click.option(
    "--storage",
    required=True,
    help="the s3://bucket/prefix URL the jobs will use (the IAM policy is scoped to it)",
)
@click.option("--image-uri", help="ECR image built from deploy/aws-lambda/Dockerfile")
@click.option("--role-arn", help="execution role of the functions (attach the printed policy)")
@click.option(
    "--name",
    default="funcpipe",
    show_default=True,
    help="base name; the functions are NAME-{memory}mb",
)
@click.option(
    "--memory-mb",
    "memory_mb",
    multiple=True,
    type=int,
    help="a memory size to deploy (repeat for several)",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="deploy every memory size this JSON plan's stages use",
)
@click.option(
    "--timeout",
    default=900,
    show_default=True,
    type=click.IntRange(1, 900),
    help="each function's timeout, seconds",
)
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True)
@click.option("--region", help="AWS region (default: from the AWS configuration)")
@click.option(
    "--policy-only",
    is_flag=True,
    help="only print the IAM policy; touch nothing on AWS",
)
def deploy_cmd(
    storage: str,
    image_uri: str | None,
    role_arn: str | None,
    name: str,
    memory_mb: tuple[int, ...],
    plan_file: Path | None,
    timeout: int,
    arch: str,
    region: str | None,
    policy_only: bool,
) -> None:
    """Create or update the Lambda functions of a plan and print their IAM policy."""
    from funcpipe.platforms.aws_lambda import deploy_functions, iam_policy

    bucket, prefix = parse_s3_url(storage)
    policy = iam_policy(bucket, prefix, name)
    if not policy_only:
        sizes = list(memory_mb)
        if plan_file is not None:
            plan = Plan.from_json(plan_file.read_text())
            sizes += [s.memory_mb for s in plan.stages]
        needed = (("--image-uri", image_uri), ("--role-arn", role_arn))
        missing = [opt for opt, value in needed if not value]
        if missing:
            raise click.UsageError(f"{' and '.join(missing)} needed to deploy (or --policy-only)")
        if not sizes:
            raise click.UsageError("give --memory-mb (repeatable) or --plan")
        import boto3

        client = boto3.client("lambda", region_name=region)
        done = deploy_functions(
            client,
            base=name,
            image_uri=str(image_uri),
            role_arn=str(role_arn),
            memory_sizes=sizes,
            timeout_s=timeout,
            architecture=arch,
        )
        for fn, what in done:
            click.echo(f"{what:8} {fn} (image {image_uri}, asynchronous retries off)")
        click.echo(f"train with: platform='aws-lambda' and FUNCPIPE_LAMBDA_FUNCTION={name}")
    click.echo("# IAM policy for the functions' execution role:")
    click.echo(json.dumps(policy, indent=2))
