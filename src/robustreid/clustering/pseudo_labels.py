"""Pseudo-identity labels: DBSCAN on the sparse k-reciprocal Jaccard distance, or InfoMap on
the kNN graph."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, reverse_cuthill_mckee

from ._labels import relabel_consecutive
from .arrays import num_rows, open_features, validate_features
from .camera_knn import camera_knn
from .eps_auto import EPS_CANDIDATES, choose_eps
from .graph_clustering import infomap_labels
from .jaccard import _jaccard_core, check_k
from .k1_auto import K1_CANDIDATES, check_k1_candidates, choose_k1
from .knn import _resolve_device, check_knn_method, choose_method, knn
from .progress import Step, peak_rss_mb, rss_mb

__all__ = ["pseudo_labels", "dbscan_sparse", "dbscan_graph", "relabel_consecutive",
           "CLUSTER_METHODS"]

logger = logging.getLogger(__name__)

CLUSTER_METHODS = ("dbscan", "infomap")


def dbscan_sparse(dist: sp.spmatrix, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN on a symmetric sparse distance matrix, the partition scikit-learn's gives.

    As scikit-learn's DBSCAN (``metric="precomputed"``) reads a sparse matrix: **stored**
    entries with value ``<= eps`` are neighbours, explicitly stored zeros included, the sample
    itself always is one, and unstored pairs never are. With ``eps < 1`` this equals DBSCAN on
    the dense matrix with unstored pairs at distance 1. The computation is linear in the
    stored entries (:func:`dbscan_graph`), about 5x faster than scikit-learn's at a million
    rows, and gives its partition (``tests/test_clustering.py`` compares them).

    Args:
        dist: ``(N, N)`` sparse distances, symmetric (as the Jaccard distance is).
        eps: neighbourhood radius, ``0 < eps < 1``.
        min_samples: minimum neighbourhood size (the sample itself counts) of a core sample.

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` (renamed by :func:`relabel_consecutive`), -1 = outlier.
    """
    csr = sp.csr_matrix(dist)
    n = csr.shape[0]
    with Step(logger, f"DBSCAN (N={n}, eps={eps}, min_samples={min_samples})", n) as step:
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr))
        keep = (csr.data <= eps) & (csr.indices != rows)  # the diagonal is added below
        rows, cols = rows[keep], csr.indices[keep].astype(np.int64)
        del keep, csr
        out = dbscan_graph(rows, cols, n, min_samples)
    logger.log(step.level, "DBSCAN: %d clusters, %d outliers",
               int(out.max()) + 1 if (out >= 0).any() else 0, int((out < 0).sum()))
    return out


def dbscan_graph(rows: np.ndarray, cols: np.ndarray, n: int, min_samples: int) -> np.ndarray:
    """DBSCAN labels from the neighbour pairs of a symmetric neighbourhood graph.

    Core samples have at least ``min_samples`` neighbours, themselves included; clusters are
    the connected components of the core samples; a border sample (not core, with a core
    neighbour) joins, of the clusters of its core neighbours, the one whose lowest core
    index is lowest: the cluster that scikit-learn's expansion, which seeds clusters in index
    order, reaches first.

    Args:
        rows, cols: ``(E,)`` int64 neighbour pairs ``(i, j)``, ``i != j``, each pair stored in
            both directions.
        n: number of samples.
        min_samples: minimum neighbourhood size of a core sample (the sample itself counts).

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` in order of first sample, -1 = outlier.
    """
    core = np.bincount(rows, minlength=n) + 1 >= min_samples
    both = core[rows] & core[cols]
    links = sp.csr_matrix((np.ones(int(both.sum()), dtype=np.int8), (rows[both], cols[both])),
                          shape=(n, n))
    del both
    _, comp = connected_components(links, directed=False)
    del links
    core_ids = np.flatnonzero(core)
    seed = np.full(int(comp.max()) + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(seed, comp[core_ids], core_ids)  # lowest core index of each cluster
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_ids] = seed[comp[core_ids]]
    border = ~core[rows] & core[cols]
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, rows[border], seed[comp[cols[border]]])
    reached = best < n
    labels[reached] = best[reached]
    return relabel_consecutive(labels)


def pseudo_labels(
    features: Any,
    eps: float | str = 0.6,
    min_samples: int = 4,
    k1: int | str = 30,
    k2: int = 6,
    *,
    knn_method: str = "auto",
    device: torch.device | str | None = None,
    method: str = "dbscan",
    knn_options: Mapping[str, Any] | None = None,
    infomap_min_similarity: float = 0.5,
    infomap_min_size: int = 2,
    seed: int = 0,
    return_knn: bool = False,
    eps_candidates: Sequence[float] = EPS_CANDIDATES,
    return_info: bool = False,
    camids: Any = None,
    intra_camera_k1: int | None = None,
    k1_candidates: Sequence[int] = K1_CANDIDATES,
) -> np.ndarray | tuple[Any, ...]:
    """Cluster ``features`` into pseudo-identities (cluster-contrast style).

    ``method="dbscan"``: kNN (``2 k1`` columns), k-reciprocal Jaccard distance, DBSCAN.
    ``method="infomap"``: kNN (``k1`` columns), InfoMap on the kNN graph
    (:func:`robustreid.clustering.graph_clustering.infomap_labels`). Both are ``O(N k1)`` in
    memory after the kNN search; each step logs its progress and time (``INFO`` from 50,000
    rows on, logger ``robustreid.clustering``).

    Args:
        features: ``(N, D)`` L2-normalised features: numpy array or memory map (float16 or
            float32), ``.npy`` path, or torch tensor (any device).
        eps: DBSCAN radius on the Jaccard distance, ``0 < eps < 1``, or ``"auto"``: chosen
            among ``eps_candidates`` by the silhouette of each partition on the Jaccard
            distance, computed once (:func:`robustreid.clustering.eps_auto.choose_eps`; no
            labels are used). DBSCAN only.
        min_samples: DBSCAN ``min_samples`` (the sample itself included).
        k1, k2: Jaccard neighbourhood sizes, see :func:`robustreid.clustering.jaccard_distance`
            (InfoMap links each row to its ``k1`` nearest neighbours). ``k1="auto"``: chosen
            among ``k1_candidates`` by the cosine silhouette of each candidate's partition on
            the features (:func:`robustreid.clustering.k1_auto.choose_k1`; no labels are
            used; DBSCAN and the classic ranking lists only); the kNN is searched once.
        knn_method: ``"auto"`` (exact up to 50,000 rows of 2048 dimensions, see
            :func:`robustreid.clustering.choose_method`; above, the IVF search, after a
            balanced instead of a PCA projection on a flat spectrum:
            :func:`robustreid.clustering.knn.auto_projection`), ``"exact"``, ``"ivf"`` or
            ``"hnsw"`` (:func:`robustreid.clustering.knn`).
        device: torch device for the kNN search.
        method: ``"dbscan"`` or ``"infomap"``.
        knn_options: further keyword arguments of :func:`robustreid.clustering.knn`
            (``reduce_dim``, ``nprobe``, ``candidates``, ...).
        infomap_min_similarity: cosine similarity an InfoMap link needs.
        infomap_min_size: InfoMap clusters smaller than this are outliers.
        seed: seed of the approximate search and of InfoMap.
        return_knn: also return the kNN the labels were computed from.
        eps_candidates: the radii ``eps="auto"`` tries, each in ``(0, 1)``.
        return_info: also return a dict of what was chosen: with ``eps="auto"``, ``eps``,
            ``eps_criterion``, ``eps_scores`` (radius as ``"0.55"`` -> score) and
            ``time_eps_auto`` (seconds of the choice; with ``k1="auto"`` the chosen
            candidate's); with ``k1="auto"``, ``k1``, ``k1_criterion``, ``k1_scores``
            (``"15"`` -> score) and ``time_k1_auto`` (seconds of the choice beyond one
            clustering: the other candidates and the scores); empty for fixed settings and
            the exact kNN. After an approximate kNN also what the search chose (``knn_method``,
            ``knn_dim``, ``knn_kept_variance``, ``knn_choice``, ``knn_nprobe`` and, where
            measured, ``knn_coverage``: see ``info`` of :func:`robustreid.clustering.knn`) and
            the memory of the call, from the kernel's resident-set counters
            (``memory_peak_rss_mb``, ``memory_rss_start_mb``, ``memory_call_peak_mb``,
            ``memory_peak_rose``; also logged at ``INFO``).
        camids: ``(N,)`` integer camera ids; only read with ``intra_camera_k1``.
        intra_camera_k1: ``None`` (the classic ranking lists), or camera-aware ranking lists
            (:func:`robustreid.clustering.camera_knn.camera_knn`): each image's ``k1``-list
            holds itself, its ``intra_camera_k1`` nearest images of its own camera and its
            ``k1 - 1 - intra_camera_k1`` nearest of the other cameras. DBSCAN only; the
            lists come from an exact search (``knn_method`` ``"auto"`` or ``"exact"``), and
            ``camids`` must name at least two cameras.
        k1_candidates: the ``k1`` values ``k1="auto"`` tries (positive integers).

    Returns:
        ``(N,)`` int64 labels ``0..C-1`` numbered by first occurrence, ``-1`` = outlier; with
        ``return_knn``, ``(labels, distances, indices)`` with the ``(N, K)`` kNN (``K = 2 k1``;
        ``k1`` for InfoMap and with ``intra_camera_k1``; ``2 max(k1_candidates)`` with
        ``k1="auto"``); with ``return_info``, the info dict
        comes last.
    """
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}, got {method!r}")
    check_knn_method(knn_method, "knn_method")
    if intra_camera_k1 is not None:
        if method != "dbscan":
            raise ValueError("intra_camera_k1 (camera-aware ranking lists) is for the Jaccard "
                             f"distance of method='dbscan', got method={method!r}")
        if knn_method not in ("auto", "exact"):
            raise ValueError("intra_camera_k1 (camera-aware ranking lists) searches exactly: "
                             f"use knn_method='auto' or 'exact', got {knn_method!r}")
        if camids is None:
            raise ValueError("intra_camera_k1 needs camids, the (N,) camera id of every row")
    k1_auto = isinstance(k1, str)
    if k1_auto:
        if k1 != "auto":
            raise ValueError(f"k1 must be a positive integer or 'auto', got k1={k1!r}")
        if method != "dbscan":
            raise ValueError(f"k1='auto' compares DBSCAN partitions of the Jaccard distance; "
                             f"use method='dbscan', got method={method!r}")
        if intra_camera_k1 is not None:
            raise ValueError("k1='auto' chooses the length of the classic ranking lists; "
                             "camera-aware lists (intra_camera_k1) need a fixed k1")
        k1_grid = check_k1_candidates(k1_candidates)
    auto = isinstance(eps, str)
    if auto and eps != "auto":
        raise ValueError(f"eps must be a radius in (0, 1) or 'auto', got eps={eps!r}")
    if auto and method != "dbscan":
        raise ValueError(f"eps='auto' chooses DBSCAN's radius; method={method!r} has none "
                         "(use method='dbscan')")
    if auto:
        # checked here, before the kNN search
        grid = [float(e) for e in eps_candidates]
        if not grid or not all(0.0 < e < 1.0 for e in grid):
            raise ValueError(f"eps_candidates must be radii in (0, 1), got "
                             f"{list(eps_candidates)!r}")
    elif not 0.0 < float(eps) < 1.0:
        raise ValueError(
            f"eps must lie in (0, 1) for the Jaccard distance (pairs not stored are at "
            f"distance 1), got eps={eps}"
        )
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)):
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be a positive integer, got {min_samples!r}")
    features = open_features(features)
    validate_features(features)
    n = num_rows(features)
    if k1_auto:
        check_k(n, k1_grid[-1], 1)  # (warns where the largest candidate exceeds N)
        k1_grid = sorted({min(k, n) for k in k1_grid})
        k1 = k1_grid[-1]  # the kNN below is searched for the largest candidate
        k2 = check_k(n, k1_grid[0], k2)[1]
    else:
        k1, k2 = check_k(n, k1, k2)
    options = {"seed": seed, **dict(knn_options or {})}
    requested = knn_method
    if intra_camera_k1 is not None:
        knn_method = requested = "exact"
    elif knn_method == "auto":  # decided here once: the steps after the kNN depend on it
        knn_method = choose_method(n, int(features.shape[1]), _resolve_device(features, device))
    dtype_name = str(features.dtype).replace("torch.", "")
    memory = _MemoryWatch()
    knn_info: dict[str, Any] = {}
    with Step(logger, f"pseudo-labels ({method}, N={n}, D={int(features.shape[1])}, "
                      f"{dtype_name} features, kNN {knn_method})", n):
        k_search = min(n, k1 if method == "infomap" else 2 * k1)
        # "auto" goes on to knn(), which makes the same choice and adapts the approximate
        # search to the spectrum of the features (auto_projection)
        if intra_camera_k1 is not None:
            with Step(logger, f"camera-aware ranking lists (k1={k1}, "
                              f"{intra_camera_k1} of the own camera)", n):
                # camera_knn checks camids (length, two cameras) before its product
                dist, idx = camera_knn(features, camids, k1, int(intra_camera_k1),
                                       device=device)
        else:
            dist, idx = knn(features, k_search, method=requested, device=device,
                            check_finite=False, info=knn_info, **options)
        if method == "infomap":
            labels = infomap_labels(dist, idx, k=k1, min_similarity=infomap_min_similarity,
                                    min_size=infomap_min_size, seed=seed)
            info = {} if knn_method == "exact" else {**knn_info, **memory.record()}
            return _result(labels, (dist, idx) if return_knn else None,
                           info if return_info else None)
        knn_out = (dist, idx)
        perm = None
        if knn_method != "exact":
            # number the rows so that neighbours get close numbers: the sparse products of
            # the Jaccard distance and DBSCAN then read memory in order (about 2x faster at a
            # million rows); the exact path keeps the classic numbering, bit for bit
            with Step(logger, "renumbering the rows by kNN locality", n):
                perm, dist, idx = _renumber(dist, idx, k1)
        searched = [dist, idx]  # (emptied below: the kNN is freed once clustered)
        del dist, idx

        def cluster(k: int) -> tuple[np.ndarray, dict[str, Any]]:
            """DBSCAN labels (in the search's row order) at ``k1 = k`` and what was chosen."""
            kdist, kidx = searched
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                jac = _jaccard_core(features, kdist[:, :2 * k], kidx[:, :2 * k], k, k2,
                                    np.float32, row_ids=perm)
            del kdist, kidx
            if not k1_auto:
                searched.clear()  # one k1: the kNN is not read again (memory at scale)
            if not auto:
                return dbscan_sparse(jac, float(eps), int(min_samples)), {}
            start = time.perf_counter()
            choice = choose_eps(jac, int(min_samples), grid)
            logger.info("eps auto%s: chose %.2f (criterion %s: %.4f, %d clusters; %s)",
                        f" (k1={k})" if k1_auto else "", choice.eps, choice.criterion,
                        choice.scores[choice.eps], choice.clusters[choice.eps],
                        " ".join(f"{e:.2f}:{s:.3f}" for e, s in choice.scores.items()))
            return choice.labels, {**choice.record(),
                                   "time_eps_auto": time.perf_counter() - start}

        if k1_auto:
            start = time.perf_counter()
            # (the labels are in the kNN's row order: perm[i] is the feature row of label i)
            k1_choice = choose_k1(features, k1_grid, cluster, seed=seed, row_ids=perm)
            labels = k1_choice.labels
            # the choice's own cost: every candidate's clustering but the chosen one's, and
            # the scores (the chosen clustering is what a fixed k1 would cost)
            spent = time.perf_counter() - start - k1_choice.seconds[k1_choice.k1]
            info = {**k1_choice.info, **k1_choice.record(), "time_k1_auto": spent}
            logger.info("k1 auto: chose %d (criterion %s: %.4f, %d clusters; %s)",
                        k1_choice.k1, k1_choice.criterion, k1_choice.scores[k1_choice.k1],
                        k1_choice.clusters[k1_choice.k1],
                        " ".join(f"{k}:{s:.3f}" for k, s in k1_choice.scores.items()))
        else:
            labels, info = cluster(k1)
        searched.clear()
        if perm is not None:
            out = np.empty(n, dtype=np.int64)
            out[perm] = labels
            labels = relabel_consecutive(out)
        if knn_method != "exact":
            info.update(knn_info)
            info.update(memory.record())
        return _result(labels, knn_out if return_knn else None, info if return_info else None)


class _MemoryWatch:
    """The resident memory of this process around a call, from the kernel's counters (Linux:
    ``/proc/self/statm`` and ``getrusage(RUSAGE_SELF).ru_maxrss``, in kB; elsewhere
    unknown). Pages of memory-mapped features that were read count as resident."""

    def __init__(self) -> None:
        self.start_mb = rss_mb()
        self.peak_before_mb = peak_rss_mb()

    def record(self) -> dict[str, Any]:
        """``memory_peak_rss_mb``: the process' resident high-water mark after the call;
        ``memory_rss_start_mb``: its resident size when the call began;
        ``memory_call_peak_mb``: their difference, the most the call added at any moment
        (exactly that when the high-water mark rose during the call, an upper bound when an
        earlier moment of the process was higher: ``memory_peak_rose`` says which). Logged
        at ``INFO``; ``None`` values where the platform does not tell."""
        peak = peak_rss_mb()
        out: dict[str, Any] = {"memory_peak_rss_mb": peak, "memory_rss_start_mb": self.start_mb,
                               "memory_call_peak_mb": None, "memory_peak_rose": None}
        if peak is not None and self.start_mb is not None and self.peak_before_mb is not None:
            out["memory_call_peak_mb"] = max(0.0, peak - self.start_mb)
            out["memory_peak_rose"] = peak > self.peak_before_mb
            logger.info("pseudo-labels memory: peak resident %.0f MiB (process high-water mark, "
                        "ru_maxrss), %.0f MiB at the start of the call: the call added %s "
                        "%.0f MiB", peak, self.start_mb,
                        "" if out["memory_peak_rose"] else "at most", out["memory_call_peak_mb"])
        return out


def _result(labels: np.ndarray, knn_out: tuple[np.ndarray, np.ndarray] | None,
            info: dict[str, Any] | None) -> np.ndarray | tuple[Any, ...]:
    """``labels``, then the kNN and the info where asked for."""
    if knn_out is None and info is None:
        return labels
    return (labels, *(knn_out or ()), *(() if info is None else (info,)))


def _renumber(dist: np.ndarray, idx: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bandwidth-reducing numbering of the kNN graph (reverse Cuthill-McKee on its first
    ``k`` columns): ``(perm, dist[perm], new indices)`` with ``perm[new] = old``."""
    n = len(idx)
    cols = min(k, idx.shape[1])
    graph = sp.csr_matrix((np.ones(n * cols, dtype=np.int8), idx[:, :cols].ravel(),
                           np.arange(0, n * cols + 1, cols, dtype=np.int64)), shape=(n, n))
    perm = reverse_cuthill_mckee(graph, symmetric_mode=False).astype(np.int64)
    new_of_old = np.empty(n, dtype=np.int64)
    new_of_old[perm] = np.arange(n, dtype=np.int64)
    return perm, dist[perm], new_of_old[idx[perm]]
