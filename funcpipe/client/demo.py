"""The main job's ingredients: a model, its loss and data in real formats, with no downloads.

Image models read CIFAR-10's binary files and BERT reads raw Wikitext-2, from ``data_dir`` when
given, otherwise from small synthetic files written in exactly those formats into a cache folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from funcpipe import models
from funcpipe.data.cifar10 import Cifar10
from funcpipe.data.synthetic import write_synthetic_cifar10, write_synthetic_wikitext2
from funcpipe.data.wikitext import WikiText2
from funcpipe.errors import ConfigError

DEMO_MODEL = "cnn"
COMPLETE = ".complete"  # written last into a synthetic data folder
Batch = tuple[torch.Tensor, torch.Tensor]


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
    batches: Iterable[Batch]
    data_note: str


def cache_dir() -> Path:
    return Path(os.environ.get("FUNCPIPE_CACHE", Path.home() / ".cache" / "funcpipe"))


def model_names() -> list[str]:
    return [DEMO_MODEL, *models.list_models()]


def make_job(name: str, *, batch_size: int, data_dir: str | None, seed: int) -> Job:
    """Model, loss and an endless stream of global batches for the model called ``name``."""
    torch.manual_seed(seed)
    if name == DEMO_MODEL:
        model: nn.Sequential = demo_cnn()
        loss_fn: Callable = nn.CrossEntropyLoss()
        kind = "image"
    elif name in models.list_models():
        model = models.build(name)
        loss_fn = models.task_for(name).loss_fn
        kind = models.kind_of(name)
    else:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    if kind == "mlm":
        batches, note = _wikitext_batches(model, batch_size, data_dir, seed)
    else:
        batches, note = _cifar10_batches(batch_size, data_dir, seed)
    return Job(model, loss_fn, batches, note)


def eval_batches(
    name: str, *, batch_size: int, data_dir: str | None, samples: int | None = None
) -> tuple[list[Batch], str]:
    """Validation batches for the model called ``name``, in order, never shuffled.

    Image models use CIFAR-10's test batch (``test_batch.bin``), masked language models
    Wikitext-2's validation split (masked with a fixed seed, so every pass scores the same
    tokens). ``samples`` keeps only the first ones (None: the whole split).
    """
    kind = "image" if name == DEMO_MODEL else models.kind_of(name)
    if kind == "mlm":
        model = models.build(name)
        vocab = next(m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding))
        where, note = _data_location(data_dir, "wikitext-2", write_synthetic_wikitext2,
                                     "Wikitext-2")  # fmt: skip
        data = WikiText2.load(where, "valid", seq_len=16, vocab_size=vocab)
        split = f"{note}, validation split"
    else:
        where, note = _data_location(data_dir, "cifar10", write_synthetic_cifar10, "CIFAR-10")
        data = Cifar10.load(where, "test")  # type: ignore[assignment]
        split = f"{note}, test batch"
    n = len(data) if samples is None else min(samples, len(data))
    size = min(batch_size, n)
    out = list(data.batches(size, seed=0, shuffle=False, epochs=1, drop_last=False))
    kept, total = [], 0
    for x, y in out:
        if total >= n:
            break
        take = min(n - total, y.shape[0])
        kept.append((x[:take], y[:take]))
        total += take
    return kept, f"{split} ({total} samples)"


def _cifar10_batches(
    batch_size: int, data_dir: str | None, seed: int
) -> tuple[Iterable[Batch], str]:
    where, note = _data_location(data_dir, "cifar10", write_synthetic_cifar10, "CIFAR-10")
    data = Cifar10.load(where, "train")
    return data.batches(batch_size, seed=seed, epochs=None), f"{note} ({len(data)} samples)"


def _wikitext_batches(
    model: nn.Sequential, batch_size: int, data_dir: str | None, seed: int
) -> tuple[Iterable[Batch], str]:
    # The tokenizer's vocabulary must fit the model's token embedding (its first Embedding).
    vocab = next(m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding))
    where, note = _data_location(data_dir, "wikitext-2", write_synthetic_wikitext2, "Wikitext-2")
    text = WikiText2.load(where, "train", seq_len=16, vocab_size=vocab)
    return text.batches(batch_size, seed=seed, epochs=None), f"{note} ({len(text)} samples)"


def _data_location(
    data_dir: str | None, name: str, writer: Callable[[Path], object], label: str
) -> tuple[Path, str]:
    if data_dir is not None:
        return Path(data_dir), f"{label} from {data_dir}"
    where = synthetic_cache(cache_dir() / f"{name}-synthetic", writer)
    return where, f"synthetic {label} in the real file format at {where}"


def synthetic_cache(where: Path, writer: Callable[[Path], object]) -> Path:
    """``where``, filled by ``writer`` once; safe against crashes and concurrent first runs.

    The files are written into a fresh sibling folder that is renamed into place only when
    complete (marked by ``COMPLETE``), so a reader never sees half-written data. A folder without
    the mark (an interrupted run, or an empty one someone created) is moved aside and replaced;
    when another process wins the final rename, its identical files are used.
    """
    if (where / COMPLETE).is_file():
        return where
    where.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    try:
        writer(fresh)
        (fresh / COMPLETE).touch()
        for _ in range(3):
            try:
                os.rename(fresh, where)  # atomic; replaces an empty folder
                return where
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if (where / COMPLETE).is_file():
                return where  # another process won the race: use its files
            _discard(where)  # incomplete leftovers of an interrupted run
        raise ConfigError(
            f"could not put synthetic data in place at {where}; delete that folder and retry"
        )
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Move ``folder`` aside atomically (so its name is free at once), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):  # someone else already moved it
        os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True)
class ModelInfo:
    """What `funcpipe models` shows about one model (sizes on the meta device, no allocation)."""

    name: str
    description: str
    layers: list[models.LayerSummary]
    input_bytes: int  # one sample

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def weights_mb(self) -> float:
        return self.params * 4 / 2**20

    @property
    def train_state_mb(self) -> float:
        """Weights + gradients + Adam's two moments, float32."""
        return 4 * self.weights_mb

    @property
    def activations_mb(self) -> float:
        """Input plus every layer's output for one sample: what a pass keeps at least."""
        return (self.input_bytes + sum(r.output_bytes for r in self.layers)) / 2**20

    @property
    def largest_layer(self) -> models.LayerSummary:
        return max(self.layers, key=lambda r: r.params)


def model_info(name: str) -> ModelInfo:
    """Layers, parameters and memory figures of a model that `make_job` accepts."""
    if name == DEMO_MODEL:
        with torch.device("meta"):
            model: nn.Sequential = demo_cnn()
        sample = torch.zeros(1, 3, 32, 32, device="meta")
        text = "small CNN for 32x32 images (the demo)"
    else:
        with torch.device("meta"):
            model = models.build(name)
        sample = models.task_for(name).make_batch(1)[0]
        text = models.describe(name)
    rows = models.layer_summary(model, sample)
    return ModelInfo(name, text, rows, sample.numel() * sample.element_size())


PROFILE_MICRO_BATCHES = (1, 2)


def profile_path(name: str) -> Path:
    """Where `model_profile` caches a model's profile (per model, torch version and core count)."""
    cores = len(os.sched_getaffinity(0))
    return cache_dir() / "profiles" / f"{name}-torch{torch.__version__}-{cores}cores.json"


def model_profile(name: str, *, echo: Callable[[str], object] = print) -> Any:
    """The planner's profile of model ``name``, measured on this machine once, then cached.

    Layers are timed at micro-batches of 1 and 2 samples with 1 and 2 threads (see
    `funcpipe.profile`); larger micro-batches are extrapolated from them.
    """
    from funcpipe.planning.profile import Profile
    from funcpipe.planning.profiler import profile

    path = profile_path(name)
    if path.is_file():
        return Profile.load(path)
    torch.manual_seed(0)
    if name == DEMO_MODEL:
        model: nn.Sequential = demo_cnn()
        batch = (torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))
        loss_fn: Callable = nn.CrossEntropyLoss()
    elif name in models.list_models():
        model = models.build(name)
        task = models.task_for(name)
        batch, loss_fn = task.make_batch(2), task.loss_fn
    else:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    echo(f"profiling {name} on this machine (once; cached in {path})")
    prof = profile(model, batch, micro_batch_sizes=list(PROFILE_MICRO_BATCHES), loss_fn=loss_fn)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    prof.save(tmp)
    os.replace(tmp, path)
    return prof
