"""Pseudo-identity labels: DBSCAN on the sparse k-reciprocal Jaccard distance."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from .jaccard import jaccard_distance

__all__ = ["pseudo_labels", "dbscan_sparse", "relabel_consecutive"]


def relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Rename clusters to ``0..C-1`` in order of their first (lowest-index) sample; keep -1.

    Args:
        labels: ``(N,)`` integer labels, ``-1`` = outlier.

    Returns:
        ``(N,)`` int64 labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape, -1, dtype=np.int64)
    inlier = labels >= 0
    if inlier.any():
        uniq, first, inverse = np.unique(labels[inlier], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        new_id = np.empty(len(uniq), dtype=np.int64)
        new_id[order] = np.arange(len(uniq), dtype=np.int64)
        out[inlier] = new_id[inverse]
    return out


def dbscan_sparse(dist: sp.spmatrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn DBSCAN (``metric="precomputed"``) on a sparse distance matrix.

    scikit-learn treats a sparse precomputed matrix as a neighbourhood graph: **stored**
    entries with value ``<= eps`` are neighbours, explicitly stored zeros included (it never
    calls ``eliminate_zeros``; ``DBSCAN.fit`` re-stores the diagonal), and unstored pairs are
    never neighbours. With ``eps < 1`` this equals DBSCAN on the dense matrix with unstored
    pairs at distance 1. Entries ``> eps`` are dropped beforehand and rows are sorted by value
    (scikit-learn would otherwise copy and sort them with an ``EfficiencyWarning``).

    Args:
        dist: ``(N, N)`` sparse distances, diagonal stored.
        eps: neighbourhood radius, ``0 < eps < 1``.
        min_samples: minimum neighbourhood size (the sample itself counts) of a core sample.

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` (renamed by :func:`relabel_consecutive`), -1 = outlier.
    """
    csr = sp.csr_matrix(dist)
    n = csr.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
    keep = csr.data <= eps
    r, c, d = rows[keep], csr.indices[keep], csr.data[keep]
    order = np.lexsort((d, r))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    graph = sp.csr_matrix((d[order], c[order], indptr), shape=(n, n))
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return relabel_consecutive(labels)


def pseudo_labels(
    features: Any,
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    *,
    knn_method: str = "exact",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Cluster ``features`` into pseudo-identities (cluster-contrast style).

    Args:
        features: ``(N, D)`` L2-normalised features, numpy or torch (any device).
        eps: DBSCAN radius on the Jaccard distance, ``0 < eps < 1``.
        min_samples: DBSCAN ``min_samples`` (the sample itself included).
        k1, k2: Jaccard neighbourhood sizes, see :func:`robustreid.clustering.jaccard_distance`.
        knn_method: ``"exact"`` or ``"approx"``.
        device: torch device for the kNN search.

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` numbered by first occurrence, ``-1`` = outlier.
    """
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(
            f"eps must lie in (0, 1) for the Jaccard distance (pairs not stored are at "
            f"distance 1), got eps={eps}"
        )
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)):
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    dist = jaccard_distance(features, k1, k2, knn_method=knn_method, device=device)
    return dbscan_sparse(dist, eps, int(min_samples))
