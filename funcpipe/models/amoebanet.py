"""AmoebaNet-D: a stem, reduction and normal cells, and a classifier, one cell per layer.

Each cell reads the two previous cell outputs, so cells pass a tuple `(latest, previous)` to
the next layer: the skip over one cell travels explicitly across every cut. The cell genotype
(operations and which hidden states they read) is AmoebaNet-D's from the regularised-evolution
paper, with the normal-cell concatenation of its TensorFlow reference (which reproduces the
parameter counts reported for AmoebaNet-D in the GPipe paper).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from funcpipe.errors import ConfigError
from funcpipe.models.norm import check_norm, norm2d

States = tuple[Tensor, Tensor]


def relu_conv_norm(
    in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride, padding, norm: str
) -> list[nn.Module]:
    return [
        nn.ReLU(),
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
        norm2d(norm, out_ch),
    ]


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convolutions (no information dropped)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(in_ch, out_ch // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(in_ch, out_ch - out_ch // 2, 1, stride=2, bias=False)
        self.norm = norm2d(norm, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.norm(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


def _identity(c: int, stride: int, norm: str) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, norm)


def _avg_pool_3x3(c: int, stride: int, norm: str) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def _max_pool_3x3(c: int, stride: int, norm: str) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


def _max_pool_2x2(c: int, stride: int, norm: str) -> nn.Module:
    return nn.MaxPool2d(2, stride=stride)


def _conv_1x1(c: int, stride: int, norm: str) -> nn.Module:
    return nn.Sequential(*relu_conv_norm(c, c, 1, stride, 0, norm))


def _conv_3x3(c: int, stride: int, norm: str) -> nn.Module:
    q = max(c // 4, 1)
    return nn.Sequential(
        *relu_conv_norm(c, q, 1, 1, 0, norm),
        *relu_conv_norm(q, q, 3, stride, 1, norm),
        *relu_conv_norm(q, c, 1, 1, 0, norm),
    )


def _conv_1x7_7x1(c: int, stride: int, norm: str) -> nn.Module:
    q = max(c // 4, 1)
    return nn.Sequential(
        *relu_conv_norm(c, q, 1, 1, 0, norm),
        *relu_conv_norm(q, q, (1, 7), (1, stride), (0, 3), norm),
        *relu_conv_norm(q, q, (7, 1), (stride, 1), (3, 0), norm),
        *relu_conv_norm(q, c, 1, 1, 0, norm),
    )


Op = Callable[[int, int, str], nn.Module]

# (input hidden state, operation) pairs; consecutive pairs are summed into a new hidden state.
NORMAL_CELL: tuple[tuple[int, Op], ...] = (
    (1, _conv_1x1), (1, _max_pool_3x3),
    (1, _identity), (0, _conv_1x7_7x1),
    (0, _conv_1x1), (0, _conv_1x7_7x1),
    (2, _max_pool_3x3), (2, _identity),
    (1, _avg_pool_3x3), (5, _conv_1x1),
)  # fmt: skip
NORMAL_CONCAT = (0, 3, 4, 6)
REDUCTION_CELL: tuple[tuple[int, Op], ...] = (
    (0, _max_pool_2x2), (0, _max_pool_3x3),
    (2, _identity), (1, _conv_3x3),
    (2, _conv_1x7_7x1), (2, _max_pool_3x3),
    (3, _identity), (1, _max_pool_2x2),
    (2, _avg_pool_3x3), (3, _conv_1x1),
)  # fmt: skip
REDUCTION_CONCAT = (4, 5, 6)


class Stem(nn.Module):
    """Stride-2 3x3 convolution on the image."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False)
        self.norm = norm2d(norm, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Cell(nn.Module):
    """One AmoebaNet-D cell: (latest, previous) -> (new, latest)."""

    def __init__(
        self, prev_prev_ch: int, prev_ch: int, ch: int, reduction: bool, reduction_prev: bool,
        norm: str,
    ) -> None:  # fmt: skip
        super().__init__()
        self.pre_latest = nn.Sequential(*relu_conv_norm(prev_ch, ch, 1, 1, 0, norm))
        self.pre_previous: nn.Module = nn.Identity()
        if reduction_prev:
            self.pre_previous = FactorizedReduce(prev_prev_ch, ch, norm)
        elif prev_prev_ch != ch:
            self.pre_previous = nn.Sequential(*relu_conv_norm(prev_prev_ch, ch, 1, 1, 0, norm))
        genotype = REDUCTION_CELL if reduction else NORMAL_CELL
        self.concat = REDUCTION_CONCAT if reduction else NORMAL_CONCAT
        self.inputs = tuple(i for i, _ in genotype)
        self.ops = nn.ModuleList(
            make(ch, 2 if reduction and i < 2 else 1, norm) for i, make in genotype
        )
        self.out_channels = ch * len(self.concat)

    def forward(self, states: Tensor | States) -> States:
        latest, previous = states if isinstance(states, tuple) else (states, states)
        hidden = [self.pre_latest(latest), self.pre_previous(previous)]
        for k in range(0, len(self.ops), 2):
            a = self.ops[k](hidden[self.inputs[k]])
            b = self.ops[k + 1](hidden[self.inputs[k + 1]])
            hidden.append(a + b)
        return torch.cat([hidden[i] for i in self.concat], dim=1), latest


class Classify(nn.Module):
    """Global average pool of the latest state and a linear classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, states: Tensor | States) -> Tensor:
        latest = states[0] if isinstance(states, tuple) else states
        return self.fc(self.dropout(self.pool(latest).flatten(1)))


def amoebanet_d(
    num_layers: int = 18,
    num_filters: int = 256,
    *,
    num_classes: int = 10,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build AmoebaNet-D(num_layers, num_filters) as `stem, cells..., classify`.

    `num_layers` counts normal cells (a multiple of 3: three groups separated by reductions);
    the stem is followed by two reduction cells, as in the ImageNet network.
    """
    check_norm(norm)
    if num_layers < 3 or num_layers % 3:
        raise ConfigError(f"num_layers={num_layers} must be a positive multiple of 3")
    if num_filters < 8 or num_filters % 4:
        raise ConfigError(f"num_filters={num_filters} must be a multiple of 4 and at least 8")
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be positive")
    ch = num_filters // 4
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=Stem(ch, norm))
    prev_prev, prev, reduction_prev = ch, ch, False

    def add(name: str, reduction: bool, scale: int) -> None:
        nonlocal ch, prev_prev, prev, reduction_prev
        ch *= scale
        cell = Cell(prev_prev, prev, ch, reduction, reduction_prev, norm)
        layers[name] = cell
        prev_prev, prev, reduction_prev = prev, cell.out_channels, reduction

    add("stem_reduction1", reduction=True, scale=2)
    add("stem_reduction2", reduction=True, scale=2)
    for group in (1, 2, 3):
        if group > 1:
            add(f"reduction{group - 1}", reduction=True, scale=2)
        for i in range(num_layers // 3):
            add(f"normal{group}_{i + 1}", reduction=False, scale=1)
    layers["classify"] = Classify(prev, num_classes, dropout)
    return nn.Sequential(layers)
