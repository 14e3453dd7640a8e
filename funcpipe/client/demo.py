"""The main job's ingredients: a model, its loss and data in real formats, with no downloads.

Image models read CIFAR-10's binary files and BERT reads raw Wikitext-2, from ``data_dir`` when
given, otherwise from small synthetic files written in exactly those formats into a cache folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from funcpipe import models
from funcpipe.data.cifar10 import Cifar10
from funcpipe.data.synthetic import write_synthetic_cifar10, write_synthetic_wikitext2
from funcpipe.data.wikitext import WikiText2
from funcpipe.errors import ConfigError

DEMO_MODEL = "cnn"


def demo_cnn(num_classes: int = 10) -> nn.Sequential:
    """A small CNN for 3x32x32 images: 12 layers, ~0.3 M parameters, no BatchNorm.

    No BatchNorm, so micro-batching leaves the maths unchanged and the run equals single-process
    training exactly.
    """
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


@dataclass
class Job:
    model: nn.Sequential
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    data_note: str


def cache_dir() -> Path:
    return Path(os.environ.get("FUNCPIPE_CACHE", Path.home() / ".cache" / "funcpipe"))


def model_names() -> list[str]:
    return [DEMO_MODEL, *models.list_models()]


def make_job(name: str, *, batch_size: int, data_dir: str | None, seed: int) -> Job:
    """Model, loss and an endless stream of global batches for the model called ``name``."""
    torch.manual_seed(seed)
    if name == DEMO_MODEL:
        model, kind = demo_cnn(), "image"
        loss_fn: Callable = nn.CrossEntropyLoss()
    elif name in models.list_models():
        model = models.build(name)
        loss_fn = models.task_for(name).loss_fn
        kind = "mlm" if name.startswith("bert") else "image"
    else:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")

    if kind == "image":
        where, note = _data_location(data_dir, "cifar10", write_synthetic_cifar10, "CIFAR-10")
        data = Cifar10.load(where, "train")
        batches = data.batches(batch_size, seed=seed, epochs=None)
    else:
        # The tokenizer's vocabulary must fit the model's token embedding (its first Embedding).
        vocab = next(m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding))
        where, note = _data_location(
            data_dir, "wikitext-2", write_synthetic_wikitext2, "Wikitext-2"
        )
        text = WikiText2.load(where, "train", seq_len=16, vocab_size=vocab)
        batches = text.batches(batch_size, seed=seed, epochs=None)
    return Job(
        model, loss_fn, batches, f"{note} ({len(data if kind == 'image' else text)} samples)"
    )


def _data_location(
    data_dir: str | None, name: str, writer: Callable[..., object], label: str
) -> tuple[Path, str]:
    if data_dir is not None:
        return Path(data_dir), f"{label} from {data_dir}"
    where = cache_dir() / f"{name}-synthetic"
    if not where.exists():
        where.mkdir(parents=True)
        writer(where)
    return where, f"synthetic {label} in the real file format at {where}"
