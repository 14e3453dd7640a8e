"""``funcpipe models``: the models ``funcpipe train --model`` accepts, and their layers."""

from __future__ import annotations

import click

from funcpipe.client.demo import model_info, model_names

__all__ = ["models_cmd"]


@click.command("models")
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
