"""Choosing the Jaccard neighbourhood ``k1`` without labels: ``pseudo_labels(..., k1="auto")``.

``k1`` sets how many nearest neighbours form an image's k-reciprocal set, so it should follow
how many images an identity has: too small and an identity's images do not all reach each
other's sets (their Jaccard distances stay near 1 and DBSCAN splits them), too large and the
sets take in other identities. A data set's images per identity is what a user without
labels does not know (docs/method.md, "Choosing k1 without labels").

The rule: the kNN is searched once (``2 max(candidates)`` columns); for each candidate
``k1`` of a short grid (:data:`K1_CANDIDATES`) the Jaccard distance is built from its prefix
and clustered (DBSCAN at the given radius, or with ``eps="auto"`` at the radius the sparse
silhouette chooses for that ``k1``). The candidates' partitions are then compared on a
distance that does not depend on ``k1``: the **cosine silhouette on the features**
(:func:`centroid_silhouette`; the Jaccard silhouette that chooses ``eps`` cannot compare
different ``k1``, since a larger ``k1`` lowers every Jaccard distance). The smallest
candidate within 2 % (:data:`K1_TOLERANCE`, relative) of the best score wins: the scores of
neighbouring candidates often differ by less than that, and where they do, the smaller
``k1`` clustered the training split of the SynthPerson renders of docs/RESULTS.md as well or
better (this tolerance was set on those training splits' true identities, the only place a
label was read; the benchmark scores the test splits).

The cosine silhouette needs no N x N matrix: on L2-normalised rows the mean cosine
similarity of a row to the members of a cluster is its dot product with the cluster's sum
over the cluster's size, so ``a(i)`` and ``b(i)`` come from the ``C`` cluster sums: ``O(N D)``
to sum and ``O(S C D)`` for ``S`` scored rows (all rows up to :data:`SILHOUETTE_ROWS`, a seeded
sample above). Outliers and singletons score 0 and count in the mean, as in
:func:`robustreid.clustering.eps_auto.sparse_silhouette`.

Measured on SynthPerson renders with 4 to 26 images per identity (docs/RESULTS.md): the rule
moves ``k1`` up where identities have many images and leaves it near 10-15 elsewhere; it does
not move ``min_samples``, which is what about 4 images per identity would need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .arrays import num_rows, rows_float32
from .eps_auto import silhouette_values

__all__ = ["K1_CANDIDATES", "K1_TOLERANCE", "SILHOUETTE_ROWS", "K1Choice", "centroid_silhouette",
           "check_k1_candidates", "choose_k1"]

logger = logging.getLogger(__name__)

#: The ``k1`` values ``k1="auto"`` tries (cluster-contrast-reid uses 30 on Market-1501; the
#: SynthPerson demo 10).
K1_CANDIDATES: tuple[int, ...] = (10, 15, 20, 30)
#: A larger ``k1`` must beat the smaller ones' cosine silhouette by more than this fraction
#: of the best score (differences of 1-2 % between candidates are within what resampling
#: the scored rows moves; module docstring).
K1_TOLERANCE = 0.02
#: Rows scored by :func:`centroid_silhouette` (a seeded sample of this many above).
SILHOUETTE_ROWS = 8192
_BLOCK = 4096  # rows read (and cast to float32) at a time


def check_k1_candidates(candidates: Sequence[int]) -> list[int]:
    """``candidates`` sorted and deduplicated; ``ValueError`` unless a non-empty list of
    positive integers."""
    values = list(candidates)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                         for k in values):
        raise ValueError(f"k1 candidates must be a non-empty list of positive integers, got "
                         f"{values!r}")
    return sorted({int(k) for k in values})


def centroid_silhouette(features: Any, labels: np.ndarray, rows: int = SILHOUETTE_ROWS,
                        seed: int = 0, row_ids: np.ndarray | None = None) -> float:
    """Cosine silhouette of a partition of L2-normalised rows, from the cluster sums.

    Args:
        features: ``(N, D)`` L2-normalised rows (numpy array, memory map or torch tensor, any
            float dtype; read in blocks of 4,096 rows, cast to float32).
        labels: ``(N,)`` int labels ``0..C-1``, ``-1`` = outlier.
        rows: score at most this many rows (a sample drawn with ``seed`` above; all rows
            otherwise).
        seed: seed of the sample.
        row_ids: ``row_ids[i]`` is the row of ``features`` that ``labels[i]`` labels
            (``None``: row ``i``).

    Returns:
        The mean of ``s(i) = (b - a) / max(a, b)`` over the scored rows, ``a(i)`` the mean
        cosine distance (``1 - cos``) to the other members of ``i``'s cluster, ``b(i)`` the
        smallest mean distance to another cluster; outliers and singletons count 0. In
        ``[-1, 1]``; -1 for fewer than two clusters.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if num_rows(features) != n:
        raise ValueError(f"features have {num_rows(features)} rows but labels {n}")

    def read(at: np.ndarray) -> np.ndarray:
        return rows_float32(features, at if row_ids is None else row_ids[at])

    num_clusters = int(labels.max()) + 1 if n and (labels >= 0).any() else 0
    if num_clusters < 2:
        return -1.0
    sizes = np.bincount(labels[labels >= 0], minlength=num_clusters).astype(np.float64)
    sums = np.zeros((num_clusters, features.shape[1]), dtype=np.float64)
    for start in range(0, n, _BLOCK):
        block = read(np.arange(start, min(start + _BLOCK, n)))
        lab = labels[start:start + _BLOCK]
        member = np.flatnonzero(lab >= 0)
        one_hot = sp.csr_matrix((np.ones(len(member), dtype=np.float32), (lab[member], member)),
                                shape=(num_clusters, len(lab)))
        sums += one_hot @ block
    sums = sums.astype(np.float32)
    picked = (np.arange(n) if n <= rows
              else np.sort(np.random.default_rng(seed).choice(n, rows, replace=False)))
    total = 0.0
    for start in range(0, len(picked), _BLOCK):
        at = picked[start:start + _BLOCK]
        x = read(at)
        sim = (x @ sums.T).astype(np.float64)  # (B, C) summed cosine similarity per cluster
        lab = labels[at]
        own = lab >= 0
        self_sim = np.einsum("ij,ij->i", x, x).astype(np.float64)  # 1 up to rounding
        mean_dist = 1.0 - sim / sizes[None, :]
        a = np.ones(len(at))
        rows_own = np.flatnonzero(own)
        size_own = sizes[lab[rows_own]]
        a[rows_own] = 1.0 - ((sim[rows_own, lab[rows_own]] - self_sim[rows_own])
                             / np.maximum(size_own - 1.0, 1.0))
        mean_dist[rows_own, lab[rows_own]] = np.inf
        b = mean_dist.min(axis=1)
        total += float(silhouette_values(a, b, own & (sizes[np.maximum(lab, 0)] >= 2)).sum())
    return total / len(picked)


@dataclass
class K1Choice:
    """The outcome of :func:`choose_k1`.

    Attributes:
        k1: the chosen ``k1``.
        labels: ``(N,)`` labels of the chosen candidate.
        info: what clustering the chosen candidate returned (e.g. ``eps="auto"``'s record).
        scores: candidate ``k1`` -> cosine silhouette of its partition.
        clusters: candidate ``k1`` -> number of clusters.
        seconds: candidate ``k1`` -> seconds of its clustering (``cluster``).
        criterion: the name of the score.
    """

    k1: int
    labels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    clusters: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    criterion: str = "cosine silhouette"

    def record(self) -> dict[str, object]:
        """``k1`` (int), ``k1_criterion`` (str), ``k1_scores`` (``{"15": score, ...}``)."""
        return {"k1": self.k1, "k1_criterion": self.criterion,
                "k1_scores": {str(k): round(s, 6) for k, s in self.scores.items()}}


def choose_k1(features: Any, candidates: Sequence[int],
              cluster: Callable[[int], tuple[np.ndarray, dict[str, Any]]],
              rows: int = SILHOUETTE_ROWS, seed: int = 0,
              row_ids: np.ndarray | None = None, tolerance: float = K1_TOLERANCE) -> K1Choice:
    """The smallest candidate ``k1`` whose partition's cosine silhouette is within
    ``tolerance`` (relative) of the best candidate's (module docstring).

    Args:
        features: ``(N, D)`` L2-normalised rows the partitions are of.
        candidates: ``k1`` values to try (positive integers).
        cluster: ``k1 -> (labels (N,), info)``: the clustering at that ``k1``.
        rows, seed, row_ids: see :func:`centroid_silhouette`.
        tolerance: relative margin: a larger ``k1`` is chosen only where it beats every
            smaller one by more than ``tolerance * |best score|``.
    """
    grid = check_k1_candidates(candidates)
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must lie in [0, 1), got {tolerance!r}")
    outcomes: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    scores: dict[int, float] = {}
    clusters: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for k1 in grid:
        start = time.perf_counter()
        labels, info = cluster(k1)
        seconds[k1] = time.perf_counter() - start
        outcomes[k1] = (labels, info)
        scores[k1] = centroid_silhouette(features, labels, rows=rows, seed=seed,
                                         row_ids=row_ids)
        clusters[k1] = int(labels.max()) + 1 if (labels >= 0).any() else 0
    best = max(scores.values())
    chosen = min(k for k in grid if scores[k] >= best - tolerance * abs(best))
    return K1Choice(chosen, *outcomes[chosen], scores=scores, clusters=clusters,
                    seconds=seconds)
