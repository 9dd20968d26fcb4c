"""The approximate pseudo-labelling reads its input in row blocks (no full copy, measured with
tracemalloc, which sees numpy's allocations), logs its memory, and ``knn_method="auto"``
adapts the search to the spectrum of the features (issue 26)."""

from __future__ import annotations

import logging
import sys
import tracemalloc

import numpy as np
import pytest

from robustreid.clustering import knn, pseudo_labels
from robustreid.clustering import progress as progress_module
from robustreid.clustering.synthetic import flat_reid_features, reid_like_features

KNN_MODULE = sys.modules["robustreid.clustering.knn"]
N, D = 40_000, 512
PROJECTED, CANDIDATES, K = 256, 100, 60  # knn defaults at D=512; K = 2 k1 of pseudo_labels


@pytest.fixture(scope="module")
def features():
    return reid_like_features(N, D, seed=1).features  # float32, 80 MB


def _phase_peaks(monkeypatch, run):
    """Tracemalloc peaks (bytes) of the kNN part (projection, IVF search, re-ranking) and of
    the clustering part (from the renumbering on) of ``run()``, split at the steps' starts
    and ends."""
    peaks = {"knn": 0, "clustering": 0}
    phase = ["knn"]
    enter, exit_ = progress_module.Step.__enter__, progress_module.Step.__exit__

    def mark() -> None:
        peaks[phase[0]] = max(peaks[phase[0]], tracemalloc.get_traced_memory()[1])
        tracemalloc.reset_peak()

    def on_enter(step):
        mark()
        if step.name.startswith("renumbering"):
            phase[0] = "clustering"
        return enter(step)

    def on_exit(step, *args):
        mark()
        return exit_(step, *args)

    monkeypatch.setattr(progress_module.Step, "__enter__", on_enter)
    monkeypatch.setattr(progress_module.Step, "__exit__", on_exit)
    tracemalloc.start()
    try:
        out = run()
        mark()
    finally:
        tracemalloc.stop()
    return peaks, out


def _check_no_copy(peaks, float32_copy):
    # what the kNN part holds by design: the projected rows (float32), the candidates of
    # the IVF search (int64 + float32) and the kNN it returns (int64 + float32)
    knn_structures = N * (4 * PROJECTED + 12 * CANDIDATES + 12 * K)
    # the Jaccard's sparse structures, O(N k1 k2) (measured: about 45 bytes per kNN entry)
    clustering_structures = knn_structures + N * K * 48
    # a float32 copy of the input during either part would cross these bounds
    assert peaks["knn"] < knn_structures + 0.5 * float32_copy, peaks
    assert peaks["clustering"] < clustering_structures + 0.5 * float32_copy, peaks
    # the bounds are not loose: the measured peaks are of their order
    assert peaks["knn"] > 0.5 * knn_structures


def test_ivf_pipeline_makes_no_copy_of_float32_input(features, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="robustreid.clustering"):
        peaks, (labels, info) = _phase_peaks(
            monkeypatch, lambda: pseudo_labels(features, knn_method="ivf", return_info=True))
    _check_no_copy(peaks, features.nbytes)
    assert labels.shape == (N,) and labels.max() > 100
    # the call's memory, from the kernel's counters, is returned and logged
    if sys.platform.startswith("linux"):
        assert info["memory_peak_rss_mb"] >= info["memory_rss_start_mb"] > 0
        assert info["memory_call_peak_mb"] == pytest.approx(
            info["memory_peak_rss_mb"] - info["memory_rss_start_mb"])
        assert any("pseudo-labels memory: peak resident" in r.getMessage()
                   for r in caplog.records)
    assert info["knn_method"] == "ivf" and info["knn_dim"] == PROJECTED


def test_ivf_pipeline_makes_no_copy_of_float16_memmap(features, monkeypatch, tmp_path):
    path = tmp_path / "f16.npy"
    np.save(path, features.astype(np.float16))
    x16 = np.load(path, mmap_mode="r")
    peaks, labels = _phase_peaks(monkeypatch, lambda: pseudo_labels(x16, knn_method="ivf"))
    _check_no_copy(peaks, N * D * 4)  # the cast to float32 is the copy to avoid
    assert labels.max() > 100


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    return hits / exact.size


def test_auto_adapts_the_projection_to_the_spectrum(monkeypatch, caplog):
    monkeypatch.setattr(KNN_MODULE, "AUTO_EXACT_MAX_ROWS", 1000)  # 10,000 rows: approximate
    n, dim, reduce_dim = 10_000, 256, 64  # the 1/8 to 1/4 of D the default projection keeps
    chosen = {}
    for name, synth in (("decaying", reid_like_features(n, dim, seed=1)),
                        ("flat", flat_reid_features(n, dim, seed=1))):
        x = synth.features
        _, exact = knn(x, 30)
        info: dict = {}
        with caplog.at_level(logging.INFO, logger="robustreid.clustering"):
            _, idx = knn(x, 30, method="auto", reduce_dim=reduce_dim, info=info)
        assert info["knn_method"] == "ivf"
        chosen[name] = (info["knn_dim"], info["knn_kept_variance"])
        assert _recall(idx, exact) >= 0.95, (name, info)
        # method="ivf" keeps the projection as given
        info_ivf: dict = {}
        knn(x[:3000], 5, method="ivf", reduce_dim=reduce_dim, info=info_ivf)
        assert info_ivf["knn_dim"] == reduce_dim
    # the decaying spectrum keeps most of its variance in 64 dims: projection kept; the
    # flat one keeps about 64 / 256 of it: searched without projection
    assert chosen["decaying"][0] == reduce_dim and chosen["decaying"][1] > 0.75
    assert chosen["flat"][0] == dim and chosen["flat"][1] < 0.6
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "projection kept" in text and "searching without projection" in text


def test_flat_spectrum_dim_doubles_until_the_variance_is_kept():
    from robustreid.clustering.ann import Projection

    spectrum = np.array([4.0, 3.0, 1.0, 1.0, 0.5, 0.5] + [0.0] * 10)  # total 10

    def proj(d):
        return Projection(np.zeros(16, np.float32), np.zeros((16, d), np.float32), "pca",
                          None, spectrum)

    assert KNN_MODULE.flat_spectrum_dim(proj(4), 16) == 4  # keeps 90 %
    assert KNN_MODULE.flat_spectrum_dim(proj(2), 16) == 4  # 70 %: doubled to 4 (90 %)
    assert KNN_MODULE.flat_spectrum_dim(proj(1), 16) == 4  # 40 %: 2 (70 %), then 4
    flat = Projection(np.zeros(16, np.float32), np.zeros((16, 2), np.float32), "pca", None,
                      np.ones(16))
    assert KNN_MODULE.flat_spectrum_dim(flat, 16) == 16  # 90 % only at 16: no projection
    random = Projection(np.zeros(16, np.float32), np.zeros((16, 2), np.float32), "random")
    assert KNN_MODULE.flat_spectrum_dim(random, 16) == 2
