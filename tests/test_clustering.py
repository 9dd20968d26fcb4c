"""Tests for robustreid.clustering (kNN, sparse k-reciprocal Jaccard distance, pseudo labels)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import adjusted_rand_score

from robustreid.clustering import (
    faiss_available,
    jaccard_distance,
    knn,
    pseudo_labels,
    relabel_consecutive,
)
from robustreid.clustering.labellers import ClusteringLabeller
from robustreid.errors import UserError

FIXTURE = Path(__file__).parent / "data" / "pseudo_labels.npz"


def _clustered(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    lab = rng.integers(0, n_clusters, n)
    x = centers[lab] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fixture():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def fixture_dist(fixture):
    return jaccard_distance(fixture["features"], 30, 6)


def _dense(m: sp.csr_matrix) -> np.ndarray:
    n = m.shape[0]
    out = np.ones((n, n), dtype=np.float64)
    rows = np.repeat(np.arange(n), np.diff(m.indptr))
    out[rows, m.indices] = m.data
    return out


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a == -1, b == -1) and adjusted_rand_score(a, b) == 1.0)


def test_jaccard_matches_fixture_every_pair(fixture, fixture_dist):
    ref = fixture["jaccard"]
    dense = _dense(fixture_dist)
    assert np.abs(dense - ref).max() <= 1e-4
    # stored exactly where the reference is < 1
    assert fixture_dist.nnz == int((ref < 1).sum())


def test_jaccard_structure(fixture_dist):
    m = fixture_dist
    n = m.shape[0]
    assert isinstance(m, sp.csr_matrix) and m.shape == (n, n)
    diag_stored = np.zeros(n, dtype=bool)
    rows = np.repeat(np.arange(n), np.diff(m.indptr))
    diag_stored[rows[rows == m.indices]] = True
    assert diag_stored.all()
    assert np.all(m.diagonal() == 0)
    assert (m.data >= 0).all() and (m.data < 1).all()
    assert abs(m - m.T).max() == 0  # the min-sum is symmetric in (i, j); so is the fixture
    # size: a row of the query-expanded V has at most k2 * |R*| <= k2 * k1 * (k_half + 1)
    # = 6 * 30 * 17 entries; stored pairs per row stay below that on real features (it is not
    # a hard bound for the pairs: hub columns can be long, e.g. on random 2048-d vectors)
    assert m.nnz <= n * 6 * 30 * 17
    assert m.nnz == 503_989


@pytest.mark.parametrize("eps", ["0.6", "0.7"])
def test_pseudo_labels_match_fixture(fixture, eps):
    labels = pseudo_labels(fixture["features"], eps=float(eps), min_samples=4)
    assert labels.dtype == np.int64
    assert _same_partition(labels, fixture[f"labels_eps{eps}"])
    assert set(np.unique(labels[labels >= 0])) == set(range(labels.max() + 1))


def test_pseudo_labels_eps05_exact_ties(fixture, fixture_dist):
    """At eps=0.5 the reference differs only through pairs whose distance is exactly 0.5 in
    exact arithmetic (m = 2/3) and which its float32 run rounded to 0.5000001."""
    ref = fixture["jaccard"]
    dense = _dense(fixture_dist)
    flips = (ref <= 0.5) != (dense <= 0.5)
    assert np.all(np.abs(ref[flips] - 0.5) <= 2e-7)
    labels = pseudo_labels(fixture["features"], eps=0.5, min_samples=4)
    ref_labels = fixture["labels_eps0.5"]
    assert adjusted_rand_score(labels, ref_labels) > 0.998
    # emulating the tie rounding of the reference reproduces its partition
    tied = np.asarray(fixture_dist.todense() == 0.5) & (np.abs(ref - 0.5) <= 2e-7) & (ref > 0.5)
    patched = fixture_dist.copy().tolil()
    patched[tied] = 0.5000001
    from robustreid.clustering import dbscan_sparse

    assert _same_partition(dbscan_sparse(patched.tocsr(), 0.5, 4), ref_labels)


@pytest.mark.parametrize("seed", range(6))
def test_dbscan_sparse_gives_scikit_learns_partition(seed):
    """Random symmetric sparse graphs with chains, shared border samples and stored zeros:
    the linear DBSCAN equals scikit-learn's label for label (after renaming)."""
    from sklearn.cluster import DBSCAN

    from robustreid.clustering import dbscan_sparse, relabel_consecutive

    rng = np.random.default_rng(seed)
    n = 400
    pairs = rng.integers(0, n, size=(int(rng.integers(300, 1500)), 2))
    near = np.sort(rng.integers(0, n, size=(600, 1)) + rng.integers(1, 4, size=(600, 2)), 1)
    pairs = np.concatenate([pairs, np.clip(near, 0, n - 1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    values = rng.choice([0.0, 0.2, 0.45, 0.5, 0.55, 0.9], size=len(pairs))
    upper = sp.coo_matrix((values, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    dist = (upper + upper.T).tocsr()
    dist.data = np.minimum(dist.data, 0.9)  # pairs given twice were summed
    dist.setdiag(0.0)
    for eps, min_samples in ((0.5, 3), (0.5, 4), (0.2, 2), (0.55, 6)):
        ours = dbscan_sparse(dist, eps, min_samples)
        theirs = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
            dist.sorted_indices())
        np.testing.assert_array_equal(ours, relabel_consecutive(theirs))
        assert (ours >= 0).any() and (ours < 0).any()  # clusters and outliers both occur


def test_input_types_agree(fixture):
    x = fixture["features"][:600]
    base = jaccard_distance(x, 20, 6)
    for variant in (x.astype(np.float64), torch.from_numpy(x), torch.from_numpy(x).double()):
        other = jaccard_distance(variant, 20, 6)
        assert other.nnz == base.nnz
        assert np.abs(_dense(other) - _dense(base)).max() <= 1e-5


def test_knn_self_first_and_sorted():
    x = _clustered(500, 32, 20, 0.5, 1)
    dist, idx = knn(x, 10)
    assert dist.shape == idx.shape == (500, 10) and idx.dtype == np.int64
    assert np.array_equal(idx[:, 0], np.arange(500))
    assert (np.diff(dist, axis=1) >= -1e-6).all()
    ref = ((x[:, None, :] - x[idx]) ** 2).sum(-1)
    assert np.abs(ref - dist).max() < 1e-4


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_torch_knn_equals_faiss_knn():
    x = np.random.default_rng(0).standard_normal((700, 24)).astype(np.float32)
    d_f, i_f = knn(x, 15, backend="faiss")
    d_t, i_t = knn(torch.from_numpy(x), 15, backend="torch", chunk_size=128)
    assert np.array_equal(i_f, i_t)
    assert np.abs(d_f - d_t).max() < 1e-3


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_approx_recall_on_clustered_data():
    x = _clustered(6000, 32, 150, 0.6, 2)
    _, exact = knn(x, 30)
    for index in ("hnsw", "ivf"):  # faiss' indexes on the features as they are
        _, approx = knn(x, 30, method=index, backend="faiss", reduce_dim=0)
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(exact, approx, strict=True))
        assert hits / exact.size > 0.9, index


def test_no_dense_n_by_n_allocation():
    n = 20_000
    x = _clustered(n, 64, 1000, 0.6, 3)
    tracemalloc.start()
    try:
        dist = jaccard_distance(x, 30, 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one dense float64 N x N would be 3.2 GB; peak memory is proportional to the output
    assert peak < n * n * 8 / 4
    assert peak < 64 * dist.nnz + 100 * 2**20
    assert dist.nnz <= n * 6 * 30 * 17


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        jaccard_distance(np.zeros(10, dtype=np.float32))
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pseudo_labels(bad)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=0)
    with pytest.raises(ValueError, match="eps"):
        pseudo_labels(x, eps=1.0)
    with pytest.raises(ValueError, match="method"):
        knn(x, 3, method="kdtree")
    with pytest.raises(ValueError, match=r"k must be .*N=50"):
        knn(x, 51)
    with pytest.warns(UserWarning, match=r"k1=30 exceeds the number of samples N=12"):
        m = jaccard_distance(x[:12], k1=30, k2=6)
    assert m.shape == (12, 12)


def test_all_identical_features_one_cluster():
    x = np.tile(np.eye(1, 16, dtype=np.float32), (80, 1))
    labels = pseudo_labels(x, eps=0.6, min_samples=4, k1=20)
    assert (labels == 0).all()


def test_tiny_clusters_are_outliers():
    rng = np.random.default_rng(5)
    centers = np.eye(10, 64, dtype=np.float32)
    x = np.repeat(centers, 3, axis=0) + 0.01 * rng.standard_normal((30, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert (pseudo_labels(x, eps=0.6, min_samples=3, k1=3, k2=2) >= 0).all()
    assert (pseudo_labels(x, eps=0.6, min_samples=5, k1=3, k2=2) == -1).all()


def test_relabel_consecutive():
    out = relabel_consecutive(np.array([5, -1, 2, 5, 2, 9]))
    assert out.tolist() == [0, -1, 1, 0, 1, 2]


def test_approx_is_refused_with_what_replaces_it():
    x = _clustered(60, 8, 5, 0.3, 0)
    with pytest.raises(UserError, match=r"method='approx' is no longer accepted.*'hnsw'.*'ivf'"):
        knn(x, 5, method="approx")
    with pytest.raises(UserError, match=r"knn_method='approx' .*'hnsw'.*'ivf'"):
        pseudo_labels(x, knn_method="approx")
    with pytest.raises(UserError, match=r"knn_method='approx'"):
        ClusteringLabeller(0.6, 4, 20, 6, knn_method="approx")
