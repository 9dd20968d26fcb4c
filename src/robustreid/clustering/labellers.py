"""Pseudo-labellers: the "pseudo-label" stage of an epoch as small objects passed to the trainer.

A labeller maps the epoch's features of the training split to :class:`EpochLabels`. Three
are provided, composed by the builder (``robustreid.build.build_labeller``):

* :class:`ClusteringLabeller` - k-reciprocal Jaccard distance + DBSCAN (the method), or
  InfoMap on the kNN graph;
* :class:`SupervisedLabeller` - the true identities (the supervised upper bound);
* :class:`InstanceWarmup` - one class per image for the first epochs, then another labeller.

Any callable ``(features, epoch) -> EpochLabels`` can stand in for them (tests use planted
labellings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from robustreid.clustering.camera import camera_normalize
from robustreid.clustering.knn import check_knn_method
from robustreid.clustering.pseudo_labels import pseudo_labels

#: What ``eps="auto"`` and ``k1="auto"`` add to the epoch's record (see
#: ``pseudo_labels(return_info=True)``).
_AUTO_RECORD = ("eps", "eps_criterion", "eps_scores", "time_eps_auto",
                "k1", "k1_criterion", "k1_scores", "time_k1_auto")


@dataclass
class EpochLabels:
    """Pseudo-labels of one epoch: (N,) int64 with -1 for outliers. ``info``: what the
    labeller chose and from what (e.g. ``eps``, ``eps_scores`` of ``eps="auto"``), added to
    the epoch's record; empty for fixed settings."""

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    # True in an instance-discrimination warm-up epoch: every sample is its own class, so
    # the memory is plain (mean initialisation and update; CSA/HPS need real clusters).
    instance: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_labels(cls, labels: np.ndarray, instance: bool = False,
                    info: dict[str, Any] | None = None) -> EpochLabels:
        """Count clusters (``max + 1``) and outliers (``-1``) of a (N,) label vector."""
        labels = np.asarray(labels, dtype=np.int64)
        num_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
        return cls(labels, num_clusters, int((labels < 0).sum()), instance=instance,
                   info=dict(info or {}))


class PseudoLabeller(Protocol):
    """``(features (N, D), epoch (1-based)) -> EpochLabels``."""

    def __call__(self, features: torch.Tensor, epoch: int) -> EpochLabels: ...


class ClusteringLabeller:
    """DBSCAN on the k-reciprocal Jaccard distance of the features (or InfoMap on their kNN).

    Args:
        eps: DBSCAN radius on the Jaccard distance, in (0, 1), or ``"auto"``: chosen every
            epoch without labels (:func:`robustreid.clustering.eps_auto.choose_eps`); the
            choice and its scores go into :attr:`EpochLabels.info`.
        min_samples: DBSCAN core-point size.
        k1, k2: k-reciprocal neighbourhood sizes (InfoMap: ``k1`` links per image);
            ``k1="auto"``: chosen every epoch without labels
            (:func:`robustreid.clustering.k1_auto.choose_k1`), recorded like ``eps``.
        knn_method: ``auto``, ``exact``, ``ivf`` or ``hnsw`` nearest-neighbour search
            (:func:`robustreid.clustering.knn`).
        camids: (N,) camera ids of the training images (needed by the two options below).
        camera_normalize: subtract each camera's mean feature first.
        intra_camera_k1: camera-aware ranking lists (``pseudo_labels(intra_camera_k1=...)``):
            each ``k1``-list holds the image, this many of its own camera and the rest from
            other cameras; ``None``: the classic lists.
        device: where the kNN search runs.
        method: ``dbscan`` or ``infomap``.
        knn_options: further keyword arguments of :func:`robustreid.clustering.knn`
            (``reduce_dim``, ``projection``, ``candidates``).
        feature_dtype: ``float32`` or ``float16``: storage of the features while clustering.
        infomap_min_sim, infomap_min_size: InfoMap link threshold and smallest cluster.
    """

    def __init__(self, eps: float | str, min_samples: int, k1: int | str, k2: int,
                 knn_method: str = "auto", camids: Sequence[int] | None = None,
                 device: torch.device | None = None, *, camera_normalize: bool = False,
                 intra_camera_k1: int | None = None, method: str = "dbscan",
                 knn_options: Mapping[str, Any] | None = None,
                 feature_dtype: str = "float32", infomap_min_sim: float = 0.5,
                 infomap_min_size: int = 2) -> None:
        if feature_dtype not in ("float32", "float16"):
            raise ValueError(f"feature_dtype must be float32 or float16, got {feature_dtype!r}")
        check_knn_method(knn_method, "knn_method")
        if isinstance(eps, str) and eps != "auto":
            raise ValueError(f"eps must be a radius in (0, 1) or 'auto', got {eps!r}")
        if isinstance(k1, str) and k1 != "auto":
            raise ValueError(f"k1 must be a positive integer or 'auto', got {k1!r}")
        self.eps, self.min_samples, self.k1, self.k2 = eps, min_samples, k1, k2
        self.knn_method = knn_method
        if (camera_normalize or intra_camera_k1 is not None) and camids is None:
            raise ValueError("camera_normalize and intra_camera_k1 need camids, the camera id "
                             "of every training image")
        self.camids = None if camids is None else torch.as_tensor(list(camids))
        self.camera_normalize = camera_normalize
        self.intra_camera_k1 = intra_camera_k1
        self.device = device
        self.method = method
        self.knn_options = dict(knn_options or {})
        self.feature_dtype = feature_dtype
        self.infomap_min_sim, self.infomap_min_size = infomap_min_sim, infomap_min_size
        self.chosen_eps: float | None = None  # eps="auto": the radius of the last call
        self.chosen_k1: int | None = None  # k1="auto": the k1 of the last call

    def __call__(self, features: Any, epoch: int) -> EpochLabels:
        """Labels of ``features``: an (N, D) tensor, or an (N, D) array / memory map."""
        if self.camera_normalize:
            features = camera_normalize(torch.as_tensor(np.asarray(features))
                                        if not isinstance(features, torch.Tensor)
                                        else features, self.camids)
        if self.feature_dtype == "float16":
            features = (features.half() if isinstance(features, torch.Tensor)
                        else np.asarray(features, dtype=np.float16))
        auto = self.eps == "auto" or self.k1 == "auto"
        out = pseudo_labels(features, eps=self.eps, min_samples=self.min_samples,
                            k1=self.k1, k2=self.k2, knn_method=self.knn_method,
                            device=self.device, method=self.method,
                            knn_options=self.knn_options,
                            infomap_min_similarity=self.infomap_min_sim,
                            infomap_min_size=self.infomap_min_size, return_info=auto,
                            camids=None if self.intra_camera_k1 is None else self.camids.numpy(),
                            intra_camera_k1=self.intra_camera_k1)
        if auto:
            labels, info = out
            self.chosen_eps = info.get("eps", self.chosen_eps)
            self.chosen_k1 = info.get("k1", self.chosen_k1)
            # the record gets the choice only (not the kNN path's memory and timing figures,
            # which differ from run to run)
            return EpochLabels.from_labels(labels, info={k: info[k] for k in _AUTO_RECORD
                                                         if k in info})
        return EpochLabels.from_labels(out)

    def describe(self) -> str:
        """The settings, for messages (e.g. why an epoch found too few clusters)."""
        if self.method == "infomap":
            return (f"infomap, infomap_min_sim={self.infomap_min_sim}, "
                    f"infomap_min_size={self.infomap_min_size}")
        if self.eps == "auto":
            last = "" if self.chosen_eps is None else f", last chosen {self.chosen_eps:.2f}"
            text = f"eps=auto{last}, min_samples={self.min_samples}"
        else:
            text = f"eps={self.eps}, min_samples={self.min_samples}"
        if self.k1 == "auto":
            last = "" if self.chosen_k1 is None else f", last chosen {self.chosen_k1}"
            text += f", k1=auto{last}"
        return text


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
