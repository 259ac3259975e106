"""The two networks.

``ResNet18``: the reduced ResNet-18 of the GEM paper (Lopez-Paz & Ranzato, 2017):
a 3x3 stride-1 conv stem with ``nf`` channels (no bias) + BatchNorm + ReLU, four
stages of two BasicBlocks with ``nf, 2nf, 4nf, 8nf`` channels and strides
``1, 2, 2, 2`` (a 1x1 conv + BatchNorm shortcut where the shape changes), global
*adaptive* average pooling (so any H x W works: 32x32, 8x8, 1xD) and one linear
layer to ``num_classes`` outputs. ``nf = 20`` and 100 classes give 1,109,240
parameters. Any number of input channels.

``MLP``: flatten -> Linear(D, width) -> ReLU -> Linear(width, width) -> ReLU ->
Linear(width, num_classes), no BatchNorm.

Initialisation is PyTorch's default for each layer, drawn from the global RNG:
seed it (``torch.manual_seed``) before building for a reproducible model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "MLP", "ResNet18"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, nf: int = 20):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, nf, 1)
        self.bn1 = nn.BatchNorm2d(nf)
        cin = nf
        stages = []
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            cout = nf * mult
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 100):
        super().__init__()
        d = int(math.prod(input_shape))
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
