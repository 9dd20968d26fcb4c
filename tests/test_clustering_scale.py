"""Tests of the large-N pseudo-labelling: approximate kNN backends, chunked / memory-mapped
inputs, progress logging, InfoMap, the synthetic generator and the config wiring."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from robustreid.clustering import (
    AUTO_EXACT_MAX_ROWS,
    choose_method,
    faiss_available,
    fit_projection,
    infomap_available,
    infomap_labels,
    knn,
    project,
    pseudo_labels,
)
from robustreid.clustering import graph_clustering as graph_module
from robustreid.clustering import progress as progress_module
from robustreid.clustering.arrays import validate_features
from robustreid.clustering.synthetic import reid_like_features
from robustreid.config import ConfigError, load_config
from robustreid.errors import UserError

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
needs_infomap = pytest.mark.skipif(not infomap_available(), reason="infomap not installed")


@pytest.fixture(scope="module")
def planted():
    """2,500 re-ID-like unit features of dimension 96 (about 140 identities)."""
    return reid_like_features(2500, 96, num_groups=8, seed=3)


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    return hits / exact.size


def _true_d2(x: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x[rows][:, None, :] - x[idx]) ** 2).sum(-1)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"method": "ivf"}, id="ivf-torch"),
        pytest.param({"method": "ivf", "projection": "random", "reduce_dim": 64}, id="ivf-rp"),
        pytest.param({"method": "ivf", "backend": "faiss"}, id="ivf-faiss",
                     marks=needs_faiss),
        pytest.param({"method": "hnsw"}, id="hnsw", marks=needs_faiss),
    ],
)
def test_approximate_knn_finds_the_exact_neighbours(planted, options):
    x = planted.features
    _, exact = knn(x, 30)
    dist, idx = knn(x, 30, reduce_dim=options.pop("reduce_dim", 48), nlist=12, nprobe=8,
                    **options)
    assert dist.shape == idx.shape == (2500, 30) and idx.dtype == np.int64
    assert np.array_equal(idx[:, 0], np.arange(2500))  # the row itself first
    assert (np.diff(dist, axis=1) >= 0).all()
    # re-ranked in the full dimension: the returned distances are the true ones
    assert np.abs(_true_d2(x, np.arange(500), idx[:500]) - dist[:500]).max() < 1e-4
    assert _recall(idx, exact) > 0.95


def test_ivf_without_projection_searches_exactly_with_all_cells(planted):
    x = planted.features
    d_exact, i_exact = knn(x, 10)
    dist, idx = knn(x, 10, method="ivf", reduce_dim=0, nlist=9, nprobe=9)
    # the same neighbours up to float rounding of near ties: the same distances
    assert np.abs(dist - d_exact).max() < 1e-5
    assert _recall(idx, i_exact) > 0.9999


IVF_SMALL = {"reduce_dim": 48, "nlist": 12, "nprobe": 8}


def test_float16_memmap_input_and_agreement_with_exact(planted, tmp_path):
    path = tmp_path / "features.npy"
    x16 = planted.features.astype(np.float16)
    np.save(path, x16)
    exact = pseudo_labels(planted.features)  # float32, exact kNN
    assert np.array_equal(pseudo_labels(str(path)), pseudo_labels(x16))
    from_file = pseudo_labels(str(path), knn_method="ivf", knn_options=IVF_SMALL)
    in_memory = pseudo_labels(x16, knn_method="ivf", knn_options=IVF_SMALL)
    assert np.array_equal(from_file, in_memory)
    # float16 storage and the approximate search: labels of the exact float32 pipeline
    assert adjusted_rand_score(exact, from_file) > 0.98
    assert adjusted_rand_score(planted.identities, from_file) > 0.75


def test_auto_choice():
    assert choose_method(AUTO_EXACT_MAX_ROWS, 2048) == "exact"
    assert choose_method(AUTO_EXACT_MAX_ROWS + 1, 2048) == "ivf"
    assert choose_method(4 * AUTO_EXACT_MAX_ROWS, 128) == "exact"  # same N^2 D budget
    assert choose_method(1_000_000, 2048, "cuda") == "ivf"
    assert choose_method(400_000, 2048, "cuda") == "exact"
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    assert np.array_equal(knn(x, 5, method="auto")[1], knn(x, 5)[1])


def test_projection_pca_recovers_a_low_rank_subspace():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((64, 5)))[0]
    x = (rng.standard_normal((2000, 5)) * [5, 4, 3, 2, 1]) @ basis.T + 3.0
    proj = fit_projection(x.astype(np.float32), 5, sample=1500)
    assert proj.explained > 0.999
    y = project(x.astype(np.float32), proj)
    # distances are preserved (the data lie in the 5-d subspace)
    d_x = ((x[:50, None] - x[None, :50]) ** 2).sum(-1)
    d_y = ((y[:50, None] - y[None, :50]) ** 2).sum(-1)
    assert np.abs(d_x - d_y).max() < 1e-2 * d_x.max()


def test_validate_features_finds_nan_in_a_memmap(tmp_path):
    path = tmp_path / "f.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(70_000, 4))
    x[:] = 1.0
    x[65_000, 2] = np.nan
    x.flush()
    with pytest.raises(ValueError, match="NaN"):
        validate_features(np.load(path, mmap_mode="r"))
    with pytest.raises(UserError, match=r"\.npy"):
        knn(str(tmp_path / "missing.npy"), 3)


def test_progress_and_timing_are_logged(planted, caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "LONG_INPUT", 1000)  # 2,500 rows count as long
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)  # progress from the start
    with caplog.at_level(logging.INFO, logger="robustreid.clustering"):
        pseudo_labels(planted.features, knn_method="ivf", knn_options=IVF_SMALL)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for step in ("pca projection", "k-means", "IVF search", "exact re-ranking",
                 "Jaccard: min-sum", "DBSCAN", "pseudo-labels"):
        assert f"{step}" in text, step
    assert "done in" in text and "%)" in text  # timings and progress percentages
    caplog.clear()
    monkeypatch.setattr(progress_module, "LONG_INPUT", 10**9)  # short input: quiet at INFO
    with caplog.at_level(logging.INFO, logger="robustreid.clustering"):
        pseudo_labels(planted.features[:500])
    assert not caplog.records


def _blobs(sizes: list[int], dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.standard_normal((dim, len(sizes))))[0].T
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + 0.08 * rng.standard_normal((len(truth), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth


@needs_infomap
def test_infomap_recovers_planted_clusters():
    x, truth = _blobs([40, 25, 60, 12, 33, 50], 32, 0)
    dist, idx = knn(x, 15)
    labels = infomap_labels(dist, idx, min_similarity=0.5, min_size=2)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert (labels >= 0).all() and labels.max() == 5
    # a point far from everything has no link above the threshold: an outlier
    lone = np.eye(1, 32, 31, dtype=np.float32)
    x2 = np.vstack([x, lone])
    dist, idx = knn(x2, 15)
    labels2 = infomap_labels(dist, idx, min_similarity=0.5, min_size=2)
    assert labels2[-1] == -1 and adjusted_rand_score(truth, labels2[:-1]) == 1.0
    # clusters smaller than min_size become outliers
    labels3 = infomap_labels(dist, idx, min_similarity=0.5, min_size=13)
    assert (labels3[:-1][truth == 3] == -1).all() and (labels3[:-1][truth != 3] >= 0).all()
    # through pseudo_labels, with the same seed the same labels
    a = pseudo_labels(x, method="infomap", k1=15, k2=6, seed=4)
    assert np.array_equal(a, pseudo_labels(x, method="infomap", k1=15, k2=6, seed=4))
    assert adjusted_rand_score(truth, a) == 1.0


def test_infomap_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(graph_module, "_infomap_module", lambda: None)
    with pytest.raises(UserError, match="pip install"):
        infomap_labels(np.zeros((3, 2), np.float32), np.zeros((3, 2), np.int64))


def test_synthetic_generator_chunked_file_equals_memory(tmp_path):
    a = reid_like_features(5000, 32, chunk=700, seed=2)
    b = reid_like_features(5000, 32, chunk=700, seed=2, out=tmp_path / "f.npy",
                           dtype=np.float16)
    assert np.allclose(a.features, np.load(tmp_path / "f.npy"), atol=1e-3)
    assert np.array_equal(a.identities, b.identities)
    assert np.allclose(np.linalg.norm(a.features, axis=1), 1.0, atol=1e-5)
    sizes = np.bincount(a.identities)
    assert sizes.max() > 3 * np.median(sizes)  # uneven identity sizes
    assert set(np.unique(a.cameras)) == set(range(8))


def test_config_cluster_keys_and_trainer_wiring():
    from robustreid.build import build_labeller

    cfg = load_config(None, ["cluster.knn=ivf", "cluster.method=infomap",
                             "cluster.feature_dtype=float16", "cluster.knn_dim=64"])

    class _Data:
        labelled, name, train = True, "toy", []

    labeller = build_labeller(cfg, _Data(), torch.device("cpu"))
    assert labeller.knn_method == "ivf"
    # approx, the older name of ivf in configurations (and of hnsw in knn()), is refused
    with pytest.raises(ConfigError, match=r"cluster\.knn: .*'approx'.*use 'ivf'.*'hnsw'"):
        load_config(None, ["cluster.knn=approx"])
    assert labeller.method == "infomap" and labeller.feature_dtype == "float16"
    assert labeller.knn_options["reduce_dim"] == 64
    with pytest.raises(ConfigError, match=r"cluster\.method.*'dbscan'"):
        load_config(None, ["cluster.method=dbscann"])
    with pytest.raises(ConfigError, match=r"cluster\.knn_dim"):
        load_config(None, ["cluster.knn_dim=-1"])
    if infomap_available():
        x, truth = _blobs([30, 20, 40], 16, 1)
        labels = labeller(torch.from_numpy(x), 1).labels
        assert adjusted_rand_score(truth, labels) == 1.0
