"""Search a gallery of embeddings with query embeddings: top-k, optional re-ranking, records.

    >>> index = GalleryIndex(gallery_features)          # (G, D) float32, rows L2-normalised
    >>> distances, indices = index.search(query_features, k=10)   # (Q, 10) each
    >>> result = search(query_features, index, k=10, rerank=True)
    >>> records = build_records(result, query_paths, gallery_paths)   # JSON-able

Distance
--------
Every distance without re-ranking is the **Euclidean distance between unit vectors**,
``d = sqrt(2 - 2 cos)`` (dimensionless, in ``[0, 2]``), and results are sorted by it in
ascending order (nearest first). It ranks exactly as the cosine similarity does.

Memory
------
Nothing here builds a dense G x G matrix, nor a dense Q x G one for the whole gallery: the
faiss flat index streams the gallery, and the torch fallback multiplies blocks of at most
``query_chunk x gallery_chunk`` (default 256 x 65,536 floats = 64 MiB) and keeps a running
top-k per query. The index keeps the float32 gallery (G x D x 4 bytes), and with faiss a
second copy inside the faiss index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from robustreid.inference.embeddings_file import Embeddings, parse_pid_camid, read_embeddings

__all__ = [
    "Embeddings",
    "GalleryIndex",
    "SearchResult",
    "build_records",
    "faiss_module",
    "load_gallery",
    "parse_ids",
    "rerank_candidates",
    "search",
]

#: tolerance on ``| ||x|| - 1 |`` for features that must be L2-normalised
NORM_TOLERANCE = 1e-3


def faiss_module() -> ModuleType | None:
    """The ``faiss`` module when it can be imported, else ``None``."""
    try:
        import faiss  # type: ignore[import-untyped]
    except ImportError:
        return None
    return faiss


def _as_features(features: Any, name: str, check_norm: bool = True) -> np.ndarray:
    """``(N, D)`` numpy array or tensor -> C-contiguous float32 numpy array, validated."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor of shape (N, D), got "
                        f"{type(features).__name__}")
    if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (N, D) with N >= 1 and D >= 1, got "
                         f"{features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"{name}: expected floating-point features, got dtype {features.dtype}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if check_norm:
        _check_unit_rows(features, name)
    return features


def _check_unit_rows(features: np.ndarray, name: str, tol: float = NORM_TOLERANCE,
                     chunk: int = 65536) -> None:
    """Raise ``ValueError`` unless every row is finite with norm 1 (within ``tol``); checked in
    row chunks so no second copy of a big gallery is made."""
    for start in range(0, features.shape[0], chunk):
        block = features[start:start + chunk]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        bad = ~(np.abs(norms - 1.0) <= tol)  # NaN and inf count as bad
        if bad.any():
            row = start + int(np.argmax(bad))
            raise ValueError(f"{name}: rows must be finite and L2-normalised (norm 1 +- {tol}); "
                             f"row {row} has norm {norms[row - start]:.6g}")


def _similarity_to_distance(sim: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors -> Euclidean distance ``sqrt(2 - 2 cos)``, float32."""
    return np.sqrt(np.clip(2.0 - 2.0 * sim.astype(np.float32), 0.0, None)).astype(np.float32)


class GalleryIndex:
    """Exact nearest-neighbour index over a gallery of L2-normalised embeddings.

    Args:
        features: ``(G, D)`` float32 numpy array or CPU tensor, rows L2-normalised (checked,
            tolerance :data:`NORM_TOLERANCE`).
        use_faiss: ``True``: faiss ``IndexFlatIP`` (an error if faiss is missing); ``False``: the
            chunked torch fallback; ``None`` (default): faiss when importable.
        query_chunk, gallery_chunk: block size of the torch fallback; its working memory is
            about ``query_chunk * gallery_chunk * 4`` bytes (64 MiB by default).

    Both backends return the same exact results (up to float rounding and ties).
    """

    def __init__(self, features: np.ndarray | torch.Tensor, use_faiss: bool | None = None,
                 query_chunk: int = 256, gallery_chunk: int = 65536) -> None:
        if query_chunk < 1 or gallery_chunk < 1:
            raise ValueError(f"query_chunk and gallery_chunk must be >= 1, got {query_chunk} and "
                             f"{gallery_chunk}")
        self.features = _as_features(features, "gallery features")
        faiss = faiss_module()
        if use_faiss and faiss is None:
            raise ValueError("use_faiss=True but faiss cannot be imported (pip install faiss-cpu)"
                             "; pass use_faiss=None or False for the torch fallback")
        self.use_faiss = faiss is not None if use_faiss is None else bool(use_faiss)
        self.query_chunk = query_chunk
        self.gallery_chunk = gallery_chunk
        self._faiss_index = None
        if self.use_faiss:
            self._faiss_index = faiss.IndexFlatIP(self.dim)
            self._faiss_index.add(self.features)

    @property
    def size(self) -> int:
        """Number of gallery embeddings G."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.features.shape[1])

    @property
    def backend(self) -> str:
        """``"faiss"`` or ``"torch"``."""
        return "faiss" if self.use_faiss else "torch"

    def search(self, queries: np.ndarray | torch.Tensor,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest gallery embeddings of each query.

        Args:
            queries: ``(Q, D)`` float32, rows L2-normalised.
            k: neighbours per query, ``>= 1``; values above G are clamped to G (the returned
                arrays then have G columns; :func:`search` records a note when that happens).

        Returns:
            ``(distances, indices)``: ``(Q, min(k, G))`` float32 Euclidean distances between
            unit vectors, ``sqrt(2 - 2 cos)`` in ``[0, 2]``, ascending per row, and
            ``(Q, min(k, G))`` int64 gallery row indices.
        """
        k = _check_k(k)
        queries = _as_features(queries, "query features")
        if queries.shape[1] != self.dim:
            raise ValueError(f"query features have dimension D={queries.shape[1]} but the "
                             f"gallery has D={self.dim}")
        k = min(k, self.size)
        if self._faiss_index is not None:
            sim, idx = self._faiss_index.search(queries, k)
            return _similarity_to_distance(sim), idx.astype(np.int64, copy=False)
        return self._search_torch(queries, k)

    @torch.no_grad()
    def _search_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        gallery = torch.from_numpy(self.features)
        query_t = torch.from_numpy(queries)
        num_q = query_t.shape[0]
        sim_out = np.empty((num_q, k), dtype=np.float32)
        idx_out = np.empty((num_q, k), dtype=np.int64)
        for q0 in range(0, num_q, self.query_chunk):
            block_q = query_t[q0:q0 + self.query_chunk]
            best_sim: torch.Tensor | None = None
            best_idx: torch.Tensor | None = None
            for g0 in range(0, self.size, self.gallery_chunk):
                sims = block_q @ gallery[g0:g0 + self.gallery_chunk].T  # (q, g) block
                top_sim, top_idx = sims.topk(min(k, sims.shape[1]), dim=1)
                top_idx += g0
                if best_sim is None or best_idx is None:
                    best_sim, best_idx = top_sim, top_idx
                    continue
                merged_sim = torch.cat([best_sim, top_sim], dim=1)
                merged_idx = torch.cat([best_idx, top_idx], dim=1)
                best_sim, pos = merged_sim.topk(min(k, merged_sim.shape[1]), dim=1)
                best_idx = merged_idx.gather(1, pos)
            assert best_sim is not None and best_idx is not None  # the gallery is not empty
            q1 = q0 + block_q.shape[0]
            sim_out[q0:q1] = best_sim.numpy()
            idx_out[q0:q1] = best_idx.numpy()
        return _similarity_to_distance(sim_out), idx_out


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k (top-k): expected a positive integer, got {k!r}")
    return int(k)


@dataclass
class SearchResult:
    """Top-k gallery items per query.

    Attributes:
        indices: ``(Q, k)`` int64 gallery row indices, best first.
        distances: ``(Q, k)`` float32 ranking distances, ascending: the Euclidean distance
            ``sqrt(2 - 2 cos)`` without re-ranking, the re-ranked distance (in ``[0, 1]``, see
            :func:`rerank_candidates`) with it.
        euclidean: ``(Q, k)`` float32 Euclidean distances of the same items (equal to
            ``distances`` without re-ranking).
        metric: ``"euclidean"`` or ``"k-reciprocal"``.
        requested_k: the ``k`` asked for (``k`` may be smaller: clamped to the gallery size).
        num_candidates: candidates re-ranked per query, ``None`` without re-ranking.
        backend: ``"faiss"`` or ``"torch"``.
        notes: human-readable remarks (e.g. that ``k`` was clamped).
    """

    indices: np.ndarray
    distances: np.ndarray
    euclidean: np.ndarray
    metric: str
    requested_k: int
    num_candidates: int | None = None
    backend: str = "unknown"
    notes: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        """Columns actually returned, ``min(requested_k, G)``."""
        return int(self.indices.shape[1])

    @property
    def num_queries(self) -> int:
        return int(self.indices.shape[0])


def rerank_candidates(query_features: np.ndarray | torch.Tensor,
                      gallery_features: np.ndarray | torch.Tensor,
                      candidates: np.ndarray, *, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of each query's own candidate list.

    Each query is re-ranked **independently**, against its own ``C`` candidates only: the
    k-reciprocal Jaccard distance (:func:`robustreid.evaluation.rerank.k_reciprocal_rerank`,
    ``lambda_value=0``) is computed over the ``1 + C`` items {query, its candidates}, and
    combined as ``(1 - lambda) * jaccard + lambda * d2 / max(d2)``, where ``d2 = 2 - 2 cos`` is
    the squared Euclidean distance and the maximum is over the query's candidates. Cost:
    ``Q`` small problems of ``1 + C`` items, independent of the gallery size; a query's result
    does not depend on the other queries searched with it. ``k1`` is clamped to ``1 + C``.
    Ties are broken by ``d2``, then by candidate position, so the output is deterministic.

    Args:
        query_features: ``(Q, D)`` L2-normalised.
        gallery_features: ``(G, D)`` L2-normalised.
        candidates: ``(Q, C)`` int gallery row indices per query (e.g. its Euclidean top-C).
        k1, k2, lambda_value: re-ranking parameters (as in the evaluation).

    Returns:
        ``(distances, indices)``: ``(Q, C)`` float32 re-ranked distances in ``[0, 1]``,
        ascending, and ``(Q, C)`` int64 gallery indices, each row a permutation of the row
        of ``candidates``.
    """
    from robustreid.evaluation.rerank import k_reciprocal_rerank

    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value: expected a value in [0, 1], got {lambda_value}")
    queries = _as_features(query_features, "query features", check_norm=False)
    if isinstance(gallery_features, torch.Tensor):
        gallery = gallery_features.detach().to("cpu", torch.float32).numpy()
    else:
        gallery = np.asarray(gallery_features, dtype=np.float32)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[0] != queries.shape[0]:
        raise ValueError(f"candidates: expected shape (Q={queries.shape[0]}, C), got "
                         f"{candidates.shape}")
    if candidates.size and (candidates.min() < 0 or candidates.max() >= gallery.shape[0]):
        raise ValueError(f"candidates: gallery indices must lie in [0, {gallery.shape[0]})")
    num_c = candidates.shape[1]
    k1 = min(int(k1), num_c + 1)
    out_dist = np.empty(candidates.shape, dtype=np.float32)
    out_idx = np.empty(candidates.shape, dtype=np.int64)
    for q, row in enumerate(candidates.astype(np.int64)):
        query = queries[q:q + 1]
        cand = gallery[row]
        jaccard = k_reciprocal_rerank(query, cand, k1=k1, k2=min(int(k2), k1),
                                      lambda_value=0.0)[0]
        d2 = np.clip(2.0 - 2.0 * (cand @ query[0]), 0.0, None)
        d2_max = d2.max()
        original = d2 / d2_max if d2_max > 0 else d2
        final = ((1.0 - lambda_value) * jaccard + lambda_value * original).astype(np.float32)
        order = np.lexsort((np.arange(num_c), d2, final))  # last key sorts first
        out_dist[q] = final[order]
        out_idx[q] = row[order]
    return out_dist, out_idx


def search(query_features: np.ndarray | torch.Tensor,
           gallery: np.ndarray | torch.Tensor | GalleryIndex, k: int = 10,
           rerank: bool = False, *, num_candidates: int | None = None, k1: int = 20,
           k2: int = 6, lambda_value: float = 0.3,
           use_faiss: bool | None = None) -> SearchResult:
    """Top-``k`` gallery items for every query, optionally k-reciprocal re-ranked.

    Args:
        query_features: ``(Q, D)`` float32, rows L2-normalised.
        gallery: ``(G, D)`` float32 L2-normalised features, or a prebuilt :class:`GalleryIndex`.
        k: results per query. ``k > G`` is **clamped** to ``G`` and the result carries a note
            saying so (``result.notes``); ``k < 1`` is an error.
        rerank: re-rank each query's candidate set (see :func:`rerank_candidates`).
        num_candidates: candidate set size per query for re-ranking; default
            ``max(100, 3 * k)``, at most ``G``. The final top-k is taken from the re-ranked
            candidates, so items outside a query's Euclidean top-``num_candidates`` never enter
            its results.
        k1, k2, lambda_value: re-ranking parameters.
        use_faiss: backend of the index built when ``gallery`` is an array (see
            :class:`GalleryIndex`).

    Returns:
        A :class:`SearchResult`; ``distances`` are Euclidean ``sqrt(2 - 2 cos)`` without
        re-ranking and the re-ranked distances (``[0, 1]``) with it, ascending per row.
    """
    requested_k = _check_k(k)
    index = gallery if isinstance(gallery, GalleryIndex) else GalleryIndex(gallery, use_faiss)
    queries = _as_features(query_features, "query features")
    notes: list[str] = []
    k = min(requested_k, index.size)
    if k < requested_k:
        notes.append(f"top-{requested_k} requested but the gallery holds {index.size} "
                     f"embeddings: returning the top-{k}")
    if not rerank:
        dist, idx = index.search(queries, k)
        return SearchResult(idx, dist, dist.copy(), "euclidean", requested_k,
                            backend=index.backend, notes=notes)
    if num_candidates is None:
        num_candidates = max(100, 3 * k)
    if num_candidates < k:
        raise ValueError(f"num_candidates ({num_candidates}) must be >= k ({k})")
    num_candidates = min(int(num_candidates), index.size)
    _, cand = index.search(queries, num_candidates)
    dist, idx = rerank_candidates(queries, index.features, cand, k1=k1, k2=k2,
                                  lambda_value=lambda_value)
    idx, dist = idx[:, :k], dist[:, :k]
    sims = np.stack([index.features[row] @ query for row, query in zip(idx, queries,
                                                                         strict=True)])
    euclid = _similarity_to_distance(sims)
    notes.append(f"k-reciprocal re-ranking (k1={min(k1, num_candidates + 1)}, k2={k2}, "
                 f"lambda={lambda_value}) of each query's Euclidean top-{num_candidates}")
    return SearchResult(idx, dist, euclid, "k-reciprocal", requested_k,
                        num_candidates=num_candidates, backend=index.backend, notes=notes)


# ---------------------------------------------------------------------------- identities


def parse_ids(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Person and camera ids from Market-1501 style file names (``0002_c1s1_000451_03.jpg``:
    pid 2, camid 0), with this project's parser
    (:func:`robustreid.data.base.parse_market_name`: camera ids are **0-based**, file camera 1
    is camid 0). Names that do not match give -1 (unknown) for both.

    Returns:
        ``(pids, camids)``: two ``(N,)`` int64 arrays.
    """
    ids = np.array([parse_pid_camid(path) for path in paths], dtype=np.int64).reshape(-1, 2)
    return ids[:, 0].copy(), ids[:, 1].copy()


def _known(value: int) -> int | None:
    return int(value) if value >= 0 else None


def build_records(result: SearchResult, query_paths: Sequence[str | Path],
                  gallery_paths: Sequence[str | Path],
                  query_pids: Sequence[int] | np.ndarray | None = None,
                  query_camids: Sequence[int] | np.ndarray | None = None,
                  gallery_pids: Sequence[int] | np.ndarray | None = None,
                  gallery_camids: Sequence[int] | np.ndarray | None = None) -> list[dict[str, Any]]:
    """JSON-able records of a search, one per query::

        {"query": {"index": 0, "path": "q/0002_c1s1_000451_03.jpg", "pid": 2, "camid": 0},
         "results": [{"rank": 1, "index": 17, "path": "...", "distance": 0.41,
                      "euclidean": 0.41, "pid": 2, "camid": 3, "match": true}, ...]}

    Ids not given are parsed from the file names (:func:`parse_ids`); unknown ids (-1) become
    ``null``. ``match`` is ``true``/``false`` when both person ids are known, else ``null``.
    ``distance`` is the ranking distance of ``result`` (Euclidean unless re-ranked) and
    ``euclidean`` the Euclidean distance ``sqrt(2 - 2 cos)``.
    """
    num_q, num_g = len(query_paths), len(gallery_paths)
    if num_q != result.num_queries:
        raise ValueError(f"query_paths: {num_q} paths for {result.num_queries} queries")
    if result.indices.size and int(result.indices.max()) >= num_g:
        raise ValueError(f"gallery_paths: {num_g} paths, but the result refers to gallery "
                         f"index {int(result.indices.max())}")
    q_pids, q_cams = _ids(query_paths, query_pids, query_camids, "query")
    g_pids, g_cams = _ids(gallery_paths, gallery_pids, gallery_camids, "gallery")
    records = []
    for q in range(num_q):
        qpid = _known(q_pids[q])
        results = []
        for rank, (g, dist, euc) in enumerate(zip(result.indices[q], result.distances[q],
                                                   result.euclidean[q], strict=True), 1):
            gpid = _known(g_pids[g])
            results.append({
                "rank": rank, "index": int(g), "path": str(gallery_paths[g]),
                "distance": float(dist), "euclidean": float(euc), "pid": gpid,
                "camid": _known(g_cams[g]),
                "match": None if qpid is None or gpid is None else qpid == gpid,
            })
        records.append({"query": {"index": q, "path": str(query_paths[q]), "pid": qpid,
                                  "camid": _known(q_cams[q])},
                        "results": results})
    return records


def _ids(paths: Sequence[str | Path], pids: Any, camids: Any,
         name: str) -> tuple[np.ndarray, np.ndarray]:
    parsed_pids, parsed_cams = (None, None) if pids is not None and camids is not None \
        else parse_ids(paths)
    out = []
    for given, parsed, key in ((pids, parsed_pids, "pids"), (camids, parsed_cams, "camids")):
        if given is None:
            out.append(parsed)
            continue
        arr = np.asarray(given, dtype=np.int64).reshape(-1)
        if arr.shape[0] != len(paths):
            raise ValueError(f"{name}_{key}: {arr.shape[0]} values for {len(paths)} paths")
        out.append(arr)
    return out[0], out[1]


# ---------------------------------------------------------------------------- .npz files


def load_gallery(path: str | Path, require_paths: bool = True) -> Embeddings:
    """Read and check an embeddings ``.npz`` for a search, with its rows re-normalised exactly.

    The reader and its checks are :func:`~robustreid.inference.embeddings_file.read_embeddings`:
    ``features`` (N x D floats, rows L2-normalised within 1e-2) and ``paths`` (N strings,
    unless ``require_paths`` is False) are required; ``pids`` and ``camids`` (N integers, -1
    unknown) are parsed from the names when absent and ``meta`` (a JSON object) is optional.

    Raises:
        EmbeddingsFileError: a :class:`~robustreid.errors.UserError` naming the file: missing,
            not a readable ``.npz``, or a missing or malformed array.
    """
    emb = read_embeddings(path, require_paths=require_paths)
    emb.features /= np.linalg.norm(emb.features, axis=1, keepdims=True)
    return emb
