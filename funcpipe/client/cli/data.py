"""``funcpipe data``: data sets in storage, which the functions read themselves."""

from __future__ import annotations

import json
from pathlib import Path

import click

from funcpipe.errors import FuncPipeError

__all__ = ["data_group"]


@click.group("data")
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
