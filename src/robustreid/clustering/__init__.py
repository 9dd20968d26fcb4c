"""Pseudo-label generation: kNN search, sparse k-reciprocal Jaccard distance, DBSCAN or
InfoMap; the approximate kNN and chunked inputs for millions of rows."""

from ._labels import outliers_as_singletons, relabel_consecutive
from .ann import Projection, fit_projection, ivf_knn, project, refine_knn
from .arrays import open_features
from .graph_clustering import infomap_available, infomap_labels
from .jaccard import jaccard_distance, jaccard_distance_from_knn
from .knn import AUTO_EXACT_MAX_ROWS, KNN_METHODS, choose_method, faiss_available, knn
from .pseudo_labels import CLUSTER_METHODS, dbscan_sparse, pseudo_labels

__all__ = [
    "AUTO_EXACT_MAX_ROWS",
    "CLUSTER_METHODS",
    "KNN_METHODS",
    "Projection",
    "choose_method",
    "dbscan_sparse",
    "faiss_available",
    "fit_projection",
    "infomap_available",
    "infomap_labels",
    "ivf_knn",
    "jaccard_distance",
    "jaccard_distance_from_knn",
    "knn",
    "open_features",
    "project",
    "pseudo_labels",
    "refine_knn",
    "relabel_consecutive",
    "outliers_as_singletons",
]
