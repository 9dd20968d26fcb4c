"""Using a trained model: load a checkpoint, embed images, search a gallery, export."""

from robustreid.inference.extractor import (
    IMAGE_SUFFIXES,
    FeatureExtractor,
    Preprocess,
    checkpoint_meta,
    expand_inputs,
    list_images,
    load,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "FeatureExtractor",
    "Preprocess",
    "checkpoint_meta",
    "expand_inputs",
    "list_images",
    "load",
]
