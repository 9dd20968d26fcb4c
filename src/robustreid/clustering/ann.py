"""Approximate all-rows kNN for large N: projection, blocked IVF search and exact refinement.

The three stages (``knn(..., method="ivf")`` chains them; each is usable alone):

1. :func:`fit_projection` / :func:`project`: PCA (fitted on a random sample of rows), a
   Gaussian random projection, or a *balanced* projection (the sample's principal axes whose
   variance exceeds the median are shrunk to it, then a random projection) of the
   ``D``-dimensional features to ``d`` dimensions, applied chunk by chunk (any input: array,
   float16 memory map, tensor).
2. :func:`ivf_knn`: an inverted-file search in the projected space written for the *all rows
   against all rows* case. k-means (on a sample) cuts the space into ``nlist`` cells; every
   row lists its ``nprobe`` nearest centroids; the rows are sorted by cell and each cell's rows
   are searched **together** against the rows of every cell that any of them probes, with one
   matrix product per cell (``torch``, on the device given: CPU or CUDA). This does the same
   comparisons as faiss' ``IndexIVFFlat`` with the union of the probes of a cell, but runs
   at matrix-product speed instead of one scan per query. At 100,000 rows on a 2-core CPU
   the whole kNN took 16.5 s against 35.1 s with faiss' IVF behind the same projection and
   re-ranking, which reached a higher recall@30 (0.997 against 0.992; docs/RESULTS.md).
3. :func:`refine_knn`: the candidates are re-ranked by their exact squared distances in the
   original ``D`` dimensions (float32 products). Rows are taken in cell order in blocks that
   share many candidates; each block reads the union of its candidates once and computes only
   the needed dot products; the result is exact among the candidates, and its distances are
   the true ones (the Jaccard weights use them).

Memory: the projected features (``N x d`` float32), the probes (``N x nprobe``), the
candidates (``N x R``) and the outputs; one cell's matrix product at a time. No ``N x N``
array, and the original features are only read in chunks and row blocks.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .arrays import CHUNK_ROWS, num_rows, rows_float32
from .progress import Step

__all__ = ["Projection", "SampleSpectrum", "sample_spectrum", "fit_projection", "project",
           "ivf_knn", "default_nprobe", "neighbour_order", "refine_knn"]

logger = logging.getLogger(__name__)

# k-means is fitted on at most 64 rows per cell and at most this many rows: its cost grows
# as sample x cells, so without the cap it would grow quadratically with N
KMEANS_SAMPLE = 65536
# rows of a cell multiplied together in the IVF search (bounds its m x p block)
ROW_BLOCK = 1024
#: ``ivf_knn(..., reference=...)`` searches the fewest cells (from the default up) whose
#: first pass holds at least this share of the sampled rows' exact neighbours ...
COVERAGE_TARGET = 0.97
#: ... within this many nominal pairs (``N x nprobe x N / nlist``): what the default search
#: compares at a million rows (48 cells of 512 rows per row), so more cells are searched only
#: where the time stays under that of the default at a million rows
ADAPT_MAX_PAIRS = 48 * 512 * 1_000_000
#: ... and within this many bytes of ranked probes (``N x nprobe / 2`` int32)
PROBES_BYTES = 128 * 2**20


@dataclass
class Projection:
    """A linear map ``y = (x - mean) @ components`` from ``D`` to ``d`` dimensions.

    Attributes:
        mean: ``(D,)`` float32 (zeros for a random projection).
        components: ``(D, d)`` float32; orthonormal columns for PCA.
        kind: ``"pca"``, ``"random"`` or ``"balanced"``.
        explained: fraction of the sample's variance kept (PCA only, else ``None``).
        spectrum: ``(D,)`` float64 variances of the sample along all its principal axes,
            descending (PCA and balanced, else ``None``): ``spectrum[:d].sum() /
            spectrum.sum()`` is what a PCA projection to ``d`` dimensions would keep.
    """

    mean: np.ndarray
    components: np.ndarray
    kind: str
    explained: float | None = None
    spectrum: np.ndarray | None = None

    def kept(self, dim: int) -> float | None:
        """Share of the sample's variance a PCA projection to ``dim`` dimensions keeps
        (``None`` for a random projection)."""
        if self.spectrum is None:
            return None
        total = float(self.spectrum.sum())
        return float(self.spectrum[:dim].sum() / total) if total > 0 else 1.0


@dataclass
class SampleSpectrum:
    """The principal axes of a sample of rows, from which :meth:`projection` builds the PCA or
    the balanced projection without reading the features again.

    Attributes:
        mean: ``(D,)`` float64 tensor, the sample's mean.
        variances: ``(D,)`` float64 tensor, the variances along the principal axes, descending.
        axes: ``(D, D)`` float64 tensor, the principal axes as columns, in that order.
        rng_state: the state of the seeded generator after the sample was drawn (the balanced
            projection's random matrix is drawn from it, the same on every call).
    """

    mean: torch.Tensor
    variances: torch.Tensor
    axes: torch.Tensor
    rng_state: dict[str, Any]

    def projection(self, dim: int, kind: str = "pca") -> Projection:
        """The ``kind`` (``"pca"`` or ``"balanced"``, see :func:`fit_projection`) projection
        to ``dim`` dimensions."""
        d_in = int(self.axes.shape[0])
        if not 1 <= dim <= d_in:
            raise ValueError(f"projection dimension must lie in [1, D={d_in}], got {dim}")
        evals, evecs = self.variances, self.axes
        mean = self.mean.float().numpy()
        spectrum = evals.numpy().astype(np.float64)
        if kind == "balanced":
            # W = sum_i s_i u_i u_i^T R: the axes above the median variance scaled to it
            # (s_i < 1), the others left (s_i = 1), then R; only the scaled axes need the
            # correction term
            rng = np.random.default_rng()
            rng.bit_generator.state = self.rng_state
            median = float(evals.median())
            scale = torch.sqrt(median / evals.clamp(min=1e-30)).clamp_(max=1.0)
            rand = torch.from_numpy(rng.standard_normal((d_in, dim), dtype=np.float32)
                                    / np.float32(math.sqrt(dim))).double()
            top = scale < 1.0
            u = evecs[:, top]
            comp = rand - u @ ((1.0 - scale[top])[:, None] * (u.T @ rand))
            return Projection(mean, comp.float().contiguous().numpy(), "balanced", None,
                              spectrum)
        if kind != "pca":
            raise ValueError(f"a sample spectrum gives a 'pca' or 'balanced' projection, got "
                             f"{kind!r}")
        comp = evecs[:, :dim].float().contiguous().numpy()
        explained = float(evals[:dim].sum() / evals.sum()) if float(evals.sum()) > 0 else 1.0
        return Projection(mean, comp, "pca", explained, spectrum)


def sample_spectrum(features: Any, *, sample: int = 32768, seed: int = 0,
                    device: torch.device | str = "cpu") -> SampleSpectrum:
    """Principal axes of ``sample`` random rows of ``features`` (all rows when ``N`` is
    smaller), read in chunks; the covariance products on ``device``."""
    n, d_in = (int(s) for s in features.shape)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    buf = np.empty((min(CHUNK_ROWS, len(rows)), d_in), dtype=np.float32)
    total = torch.zeros(d_in, dtype=torch.float64, device=dev)
    gram = torch.zeros((d_in, d_in), dtype=torch.float32, device=dev)
    for start in range(0, len(rows), len(buf)):
        block = torch.from_numpy(rows_float32(features, rows[start:start + len(buf)], buf))
        block = block.to(dev)
        total += block.sum(0, dtype=torch.float64)
        gram.addmm_(block.T, block)
    mean = (total / len(rows)).cpu()
    cov = gram.double().cpu() / len(rows) - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    return SampleSpectrum(mean, evals.flip(0).clamp_(min=0.0), evecs.flip(1),
                          rng.bit_generator.state)


def fit_projection(features: Any, dim: int, *, kind: str = "pca", sample: int = 32768,
                   seed: int = 0, device: torch.device | str = "cpu") -> Projection:
    """Fit a PCA on ``sample`` random rows (or draw a random projection) to ``dim`` dims.

    Args:
        features: ``(N, D)`` array, memory map or tensor; read in chunks.
        dim: target dimension ``1 <= dim <= D``.
        kind: ``"pca"`` (principal axes of the sample), ``"random"`` (Gaussian matrix
            scaled by ``1 / sqrt(dim)``: squared distances preserved in expectation) or
            ``"balanced"``: the features' variance along each principal axis of the sample
            is capped at the median over the axes (axes above it are scaled down by
            ``sqrt(median / variance)``), then the random projection. On a flat spectrum with
            a few strong shared directions (camera offsets, for example), a PCA keeps those
            and little of what separates identities, and k-means cells follow them (an
            identity's images split over its cameras' cells); the balanced map keeps
            every direction in proportion, the strong ones capped (docs/method.md).
        sample: rows the PCA is fitted on (all rows when ``N`` is smaller).
        seed: seed of the sample / the random matrix.
        device: torch device of the covariance products.

    Returns:
        :class:`Projection` (:func:`sample_spectrum` then :meth:`SampleSpectrum.projection`
        for the PCA and the balanced projection).
    """
    d_in = int(features.shape[1])
    if not 1 <= dim <= d_in:
        raise ValueError(f"projection dimension must lie in [1, D={d_in}], got {dim}")
    if kind == "random":
        rng = np.random.default_rng(seed)
        comp = rng.standard_normal((d_in, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
        return Projection(np.zeros(d_in, np.float32), comp, "random")
    if kind not in ("pca", "balanced"):
        raise ValueError(f"projection kind must be 'pca', 'random' or 'balanced', got {kind!r}")
    return sample_spectrum(features, sample=sample, seed=seed, device=device).projection(
        dim, kind)


def project(features: Any, proj: Projection, *, device: torch.device | str = "cpu",
            step: Step | None = None) -> np.ndarray:
    """``(N, d)`` float32 projection of every row, computed in chunks.

    Args:
        features: ``(N, D)`` array, memory map or tensor.
        proj: from :func:`fit_projection`.
        device: torch device of the products.
        step: optional progress reporter (advanced by rows).
    """
    n = num_rows(features)
    dev = torch.device(device)
    comp = torch.from_numpy(proj.components).to(dev)
    shift = torch.from_numpy(proj.mean @ proj.components).to(dev)  # (x - m) W = xW - mW
    out = np.empty((n, proj.components.shape[1]), dtype=np.float32)
    buf = np.empty((min(CHUNK_ROWS, n), proj.components.shape[0]), dtype=np.float32)
    for start in range(0, n, len(buf)):
        block = torch.from_numpy(rows_float32(features, slice(start, start + len(buf)), buf))
        y = block.to(dev) @ comp
        y -= shift
        out[start:start + len(y)] = y.cpu().numpy()
        if step is not None:
            step.advance(len(y))
    return out


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (a CUDA GPU, or a CPU with
    AVX512-BF16 / AMX-BF16); elsewhere bfloat16 products are emulated and slower."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    caps = getattr(torch.cpu, "get_capabilities", lambda: {})()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _sq_dist(q: torch.Tensor, qn: torch.Tensor | None, c: torch.Tensor, cn: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """``(m, p)`` squared distances from row norms and one matrix product (into ``out``,
    a reused buffer: fresh multi-megabyte tensors cost a page fault per 4 KiB). With
    ``qn=None`` the rows' own squared norms are left out (``|c|^2 - 2 q.c``), which ranks
    the ``c`` for each row the same."""
    d2 = torch.addmm(cn[None, :], q, c.T, beta=1.0, alpha=-2.0, out=out)
    if qn is not None:
        d2 += qn[:, None]
    return d2


class _Buffer:
    """One growing float buffer handing out ``(m, p)`` views (reused across blocks)."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.empty(0, dtype=dtype, device=device)

    def view(self, m: int, p: int) -> torch.Tensor:
        if self.data.numel() < m * p:
            self.data = torch.empty(int(m * p * 1.25), dtype=self.data.dtype,
                                    device=self.data.device)
        return self.data[: m * p].view(m, p)


def _kmeans(y: torch.Tensor, nlist: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of the rows of ``y`` (``(m, d)``, on its device); ``(nlist, d)``."""
    m = y.shape[0]
    cent = y[torch.randperm(m, generator=gen)[:nlist].to(y.device)].clone()
    yn = (y * y).sum(1)
    buf = _Buffer(y.dtype, y.device)
    assign = torch.empty(m, dtype=torch.int64, device=y.device)
    for _ in range(iters):
        cn = (cent * cent).sum(1)
        for s in range(0, m, 8192):
            q = y[s:s + 8192]
            d2 = _sq_dist(q, yn[s:s + 8192], cent, cn, out=buf.view(len(q), nlist))
            torch.argmin(d2, 1, out=assign[s:s + 8192])
        sums = torch.zeros_like(cent).index_add_(0, assign, y)
        counts = torch.bincount(assign, minlength=nlist)
        empty = counts == 0
        cent = sums / counts.clamp(min=1)[:, None].to(y.dtype)
        if bool(empty.any()):  # re-seed empty cells on random rows
            pick = torch.randint(0, m, (int(empty.sum()),), generator=gen).to(y.device)
            cent[empty] = y[pick]
    return cent


def _nearest_centroids(y: np.ndarray, cent: torch.Tensor, nprobe: int, dev: torch.device
                       ) -> np.ndarray:
    """``(N, nprobe)`` int32 indices of each row's nearest centroids, nearest first."""
    n = len(y)
    out = np.empty((n, nprobe), dtype=np.int32)
    cn = (cent * cent).sum(1)
    buf = _Buffer(cent.dtype, dev)
    chunk = 8192
    for s in range(0, n, chunk):
        q = torch.from_numpy(y[s:s + chunk]).to(dev)
        d2 = _sq_dist(q, None, cent, cn, out=buf.view(len(q), len(cent)))
        out[s:s + len(q)] = torch.topk(d2, nprobe, dim=1, largest=False).indices.cpu().numpy()
    return out


def _choose_cells(probes: np.ndarray, first: int, cells: int, cent_d2: np.ndarray
                  ) -> np.ndarray:
    """The ``cells`` cells that ``probes`` (``(m, v)`` probes of a cell's rows) name most,
    ``first`` first (ties by the distance of the centroids to ``first``'s, ``cent_d2``:
    ``(nlist, nlist)``), sorted."""
    votes = np.bincount(probes.ravel(), minlength=len(cent_d2))
    votes[first] = votes.max() + 1
    return np.sort(np.lexsort((cent_d2[first], -votes))[:cells])


def _coverage(probes: np.ndarray, order: np.ndarray, bounds: np.ndarray, cent_d2: np.ndarray,
              rows: np.ndarray, neighbours: np.ndarray, nprobe: int) -> float:
    """Share of the sampled ``rows``' exact ``neighbours`` (``(S, k)`` row indices) that lie in
    the cells the first pass of :func:`ivf_knn` searches for their cell with ``nprobe`` cells
    (votes from the first ``nprobe // 2`` columns of ``probes``)."""
    vote = max(1, nprobe // 2)
    cell_of = probes[:, 0]
    found = 0
    for row, nbrs in zip(rows, neighbours, strict=True):
        c = int(cell_of[row])
        members = order[bounds[c]:bounds[c + 1]]
        cells = _choose_cells(probes[members, :vote], c, nprobe, cent_d2)
        found += int(np.isin(cell_of[nbrs], cells).sum())
    return found / neighbours.size


def _merge(d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of two ``(m, k)`` neighbour lists of the same rows, each index once."""
    d = np.concatenate([d1, d2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    by_index = np.argsort(i, axis=1, kind="stable")  # equal indices: list 1's copy first
    si = np.take_along_axis(i, by_index, 1)
    dup = np.zeros(i.shape, dtype=bool)
    dup_sorted = np.zeros(i.shape, dtype=bool)
    dup_sorted[:, 1:] = si[:, 1:] == si[:, :-1]
    np.put_along_axis(dup, by_index, dup_sorted, 1)
    d = np.where(dup, np.inf, d)
    keep = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)


def default_nprobe(n: int) -> int:
    """Cells searched per cell by default: 32 up to 100,000 rows, then 1.5x more per 10x
    more rows (48 at 1,000,000). The cells keep a fixed size, so a row's true neighbours
    spread over more of them as ``N`` grows: on the synthetic re-ID features recall@30 at a
    million rows was 0.950 with 32 cells and 0.966 with 64 (docs/RESULTS.md)."""
    return int(round(32 * max(1.0, n / 100_000) ** math.log10(1.5)))


def ivf_knn(y: np.ndarray, k: int, *, nlist: int | None = None, nprobe: int | None = None,
            iters: int = 10, seed: int = 0, device: torch.device | str = "cpu",
            low_precision: bool | None = None, border: int = 5, n_log: int | None = None,
            reference: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
            info: dict[str, Any] | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate kNN of every row of ``y`` among all rows by the blocked IVF search.

    Every row ranks the centroids; the rows of a cell are searched together against the
    ``nprobe`` cells that their ``nprobe // 2`` nearest centroids name most often (the cell
    itself first; cells without votes by the distance of their centroid to the cell's). With
    cells of a fixed size the work per row does not grow with ``N``; with ``nprobe >= nlist``
    the search is exact.

    Args:
        y: ``(N, d)`` float32 (normally the projected features).
        k: neighbours per row, ``1 <= k <= N``.
        nlist: k-means cells (default ``round(N / 512)``: about 512 rows per cell).
        nprobe: cells searched per cell (``nprobe * N / nlist`` candidates per row when the
            cells are even; default :func:`default_nprobe`).
        iters: k-means iterations (on ``min(N, 64 * nlist, KMEANS_SAMPLE)`` sampled rows).
        seed: seed of the k-means sample and initialisation.
        device: torch device of the matrix products.
        border: rows whose ``border`` nearest cells were not all among their cell's searched
            cells are searched a second time, grouped by their first missing cell, against
            ``max(border, nprobe // 4)`` cells: that one, then those their own probes name
            most (rows at cell borders: 3-10 % of the rows on a decaying spectrum, up to 87 %
            on a flat one).
        low_precision: multiply in bfloat16 (float32 accumulation; about 4x faster where
            :func:`fast_bfloat16`, the default there). The distances (and the rows' squared
            norms added in the product) are then rounded to bfloat16, errors of a few 1e-3;
            meant for candidates that :func:`refine_knn` re-ranks exactly.
        n_log: ``N`` used to choose the log level (default ``N``).
        reference: with ``nprobe=None``, a function returning ``(rows, neighbours)``: ``(S,)``
            sampled rows and ``(S, k')`` their exact neighbours (indices, the row itself
            left out). Then the number of cells searched is measured instead of fixed: the
            fewest of ``default, 1.5x, 2x, 3x, ...`` whose first pass holds at least
            :data:`COVERAGE_TARGET` of those neighbours, at most what keeps the nominal
            pairs ``N x nprobe x N / nlist`` within :data:`ADAPT_MAX_PAIRS` (the function is
            not called where that bound leaves no choice, e.g. at a million rows).
        info: a dict that gets ``knn_nprobe`` (cells searched) and, when measured,
            ``knn_coverage`` (``{nprobe: share}`` for every number tried).

    Returns:
        ``(distances, indices, order)``: ``(N, k)`` float32 squared distances in ``y``'s
        space, ascending, the row itself first at 0 (rows with fewer than ``k`` candidates
        are padded with the row itself at ``inf``); ``(N, k)`` int64 indices; ``(N,)`` int64
        rows sorted by cell (neighbouring rows close together).
    """
    n = len(y)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, N={n}], got {k}")
    dev = torch.device(device)
    if nlist is None:
        nlist = int(round(n / 512))
    nlist = max(1, min(int(nlist), n))
    measure = reference is not None and nprobe is None
    nprobe = default_nprobe(n) if nprobe is None else int(nprobe)
    nprobe = max(1, min(nprobe, nlist))
    # the most cells a measured choice may search: within the pairs bound, and the probes
    # (ranked that deep once, N x most / 2 int32) within PROBES_BYTES
    most = nprobe
    if measure:
        most = min(nlist, int(ADAPT_MAX_PAIRS * nlist / float(n) ** 2),
                   2 * PROBES_BYTES // (4 * n))
        most = max(nprobe, most)
    gen = torch.Generator().manual_seed(seed)
    n_log = n if n_log is None else n_log
    with Step(logger, f"k-means ({nlist} cells, {y.shape[1]}-d)", n_log):
        rng = np.random.default_rng(seed)
        train = y[np.sort(rng.choice(n, size=min(n, 64 * nlist, KMEANS_SAMPLE),
                                     replace=False))]
        cent = _kmeans(torch.from_numpy(train).to(dev), nlist, iters, gen)
        probes = _nearest_centroids(y, cent, max(1, most // 2), dev)
    cent_norm = (cent * cent).sum(1)
    cent_d2 = _sq_dist(cent, cent_norm, cent, cent_norm).cpu().numpy()  # (nlist, nlist)
    order = np.argsort(probes[:, 0], kind="stable").astype(np.int64)
    position = np.empty(n, dtype=np.int64)  # row -> position in the cell order
    position[order] = np.arange(n, dtype=np.int64)
    bounds = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(np.bincount(probes[:, 0], minlength=nlist), out=bounds[1:])
    coverage: dict[int, float] = {}
    if reference is not None and most > nprobe:
        with Step(logger, "choosing the cells searched from sampled exact neighbours", n_log):
            rows, neighbours = reference()
            ladder = sorted({*(int(nprobe * f) for f in (1, 1.5, 2, 3, 4, 6, 8, 12, 16)
                               if int(nprobe * f) < most), most})
            for cells in ladder:
                coverage[cells] = _coverage(probes, order, bounds, cent_d2, rows, neighbours,
                                            cells)
                if coverage[cells] >= COVERAGE_TARGET:
                    break
            nprobe = cells
        logger.log(logging.INFO if n_log >= 50_000 else logging.DEBUG,
                   "IVF cells searched: %d (share of %d sampled rows' exact neighbours in "
                   "the cells searched: %s; target %.2f, at most %d cells)", nprobe,
                   len(rows), ", ".join(f"{c}: {v:.3f}" for c, v in coverage.items()),
                   COVERAGE_TARGET, most)
    vote = max(1, nprobe // 2)
    if probes.shape[1] > vote:
        probes = np.ascontiguousarray(probes[:, :vote])
    if info is not None:
        info["knn_nprobe"] = nprobe
        if coverage:
            info["knn_coverage"] = {str(c): round(v, 4) for c, v in coverage.items()}
    # the rows stay where they are (no permuted copy of y: when nothing was projected, y is
    # the caller's features); the cells' rows are gathered through ``order``
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only array is only read
        ys = torch.from_numpy(y).to(dev)
    order_t = torch.from_numpy(order).to(dev)
    y_norm = torch.empty(n, dtype=ys.dtype, device=dev)
    for s in range(0, n, 8192):  # row by row the same sums, without an N x d temporary
        y_norm[s:s + 8192] = (ys[s:s + 8192] * ys[s:s + 8192]).sum(1)
    ys_norm = y_norm[order_t]  # by position in the cell order
    del y_norm
    if low_precision is None:
        low_precision = fast_bfloat16(dev)
    ys_mm = ys.to(torch.bfloat16) if low_precision else ys
    # the candidates' |c|^2 in the product's dtype: added inside the product (addmm), which
    # saves a pass over the m x p block (a third of the search's time)
    ys_norm_mm = ys_norm.to(ys_mm.dtype)
    cand_buf, dot_buf = _Buffer(ys_mm.dtype, dev), _Buffer(ys_mm.dtype, dev)
    # every row is in one cell and pass 1 writes all its k columns (padding included)
    dist_out = np.empty((n, k), dtype=np.float32)
    idx_out = np.empty((n, k), dtype=np.int64)
    scanned = 0

    def choose_cells(rows: np.ndarray, first: int, cells: int) -> np.ndarray:
        return _choose_cells(probes[rows], first, cells, cent_d2)

    def search(rows: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(m, k)`` distances and indices of the rows' nearest among the cells' rows."""
        nonlocal scanned
        cand = torch.cat([torch.arange(int(bounds[j]), int(bounds[j + 1]), device=dev)
                          for j in cells])
        p = len(cand)
        kk = min(k, p)
        cb = torch.index_select(ys_mm, 0, order_t[cand], out=cand_buf.view(p, ys_mm.shape[1]))
        cand_norm = ys_norm_mm[cand][None, :]
        dist = np.full((len(rows), k), np.inf, dtype=np.float32)
        idx = np.repeat(rows[:, None], k, axis=1)
        # at most ROW_BLOCK rows per product: k-means cells are uneven (on a flat spectrum a
        # cell of 10,000 rows against 200,000 candidates would be a 4 GB block)
        for s in range(0, len(rows), ROW_BLOCK):
            sub = rows[s:s + ROW_BLOCK]
            m = len(sub)
            qpos = torch.from_numpy(position[sub]).to(dev)
            # |c|^2 - 2 q.c, one product in the search's dtype (the row's own |q|^2 is added,
            # in float32, to the k kept only), every intermediate in a reused buffer
            d2 = torch.addmm(cand_norm, ys_mm[torch.from_numpy(sub).to(dev)], cb.T, beta=1.0,
                             alpha=-2.0, out=dot_buf.view(m, p))
            scanned += d2.numel()
            # the row itself first (when its cell is searched)
            self_pos = torch.searchsorted(cand, qpos).clamp_(max=p - 1)
            found = cand[self_pos] == qpos
            d2[torch.arange(m, device=dev)[found], self_pos[found]] = -float("inf")
            val, pos = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
            val = val.float().add_(ys_norm[qpos, None])
            val[found, 0] = 0.0
            dist[s:s + m, :kk] = val.clamp_(min=0.0).cpu().numpy()
            idx[s:s + m, :kk] = order_t[cand[pos]].cpu().numpy()
        return dist, idx

    # pass 1: each cell's rows against the cells their probes name most
    misses: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    must = max(1, min(border, vote))
    # the second pass searches a quarter as many cells: its rows' own missing cell first,
    # then the cells their probes name most (at 100,000 flat-spectrum rows: ARI against the
    # exact pipeline 0.9817 against 0.9825 with all nprobe; a quarter of the time)
    cells_2 = max(must, nprobe // 4)
    with Step(logger, f"IVF search (k={k}, {nprobe} of {nlist} cells, "
                      f"{'bfloat16' if low_precision else 'float32'})", n_log, total=n) as step:
        for c in range(nlist):
            a, b = int(bounds[c]), int(bounds[c + 1])
            if a == b:
                continue
            rows = order[a:b]
            cells = choose_cells(rows, c, nprobe)
            dist_out[rows], idx_out[rows] = search(rows, cells)
            # rows whose own nearest cells were not all searched: searched again (pass 2)
            inside = np.isin(probes[rows, :must], cells)
            miss = ~inside.all(1)
            if miss.any():
                misses.append(rows[miss])
                keys.append(probes[rows[miss], np.argmin(inside[miss], axis=1)])
            step.advance(b - a)
    # pass 2: those rows, grouped by their first unsearched cell, against their own probes
    if misses:
        rows_2 = np.concatenate(misses)
        key = np.concatenate(keys)
        srt = np.argsort(key, kind="stable")
        rows_2, key = rows_2[srt], key[srt]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)]
        with Step(logger, f"IVF search, rows at cell borders ({len(rows_2)} rows, "
                          f"{100.0 * len(rows_2) / n:.1f} %, {cells_2} cells)", n_log,
                  total=len(rows_2)) as step:
            for a, b in zip(starts, ends, strict=True):
                rows = rows_2[a:b]
                dist, idx = search(rows, choose_cells(rows, int(key[a]), cells_2))
                dist_out[rows], idx_out[rows] = _merge(dist_out[rows], idx_out[rows],
                                                       dist, idx, k)
                step.advance(b - a)
    logger.log(logging.INFO if n_log >= 50_000 else logging.DEBUG,
               "IVF search compared %.3g pairs (%.2f %% of N^2, %.0f per row)",
               scanned, 100.0 * scanned / float(n) ** 2, scanned / n)
    return dist_out, idx_out, order


def neighbour_order(indices: np.ndarray, m: int = 8) -> np.ndarray:
    """An order of the rows that puts rows with shared neighbours next to each other.

    Each row gets the key ``min(indices[i, :m])`` (the first row of its neighbourhood); rows
    are sorted by key, then by index. Rows of one tight group (an identity) share the key.

    Args:
        indices: ``(N, K)`` kNN indices (the row itself among them).
        m: neighbours looked at.

    Returns:
        ``(N,)`` int64 permutation.
    """
    key = indices[:, : max(1, min(m, indices.shape[1]))].min(axis=1)
    return np.lexsort((np.arange(len(indices)), key)).astype(np.int64)


def refine_knn(features: Any, candidates: np.ndarray, k: int, *,
               order: np.ndarray | None = None, block: int = 1024,
               device: torch.device | str = "cpu", n_log: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's candidates by exact squared distance in ``D`` dims.

    Args:
        features: ``(N, D)`` original features (array, float16/float32 memory map, tensor).
        candidates: ``(N, R)`` int candidate rows per row (``R >= k``; the row itself among
            them), e.g. the indices of :func:`ivf_knn`. Duplicates are harmless.
        k: neighbours to keep, ``1 <= k <= R``.
        order: processing order of the rows (rows with shared candidates close together, e.g.
            :func:`ivf_knn`'s ``order``); default ``0..N-1``.
        block: rows re-ranked together; each block reads the union of its candidates once and
            computes only the ``block x R`` needed dot products (one sampled sparse product).
        device: torch device of the products.
        n_log: ``N`` used to choose the log level (default ``N``).

    Returns:
        ``(distances, indices)``: ``(N, k)`` float32 exact squared distances (float32
        products), ascending, the row itself first at 0; ``(N, k)`` int64.
    """
    n, r = candidates.shape
    if not 1 <= k <= r:
        raise ValueError(f"k must lie in [1, R={r}], got {k}")
    dev = torch.device(device)
    order = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    dist_out = np.empty((n, k), dtype=np.float32)
    idx_out = np.empty((n, k), dtype=np.int64)
    d_in = int(features.shape[1])
    qbuf = np.empty((block, d_in), dtype=np.float32)
    ubuf = np.empty((0, d_in), dtype=np.float32)  # grown to the largest union met
    union_total = 0
    with Step(logger, f"exact re-ranking ({r} candidates, {d_in}-d)", n if n_log is None
              else n_log, total=n) as step, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: sparse CSR is "beta"
        for s in range(0, n, block):
            rows = np.sort(order[s:s + block])
            cand = candidates[rows]
            b = len(rows)
            union, inverse = np.unique(cand, return_inverse=True)
            union_total += len(union)
            if len(ubuf) < len(union):
                ubuf = np.empty((min(b * r, int(len(union) * 1.25)), d_in), dtype=np.float32)
            q = torch.from_numpy(rows_float32(features, rows, qbuf)).to(dev)
            u = torch.from_numpy(rows_float32(features, union, ubuf)).to(dev)
            # only the (row, candidate) dot products: one sampled product
            pattern = torch.sparse_csr_tensor(
                torch.arange(0, b * r + 1, r, device=dev),
                torch.from_numpy(inverse.reshape(-1)).to(dev),
                torch.zeros(b * r, device=dev), size=(b, len(union)))
            dots = torch.sparse.sampled_addmm(pattern, q, u.T).values().view(b, r)
            # (u * u).sum(1) would allocate a U x D temporary (page faults: 4x slower)
            u_norm = torch.linalg.vector_norm(u, dim=1).square_()
            u_norm = u_norm[torch.from_numpy(inverse.reshape(b, r)).to(dev)]
            d2 = u_norm.add_(torch.linalg.vector_norm(q, dim=1).square_()[:, None])
            d2.sub_(2.0 * dots)
            d2[torch.from_numpy(cand == rows[:, None]).to(dev)] = -1.0  # self first
            # duplicates of a candidate (padding): keep one, push the copies to the end
            srt = np.sort(cand, axis=1)
            if (srt[:, 1:] == srt[:, :-1]).any():
                dup = np.zeros(cand.shape, dtype=bool)
                arg = np.argsort(cand, axis=1, kind="stable")
                sc = np.take_along_axis(cand, arg, 1)
                np.put_along_axis(dup, arg[:, 1:], sc[:, 1:] == sc[:, :-1], 1)
                d2[torch.from_numpy(dup).to(dev)] = float("inf")
            val, pos = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            dist_out[rows] = val.clamp_(min=0.0).cpu().numpy()
            idx_out[rows] = np.take_along_axis(cand, pos.cpu().numpy(), 1)
            step.advance(b)
    logger.debug("re-ranking: %.1f distinct candidates per block of %d rows",
                 union_total / max(1, math.ceil(n / block)), block)
    return dist_out, idx_out
