"""Choosing DBSCAN's radius without labels: ``pseudo_labels(..., eps="auto")``.

The rule (docs/method.md, "Choosing eps without labels"): DBSCAN runs on the already computed
sparse k-reciprocal Jaccard distance for every radius of a fixed grid
(:data:`EPS_CANDIDATES`), and each partition is scored by its **silhouette on the sparse
distance** (Rousseeuw 1987), with the two conventions DBSCAN itself uses on this matrix: a
pair that is not stored lies at distance 1, and an outlier belongs to no cluster. For a
clustered sample ``i`` of cluster ``A`` (``|A| >= 2``):

* ``a(i)`` = mean distance from ``i`` to the other members of ``A``;
* ``b(i)`` = the smallest mean distance from ``i`` to the members of another cluster;
* ``s(i) = (b - a) / max(a, b)``.

Outliers and singleton clusters score ``s = 0`` (as scikit-learn does for singletons); the
score of a partition is the mean of ``s`` over **all** samples, so declaring samples outliers
costs score, and merging distinct groups raises ``a`` towards 1. A partition with fewer than
two clusters scores -1. The chosen radius is the middle of the longest run of consecutive
grid values that reach the best score (the partition that stays best over the widest range of
radii).

Cost: the distance entries are read once; each candidate is one DBSCAN
(:func:`~robustreid.clustering.pseudo_labels.dbscan_graph`, linear in the entries kept) and
one silhouette (a sort of the entries between clusters), ``O(E log E)`` for the ``E`` stored
entries within the largest radius tried. Pairs farther than that radius are unrelated for
every DBSCAN tried, and the silhouette counts them at distance 1 too; on the Jaccard
distance that drops most stored pairs (on planted blobs, 97 to 99 % of them lie above 0.95),
so the kNN search and the Jaccard distance, computed once, dominate the cost.

Other label-free rules considered: the k-distance "knee" of Ester et al. (1996) reads one
sample's ``min_samples``-th neighbour distance, which on the Jaccard distance is 1 for a large
share of the samples (few stored neighbours), so the curve has no clear knee; stability of the
partition under subsampling would recluster the set many times, which the cost bound rules
out; density-based validity (DBCV) needs minimum spanning trees per cluster. The silhouette
needs nothing but the matrix DBSCAN reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["EPS_CANDIDATES", "EpsChoice", "choose_eps", "sparse_silhouette"]

logger = logging.getLogger(__name__)

#: The radii ``eps="auto"`` tries: 0.05, 0.10, ..., 0.95.
EPS_CANDIDATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass
class EpsChoice:
    """The outcome of :func:`choose_eps`.

    Attributes:
        eps: the chosen radius.
        labels: ``(N,)`` int64 DBSCAN labels at ``eps`` (``-1`` = outlier), numbered as
            :func:`~robustreid.clustering.pseudo_labels.dbscan_sparse` numbers them.
        scores: candidate radius -> silhouette score of its partition (in ``[-1, 1]``).
        clusters: candidate radius -> number of clusters of its partition.
        criterion: the name of the score (``"silhouette"``).
    """

    eps: float
    labels: np.ndarray
    scores: dict[float, float] = field(default_factory=dict)
    clusters: dict[float, int] = field(default_factory=dict)
    criterion: str = "silhouette"

    def record(self) -> dict[str, object]:
        """The choice as record keys: ``eps`` (float), ``eps_criterion`` (str) and
        ``eps_scores`` (``{"0.55": score, ...}``, JSON-ready)."""
        return {"eps": self.eps, "eps_criterion": self.criterion,
                "eps_scores": {f"{e:.2f}": round(s, 6) for e, s in self.scores.items()}}


def _off_diagonal(dist: sp.spmatrix, cutoff: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(rows, cols, values, n)`` of the stored off-diagonal entries of ``dist`` whose value
    is at most ``cutoff`` (compared in the matrix's precision)."""
    csr = sp.csr_matrix(dist)
    n = csr.shape[0]
    at = np.flatnonzero(csr.data <= csr.data.dtype.type(cutoff))  # before building rows:
    rows = np.searchsorted(csr.indptr, at, side="right") - 1      # most entries are near 1
    cols = csr.indices[at].astype(np.int64)
    keep = rows != cols
    return rows[keep].astype(np.int64), cols[keep], csr.data[at][keep], n


def _silhouette_entries(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                        labels: np.ndarray) -> float:
    """:func:`sparse_silhouette` on the off-diagonal entries ``(rows, cols, values)``."""
    n = len(labels)
    num_clusters = int(labels.max()) + 1 if n and (labels >= 0).any() else 0
    if num_clusters < 2:
        return -1.0
    sizes = np.bincount(labels[labels >= 0], minlength=num_clusters).astype(np.float64)
    values = values.astype(np.float64)
    lab_i, lab_j = labels[rows], labels[cols]
    both = (lab_i >= 0) & (lab_j >= 0)
    rows, cols, values = rows[both], cols[both], values[both]
    lab_i, lab_j = lab_i[both], lab_j[both]
    del cols
    # a(i): stored pairs inside the cluster at their distance, the rest at distance 1
    inside = lab_i == lab_j
    sum_in = np.bincount(rows[inside], weights=values[inside], minlength=n)
    count_in = np.bincount(rows[inside], minlength=n).astype(np.float64)
    own = np.where(labels >= 0, sizes[np.maximum(labels, 0)], 1.0)
    others = np.maximum(own - 1.0, 1.0)
    a = (sum_in + (own - 1.0 - count_in)) / others
    # b(i): mean distance to each other cluster with a stored pair, 1 for every other one
    out = ~inside
    key = rows[out] * num_clusters + lab_j[out]
    uniq, inverse = np.unique(key, return_inverse=True)
    sums = np.bincount(inverse, weights=values[out], minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    row_of, cluster_of = uniq // num_clusters, uniq % num_clusters
    means = (sums + (sizes[cluster_of] - counts)) / sizes[cluster_of]
    b = np.ones(n, dtype=np.float64)
    np.minimum.at(b, row_of, means)
    linked = np.bincount(row_of, minlength=n)
    # with every other cluster linked, the 1 above is not a cluster's mean: take the minimum
    # of the linked means alone
    full = linked >= num_clusters - 1
    if full.any():
        b_linked = np.full(n, np.inf)
        np.minimum.at(b_linked, row_of, means)
        b[full] = b_linked[full]
    s = silhouette_values(a, b, (labels >= 0) & (own >= 2))
    return float(s.sum() / n)


def silhouette_values(a: np.ndarray, b: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Per-sample silhouette ``(b - a) / max(a, b)`` from ``(M,)`` float64 ``a`` (mean
    distance to the own cluster) and ``b`` (to the nearest other cluster); 0 where ``scored``
    is False (outliers, singletons) or ``max(a, b)`` is 0."""
    s = np.zeros(len(a), dtype=np.float64)
    denom = np.maximum(a, b)
    ok = scored & (denom > 0)
    s[ok] = (b[ok] - a[ok]) / denom[ok]
    return s


def sparse_silhouette(dist: sp.spmatrix, labels: np.ndarray, cutoff: float = 1.0) -> float:
    """Silhouette of a partition on a sparse distance whose unstored pairs lie at distance 1.

    Args:
        dist: ``(N, N)`` symmetric sparse distances in ``[0, 1]`` (the k-reciprocal Jaccard
            distance); the diagonal is ignored.
        labels: ``(N,)`` int labels ``0..C-1``, ``-1`` = outlier.
        cutoff: stored pairs farther than this count as unstored (distance 1).

    Returns:
        The mean over all ``N`` samples of ``s(i)`` (module docstring; outliers and
        singletons count 0), in ``[-1, 1]``; -1 for fewer than two clusters.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if dist.shape != (len(labels), len(labels)):
        raise ValueError(f"dist must be (N, N) for N={len(labels)} labels, got {dist.shape}")
    rows, cols, values, _ = _off_diagonal(dist, cutoff)
    return _silhouette_entries(rows, cols, values, labels)


def choose_eps(dist: sp.spmatrix, min_samples: int,
               candidates: tuple[float, ...] | list[float] = EPS_CANDIDATES) -> EpsChoice:
    """DBSCAN's radius on ``dist`` chosen by the sparse silhouette (module docstring).

    Args:
        dist: ``(N, N)`` symmetric sparse distances (the Jaccard distance ``pseudo_labels``
            computes), unstored pairs at distance 1.
        min_samples: DBSCAN ``min_samples`` (the sample itself included).
        candidates: radii to try, each in ``(0, 1)`` (sorted here).

    Returns:
        The chosen radius, its labels and every candidate's score and cluster count.
    """
    from .pseudo_labels import dbscan_graph  # the module that calls this one

    grid = sorted({float(e) for e in candidates})
    if not grid or not all(0.0 < e < 1.0 for e in grid):
        raise ValueError(f"eps candidates must be a non-empty list of radii in (0, 1), got "
                         f"{list(candidates)!r}")
    # pairs beyond the largest radius are unrelated for every DBSCAN tried, and count as
    # such (distance 1) in the silhouette too: on the Jaccard distance that drops most
    # stored pairs (those near 1), which keeps each candidate cheap
    rows, cols, values, n = _off_diagonal(dist, grid[-1])
    order = np.argsort(values, kind="stable")  # the entries within each radius are a prefix
    rows, cols, values = rows[order], cols[order], values[order]
    del order
    scores: dict[float, float] = {}
    clusters: dict[float, int] = {}

    def dbscan(eps: float) -> np.ndarray:
        # the entries DBSCAN at eps keeps, compared in their own precision as dbscan_sparse
        # compares them (the same partition, numbered the same)
        end = int(np.searchsorted(values, values.dtype.type(eps), side="right"))
        return dbscan_graph(rows[:end], cols[:end], n, int(min_samples))

    for eps in grid:
        labels = dbscan(eps)
        scores[eps] = _silhouette_entries(rows, cols, values, labels)
        clusters[eps] = int(labels.max()) + 1 if (labels >= 0).any() else 0
    best = max(scores.values())
    # the longest run of consecutive candidates at the best score; its middle (lower middle)
    runs: list[list[float]] = []
    for eps in grid:
        if scores[eps] == best:
            if runs and grid.index(eps) == grid.index(runs[-1][-1]) + 1:
                runs[-1].append(eps)
            else:
                runs.append([eps])
    run = max(runs, key=len)  # the first of equally long runs: the smaller radii
    chosen = run[(len(run) - 1) // 2]
    return EpsChoice(chosen, dbscan(chosen), scores, clusters)
