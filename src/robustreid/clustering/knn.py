"""k-nearest-neighbour search over a feature matrix (every row against all rows).

Distances are **squared Euclidean** distances ``||x_i - x_j||^2``; for L2-normalised features
(the re-ID convention) this equals ``2 - 2 cos(x_i, x_j)`` and lies in ``[0, 4]``.

Methods (``method=``)
---------------------
* ``"exact"``: every pair. ``faiss`` flat index (``IndexFlatL2``) on the CPU, or chunked
  ``X_chunk @ X.T`` + ``topk`` with torch on any device (CPU or GPU; used when faiss is
  missing, when ``device`` or the tensor is on a non-CPU device, or with ``backend="torch"``).
  Quadratic: about ``N^2 D`` multiply-adds.
* ``"ivf"``: an inverted-file search (k-means cells). ``backend="torch"`` (the default) is the
  blocked all-rows search of :func:`robustreid.clustering.ann.ivf_knn` (one matrix product per
  cell, on the CPU or the GPU); ``backend="faiss"`` uses faiss' ``IndexIVFFlat`` (on the GPU
  when ``device`` is CUDA and faiss has GPU support).
* ``"hnsw"``: faiss' ``IndexHNSWFlat`` graph (CPU; ``hnsw_m`` links per node,
  ``efConstruction=40``, ``efSearch=max(64, 2 * k)`` unless ``ef_search`` is given).
* ``"auto"``: ``"exact"`` while the exact search costs at most as much as one of
  :data:`AUTO_EXACT_MAX_ROWS` rows of 2048 dimensions on the CPU (``N^2 D`` multiply-adds;
  100 times that on a CUDA device), else ``"ivf"``; see :func:`choose_method`. With the
  torch IVF and no ``nprobe`` given, it also measures how many cells to search on the exact
  neighbours of sampled rows (:func:`sampled_neighbours`; ``reference`` of
  :func:`robustreid.clustering.ann.ivf_knn`).

``"approx"`` (an older name: faiss HNSW, or faiss IVF with ``approx_index="ivf"``, on the
features as they are) is refused: use ``"hnsw"`` (or ``method="ivf", backend="faiss"``) with
``reduce_dim=0`` for that search.

The approximate methods first project the features to ``reduce_dim`` dimensions (PCA fitted
on a sample, a random projection, or the balanced projection of
:func:`robustreid.clustering.ann.fit_projection`; default 256 when ``D > 256``, ``0`` = off;
``"auto"`` takes the PCA unless the spectrum is flat, see :func:`auto_projection`), search
``candidates`` neighbours per row there, and re-rank them by their exact distances in the
original ``D`` dimensions (``refine``, on by default whenever a projection is used), so the
returned distances are true distances and only a neighbour missing from the candidates is
an error. Inputs may be arrays, float16 or float32 memory maps, ``.npy`` paths or tensors; the
approximate methods read them in chunks and never hold a float32 copy.

Rows for which fewer than ``k`` candidates are found are padded with the row itself at
distance ``inf``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from robustreid.errors import UserError

from .ann import (
    Projection,
    SampleSpectrum,
    fit_projection,
    ivf_knn,
    neighbour_order,
    project,
    refine_knn,
    sample_spectrum,
)
from .arrays import CHUNK_ROWS, num_rows, open_features, rows_float32, validate_features
from .progress import Step

try:  # faiss is optional
    import faiss  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - exercised only without faiss
    faiss = None

__all__ = ["knn", "faiss_available", "validate_features", "choose_method", "check_knn_method",
           "auto_projection", "AUTO_EXACT_MAX_ROWS", "AUTO_GPU_FACTOR", "AUTO_FLAT_BELOW",
           "KNN_METHODS", "PROJECTIONS", "sampled_neighbours", "query_neighbours",
           "REFERENCE_ROWS", "REFERENCE_K"]

logger = logging.getLogger(__name__)

KNN_METHODS = ("auto", "exact", "ivf", "hnsw")
_BACKENDS = ("auto", "faiss", "torch")
# "auto" searches exactly up to this many rows of 2048 dimensions on the CPU (the exact search
# of 50,000 x 2048 features takes about 1 minute on 2 CPU cores, against about 15 s for the
# approximate one; docs/RESULTS.md); Market-1501 and MSMT17 stay exact, bit for bit the
# classic result. Other dimensions: the same N^2 D budget.
AUTO_EXACT_MAX_ROWS = 50_000
# A CUDA device gets this many times the CPU budget for the exact search (not measured here:
# no GPU was available when it was set; an H100-class GPU multiplies about 100x faster).
AUTO_GPU_FACTOR = 100
# default dimension of the projection before an approximate search, and its candidates
DEFAULT_REDUCE_DIM = 256
DEFAULT_CANDIDATES = 100
# "auto" on a flat spectrum. A PCA projection that keeps less than AUTO_FLAT_BELOW of the
# sample's variance marks a flat spectrum. There the PCA keeps the few strong shared directions
# (camera offsets) and little of what tells identities apart, and k-means cells in any
# unbalanced space follow the shared directions: an identity's images split over its cameras'
# cells. On 100,000 flat-spectrum rows (benchmarks/clustering_scale.py --spectrum flat) the PCA
# to 256 dims gave recall@30 0.66 and ARI 0.33 against the exact pipeline, a search without
# projection 0.59 and 0.02 (3 times slower), the balanced projection to 256 dims 0.82 and
# 0.98-0.99 (docs/RESULTS.md). "auto" then takes the balanced projection, in the same number
# of dimensions, so the time stays that of the PCA path. The balanced projection is wrong for
# a decaying spectrum: capping at the median variance flattens the few axes that carry the
# identities down to the noise floor (real MobileNetV2 features replicated with noise, PCA-256
# keeping 76.6 %: recall@30 0.16 against 0.94 with the PCA). The threshold sits between the
# flat spectra measured (27-38 % at 256 of 2048 dimensions) and the decaying ones (77-82 %).
AUTO_FLAT_BELOW = 0.5
PROJECTIONS = ("pca", "random", "balanced")


#: ``method="auto"``: rows sampled, and neighbours per row, to measure the IVF search's cells
#: against (:func:`sampled_neighbours`; ``256 x N x D`` products, about 1 s at 100,000 rows of
#: 2048 dimensions on 2 CPU cores)
REFERENCE_ROWS = 256
REFERENCE_K = 30


def check_knn_method(method: str, name: str = "method") -> None:
    """Raise unless ``method`` is one of :data:`KNN_METHODS` (``name``: the argument's name,
    for the message).

    Raises:
        UserError: ``"approx"``, the older name, with what replaces it.
        ValueError: any other unknown method.
    """
    if method == "approx":
        raise UserError(f"{name}='approx' is no longer accepted: it meant faiss' HNSW graph on "
                        f"the features as they are, now {name}='hnsw' with reduce_dim=0; "
                        f"{name}='ivf' is the torch IVF search")
    if method not in KNN_METHODS:
        raise ValueError(f"{name} must be one of {KNN_METHODS}, got {method!r}")


def faiss_available() -> bool:
    """Return ``True`` when the optional ``faiss`` package could be imported."""
    return faiss is not None


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


def _faiss_gpu(index: Any, dev: torch.device) -> Any:
    """``index`` moved to GPU ``dev`` when faiss has GPU support, else unchanged."""
    if dev.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return index
    if getattr(faiss, "get_num_gpus", lambda: 0)() < 1:
        return index
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, dev.index or 0, index)


def _knn_faiss_hnsw(
    x: np.ndarray, k: int, hnsw_m: int, ef_search: int | None
) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexHNSWFlat(x.shape[1], int(hnsw_m))
    index.hnsw.efConstruction = 40
    index.add(x)
    index.hnsw.efSearch = int(ef_search) if ef_search is not None else max(64, 2 * k)
    return _pad_missing(*index.search(x, k))


def _knn_faiss_ivf(
    x: np.ndarray, k: int, nlist: int | None, nprobe: int | None, seed: int,
    dev: torch.device | None = None,
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
    index = _faiss_gpu(index, dev or torch.device("cpu"))
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    return _pad_missing(*index.search(x, k))


def choose_method(n: int, dim: int, device: torch.device | str = "cpu") -> str:
    """The method ``"auto"`` picks for ``n`` rows of dimension ``dim`` on ``device``.

    ``"exact"`` while ``n^2 * dim`` is at most ``AUTO_EXACT_MAX_ROWS^2 * 2048`` (times
    :data:`AUTO_GPU_FACTOR` on a CUDA device), else ``"ivf"``.
    """
    budget = float(AUTO_EXACT_MAX_ROWS) ** 2 * 2048
    if torch.device(device).type == "cuda":
        budget *= AUTO_GPU_FACTOR
    return "exact" if float(n) ** 2 * max(1, dim) <= budget else "ivf"


def auto_projection(proj: Projection) -> str:
    """The projection ``"auto"`` searches in after fitting the PCA ``proj``: ``"pca"`` while it
    keeps at least :data:`AUTO_FLAT_BELOW` of the sample's variance, else ``"balanced"``
    (:func:`robustreid.clustering.ann.fit_projection`). A projection other than the PCA
    (random, balanced: asked for by name) is kept as it is."""
    if proj.kind != "pca":
        return proj.kind
    kept = proj.kept(int(proj.components.shape[1]))
    return "pca" if kept is None or kept >= AUTO_FLAT_BELOW else "balanced"


def _check_int(name: str, value: Any, low: int, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return int(value)


def knn(
    features: Any,
    k: int,
    *,
    method: str = "exact",
    device: torch.device | str | None = None,
    chunk_size: int = 4096,
    backend: str = "auto",
    hnsw_m: int = 32,
    ef_search: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    reduce_dim: int | None = None,
    projection: str = "pca",
    refine: bool | None = None,
    candidates: int | None = None,
    check_finite: bool = True,
    info: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row of ``features`` among all rows (the row itself included).

    Args:
        features: ``(N, D)`` float numpy array (float16 / float32, memory maps included), torch
            tensor (any device) or path of a ``.npy`` file. Not modified.
        k: number of neighbours, ``1 <= k <= N``.
        method: ``"auto"``, ``"exact"``, ``"ivf"`` or ``"hnsw"`` (module docstring).
        device: torch device of the products (e.g. ``"cuda:0"``); ``None``: the tensor's own
            device, else CPU.
        chunk_size: query rows per matrix product in the exact torch backend (memory
            ``chunk_size * N`` floats on ``device``).
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
        hnsw_m, ef_search: HNSW parameters.
        nlist, nprobe: IVF cells and cells searched (defaults: see
            :func:`robustreid.clustering.ann.ivf_knn` for the torch backend; faiss:
            ``round(4 sqrt(N))`` and ``max(8, nlist // 16)``).
        seed: seed of every random choice (samples, k-means, random projection).
        reduce_dim: dimension the approximate methods search in (``None``: 256 when
            ``D > 256``; ``0``: none).
        projection: ``"pca"`` (fitted on 32,768 sampled rows), ``"random"`` or
            ``"balanced"`` (:func:`robustreid.clustering.ann.fit_projection`). With
            ``method="auto"`` the PCA is replaced by the balanced projection on a flat
            spectrum (:func:`auto_projection`); ``method="ivf"`` keeps it as given.
        refine: re-rank the candidates by exact distances in ``D`` dimensions (``None``: when a
            projection is used).
        candidates: neighbours searched before re-ranking (default ``max(k, 100)``).
        check_finite: check the features for NaN / inf first (one pass over them; callers
            that checked already pass ``False``).
        info: a dict to fill with what ``method="auto"`` chose when it took the approximate
            search: ``knn_method``, ``knn_dim`` (dimension searched in; ``D``: no
            projection), ``knn_projection`` (``"pca"``, ``"random"``, ``"balanced"`` or
            ``None``), ``knn_kept_variance`` (share of the PCA sample's variance that
            ``reduce_dim`` keeps), ``knn_choice`` (the reason, in words), and with the torch
            IVF ``knn_nprobe`` (cells searched) and, where ``"auto"`` measured it,
            ``knn_coverage`` (``{"32": share, ...}``: share of the sampled rows' exact
            neighbours in the cells searched, for every number of cells tried).

    Returns:
        ``(distances, indices)``: ``(N, k)`` float32 squared Euclidean distances (``2 - 2 cos``
        for unit vectors), ascending per row, and ``(N, k)`` int64 neighbour indices. The row
        itself comes first unless exact duplicates tie with it.
    """
    features = open_features(features)
    if check_finite:
        validate_features(features)
    check_knn_method(method)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    n, dim = num_rows(features), int(features.shape[1])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= N (N={n}), got k={k!r}")
    k = int(k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    reduce_dim = _check_int("reduce_dim", reduce_dim, 0)
    candidates = _check_int("candidates", candidates, 1)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    dev = _resolve_device(features, device)
    if backend == "faiss" and faiss is None:
        raise ValueError("backend='faiss' requested but faiss is not installed")
    adapt = method == "auto"
    if method == "auto":
        method = choose_method(n, dim, dev)
    if method == "exact":
        use_faiss = backend == "faiss" or (
            backend == "auto" and faiss is not None and dev.type == "cpu"
        )
        with Step(logger, f"exact kNN (N={n}, D={dim}, k={k}, "
                          f"{'faiss' if use_faiss else 'torch on ' + str(dev)})", n):
            if use_faiss:
                return _knn_faiss_exact(_to_numpy_f32(features), k)
            return _knn_torch(features, k, dev, chunk_size)
    if method == "hnsw" and faiss is None:
        raise ValueError("method='hnsw' needs faiss, which is not installed")
    return _knn_approx(features, k, method=method, dev=dev, backend=backend, hnsw_m=hnsw_m,
                       ef_search=ef_search, nlist=nlist, nprobe=nprobe, seed=seed,
                       reduce_dim=reduce_dim, projection=projection, refine=refine,
                       candidates=candidates, adapt=adapt, info=info)


def _knn_approx(features: Any, k: int, *, method: str, dev: torch.device, backend: str,
                hnsw_m: int, ef_search: int | None, nlist: int | None, nprobe: int | None,
                seed: int, reduce_dim: int | None, projection: str, refine: bool | None,
                candidates: int | None, adapt: bool = False,
                info: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Projection, approximate search and exact re-ranking; see :func:`knn`. ``adapt``: the
    ``"auto"`` rule for flat spectra (:func:`auto_projection`)."""
    n, dim = num_rows(features), int(features.shape[1])
    if reduce_dim is None:
        reduce_dim = DEFAULT_REDUCE_DIM if dim > DEFAULT_REDUCE_DIM else 0
    reduce_dim = min(reduce_dim, dim)
    projected = 0 < reduce_dim < dim
    level = logging.INFO if n >= 50_000 else logging.DEBUG
    record: dict[str, Any] = {"knn_method": method, "knn_dim": reduce_dim if projected else dim,
                              "knn_projection": projection if projected else None,
                              "knn_kept_variance": None, "knn_choice": "as given"}
    proj: Projection | None = None
    spectrum: SampleSpectrum | None = None
    if projected:
        with Step(logger, f"{projection} projection {dim} -> {reduce_dim} dims (fit)", n):
            if projection == "random":
                proj = fit_projection(features, reduce_dim, kind=projection, seed=seed,
                                      device=dev)
            else:  # PCA or balanced: from one spectrum, which "auto" may switch between
                spectrum = sample_spectrum(features, seed=seed, device=dev)
                proj = spectrum.projection(reduce_dim, projection)
        kept = proj.kept(reduce_dim)
        if kept is not None:
            logger.log(level, "PCA to %d dims keeps %.1f %% of the sample's variance", reduce_dim,
                       100 * kept)
            record["knn_kept_variance"] = kept
        if adapt:
            record.update(_adapt_to_spectrum(proj))
            if spectrum is not None and record["knn_projection"] != proj.kind:
                proj = spectrum.projection(reduce_dim, record["knn_projection"])
    elif adapt:
        record["knn_choice"] = "no projection asked for"
    if info is not None:
        info.update(record)
    refine = projected if refine is None else bool(refine)
    r = max(k, DEFAULT_CANDIDATES if candidates is None else candidates) if refine else k
    r = min(r, n)
    if projected and proj is not None:
        with Step(logger, f"projecting {n} rows", n, total=n) as step:
            y = project(features, proj, device=dev, step=step)
    else:
        # the search space is the features themselves: float32 arrays are used in place,
        # other inputs converted once (their float32 copy is what the search reads)
        with Step(logger, f"reading {n} rows as float32", n):
            y = _to_numpy_f32(features)
    order = None
    use_faiss = backend == "faiss" or method == "hnsw"
    if method == "ivf" and not use_faiss:
        # auto: the cells searched are measured on sampled rows' exact neighbours
        reference = None
        if adapt and nprobe is None:
            def reference() -> tuple[np.ndarray, np.ndarray]:
                return sampled_neighbours(features, min(k, REFERENCE_K), seed=seed, device=dev)
        dist, idx, order = ivf_knn(y, r, nlist=nlist, nprobe=nprobe, seed=seed,
                                   device=dev, low_precision=None if refine else False,
                                   n_log=n, reference=reference, info=info)
        if not refine:
            return dist[:, :k], idx[:, :k]
        del dist  # distances in the projected space: re-ranking replaces them
    else:
        name = "HNSW" if method == "hnsw" else "faiss IVF"
        with Step(logger, f"{name} search (k={r}, {y.shape[1]}-d)", n):
            if method == "hnsw":
                dist, idx = _knn_faiss_hnsw(y, r, hnsw_m, ef_search)
            else:
                dist, idx = _knn_faiss_ivf(y, r, nlist, nprobe, seed, dev)
        if not refine:
            return dist[:, :k], idx[:, :k]
    del y
    if order is None:
        order = neighbour_order(idx)
    return refine_knn(features, idx, k, order=order, device=dev, n_log=n)


def sampled_neighbours(features: Any, k: int, *, sample: int = REFERENCE_ROWS, seed: int = 0,
                       device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest neighbours of a random sample of rows, in ``D`` dimensions: what
    ``method="auto"`` measures the IVF search's cells against.

    Args:
        features: ``(N, D)`` array (any input :func:`knn` takes).
        k: neighbours per sampled row, the row itself left out (``1 <= k < N``).
        sample: rows drawn (at most ``N``); seed: seed of the draw.
        device: torch device of the products.

    Returns:
        ``(rows, neighbours)``: ``(S,)`` int64 sorted sampled rows and ``(S, k)`` int64 their
        ``k`` nearest other rows (:func:`query_neighbours`).
    """
    features = open_features(features)
    n = num_rows(features)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, N - 1] (N={n}), got {k}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False)).astype(np.int64)
    return rows, query_neighbours(features, rows, k, exclude_self=True, device=device)


def query_neighbours(features: Any, rows: np.ndarray, k: int, *, exclude_self: bool = False,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """Exact nearest neighbours of some rows of ``features`` among all rows, by brute force.

    Args:
        features: ``(N, D)`` array (any input :func:`knn` takes), read in chunks of
            :data:`~robustreid.clustering.arrays.CHUNK_ROWS` rows (float32 products).
        rows: ``(S,)`` int indices of the query rows.
        k: neighbours per query row (``1 <= k <= N``, ``N - 1`` with ``exclude_self``).
        exclude_self: leave each query row out of its own neighbours.
        device: torch device of the products.

    Returns:
        ``(S, k)`` int64 indices by Euclidean distance, nearest first. ``S * N * D``
        products; memory ``S x (k + CHUNK_ROWS)``.
    """
    features = open_features(features)
    n = num_rows(features)
    rows = np.asarray(rows, dtype=np.int64)
    dev = torch.device(device)
    q = torch.from_numpy(rows_float32(features, rows)).to(dev)
    best_d = torch.full((len(rows), k), float("inf"), device=dev)
    best_i = torch.zeros((len(rows), k), dtype=torch.int64, device=dev)
    buf = np.empty((min(CHUNK_ROWS, n), int(features.shape[1])), dtype=np.float32)
    for s in range(0, n, CHUNK_ROWS):
        block = torch.from_numpy(rows_float32(features, slice(s, s + CHUNK_ROWS), buf)).to(dev)
        # |x|^2 - 2 q.x: the query's own |q|^2 does not change its ranking
        d2 = torch.addmm((block * block).sum(1)[None, :], q, block.T, beta=1.0, alpha=-2.0)
        cols = torch.arange(s, s + len(block), device=dev)
        if exclude_self:
            d2[torch.from_numpy(rows).to(dev)[:, None] == cols[None, :]] = float("inf")
        d = torch.cat([best_d, d2], 1)
        i = torch.cat([best_i, cols.expand(len(rows), -1)], 1)
        best_d, pos = torch.topk(d, k, dim=1, largest=False, sorted=True)
        best_i = torch.gather(i, 1, pos)
    return best_i.cpu().numpy()


def _adapt_to_spectrum(proj: Projection) -> dict[str, Any]:
    """The ``"auto"`` rule (:func:`auto_projection`) applied and logged (``INFO``); the
    ``knn_projection`` and ``knn_choice`` it gives."""
    d0 = int(proj.components.shape[1])
    kept = proj.kept(d0)
    chosen = auto_projection(proj)
    if proj.kind != "pca":
        why = f"{proj.kind} projection to {d0} dims kept (asked for by name)"
    elif chosen == "pca":
        why = (f"PCA to {d0} dims keeps {100 * kept:.1f} % of the sample's variance (at "
               f"least {100 * AUTO_FLAT_BELOW:.0f} %): PCA kept")
    else:
        why = (f"PCA to {d0} dims keeps {100 * kept:.1f} % of the sample's variance (below "
               f"{100 * AUTO_FLAT_BELOW:.0f} %: a flat spectrum, where the PCA keeps the few "
               f"strong shared directions): balanced projection to {d0} dims instead")
    logger.info("kNN auto: %s", why)
    return {"knn_projection": chosen, "knn_choice": why}
