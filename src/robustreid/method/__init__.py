"""Robust prototypes for cluster-contrastive re-ID: SAA, CSA and HPS.

* :class:`SAA` - self-attention aggregation of a cluster's members (prototype, membership
  weights, leave-one-out dispersion); :func:`pack_clusters` batches clusters by padding.
* :func:`train_saa` / :func:`csa_prototypes` - cluster sample aggregation: train SAA on the
  epoch's features with a leave-one-out cluster contrastive loss, initialise the memory.
* :func:`select_hard_positives` - hard positive sampling for the memory's momentum update.
"""

from robustreid.method.csa import csa_prototypes, train_saa
from robustreid.method.hps import score_batch, select_hard_positive_indices, select_hard_positives
from robustreid.method.saa import SAA, SAAOutput, cluster_index, pack_clusters

__all__ = [
    "SAA",
    "SAAOutput",
    "cluster_index",
    "csa_prototypes",
    "pack_clusters",
    "score_batch",
    "select_hard_positive_indices",
    "select_hard_positives",
    "train_saa",
]
