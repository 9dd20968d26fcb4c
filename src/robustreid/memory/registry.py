"""The memories a run can train against, by name (``memory.kind`` in the configuration).

A memory class is constructed per epoch as ``cls(num_features, num_clusters, temperature=...,
momentum=..., update=mode, **memory.options)`` and must provide ``prototypes`` (C, D),
``init_prototypes(prototypes)``, a loss ``forward(feats (B, D), targets (B,), indices (B,))
-> scalar`` and ``update(feats, targets, indices) -> positions`` (``indices``: the samples'
rows in the epoch's training split; see :class:`~robustreid.memory.ClusterMemory`). It may
define ``begin_epoch(features (N, D), labels (N,), camids (N,))``, called after the
prototypes are set, ``needs_cameras = True`` (then data with one camera is refused) and
``needs_own_update = True`` (then an update strategy that bypasses ``update``, i.e.
``memory.update`` other than ``mean`` or ``hard``, is refused).
Add one with::

    from robustreid.memory import register_memory

    @register_memory("mymemory")
    class MyMemory(ClusterMemory):
        ...
"""

from __future__ import annotations

from robustreid.memory.camera_proxies import CameraProxyMemory
from robustreid.memory.cluster_memory import ClusterMemory
from robustreid.memory.multi_proxies import CameraMultiProxyMemory, MultiProxyMemory
from robustreid.registry import Registry

MEMORIES: Registry = Registry("memory")
register_memory = MEMORIES.register

register_memory("cluster")(ClusterMemory)
register_memory("camera_proxies")(CameraProxyMemory)
register_memory("multi_proxies")(MultiProxyMemory)
register_memory("camera_multi_proxies")(CameraMultiProxyMemory)
