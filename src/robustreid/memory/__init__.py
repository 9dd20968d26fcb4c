"""Cluster memory: unit-norm cluster prototypes, the cluster-level contrastive loss and the
explicit momentum update the trainer calls after each optimiser step; memories by name;
pseudo-label refinement into soft targets (refiners by name)."""

from robustreid.memory.camera_proxies import CameraProxyMemory
from robustreid.memory.cluster_memory import ClusterMemory, UpdateMode, cluster_means
from robustreid.memory.multi_proxies import CameraMultiProxyMemory, MultiProxyMemory
from robustreid.memory.refinement import (
    REFINERS,
    NeighbourRefiner,
    RefinedTargets,
    register_refiner,
)
from robustreid.memory.registry import MEMORIES, register_memory

__all__ = ["MEMORIES", "REFINERS", "CameraMultiProxyMemory", "CameraProxyMemory",
           "ClusterMemory", "MultiProxyMemory", "NeighbourRefiner", "RefinedTargets",
           "UpdateMode", "cluster_means", "register_memory", "register_refiner"]
