"""Backbones (behind a registry), pooling layers, pretrained weights and the re-ID model."""

from robustreid.models.backbones import (
    BACKBONES,
    ReIDModel,
    ResNetTrunk,
    build_model,
    build_model_from_spec,
    register_backbone,
    set_last_stride,
)
from robustreid.models.layers import GeneralizedMeanPooling, build_pooling
from robustreid.models.resnet_ibn import IBN, ResNetIBNa
from robustreid.models.weights import (
    LoadReport,
    PretrainedWeightsNotCachedError,
    WeightsMismatchError,
    imagenet_weights_path,
    load_pretrained,
    read_state_dict,
    register_imagenet_url,
)

__all__ = [
    "BACKBONES",
    "IBN",
    "GeneralizedMeanPooling",
    "LoadReport",
    "PretrainedWeightsNotCachedError",
    "ReIDModel",
    "ResNetIBNa",
    "ResNetTrunk",
    "WeightsMismatchError",
    "build_model",
    "build_model_from_spec",
    "build_pooling",
    "imagenet_weights_path",
    "load_pretrained",
    "read_state_dict",
    "register_backbone",
    "register_imagenet_url",
    "set_last_stride",
]
