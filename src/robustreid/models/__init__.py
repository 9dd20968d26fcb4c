"""Backbones (behind a registry), pooling layers, pretrained weights and the re-ID model."""

from robustreid.models.backbones import (
    BACKBONES,
    MobileNetV2Trunk,
    ReIDModel,
    ResNetTrunk,
    build_model,
    build_model_from_spec,
    register_backbone,
    set_last_stride,
    set_mobilenet_v2_last_stride,
)
from robustreid.models.layers import GeneralizedMeanPooling, build_pooling
from robustreid.models.resnet_ibn import IBN, ResNetIBNa
from robustreid.models.weights import (
    IMAGENET_SETUPS,
    ImageNetSetup,
    LoadReport,
    PretrainedWeightsNotCachedError,
    WeightsMismatchError,
    imagenet_cache_file,
    imagenet_weights_path,
    load_pretrained,
    read_state_dict,
    register_imagenet_url,
)

__all__ = [
    "BACKBONES",
    "IBN",
    "IMAGENET_SETUPS",
    "GeneralizedMeanPooling",
    "ImageNetSetup",
    "LoadReport",
    "MobileNetV2Trunk",
    "PretrainedWeightsNotCachedError",
    "ReIDModel",
    "ResNetIBNa",
    "ResNetTrunk",
    "WeightsMismatchError",
    "build_model",
    "build_model_from_spec",
    "build_pooling",
    "imagenet_cache_file",
    "imagenet_weights_path",
    "load_pretrained",
    "read_state_dict",
    "register_backbone",
    "register_imagenet_url",
    "set_last_stride",
    "set_mobilenet_v2_last_stride",
]
