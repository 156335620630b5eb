"""InceptionV4 with the module layout of Cadene's pretrained-models (the InceptionV4 guide's model).

Written from the architecture of Cadene's pretrainedmodels/models/inceptionv4.py, which the
Ascend ModelZoo InceptionV4 guide exports. Module and attribute
names are part of the contract: they make the state-dict keys (`features.N.conv.weight`,
`features.N.branch1.0.bn.running_mean`, `last_linear.weight`, ...) that the official
`inceptionv4-8e4777a0.pth` (1001 classes, "imagenet+background") uses, so it loads unchanged.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

Size = int | tuple[int, int]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, the TensorFlow original's) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size, stride: int = 1,
                 padding: Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*layers: tuple) -> nn.Sequential:
    """A Sequential of BasicConv2d, one per (in, out, kernel, stride, padding) tuple."""
    return nn.Sequential(*(BasicConv2d(*layer) for layer in layers))


def _avg_then_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                         BasicConv2d(in_channels, out_channels, 1))


class _Branches(nn.Module):
    """Runs the branches named in `order` on the same input and concatenates them on channels."""

    order: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.order], 1)


class Mixed_3a(_Branches):  # class names as in the reference layout
    order = ("maxpool", "conv")

    def __init__(self) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = BasicConv2d(64, 96, 3, stride=2)


class Mixed_4a(_Branches):
    order = ("branch0", "branch1")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _chain((160, 64, 1), (64, 96, 3))
        self.branch1 = _chain((160, 64, 1), (64, 64, (1, 7), 1, (0, 3)),
                              (64, 64, (7, 1), 1, (3, 0)), (64, 96, 3))


class Mixed_5a(_Branches):
    order = ("conv", "maxpool")

    def __init__(self) -> None:
        super().__init__()
        self.conv = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)


class Inception_A(_Branches):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 96, 1)
        self.branch1 = _chain((384, 64, 1), (64, 96, 3, 1, 1))
        self.branch2 = _chain((384, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1))
        self.branch3 = _avg_then_conv(384, 96)


class Reduction_A(_Branches):
    order = ("branch0", "branch1", "branch2")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 384, 3, stride=2)
        self.branch1 = _chain((384, 192, 1), (192, 224, 3, 1, 1), (224, 256, 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)


class Inception_B(_Branches):
    order = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1024, 384, 1)
        self.branch1 = _chain((1024, 192, 1), (192, 224, (1, 7), 1, (0, 3)),
                              (224, 256, (7, 1), 1, (3, 0)))
        self.branch2 = _chain((1024, 192, 1), (192, 192, (7, 1), 1, (3, 0)),
                              (192, 224, (1, 7), 1, (0, 3)), (224, 224, (7, 1), 1, (3, 0)),
                              (224, 256, (1, 7), 1, (0, 3)))
        self.branch3 = _avg_then_conv(1024, 128)


class Reduction_B(_Branches):
    order = ("branch0", "branch1", "branch2")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _chain((1024, 192, 1), (192, 192, 3, 2))
        self.branch1 = _chain((1024, 256, 1), (256, 256, (1, 7), 1, (0, 3)),
                              (256, 320, (7, 1), 1, (3, 0)), (320, 320, 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)


class Inception_C(nn.Module):
    """Two of its branches fork again: a 1x3 and a 3x1 conv read the same tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1536, 256, 1)
        self.branch1_0 = BasicConv2d(1536, 384, 1)
        self.branch1_1a = BasicConv2d(384, 256, (1, 3), 1, (0, 1))
        self.branch1_1b = BasicConv2d(384, 256, (3, 1), 1, (1, 0))
        self.branch2_0 = BasicConv2d(1536, 384, 1)
        self.branch2_1 = BasicConv2d(384, 448, (3, 1), 1, (1, 0))
        self.branch2_2 = BasicConv2d(448, 512, (1, 3), 1, (0, 1))
        self.branch2_3a = BasicConv2d(512, 256, (1, 3), 1, (0, 1))
        self.branch2_3b = BasicConv2d(512, 256, (3, 1), 1, (1, 0))
        self.branch3 = _avg_then_conv(1536, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([
            self.branch0(x),
            self.branch1_1a(x1), self.branch1_1b(x1),
            self.branch2_3a(x2), self.branch2_3b(x2),
            self.branch3(x),
        ], 1)


class InceptionV4(nn.Module):
    def __init__(self, num_classes: int = 1001) -> None:
        super().__init__()
        self.features = nn.Sequential(
            BasicConv2d(3, 32, 3, stride=2),
            BasicConv2d(32, 32, 3),
            BasicConv2d(32, 64, 3, padding=1),
            Mixed_3a(),
            Mixed_4a(),
            Mixed_5a(),
            *(Inception_A() for _ in range(4)),
            Reduction_A(),
            *(Inception_B() for _ in range(7)),
            Reduction_B(),
            *(Inception_C() for _ in range(3)),
        )
        self.last_linear = nn.Linear(1536, num_classes)
        # The reference model keeps PyTorch's default init, under which a random network's
        # activations shrink ~1e-10-fold over its depth and every image gets the same logits.
        # He init keeps them at unit scale, so a `model.weights=random` run (parity, smoke tests)
        # tells images apart; loaded checkpoints replace these values.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        # The guide's patch: the pool's kernel is the feature map's size as a plain int, so the
        # exported graph holds AveragePool with a constant kernel (8x8 at 299x299) rather than
        # shape arithmetic that ATC cannot take.
        with warnings.catch_warnings():  # the constant is intended: silence the tracer about it
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            kernel = int(features.shape[2])
        pooled = F.avg_pool2d(features, kernel_size=kernel)
        return self.last_linear(torch.flatten(pooled, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def inceptionv4(num_classes: int = 1001) -> InceptionV4:
    """The model a config's `model.arch` names; weights are loaded by runner.models.build."""
    return InceptionV4(num_classes=num_classes)
