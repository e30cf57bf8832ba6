"""The field's standard convolutional benchmarks, as plain torch models (nn.Conv2d/nn.Linear):
turn them into feedback-alignment models with soap_cuda.convert(model, feedback=...).

  lenet5()    LeNet-5 as in BioTorch's MNIST/Fashion-MNIST table: 1x32x32 input, conv 6-16-120
              (5x5, tanh, 2x2 average pooling), fully connected 84-10
  resnet20()  He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels,
              batch norm, option-A shortcuts (stride-2 subsampling, zero channels padded)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(16, 120, 5), nn.Tanh(), nn.Flatten(),
        nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))


class _ShortcutA(nn.Module):
    """Option A of He et al.: subsample by 2 and pad the new channels with zeros (no weights)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _ShortcutA(cout - cin) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(3, num_classes, in_channels)


class _StackedShortcutA(nn.Module):
    """Option A for M stacked models, their channels side by side: each model's own zeros."""

    def __init__(self, shortcut: _ShortcutA, models: int):
        super().__init__()
        self.pad, self.models = shortcut.pad, models

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        n, channels, h, w = x.shape
        x = F.pad(x.reshape(n, self.models, channels // self.models, h, w),
                  (0, 0, 0, 0, self.pad, self.pad))
        return x.reshape(n, -1, h, w)


def _teach_stack() -> None:
    """soap_cuda.stack() of these models: the blocks run as they are on stacked tensors (their
    layers are replaced), the shortcut pads each model's channels."""
    from soap_cuda import stacked

    stacked.register(BasicBlock)
    stacked.register(ResNetCifar)
    stacked.register(_ShortcutA, lambda shortcuts: _StackedShortcutA(shortcuts[0],
                                                                     len(shortcuts)))


_teach_stack()
