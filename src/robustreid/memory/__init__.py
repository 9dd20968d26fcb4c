"""Cluster memory: unit-norm cluster prototypes, the cluster-level contrastive loss and the
explicit momentum update the trainer calls after each optimiser step."""

from robustreid.memory.cluster_memory import ClusterMemory, UpdateMode, cluster_means

__all__ = ["ClusterMemory", "UpdateMode", "cluster_means"]
