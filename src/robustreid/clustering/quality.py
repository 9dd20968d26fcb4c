"""How good are the pseudo-labels? Agreement of a clustering with the true identities.

Only for diagnostics: the true identities of a training split (SynthPerson, Market-1501 and
MSMT17 carry them) are never used to train. Everything is computed from the sparse
contingency table of (cluster, identity) pairs, O(N log N), never an N x N matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from ._labels import outliers_as_singletons


def _pairs(counts: np.ndarray) -> float:
    """Number of unordered pairs within groups of the given sizes."""
    c = counts.astype(np.float64)
    return float((c * (c - 1) / 2).sum())


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0].astype(np.float64) / n
    return float(-(p * np.log(p)).sum())


def pseudo_label_quality(labels: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """Agreement of pseudo-labels with true identities.

    Args:
        labels: (N,) int cluster index per sample, -1 for an outlier.
        identities: (N,) int true identity per sample.

    Returns:
        ``pl_clusters`` and ``pl_identities`` (counts), ``pl_outlier_fraction`` (fraction of
        samples labelled -1), pairwise ``pl_precision`` (of the pairs that share a cluster,
        the fraction that share an identity), ``pl_recall`` (of the pairs that share an
        identity, the fraction that share a cluster; outliers share none), ``pl_fscore``
        (their harmonic mean), and ``pl_ari`` / ``pl_nmi`` (adjusted Rand index,
        normalised mutual information with the arithmetic mean of the entropies) with every
        outlier its own singleton cluster. Undefined ratios (no pairs) are 0. The keys, in
        display order, are :data:`robustreid.metric_names.QUALITY_KEYS`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    identities = np.asarray(identities, dtype=np.int64)
    if labels.shape != identities.shape or labels.ndim != 1:
        raise ValueError(f"labels and identities must be (N,) arrays of one length, got "
                         f"{labels.shape} and {identities.shape}")
    n = len(labels)
    if n == 0:
        raise ValueError("pseudo_label_quality: no samples")
    outlier = labels < 0
    _, cluster_idx = np.unique(outliers_as_singletons(labels), return_inverse=True)
    _, id_idx = np.unique(identities, return_inverse=True)
    num_ids = int(id_idx.max()) + 1
    cells, cell_counts = np.unique(cluster_idx * num_ids + id_idx, return_counts=True)
    cluster_sizes = np.bincount(cluster_idx)
    id_sizes = np.bincount(id_idx)

    same_both = _pairs(cell_counts)  # singletons add no pairs, so outliers share nothing
    same_cluster = _pairs(cluster_sizes)
    same_id = _pairs(id_sizes)
    precision = same_both / same_cluster if same_cluster else 0.0
    recall = same_both / same_id if same_id else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    total = n * (n - 1) / 2
    expected = same_cluster * same_id / total if total else 0.0
    max_index = (same_cluster + same_id) / 2
    ari = ((same_both - expected) / (max_index - expected)
           if max_index != expected else 1.0)

    h_c, h_i = _entropy(cluster_sizes, n), _entropy(id_sizes, n)
    # mutual information from the contingency cells
    cells_c, cells_i = cells // num_ids, cells % num_ids
    p = cell_counts / n
    mi = float((p * np.log(cell_counts * n / (cluster_sizes[cells_c] * id_sizes[cells_i]))).sum())
    nmi = mi / ((h_c + h_i) / 2) if h_c + h_i > 0 else 1.0
    return {
        "pl_clusters": float(len(np.unique(labels[~outlier]))),
        "pl_identities": float(len(id_sizes)),
        "pl_outlier_fraction": float(outlier.mean()),
        "pl_precision": precision,
        "pl_recall": recall,
        "pl_fscore": fscore,
        "pl_ari": float(ari),
        "pl_nmi": float(max(0.0, nmi)),
    }


def majority_identities(labels: np.ndarray, identities: np.ndarray,
                        num_clusters: int) -> np.ndarray:
    """The most frequent true identity of each cluster.

    Args:
        labels: (N,) int cluster index per sample in ``[0, num_clusters)``, -1 for an outlier.
        identities: (N,) int true identity per sample.
        num_clusters: C.

    Returns:
        (C,) int64 identity per cluster (ties: the smallest identity); -1 for a cluster
        without members.
    """
    labels = np.asarray(labels, dtype=np.int64)
    identities = np.asarray(identities, dtype=np.int64)
    keep = labels >= 0
    ids, id_idx = np.unique(identities[keep], return_inverse=True)
    majority = np.full(num_clusters, -1, dtype=np.int64)
    if not keep.any():
        return majority
    cells, counts = np.unique(labels[keep] * len(ids) + id_idx, return_counts=True)
    cluster, identity = cells // len(ids), cells % len(ids)
    # sort by (cluster, -count, identity): the first row of each cluster is its majority
    order = np.lexsort((identity, -counts, cluster))
    first = np.ones(len(order), dtype=bool)
    first[1:] = cluster[order][1:] != cluster[order][:-1]
    chosen = order[first]
    majority[cluster[chosen]] = ids[identity[chosen]]
    return majority


def identity_centres(features: torch.Tensor,
                     identities: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """L2-normalised mean feature of every true identity.

    Args:
        features: (N, D) features.
        identities: (N,) int true identity per sample.

    Returns:
        ``ids`` ((I,) sorted distinct identities) and ``centres`` ((I, D) float32, row ``i``
        the unit-norm mean of identity ``ids[i]``'s features), on the device of ``features``.
    """
    ids, idx = np.unique(np.asarray(identities, dtype=np.int64), return_inverse=True)
    index = torch.as_tensor(idx, device=features.device)
    sums = torch.zeros(len(ids), features.shape[1], device=features.device)
    sums.index_add_(0, index, features.float())
    return ids, torch.nn.functional.normalize(sums, dim=1)


def mean_angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean angle in degrees between matching rows of ``a`` and ``b`` ((M, D) each; rows
    are normalised first). 0 for M = 0."""
    if a.shape[0] == 0:
        return 0.0
    cos = (torch.nn.functional.normalize(a.float(), dim=1)
           * torch.nn.functional.normalize(b.float(), dim=1)).sum(1)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).mean())
