"""The IVF search's cells measured on sampled rows' exact neighbours (``knn(method="auto")``)."""

from __future__ import annotations

import numpy as np
import pytest

from robustreid.clustering import ann, knn
from robustreid.clustering.knn import query_neighbours, sampled_neighbours

KNN_MODULE = __import__("robustreid.clustering.knn", fromlist=["knn"])


def _brute(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    d2 = ((x[rows, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    d2[np.arange(len(rows)), rows] = np.inf
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    return hits / exact.size


def _reference(x: np.ndarray, k: int, sample: int = 128):
    calls = []

    def reference():
        calls.append(1)
        return sampled_neighbours(x, k, sample=sample, seed=5)
    return reference, calls


def test_sampled_neighbours_are_the_exact_neighbours_of_the_sampled_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    rows, nbrs = sampled_neighbours(x, 12, sample=40, seed=3)
    assert rows.shape == (40,) and nbrs.shape == (40, 12)
    assert np.all(np.diff(rows) > 0)  # sorted, distinct
    assert not np.any(nbrs == rows[:, None])  # the row itself left out
    np.testing.assert_array_equal(nbrs, _brute(x, rows, 12))
    with pytest.raises(ValueError, match="k must lie"):
        sampled_neighbours(x, 3000)


def test_query_neighbours_keep_the_row_itself_unless_told(monkeypatch):
    monkeypatch.setattr(KNN_MODULE, "CHUNK_ROWS", 500)  # 2000 rows: four blocks
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    rows = np.array([3, 700, 1999])
    with_self = query_neighbours(x, rows, 6)
    np.testing.assert_array_equal(with_self[:, 0], rows)  # each row its own nearest
    np.testing.assert_array_equal(with_self[:, 1:], _brute(x, rows, 5))
    np.testing.assert_array_equal(query_neighbours(x, rows, 6, exclude_self=True),
                                  _brute(x, rows, 6))


def test_sampled_neighbours_read_the_features_in_chunks(monkeypatch):
    monkeypatch.setattr(KNN_MODULE, "CHUNK_ROWS", 700)  # 3000 rows: five blocks
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    rows, nbrs = sampled_neighbours(x, 20, sample=30, seed=0)
    np.testing.assert_array_equal(nbrs, _brute(x, rows, 20))


def test_measured_cells_search_more_where_the_default_misses_neighbours():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 16)).astype(np.float32)  # isotropic: neighbours spread
    exact = _brute(x, np.arange(0, 3000, 20), 20)
    reference, calls = _reference(x, 20)
    info: dict = {}
    _, idx, _ = ann.ivf_knn(x, 21, nlist=150, reference=reference, info=info)
    coverage = {int(c): v for c, v in info["knn_coverage"].items()}
    chosen = info["knn_nprobe"]
    assert calls == [1]
    # the default (32 of 150 cells) holds too few of the neighbours; every number tried
    # before the chosen one missed the target, the chosen one reaches it
    assert coverage[32] < ann.COVERAGE_TARGET and chosen > 32
    assert max(coverage) == chosen and coverage[chosen] >= ann.COVERAGE_TARGET
    assert all(v < ann.COVERAGE_TARGET for c, v in coverage.items() if c < chosen)
    _, idx32, _ = ann.ivf_knn(x, 21, nlist=150, nprobe=32)
    measured, default = _recall(idx[::20, 1:], exact), _recall(idx32[::20, 1:], exact)
    assert measured >= 0.95 and measured >= default + 0.05, (measured, default)


def test_measured_cells_keep_the_default_where_it_suffices():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((75, 16)).astype(np.float32) * 10
    x = (np.repeat(centres, 40, axis=0)
         + 0.1 * rng.standard_normal((3000, 16)).astype(np.float32))  # tight blobs of 40
    reference, calls = _reference(x, 20)
    info: dict = {}
    ann.ivf_knn(x, 21, nlist=150, reference=reference, info=info)
    assert calls == [1] and info["knn_nprobe"] == 32
    assert list(info["knn_coverage"]) == ["32"]
    assert info["knn_coverage"]["32"] >= ann.COVERAGE_TARGET


def test_no_measuring_where_the_pairs_bound_leaves_no_choice(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    # as at a million rows: the bound allows no more cells than the default
    monkeypatch.setattr(ann, "ADAPT_MAX_PAIRS", 3000 * 32 * 3000 // 150)
    reference, calls = _reference(x, 20)
    info: dict = {}
    d_ref, i_ref, _ = ann.ivf_knn(x, 21, nlist=150, nprobe=32)
    d, i, _ = ann.ivf_knn(x, 21, nlist=150, reference=reference, info=info)
    assert calls == [] and info == {"knn_nprobe": 32}
    np.testing.assert_array_equal(i, i_ref)  # the search of the default, unchanged
    # an explicit nprobe is never measured either
    ann.ivf_knn(x, 21, nlist=150, nprobe=16, reference=reference)
    assert calls == []


def test_knn_auto_measures_the_cells(monkeypatch):
    monkeypatch.setattr(KNN_MODULE, "AUTO_EXACT_MAX_ROWS", 100)  # approximate search
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    info: dict = {}
    _, idx = knn(x, 20, method="auto", nlist=150, reduce_dim=0, info=info)
    assert info["knn_method"] == "ivf" and info["knn_nprobe"] > 32
    assert info["knn_coverage"][str(info["knn_nprobe"])] >= ann.COVERAGE_TARGET
    _, exact = knn(x, 20)
    assert _recall(idx, exact) >= 0.95
    # ivf by name keeps the default
    info = {}
    knn(x, 20, method="ivf", nlist=150, reduce_dim=0, info=info)
    assert "knn_coverage" not in info
