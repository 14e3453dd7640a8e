"""ResNet with bottleneck blocks for 32x32 (CIFAR-10) images, one block per layer.

The stem is a 3x3 convolution without max-pooling, as usual for 32x32 inputs; everything else
follows ResNet-101 (blocks 3-4-23-3, expansion 4, stride on the 3x3 convolution).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from funcpipe.errors import ConfigError
from funcpipe.models.norm import check_norm, norm2d

EXPANSION = 4


class Stem(nn.Module):
    """3x3 convolution, norm, ReLU: keeps the 32x32 resolution."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.norm = norm2d(norm, width)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.norm(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus the shortcut: the skip stays inside the layer."""

    def __init__(self, in_ch: int, mid_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        out_ch = mid_ch * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.norm1 = norm2d(norm, mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.norm2 = norm2d(norm, mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.norm3 = norm2d(norm, out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm2d(norm, out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class Head(nn.Module):
    """Global average pool and the linear classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def resnet(
    blocks: Sequence[int] = (3, 4, 23, 3),
    *,
    width: int = 64,
    num_classes: int = 10,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build a bottleneck ResNet as `stem, block, ..., block, head` (ResNet-101 by default)."""
    check_norm(norm)
    if len(blocks) == 0 or any(int(b) < 1 for b in blocks):
        raise ConfigError(f"blocks={tuple(blocks)!r} must be a non-empty list of positive ints")
    if width < 1 or num_classes < 1:
        raise ConfigError(f"width={width} and num_classes={num_classes} must be positive")
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=Stem(width, norm))
    in_ch = width
    for group, count in enumerate(blocks):
        mid = width * 2**group
        for i in range(int(count)):
            stride = 2 if group > 0 and i == 0 else 1
            layers[f"group{group + 1}_block{i + 1}"] = Bottleneck(in_ch, mid, stride, norm)
            in_ch = mid * EXPANSION
    layers["head"] = Head(in_ch, num_classes, dropout)
    return nn.Sequential(layers)
