"""Pseudo-label generation: kNN search, sparse k-reciprocal Jaccard distance and DBSCAN."""

from .jaccard import jaccard_distance, jaccard_distance_from_knn
from .knn import faiss_available, knn
from .pseudo_labels import dbscan_sparse, pseudo_labels, relabel_consecutive

__all__ = [
    "dbscan_sparse",
    "faiss_available",
    "jaccard_distance",
    "jaccard_distance_from_knn",
    "knn",
    "pseudo_labels",
    "relabel_consecutive",
]
