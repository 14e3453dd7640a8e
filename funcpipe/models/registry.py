"""The model zoo by name: builders, their default options, and each model's training task.

A "-small" name is the same architecture with small depth/width, a micro-batch-independent
norm (GroupNorm) and no dropout, so pipelined training equals single-process training exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from funcpipe.data.masking import SPECIAL, mask_tokens
from funcpipe.errors import ConfigError
from funcpipe.models.amoebanet import amoebanet_d
from funcpipe.models.bert import bert
from funcpipe.models.losses import classification_loss, masked_lm_loss
from funcpipe.models.resnet import resnet

Batch = tuple[Tensor, Tensor]


class Task(NamedTuple):
    """What training a zoo model needs besides the model: its loss and example batches."""

    loss_fn: Callable[[Tensor, Tensor], Tensor]
    make_batch: Callable[..., Batch]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Sequential]
    defaults: dict[str, Any]
    kind: str  # "image" or "mlm"
    summary: str
    task_defaults: dict[str, Any] = field(default_factory=dict)


_SMALL_CNN = {"norm": "group", "dropout": 0.0}
_SPECS = (
    ModelSpec("resnet101", resnet, {}, "image", "ResNet-101 for 32x32 images"),
    ModelSpec(
        "resnet101-small", resnet, {"blocks": (2, 2, 1, 1), "width": 8, **_SMALL_CNN}, "image",
        "ResNet-101's blocks, 6 of them, width 8",
    ),
    ModelSpec("amoebanet-d18", amoebanet_d, {"num_layers": 18}, "image", "AmoebaNet-D(18, 256)"),
    ModelSpec(
        "amoebanet-d18-small", amoebanet_d, {"num_layers": 3, "num_filters": 32, **_SMALL_CNN},
        "image", "AmoebaNet-D(3, 32)",
    ),
    ModelSpec("amoebanet-d36", amoebanet_d, {"num_layers": 36}, "image", "AmoebaNet-D(36, 256)"),
    ModelSpec(
        "amoebanet-d36-small", amoebanet_d, {"num_layers": 6, "num_filters": 32, **_SMALL_CNN},
        "image", "AmoebaNet-D(6, 32)",
    ),
    ModelSpec("bert-large", bert, {}, "mlm", "BERT-Large with a masked-LM head", {"seq_len": 128}),
    ModelSpec(
        "bert-large-small", bert,
        {"layers": 4, "hidden": 32, "heads": 2, "intermediate": 64, "vocab_size": 1000,
         "max_positions": 64, "dropout": 0.0, "tie_weights": False},
        "mlm", "BERT with 4 blocks of width 32", {"seq_len": 16},
    ),
)  # fmt: skip
_BY_NAME = {spec.name: spec for spec in _SPECS}
_TASK_OPTIONS = {"image": {"image_size": 32}, "mlm": {"seq_len": 128}}


def list_models() -> list[str]:
    """Names accepted by `build` and `task_for`."""
    return list(_BY_NAME)


def _spec(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(_BY_NAME)}") from None


def _builder_options(spec: ModelSpec, options: dict[str, Any]) -> dict[str, Any]:
    allowed = set(inspect.signature(spec.builder).parameters)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"model {spec.name!r} has no option {', '.join(unknown)}; "
            f"its options are {', '.join(sorted(allowed))}"
        )
    return {**spec.defaults, **options}


def describe(name: str) -> str:
    """One line saying what zoo model `name` is."""
    return _spec(name).summary


def kind_of(name: str) -> str:
    """The data a zoo model trains on: "image" (CIFAR-10-shaped) or "mlm" (token ids)."""
    return _spec(name).kind


def build(name: str, **options: Any) -> nn.Sequential:
    """Build zoo model `name` as an nn.Sequential whose every boundary is a legal cut.

    Options override the name's defaults (e.g. `num_classes`, `norm`, `width`, `vocab_size`).
    Build under `with torch.device("meta"):` to size a model without allocating it.
    """
    spec = _spec(name)
    return spec.builder(**_builder_options(spec, options))


def task_for(name: str, **options: Any) -> Task:
    """The loss function and a synthetic `make_batch(batch_size, seed=0)` for zoo model `name`.

    Accepts the model's build options (so batches fit, e.g., `vocab_size`), plus `image_size`
    for image models or `seq_len` for BERT.
    """
    spec = _spec(name)
    task_opts = {**_TASK_OPTIONS[spec.kind], **spec.task_defaults}
    for key in list(options):
        if key in task_opts:
            task_opts[key] = options.pop(key)
    model_opts = _builder_options(spec, options)
    if spec.kind == "image":
        num_classes = model_opts.get("num_classes", 10)
        return Task(classification_loss, _image_batches(num_classes, task_opts["image_size"]))
    vocab = model_opts.get("vocab_size", 30522)
    seq_len = task_opts["seq_len"]
    if seq_len > model_opts.get("max_positions", 512) or seq_len < 3:
        raise ConfigError(f"seq_len={seq_len} must be in [3, max_positions]")
    return Task(masked_lm_loss, _mlm_batches(vocab, seq_len))


def _image_batches(num_classes: int, size: int) -> Callable[..., Batch]:
    def make_batch(batch_size: int, seed: int = 0) -> Batch:
        g = torch.Generator().manual_seed(seed)
        targets = torch.randint(0, num_classes, (batch_size,), generator=g)
        inputs = torch.randn(batch_size, 3, size, size, generator=g)
        inputs += (targets.float() / num_classes - 0.5).view(-1, 1, 1, 1)  # learnable signal
        return inputs, targets

    return make_batch


def _mlm_batches(vocab_size: int, seq_len: int) -> Callable[..., Batch]:
    def make_batch(batch_size: int, seed: int = 0) -> Batch:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(SPECIAL.first_regular, vocab_size, (batch_size, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = SPECIAL.cls, SPECIAL.sep
        return mask_tokens(ids, vocab_size=vocab_size, generator=g)

    return make_batch
