"""What several ``funcpipe`` commands share: defaults, an epoch's size, output-path checks."""

from __future__ import annotations

import os
from pathlib import Path

import click

from funcpipe.client.demo import DEMO_MODEL

__all__ = ["DEFAULT_MICRO_BATCHES", "EPOCH_SAMPLES", "check_writable", "epoch_samples_of"]

DEFAULT_MICRO_BATCHES = 4
EPOCH_SAMPLES = {"image": 50_000, "mlm": 36_718}  # CIFAR-10 train images; Wikitext-2 train lines


def epoch_samples_of(model_name: str) -> int:
    """Samples in one epoch of the data set ``model_name`` trains on."""
    from funcpipe import models

    kind = "image" if model_name == DEMO_MODEL else models.kind_of(model_name)
    return EPOCH_SAMPLES[kind]


def check_writable(path: Path | None, option: str = "--json-out") -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"folder {folder} is not writable", param_hint=option)
