"""ResNet-IBN-a (Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via
IBN-Net", ECCV 2018).

IBN-a replaces the first normalisation of every bottleneck in ``layer1``-``layer3`` by an
:class:`IBN` layer: the first half of the channels goes through ``InstanceNorm2d(affine=True)``,
the other half through ``BatchNorm2d``. ``layer4`` is a plain ResNet stage. The stride of a
down-sampling bottleneck sits on its 3x3 convolution (as in torchvision's ResNet).

Parameter names follow the released ImageNet weights (``resnet50_ibn_a-d9d0bb7b.pth``):
``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``layer1.0.bn1.IN.weight``,
``layer1.0.bn1.BN.running_mean``, ``layer1.0.downsample.0.weight``,
``layer1.0.downsample.1.*``, ..., ``fc.weight``, ``fc.bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class IBN(nn.Module):
    """Instance-Batch Normalisation over channels.

    Args:
        planes: number of input channels C.
        ratio: fraction of channels (the leading ones) normalised by instance norm.

    Shapes:
        B x C x H x W -> B x C x H x W.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: Tensor) -> Tensor:
        inst = self.IN(x[:, : self.half].contiguous())
        batch = self.BN(x[:, self.half :].contiguous())
        return torch.cat((inst, batch), dim=1)


class BottleneckIBN(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) with optional IBN in the first norm.

    Shapes:
        B x inplanes x H x W -> B x 4*planes x H/stride x W/stride.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        ibn: bool = False,
    ) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1: nn.Module = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetIBNa(nn.Module):
    """ResNet with IBN-a bottlenecks in the first three stages.

    Args:
        layers: blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50.
        num_classes: size of the ``fc`` classifier; ``None`` builds no ``fc``
            (a re-ID trunk).
        ibn_stages: which of the four stages use IBN (IBN-a: the first three).
        last_stride: stride of ``layer4`` (1 doubles the final map size).

    Shapes:
        :meth:`forward_features`: B x 3 x H x W -> B x 2048 x H/32 x W/32 (H/16 with
        ``last_stride=1``); :meth:`forward`: B x num_classes logits, or B x 2048 pooled features
        without a classifier.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int | None = 1000,
        ibn_stages: Sequence[bool] = (True, True, True, False),
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        strides = (1, 2, 2, last_stride)
        planes = (64, 128, 256, 512)
        self.layer1 = self._make_layer(planes[0], layers[0], strides[0], ibn_stages[0])
        self.layer2 = self._make_layer(planes[1], layers[1], strides[1], ibn_stages[1])
        self.layer3 = self._make_layer(planes[2], layers[2], strides[2], ibn_stages[2])
        self.layer4 = self._make_layer(planes[3], layers[3], strides[3], ibn_stages[3])
        self.out_channels = planes[3] * BottleneckIBN.expansion
        self.fc: nn.Linear | None = None
        if num_classes is not None:
            self.fc = nn.Linear(self.out_channels, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        downsample = None
        width = planes * BottleneckIBN.expansion
        if stride != 1 or self.inplanes != width:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        blocks_list = [BottleneckIBN(self.inplanes, planes, stride, downsample, ibn)]
        self.inplanes = width
        blocks_list += [BottleneckIBN(width, planes, ibn=ibn) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_list)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """B x 3 x H x W images -> B x 2048 x h x w feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        """B x 3 x H x W -> B x num_classes logits (B x 2048 pooled features without ``fc``)."""
        x = self.forward_features(x).mean(dim=(-2, -1))
        return x if self.fc is None else self.fc(x)


def resnet50_ibn_a(num_classes: int | None = 1000, last_stride: int = 2) -> ResNetIBNa:
    """ResNet-50-IBN-a, randomly initialised, with keys matching ``resnet50_ibn_a-d9d0bb7b.pth``."""
    return ResNetIBNa((3, 4, 6, 3), num_classes=num_classes, last_stride=last_stride)
