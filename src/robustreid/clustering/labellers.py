"""Pseudo-labellers: the "pseudo-label" stage of an epoch as small objects passed to the trainer.

A labeller maps the epoch's features of the training split to :class:`EpochLabels`. Three
are provided, composed by the trainer's wiring (``engine.trainer.labeller_from_config``):

* :class:`ClusteringLabeller` - k-reciprocal Jaccard distance + DBSCAN (the method);
* :class:`SupervisedLabeller` - the true identities (the supervised upper bound);
* :class:`InstanceWarmup` - one class per image for the first epochs, then another labeller.

Any callable ``(features, epoch) -> EpochLabels`` can stand in for them (tests use planted
labellings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from robustreid.clustering.camera import camera_normalize
from robustreid.clustering.pseudo_labels import pseudo_labels


@dataclass
class EpochLabels:
    """Pseudo-labels of one epoch: (N,) int64 with -1 for outliers."""

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    # True in an instance-discrimination warm-up epoch: every sample is its own class, so
    # the memory is plain (mean initialisation and update; CSA/HPS need real clusters).
    instance: bool = False

    @classmethod
    def from_labels(cls, labels: np.ndarray, instance: bool = False) -> EpochLabels:
        """Count clusters (``max + 1``) and outliers (``-1``) of a (N,) label vector."""
        labels = np.asarray(labels, dtype=np.int64)
        num_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
        return cls(labels, num_clusters, int((labels < 0).sum()), instance=instance)


class PseudoLabeller(Protocol):
    """``(features (N, D), epoch (1-based)) -> EpochLabels``."""

    def __call__(self, features: torch.Tensor, epoch: int) -> EpochLabels: ...


class ClusteringLabeller:
    """DBSCAN on the k-reciprocal Jaccard distance of the features.

    Args:
        eps: DBSCAN radius on the Jaccard distance, in (0, 1).
        min_samples: DBSCAN core-point size.
        k1, k2: k-reciprocal neighbourhood sizes.
        knn_method: ``exact`` or ``approx`` nearest-neighbour search.
        camids: (N,) camera ids of the training images, to subtract each camera's mean
            feature first (``None``: no camera normalisation).
        device: where the kNN search runs.
    """

    def __init__(self, eps: float, min_samples: int, k1: int, k2: int,
                 knn_method: str = "exact", camids: Sequence[int] | None = None,
                 device: torch.device | None = None) -> None:
        self.eps, self.min_samples, self.k1, self.k2 = eps, min_samples, k1, k2
        self.knn_method = knn_method
        self.camids = None if camids is None else torch.as_tensor(list(camids))
        self.device = device

    def __call__(self, features: torch.Tensor, epoch: int) -> EpochLabels:
        if self.camids is not None:
            features = camera_normalize(features, self.camids)
        labels = pseudo_labels(features, eps=self.eps, min_samples=self.min_samples,
                               k1=self.k1, k2=self.k2, knn_method=self.knn_method,
                               device=self.device)
        return EpochLabels.from_labels(labels)

    def describe(self) -> str:
        """The settings, for messages (e.g. why an epoch found too few clusters)."""
        return f"eps={self.eps}, min_samples={self.min_samples}"


class SupervisedLabeller:
    """The true identities as labels (the supervised upper bound).

    Args:
        identities: (N,) true identity per training image (any integers).
    """

    def __init__(self, identities: Sequence[int]) -> None:
        _, inverse = np.unique(np.asarray(identities, dtype=np.int64), return_inverse=True)
        self.labels = inverse.astype(np.int64)

    def __call__(self, features: torch.Tensor, epoch: int) -> EpochLabels:
        return EpochLabels.from_labels(self.labels.copy())

    def describe(self) -> str:
        return "true identities"


class InstanceWarmup:
    """One class per image for epochs ``1..epochs``, then ``then``'s labels.

    For networks that start without useful features (instance discrimination warm-up).
    """

    def __init__(self, epochs: int, then: PseudoLabeller) -> None:
        self.epochs = epochs
        self.then = then

    def __call__(self, features: torch.Tensor, epoch: int) -> EpochLabels:
        if epoch <= self.epochs:
            n = len(features)
            return EpochLabels(np.arange(n, dtype=np.int64), n, 0, instance=True)
        return self.then(features, epoch)

    def describe(self) -> str:
        inner = getattr(self.then, "describe", None)
        return inner() if inner else type(self.then).__name__
