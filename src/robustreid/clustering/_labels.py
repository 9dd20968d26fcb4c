"""Label vectors: renaming clusters in order of first occurrence; outliers as singletons."""

from __future__ import annotations

import numpy as np

__all__ = ["relabel_consecutive", "outliers_as_singletons"]


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


def outliers_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Every outlier (``-1``) made its own cluster, numbered after the clusters (the
    convention for scoring a partition with outliers, e.g. its ARI against identities).

    Args:
        labels: ``(N,)`` integer labels, ``-1`` = outlier.

    Returns:
        ``(N,)`` int64 labels without ``-1`` (a copy).
    """
    out = np.asarray(labels, dtype=np.int64).copy()
    alone = out < 0
    out[alone] = out.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return out
