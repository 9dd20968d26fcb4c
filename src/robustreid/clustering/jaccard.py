"""Sparse k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), as trained with in
cluster-contrast / SpCL (``compute_jaccard_distance``: re-ranking without blending in the
original distance).

Definition (matched pair by pair against a reference run, see ``tests/test_clustering.py``):

* ``rank[i]``: the ranking list of ``i`` by squared Euclidean distance, ``i`` itself first.
  ``N(i, k)`` = the first ``k`` entries of ``rank[i]`` (``i`` included).
* ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` (k-reciprocal set).  The classic code slices
  ``[:k + 1]`` of a ranking list that was searched with ``k1`` columns only, so the main set
  uses ``N(i, k1)`` and the half set uses ``N(i, min(round(k1 / 2) + 1, k1))`` with
  ``round`` = numpy's round-half-to-even.
* expansion: ``R*(i) = R(i, k1)`` united with ``R(j, half)`` for every ``j in R(i, k1)`` with
  ``|R(j, half) & R(i, k1)| > 2/3 |R(j, half)|``.
* ``V[i, j] = exp(-d2(i, j)) / sum_{l in R*(i)} exp(-d2(i, l))`` for ``j in R*(i)``, with
  ``d2 = ||f_i - f_j||^2`` (``2 - 2 cos`` for unit features).
* query expansion: ``V'[i] = mean_{j in N(i, min(k2, k1))} V[j]`` (skipped when ``k2 == 1``).
* ``m(i, j) = sum_l min(V'[i, l], V'[j, l])``; distance ``1 - m / (2 - m)``, clipped at 0.

The distance is symmetric and is exactly 1 for pairs without shared support, so only pairs
with ``m > 0`` are stored (explicit zeros included); the diagonal is stored as 0.

Precision follows the reference: weights are rounded to float32 (``exp`` and normalisation in
float64), ``V'`` is the float32 sum of the ``k2`` rows in ranking order divided by ``k2``, ``m``
is accumulated in float32 in ascending ``l`` and the final transform is float32. Pairs whose
distance is exactly 0.5 (etc.) in exact arithmetic can still round to either side of it, like
in the reference (whose float32 weights come from a BLAS product and torch's softmax).

Implementation: all sets are built with sparse matrices (reciprocity = elementwise product of
the kNN adjacency with its transpose; ``|R(j, half) & R(i, k1)|`` for all candidate pairs at
once = ``R @ R_half.T`` masked by ``R``), ``d2`` is taken from the kNN search (searched with
``2 * k1`` columns) and computed directly only for the few expanded pairs outside it, and the
min-sum runs over the inverted index of ``V'`` in vectorised row chunks whose duplicate
``(i, j)`` contributions are combined with linear-time sparse transpositions. Memory is
``O(N * k1 * k2)`` plus the output; no ``N x N`` dense array is ever formed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .arrays import num_rows, open_features, rows_float32, validate_features
from .knn import knn
from .progress import Step

__all__ = ["jaccard_distance", "jaccard_distance_from_knn", "check_k"]

logger = logging.getLogger(__name__)

# Enumerated (i, j, min) triples per chunk of the min-sum (bounds the working memory).
_PAIR_CHUNK = 1 << 20


def check_k(n: int, k1: int, k2: int) -> tuple[int, int]:
    """Validate ``k1``/``k2`` for ``n`` samples; clip ``k1`` to ``n`` (with a warning).

    Returns:
        ``(k1, k2)`` effectively used; ``k2`` is capped at ``k1`` silently, as in the classic
        code, whose ranking list only has ``k1`` columns.
    """
    for name, val in (("k1", k1), ("k2", k2)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={val!r}")
    k1, k2 = int(k1), int(k2)
    if k1 > n:
        warnings.warn(
            f"k1={k1} exceeds the number of samples N={n}; using k1={n}",
            UserWarning,
            stacklevel=3,
        )
        k1 = n
    return k1, min(k2, k1)


def _reciprocal(rank: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """``R[i, j] = 1`` iff ``j`` in the first ``k`` of ``rank[i]`` and ``i`` in those of ``j``."""
    cols = rank[:, :k].ravel()
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    adj = sp.csr_matrix((np.ones(n * k, dtype=np.int32), cols, indptr), shape=(n, n))
    adj.sum_duplicates()
    rec = adj.multiply(adj.T.tocsr()).tocsr()
    rec.eliminate_zeros()
    return rec


def _row_ids(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _expanded_sets(rank: np.ndarray, n: int, k1: int) -> sp.csr_matrix:
    """Binary CSR ``E`` with ``E[i, j] = 1`` iff ``j`` in the expanded set ``R*(i)``."""
    k_half = min(int(np.around(k1 / 2)) + 1, k1)
    rec = _reciprocal(rank, k1, n)
    rec_half = _reciprocal(rank, k_half, n)
    # inter[i, j] = |R(i, k1) & R(j, half)| for j in R(i, k1)
    inter = rec.multiply(rec @ rec_half.T).tocsr()
    inter.eliminate_zeros()  # pairs with an empty intersection can never pass the test
    size_half = np.diff(rec_half.indptr)
    rows = _row_ids(inter.indptr)
    keep = inter.data > 2 / 3 * size_half[inter.indices]
    sel = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.int32), (rows[keep], inter.indices[keep])),
        shape=(n, n),
    )
    expanded = (rec + sel @ rec_half).tocsr()
    expanded.sum_duplicates()
    expanded.data[:] = 1
    return expanded


def _squared_distances(
    x: Any, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 13
) -> np.ndarray:
    """``||x[rows] - x[cols]||^2`` (float64 result of float32 products), in chunks of pairs.

    ``x`` may be any ``(N, D)`` array, memory map or tensor; only the rows of the pairs are
    read (in float32).
    """
    out = np.empty(len(rows), dtype=np.float64)
    width = int(x.shape[1])
    buf_r = np.empty((min(chunk, len(rows)), width), dtype=np.float32)
    buf_c = np.empty_like(buf_r)
    for s in range(0, len(rows), chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        xr, xc = rows_float32(x, r, buf_r), rows_float32(x, c, buf_c)
        sq_r = np.einsum("ij,ij->i", xr, xr)
        sq_c = np.einsum("ij,ij->i", xc, xc)
        dot = np.einsum("ij,ij->i", xr, xc)
        out[s : s + chunk] = sq_r.astype(np.float64) + sq_c - 2.0 * dot
    return np.maximum(out, 0.0)


def _weights(
    x: Any, expanded: sp.csr_matrix, dist: np.ndarray, rank: np.ndarray,
    row_ids: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Row-normalised ``exp(-d2)`` over the expanded sets (the matrix ``V``)."""
    n, ks = rank.shape
    expanded.sort_indices()
    rows = _row_ids(expanded.indptr)
    cols = expanded.indices.astype(np.int64)
    # d2 of the searched neighbours, looked up by the sorted key i * N + j
    order = np.argsort(rank, axis=1, kind="stable")
    knn_keys = np.arange(n, dtype=np.int64)[:, None] * n + np.take_along_axis(rank, order, 1)
    knn_keys = knn_keys.ravel()
    knn_d2 = np.take_along_axis(dist, order, 1).ravel().astype(np.float64)
    keys = rows * n + cols
    pos = np.minimum(np.searchsorted(knn_keys, keys), len(knn_keys) - 1)
    found = knn_keys[pos] == keys
    d2 = np.empty(len(keys), dtype=np.float64)
    d2[found] = knn_d2[pos[found]]
    miss = ~found
    if miss.any():
        r_miss, c_miss = rows[miss], cols[miss]
        if row_ids is not None:  # internal numbering -> rows of the features
            r_miss, c_miss = row_ids[r_miss], row_ids[c_miss]
        d2[miss] = _squared_distances(x, r_miss, c_miss)
    w = np.exp(-d2)
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    # float32 like the reference softmax (a singleton set gets exactly 1.0)
    return sp.csr_matrix((w.astype(np.float32), expanded.indices, expanded.indptr), shape=(n, n))


def _min_sum_upper(v: sp.csr_matrix, step: Step | None = None) -> sp.csr_matrix:
    """Strict upper triangle of ``m(i, j) = sum_l min(v[i, l], v[j, l])`` as canonical CSR.

    Every stored value of ``v`` must be > 0, so every stored ``m`` is > 0.
    """
    n = v.shape[0]
    v = v.tocsr()
    nnz = v.nnz
    rows = _row_ids(v.indptr)
    vals = v.data.astype(np.float32)
    # inverted index: entries grouped by column, rows ascending inside each column
    perm = np.argsort(v.indices, kind="stable")
    inv_rows = rows[perm]
    inv_vals = vals[perm]
    col_end = np.cumsum(np.bincount(v.indices, minlength=n))
    pos_in_inv = np.empty(nnz, dtype=np.int64)
    pos_in_inv[perm] = np.arange(nnz, dtype=np.int64)
    # partners of entry (i, l): later entries of column l, i.e. rows j > i sharing l
    count = col_end[v.indices] - pos_in_inv - 1
    cum = np.concatenate(([0], np.cumsum(count)))
    # split into row chunks of about _PAIR_CHUNK enumerated pairs
    row_cum = cum[v.indptr]
    bounds = [0]
    while bounds[-1] < n:
        nxt = int(np.searchsorted(row_cum, row_cum[bounds[-1]] + _PAIR_CHUNK, side="right")) - 1
        bounds.append(min(n, max(nxt, bounds[-1] + 1)))
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ea, eb = int(v.indptr[a]), int(v.indptr[b])
        cnt = count[ea:eb]
        total = int(cum[eb] - cum[ea])
        if total == 0:
            blocks.append(sp.csr_matrix((b - a, n), dtype=np.float32))
            continue
        first = np.repeat(pos_in_inv[ea:eb] + 1 - (cum[ea:eb] - cum[ea]), cnt)
        part = first + np.arange(total, dtype=np.int64)
        val = np.minimum(np.repeat(vals[ea:eb], cnt), inv_vals[part])
        indptr = (cum[v.indptr[a : b + 1]] - cum[ea]).astype(np.int64)
        # rows grouped, columns unsorted with duplicates: transpose (counting sort, linear)
        blk = sp.csr_matrix((val, inv_rows[part], indptr), shape=(b - a, n)).tocsc()
        c_rows = blk.indices
        c_cols = _row_ids(blk.indptr)
        new = np.ones(len(c_rows), dtype=bool)
        new[1:] = (c_rows[1:] != c_rows[:-1]) | (c_cols[1:] != c_cols[:-1])
        starts = np.flatnonzero(new)
        # sequential float32 accumulation in ascending l (the reference order): np.add.at
        # applies the additions one by one in index order
        sums = np.zeros(len(starts), dtype=np.float32)
        np.add.at(sums, np.cumsum(new) - 1, blk.data)
        u_cols = c_cols[starts]
        c_indptr = np.concatenate(([0], np.cumsum(np.bincount(u_cols, minlength=n))))
        uniq = sp.csc_matrix((sums, c_rows[starts], c_indptr), shape=(b - a, n))
        blocks.append(uniq.tocsr())
        if step is not None:
            step.advance(b - a)
    upper = sp.vstack(blocks, format="csr")
    upper.has_canonical_format = True
    return upper


def _symmetric_distance(upper: sp.csr_matrix, dtype: type[np.floating]) -> sp.csr_matrix:
    """Full Jaccard distance from the strict upper triangle of ``m`` (all entries > 0).

    The structure is assembled on ``m`` (strictly positive, so scipy's sparse addition cannot
    prune anything), with ``m_ii = 1``; the distance transform is then applied to the data in
    place, so zero distances (the diagonal included) stay stored explicitly.
    """
    n = upper.shape[0]
    eye = sp.identity(n, dtype=upper.dtype, format="csr")
    full = (upper + upper.T.tocsr() + eye).tocsr()
    full.sort_indices()
    m = full.data  # float32, like the reference
    d = np.float32(1.0) - m / (np.float32(2.0) - m)
    np.maximum(d, np.float32(0.0), out=d)
    out = sp.csr_matrix((d.astype(dtype, copy=False), full.indices, full.indptr), shape=(n, n))
    out.has_canonical_format = True
    return out


def jaccard_distance_from_knn(
    features: Any,
    distances: np.ndarray,
    indices: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    dtype: type[np.floating] = np.float32,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance from a precomputed kNN ranking (see module docstring).

    Args:
        features: ``(N, D)`` features (numpy or torch, any device), ideally L2-normalised.
        distances: ``(N, K)`` squared Euclidean distances of the ranking, ascending.
        indices: ``(N, K)`` int neighbour indices (row itself first), ``K >= k1``; columns beyond
            ``k1`` only serve as a cache of ``d2`` values.
        k1, k2: neighbourhood sizes (``k1 <= K``, ``k2`` capped at ``k1``).
        dtype: dtype of the stored distances (the arithmetic is float32, see module docstring).

    Returns:
        ``(N, N)`` ``scipy.sparse.csr_matrix`` of Jaccard distances in ``[0, 1)``; unstored
        pairs are at distance 1; the diagonal and other zero distances are stored explicitly.
    """
    features = open_features(features)
    validate_features(features)
    return _jaccard_core(features, distances, indices, k1, k2, dtype)


def _jaccard_core(
    x: Any,
    distances: np.ndarray,
    indices: np.ndarray,
    k1: int,
    k2: int,
    dtype: type[np.floating],
    row_ids: np.ndarray | None = None,
) -> sp.csr_matrix:
    """See :func:`jaccard_distance_from_knn`; ``row_ids[i]``: the feature row of index ``i``
    of ``distances`` / ``indices`` (``None``: ``i`` itself)."""
    n = num_rows(x)
    rank = np.asarray(indices, dtype=np.int64)
    dist = np.asarray(distances, dtype=np.float32)
    if rank.ndim != 2 or rank.shape[0] != n or dist.shape != rank.shape:
        raise ValueError(
            f"indices/distances must both be (N, K) with N={n}, got {rank.shape}/{dist.shape}"
        )
    k1, k2 = check_k(n, k1, k2)
    if rank.shape[1] < k1:
        raise ValueError(f"the ranking has {rank.shape[1]} columns but k1={k1} are needed")
    if rank.min() < 0 or rank.max() >= n:
        raise ValueError("indices must lie in [0, N)")
    with Step(logger, f"Jaccard: k-reciprocal sets (N={n}, k1={k1})", n):
        expanded = _expanded_sets(rank, n, k1)
    with Step(logger, f"Jaccard: weights ({expanded.nnz / n:.1f} per row)", n):
        v = _weights(x, expanded, dist, rank, row_ids)
        v.eliminate_zeros()  # (only if a weight underflowed: the min-sum needs positive entries)
    del expanded
    if k2 != 1:
        # float32 sum of the k2 rows in ranking order, then / k2: bit-identical to the
        # reference np.mean over rows (scipy's product accumulates row by row in stored order,
        # and the rows of q are deliberately left in ranking order, not sorted)
        with Step(logger, f"Jaccard: query expansion (k2={k2})", n):
            q = sp.csr_matrix(
                (
                    np.ones(n * k2, dtype=np.float32),
                    rank[:, :k2].ravel(),
                    np.arange(0, n * k2 + 1, k2, dtype=np.int64),
                ),
                shape=(n, n),
            )
            v = (q @ v).tocsr()
            v.data /= np.float32(k2)
            v.eliminate_zeros()
            del q
    v.sort_indices()
    with Step(logger, f"Jaccard: min-sum ({v.nnz / n:.1f} entries per row)", n,
              total=n) as step:
        upper = _min_sum_upper(v, step)
    del v
    with Step(logger, f"Jaccard: symmetric distance ({2 * upper.nnz / n:.1f} pairs per row)",
              n):
        return _symmetric_distance(upper, dtype)


def jaccard_distance(
    features: Any,
    k1: int = 30,
    k2: int = 6,
    *,
    knn_method: str = "exact",
    device: torch.device | str | None = None,
    dtype: type[np.floating] = np.float32,
    knn_options: Mapping[str, Any] | None = None,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distance of ``features`` (cluster-contrast definition).

    Args:
        features: ``(N, D)`` float features (numpy array or memory map, float16 or float32;
            ``.npy`` path; torch tensor on any device), L2-normalised as in cluster-contrast
            (the weights use squared Euclidean distances = ``2 - 2 cos``).
        k1: k-reciprocal neighbourhood size (sample itself included); clipped to ``N`` with a
            warning.
        k2: query-expansion neighbourhood size (sample itself included), capped at ``k1``.
        knn_method: ``"auto"``, ``"exact"``, ``"ivf"`` or ``"hnsw"``, see
            :func:`robustreid.clustering.knn`.
        device: torch device for the kNN search (see :func:`robustreid.clustering.knn`).
        dtype: dtype of the stored distances.
        knn_options: further keyword arguments of :func:`robustreid.clustering.knn`
            (``reduce_dim``, ``nprobe``, ``candidates``, ...).

    Returns:
        ``(N, N)`` CSR matrix, distances in ``[0, 1)`` for stored pairs, 1 for unstored pairs,
        symmetric, diagonal stored as 0.
    """
    features = open_features(features)
    validate_features(features)
    n = num_rows(features)
    k1, k2 = check_k(n, k1, k2)
    k_search = min(n, 2 * k1)
    dist, idx = knn(features, k_search, method=knn_method, device=device,
                    **dict(knn_options or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _jaccard_core(features, dist, idx, k1, k2, dtype)
