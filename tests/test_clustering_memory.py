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


def test_auto_takes_the_balanced_projection_on_a_flat_spectrum(monkeypatch, caplog):
    monkeypatch.setattr(KNN_MODULE, "AUTO_EXACT_MAX_ROWS", 1000)  # 12,000 rows: approximate
    n, dim, reduce_dim = 12_000, 256, 32  # the 1/8 of D the default projection keeps
    chosen, recall = {}, {}
    for name, synth in (("decaying", reid_like_features(n, dim, seed=1)),
                        ("flat", flat_reid_features(n, dim, seed=1))):
        x = synth.features
        _, exact = knn(x, 30)
        info: dict = {}
        with caplog.at_level(logging.INFO, logger="robustreid.clustering"):
            _, idx = knn(x, 30, method="auto", reduce_dim=reduce_dim, info=info)
        assert info["knn_method"] == "ivf" and info["knn_dim"] == reduce_dim
        chosen[name] = (info["knn_projection"], info["knn_kept_variance"])
        recall[name] = _recall(idx, exact)
        if name == "flat":  # balanced against the PCA it replaced, 4 of 23 cells searched
            for kind in ("balanced", "pca"):
                _, idx4 = knn(x, 30, method="ivf", reduce_dim=reduce_dim, nprobe=4,
                              projection=kind)
                recall[f"flat {kind} 4 cells"] = _recall(idx4, exact)
    # the decaying spectrum keeps most of its variance in 32 dims: PCA kept; the flat one
    # keeps little of it: the balanced projection, in as many dimensions
    assert chosen["decaying"][0] == "pca" and chosen["decaying"][1] > 0.5
    assert chosen["flat"][0] == "balanced" and chosen["flat"][1] < 0.5
    assert recall["decaying"] >= 0.95, recall
    # on the flat spectrum the PCA cells follow the cameras and lose identity neighbours
    # (the balanced search, in the same cells budget, finds more of them)
    assert recall["flat balanced 4 cells"] >= recall["flat pca 4 cells"] + 0.05, recall
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PCA kept" in text and "balanced projection to 32 dims instead" in text


def test_auto_projection_switches_only_a_pca_on_a_flat_spectrum():
    from robustreid.clustering.ann import Projection

    def proj(kind, spectrum, d=2):
        return Projection(np.zeros(16, np.float32), np.zeros((16, d), np.float32), kind,
                          None, None if spectrum is None else np.asarray(spectrum, float))

    steep = [8.0, 1.0, 0.5, 0.5] + [0.0] * 12  # 2 of 16 axes keep 90 %
    flat = np.ones(16)  # 2 of 16 axes keep 12.5 %
    assert KNN_MODULE.auto_projection(proj("pca", steep)) == "pca"
    assert KNN_MODULE.auto_projection(proj("pca", flat)) == "balanced"
    assert KNN_MODULE.auto_projection(proj("pca", flat, d=8)) == "pca"  # keeps 50 %
    # projections asked for by name stay
    assert KNN_MODULE.auto_projection(proj("random", None)) == "random"
    assert KNN_MODULE.auto_projection(proj("balanced", steep)) == "balanced"


def test_balanced_projection_caps_the_strong_axes_at_the_median_variance():
    from robustreid.clustering.ann import fit_projection, project

    rng = np.random.default_rng(0)
    d_in, n = 32, 20_000
    scales = np.ones(d_in)
    scales[:3] = 10.0  # three strong shared directions: variance 100 against 1
    basis, _ = np.linalg.qr(rng.standard_normal((d_in, d_in)))
    x = ((rng.standard_normal((n, d_in)) * scales) @ basis.T).astype(np.float32)
    spread = {}
    for kind in ("random", "balanced"):
        proj = fit_projection(x, 16, kind=kind, seed=3)
        y = project(x, proj)
        spread[kind] = float(y.var(0).sum())
        # share of the projected variance along the strong directions
        strong = (x - x.mean(0)) @ basis[:, :3]
        fit, *_ = np.linalg.lstsq(strong, y - y.mean(0), rcond=None)
        spread[kind + " strong"] = float((strong @ fit).var(0).sum()) / spread[kind]
    # a random projection keeps the total variance (3 x 100 + 29 x 1) in expectation; the
    # balanced one caps each axis at the median (1): about 32
    assert spread["random"] == pytest.approx(329, rel=0.35)
    assert spread["balanced"] == pytest.approx(32, rel=0.35)
    assert spread["random strong"] > 0.8 and spread["balanced strong"] < 0.2
    assert fit_projection(x, 16, kind="balanced", seed=3).kind == "balanced"
