"""Datasets: the sample types, the dataset registry and the built-in readers.

Importing this package registers the built-in readers (market1501, dukemtmc, personx,
msmt17, synthperson, folder). Register your own with :func:`register_dataset`.
"""

from robustreid.data import readers  # noqa: F401  (registers the built-in readers)
from robustreid.data.base import (
    DATASETS,
    DatasetError,
    ReIDData,
    Sample,
    build_dataset,
    list_datasets,
    parse_market_name,
    read_image,
    register_dataset,
    relabel_pids,
    verify_images,
)

__all__ = [
    "DATASETS",
    "DatasetError",
    "ReIDData",
    "Sample",
    "build_dataset",
    "list_datasets",
    "parse_market_name",
    "read_image",
    "register_dataset",
    "relabel_pids",
    "verify_images",
]
