"""Datasets: the sample types, the dataset registry and the built-in readers.

Importing this package registers the built-in readers (market1501, dukemtmc, personx,
msmt17, synthperson, folder, and ``images`` for unlabeled images). Register your own with
:func:`register_dataset`.
"""

from robustreid.data import images, readers  # noqa: F401  (registers the built-in readers)
from robustreid.data.base import (
    DATASETS,
    IMAGE_SUFFIXES,
    UNKNOWN_PID,
    DatasetError,
    ReIDData,
    Sample,
    build_dataset,
    list_datasets,
    list_images,
    parse_market_name,
    read_image,
    register_dataset,
    relabel_pids,
    to_rgb,
    verify_images,
    with_test_split,
)

__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "UNKNOWN_PID",
    "DatasetError",
    "ReIDData",
    "Sample",
    "build_dataset",
    "list_datasets",
    "list_images",
    "parse_market_name",
    "read_image",
    "register_dataset",
    "relabel_pids",
    "to_rgb",
    "verify_images",
    "with_test_split",
]
