"""InfoMap clustering of the kNN graph (an alternative to DBSCAN on the Jaccard distance).

As in cluster-contrast-reid's InfoMap option: every row links to its ``k`` nearest neighbours
(the row itself excluded) whose cosine similarity is at least ``min_similarity``, weighted by
that similarity (``1 - d2 / 2`` for unit features); the map equation (two-level InfoMap,
directed links, the ``infomap`` package) splits the graph into modules; modules with fewer
than ``min_size`` rows, and rows without any link, become outliers (``-1``). The graph has at
most ``N k`` links, so time and memory are ``O(N k)``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from robustreid.errors import UserError

from ._labels import relabel_consecutive
from .progress import Step

__all__ = ["infomap_labels", "infomap_available"]

logger = logging.getLogger(__name__)


def _infomap_module() -> Any:
    try:
        import infomap  # type: ignore[import-untyped]
    except ImportError:
        return None
    return infomap


def infomap_available() -> bool:
    """``True`` when the optional ``infomap`` package can be imported."""
    return _infomap_module() is not None


def infomap_labels(
    distances: np.ndarray,
    indices: np.ndarray,
    *,
    k: int | None = None,
    min_similarity: float = 0.5,
    min_size: int = 2,
    seed: int = 0,
    trials: int = 1,
) -> np.ndarray:
    """Cluster the rows by InfoMap on their kNN graph.

    Args:
        distances: ``(N, K)`` squared Euclidean distances of the kNN (``2 - 2 cos`` for unit
            features), ascending per row.
        indices: ``(N, K)`` int neighbour indices (the row itself may be among them; it is
            skipped).
        k: neighbours per row used as links (default: all ``K`` columns).
        min_similarity: cosine similarity a link needs, in ``[-1, 1]``.
        min_size: modules smaller than this are outliers (``>= 1``).
        seed: InfoMap's random seed (the same inputs and seed give the same labels).
        trials: InfoMap trials (the best partition is kept).

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` numbered by first occurrence, ``-1`` = outlier.

    Raises:
        UserError: the ``infomap`` package is not installed.
    """
    infomap = _infomap_module()
    if infomap is None:
        raise UserError("cluster.method=infomap needs the 'infomap' package: "
                        "pip install 'infomap>=2.16' (or choose cluster.method=dbscan)")
    dist = np.asarray(distances)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2 or dist.shape != idx.shape:
        raise ValueError(f"distances and indices must both be (N, K), got {dist.shape} and "
                         f"{idx.shape}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must lie in [-1, 1], got {min_similarity}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1, got {min_size!r}")
    n = idx.shape[0]
    cols = idx.shape[1] if k is None else max(1, min(int(k), idx.shape[1]))
    with Step(logger, f"InfoMap (N={n}, {cols} neighbours, min similarity {min_similarity})",
              n):
        src = np.repeat(np.arange(n, dtype=np.int64), cols)
        dst = idx[:, :cols].ravel()
        sim = 1.0 - dist[:, :cols].astype(np.float64).ravel() / 2.0
        keep = (dst != src) & (sim >= min_similarity) & (dst >= 0) & np.isfinite(sim)
        labels = np.full(n, -1, dtype=np.int64)
        if keep.any():
            links = np.column_stack((src[keep], dst[keep], sim[keep])).astype(np.float64)
            engine = infomap.Infomap(two_level=True, directed=True, silent=True,
                                     seed=int(seed) + 1, num_trials=max(1, int(trials)))
            engine.add_links(links)
            result = engine.run()
            modules = result.modules() if hasattr(result, "modules") else engine.get_modules()
            nodes = np.fromiter(modules.keys(), dtype=np.int64, count=len(modules))
            mods = np.fromiter(modules.values(), dtype=np.int64, count=len(modules))
            labels[nodes] = mods
            sizes = np.bincount(labels[labels >= 0])
            labels[(labels >= 0) & (sizes[np.maximum(labels, 0)] < min_size)] = -1
        out = relabel_consecutive(labels)
    logger.log(logging.INFO if n >= 50_000 else logging.DEBUG,
               "InfoMap: %d clusters, %d outliers", int(out.max()) + 1 if (out >= 0).any()
               else 0, int((out < 0).sum()))
    return out
