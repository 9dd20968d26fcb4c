"""k-nearest-neighbour search over a feature matrix (every row against all rows).

Distances are **squared Euclidean** distances ``||x_i - x_j||^2``; for L2-normalised features
(the re-ID convention) this equals ``2 - 2 cos(x_i, x_j)`` and lies in ``[0, 4]``.

Backends
--------
* ``faiss`` (default when importable and no GPU device is requested): exact search with a flat
  index (``IndexFlatL2``; for unit vectors its ranking is the ``IndexFlatIP`` ranking, and it
  returns the squared distances directly), approximate search with ``IndexHNSWFlat`` or
  ``IndexIVFFlat``.
* ``torch``: chunked ``X_chunk @ X.T`` followed by ``topk`` on any torch device (CPU or GPU).
  Used when faiss is missing, when ``device`` is a non-CPU torch device, when the input is a
  tensor on a non-CPU device, or when ``backend="torch"`` is forced.

Approximate mode (``method="approx"``)
--------------------------------------
``approx_index="hnsw"`` (default): faiss ``IndexHNSWFlat`` with ``hnsw_m=32`` links per node,
``efConstruction=40`` and ``efSearch=max(64, 2 * k)`` (exact distances of the visited nodes).
``approx_index="ivf"``: faiss ``IndexIVFFlat``, ``nlist`` inverted lists (default
``round(4 * sqrt(N))``, at most ``N // 39``), coarse k-means trained on at most ``64 * nlist``
rows sampled with a fixed seed, ``nprobe`` probed lists (default ``max(8, nlist // 16)``).
Without faiss the approximate mode falls back to the exact torch search (with a warning).
Rows for which the index returns fewer than ``k`` candidates are padded with the row itself at
distance ``inf``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

try:  # faiss is optional
    import faiss  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised only without faiss
    faiss = None

__all__ = ["knn", "faiss_available", "validate_features"]

_METHODS = ("exact", "approx")
_BACKENDS = ("auto", "faiss", "torch")


def faiss_available() -> bool:
    """Return ``True`` when the optional ``faiss`` package could be imported."""
    return faiss is not None


def validate_features(features: Any) -> None:
    """Raise ``ValueError`` unless ``features`` is a finite, non-empty 2-D array or tensor.

    Args:
        features: ``(N, D)`` numpy array or torch tensor.
    """
    shape = tuple(features.shape) if hasattr(features, "shape") else None
    if shape is None:
        raise ValueError("features must be a numpy array or a torch tensor of shape (N, D)")
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D of shape (N, D), got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"features must have N >= 1 rows and D >= 1 columns, got {shape}")
    if isinstance(features, torch.Tensor):
        if not torch.is_floating_point(features):
            features = features.float()
        finite = bool(torch.isfinite(features).all())
    else:
        arr = np.asarray(features)
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"features must be numeric, got dtype {arr.dtype}")
        finite = bool(np.isfinite(arr).all())
    if not finite:
        raise ValueError("features contain NaN or infinite values")


def _to_numpy_f32(features: Any) -> np.ndarray:
    """``(N, D)`` array/tensor on any device -> C-contiguous float32 numpy array."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(features, dtype=np.float32)


def _resolve_device(features: Any, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(features, torch.Tensor):
        return features.device
    return torch.device("cpu")


def _knn_torch(
    features: Any, k: int, device: torch.device, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN by chunked matrix products on ``device``; see :func:`knn`."""
    if isinstance(features, torch.Tensor):
        x = features.detach().to(device=device, dtype=torch.float32)
    else:
        x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    x = x.contiguous()
    n = x.shape[0]
    sq = (x * x).sum(dim=1)
    dist_out = np.empty((n, k), dtype=np.float32)
    idx_out = np.empty((n, k), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            # squared distances: |q|^2 + |x|^2 - 2 q.x ; smallest k via topk on the negation
            d2 = torch.addmm(sq[None, :], x[start:stop], x.T, beta=1.0, alpha=-2.0)
            d2 += sq[start:stop, None]
            neg, idx = torch.topk(d2.neg_(), k, dim=1, largest=True, sorted=True)
            dist_out[start:stop] = neg.neg_().clamp_(min=0.0).cpu().numpy()
            idx_out[start:stop] = idx.cpu().numpy()
    return dist_out, idx_out


def _knn_faiss_exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, idx = index.search(x, k)
    np.maximum(dist, 0.0, out=dist)
    return dist, idx.astype(np.int64, copy=False)


def _pad_missing(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    np.maximum(dist, 0.0, out=dist)
    idx = idx.astype(np.int64, copy=False)
    missing = idx < 0
    if missing.any():  # fewer than k candidates found: pad with the row itself at inf
        idx[missing] = np.nonzero(missing)[0]
        dist[missing] = np.inf
    return dist, idx


def _knn_faiss_hnsw(
    x: np.ndarray, k: int, hnsw_m: int, ef_search: int | None
) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexHNSWFlat(x.shape[1], int(hnsw_m))
    index.hnsw.efConstruction = 40
    index.add(x)
    index.hnsw.efSearch = int(ef_search) if ef_search is not None else max(64, 2 * k)
    return _pad_missing(*index.search(x, k))


def _knn_faiss_ivf(
    x: np.ndarray, k: int, nlist: int | None, nprobe: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    n, dim = x.shape
    if nlist is None:
        nlist = int(round(4.0 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // 39))
    nlist = max(1, min(int(nlist), n))
    if nprobe is None:
        nprobe = max(8, nlist // 16)
    nprobe = max(1, min(int(nprobe), nlist))
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    n_train = min(n, 64 * nlist)
    if n_train < n:
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(n, n_train, replace=False))]
    else:
        train = x
    index.cp.seed = seed
    index.train(train)
    index.add(x)
    index.nprobe = nprobe
    return _pad_missing(*index.search(x, k))


def knn(
    features: Any,
    k: int,
    *,
    method: str = "exact",
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
    backend: str = "auto",
    approx_index: str = "hnsw",
    hnsw_m: int = 32,
    ef_search: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row of ``features`` among all rows (the row itself included).

    Args:
        features: ``(N, D)`` float numpy array or torch tensor (any device). Not modified.
        k: number of neighbours, ``1 <= k <= N``.
        method: ``"exact"`` or ``"approx"`` (faiss HNSW or IVF-Flat, see the module docstring).
        device: torch device for the torch backend (e.g. ``"cuda:0"``); a non-CPU device
            selects the torch backend. ``None``: the tensor's own device, else CPU.
        chunk_size: query rows per matrix product in the torch backend (memory
            ``chunk_size * N`` floats on ``device``).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
        approx_index: ``"hnsw"`` or ``"ivf"`` (approximate mode only).
        hnsw_m, ef_search: HNSW parameters; nlist, nprobe, seed: IVF parameters (defaults in
            the module docstring).

    Returns:
        ``(distances, indices)``: ``(N, k)`` float32 squared Euclidean distances (``2 - 2 cos``
        for unit vectors), ascending per row, and ``(N, k)`` int64 neighbour indices. The row
        itself comes first unless exact duplicates tie with it.
    """
    validate_features(features)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    n = int(features.shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= N (N={n}), got k={k!r}")
    k = int(k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dev = _resolve_device(features, device)
    if backend == "faiss" and faiss is None:
        raise ValueError("backend='faiss' requested but faiss is not installed")
    use_faiss = backend == "faiss" or (
        backend == "auto" and faiss is not None and dev.type == "cpu"
    )
    if method == "approx":
        if approx_index not in ("hnsw", "ivf"):
            raise ValueError(f"approx_index must be 'hnsw' or 'ivf', got {approx_index!r}")
        if use_faiss and approx_index == "hnsw":
            return _knn_faiss_hnsw(_to_numpy_f32(features), k, hnsw_m, ef_search)
        if use_faiss:
            return _knn_faiss_ivf(_to_numpy_f32(features), k, nlist, nprobe, seed)
        warnings.warn(
            "method='approx' needs faiss on CPU; falling back to the exact torch search",
            RuntimeWarning,
            stacklevel=2,
        )
    if use_faiss:
        return _knn_faiss_exact(_to_numpy_f32(features), k)
    return _knn_torch(features, k, dev, chunk_size)
