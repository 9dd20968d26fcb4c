"""robustreid: unsupervised person re-identification with robust cluster prototypes.

``robustreid.load(path, device=...)`` loads a trained checkpoint as a feature extractor
(see :mod:`robustreid.inference`); it is imported on first use, so ``import robustreid`` stays
light.
"""

from typing import Any

from robustreid.version import __version__ as __version__


def __getattr__(name: str) -> Any:
    if name in ("load", "FeatureExtractor"):
        from robustreid import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'robustreid' has no attribute {name!r}")
