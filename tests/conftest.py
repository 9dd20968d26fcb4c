"""Shared test helpers: a tiny registered backbone so training tests run in seconds."""

from __future__ import annotations

from torch import nn

from robustreid.models import BACKBONES, register_backbone

TINY_ARCH = "tiny_cnn_for_tests"


def _tiny_cnn(pretrained: str, last_stride: int) -> tuple[nn.Module, int]:
    """Three conv blocks, 3 -> 32 channels: (B, 3, H, W) -> (B, 32, H/4, W/4)."""
    layers: list[nn.Module] = []
    channels = [3, 8, 16, 32]
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), channels[-1]


if TINY_ARCH not in BACKBONES:
    register_backbone(TINY_ARCH)(_tiny_cnn)
