"""``cluster.k1: auto``: the cosine silhouette from cluster sums, the choice on planted
identities of known size, the refusals, and tiny training runs (record, exact resume)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_samples

from robustreid.clustering import pseudo_labels
from robustreid.clustering.k1_auto import (
    K1_CANDIDATES,
    centroid_silhouette,
    check_k1_candidates,
    choose_k1,
)
from robustreid.clustering.labellers import ClusteringLabeller
from robustreid.config import load_config
from robustreid.errors import ConfigError
from tests.conftest import make_trainer, tiny_config
from tests.test_trainer import killed_at_epoch_2_then_resumed


def singletons(labels: np.ndarray) -> np.ndarray:
    """Outliers as clusters of their own, for the adjusted Rand index."""
    return np.where(labels < 0, -1 - np.arange(len(labels)), labels)


def identities(seed: int, ids: int = 30, modes: int = 3, per_mode: int = 8, dim: int = 64,
               mode_spread: float = 0.5, spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` identities of ``modes x per_mode`` unit vectors: each identity's images gather
    in ``modes`` nearby groups (e.g. its cameras) around a random centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    groups = np.repeat(centres, modes, 0) + mode_spread * rng.standard_normal(
        (ids * modes, dim)) / np.sqrt(dim)
    x = np.repeat(groups, per_mode, 0) + spread * rng.standard_normal(
        (ids * modes * per_mode, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(ids), modes * per_mode)


def dense_silhouette(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cosine silhouette by scikit-learn, outliers and singletons 0."""
    s = np.zeros(len(labels))
    member = labels >= 0
    s[member] = silhouette_samples(x[member], labels[member], metric="cosine")
    sizes = np.bincount(labels[member])
    s[member & (sizes[np.maximum(labels, 0)] < 2)] = 0.0
    return s


def test_centroid_silhouette_equals_the_dense_definition():
    x, _ = identities(0, ids=12, modes=1, per_mode=6, spread=0.8)
    labels = pseudo_labels(x, eps=0.6, min_samples=3, k1=8, k2=2)
    labels[[0, 7]] = -1                                    # outliers count 0
    labels[11] = labels.max() + 1                          # and so does a singleton
    assert (labels < 0).sum() >= 2 and labels.max() >= 2
    per_row = dense_silhouette(x, labels)
    assert centroid_silhouette(x, labels) == pytest.approx(per_row.mean(), abs=1e-5)
    # a sample of the rows: the mean over exactly those rows
    picked = np.sort(np.random.default_rng(3).choice(len(x), 20, replace=False))
    assert centroid_silhouette(x, labels, rows=20, seed=3) == pytest.approx(
        per_row[picked].mean(), abs=1e-5)
    # rows read through row_ids (the kNN's numbering): the same score
    perm = np.random.default_rng(1).permutation(len(x))
    assert centroid_silhouette(x, labels[perm], row_ids=perm) == pytest.approx(
        per_row.mean(), abs=1e-5)
    # float16 storage and a torch tensor read the same rows
    import torch
    assert centroid_silhouette(torch.from_numpy(x), labels) == pytest.approx(
        per_row.mean(), abs=1e-5)
    assert centroid_silhouette(x.astype(np.float16), labels) == pytest.approx(
        per_row.mean(), abs=2e-3)
    assert centroid_silhouette(x, np.zeros(len(x), dtype=np.int64)) == -1.0
    with pytest.raises(ValueError, match="rows"):
        centroid_silhouette(x[:-1], labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_recovers_identities_that_k1_10_splits(seed):
    # 24 images per identity in 3 nearby groups: with k1 = 10 an image's k-reciprocal set
    # stays in its group and DBSCAN splits every identity in three
    x, y = identities(seed)
    split = pseudo_labels(x, eps="auto", min_samples=4, k1=10, k2=3)
    assert adjusted_rand_score(y, singletons(split)) < 0.6
    labels, info = pseudo_labels(x, eps="auto", min_samples=4, k1="auto", k2=3,
                                 return_info=True)
    assert info["k1"] >= 20
    assert adjusted_rand_score(y, singletons(labels)) > 0.95
    assert info["k1_criterion"] == "cosine silhouette"
    assert set(info["k1_scores"]) == {str(k) for k in K1_CANDIDATES}
    assert 0 < info["eps"] < 1 and info["time_k1_auto"] >= 0
    # the chosen labels are what that k1 gives with eps auto
    again = pseudo_labels(x, eps="auto", min_samples=4, k1=info["k1"], k2=3)
    np.testing.assert_array_equal(labels, again)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_keeps_the_smallest_k1_for_small_separated_identities(seed):
    x, y = identities(seed, ids=60, modes=1, per_mode=6, spread=0.3)
    labels, info = pseudo_labels(x, eps="auto", min_samples=4, k1="auto", k2=3,
                                 return_info=True)
    assert info["k1"] == min(K1_CANDIDATES)
    assert adjusted_rand_score(y, singletons(labels)) > 0.99


def test_choose_k1_takes_the_smallest_within_the_tolerance():
    x, _ = identities(0, ids=10, modes=1, per_mode=5)
    truth = np.repeat(np.arange(10), 5)
    worse = truth.copy()
    worse[::5] = -1                     # a fifth of the rows outliers: a lower silhouette
    outcomes = {10: worse, 20: truth, 30: truth}
    choice = choose_k1(x, [30, 20, 10], lambda k: (outcomes[k], {"k": k}))
    assert choice.k1 == 20 and choice.info == {"k": 20}
    np.testing.assert_array_equal(choice.labels, truth)
    assert choice.scores[10] < choice.scores[20] == choice.scores[30]
    # a tolerance wider than the gap keeps the smallest
    gap = (choice.scores[20] - choice.scores[10]) / choice.scores[20]
    assert choose_k1(x, [10, 20], lambda k: (outcomes[k], {}),
                     tolerance=min(0.99, 1.5 * gap)).k1 == 10
    assert choice.record() == {"k1": 20, "k1_criterion": "cosine silhouette",
                               "k1_scores": {str(k): round(s, 6)
                                             for k, s in choice.scores.items()}}


def test_k1_auto_refusals():
    x, _ = identities(0, ids=10, modes=1, per_mode=5)
    with pytest.raises(ValueError, match="k1 must be a positive integer or 'auto'"):
        pseudo_labels(x, k1="big")
    with pytest.raises(ValueError, match="method='dbscan'"):
        pseudo_labels(x, k1="auto", method="infomap")
    with pytest.raises(ValueError, match="intra_camera_k1"):
        pseudo_labels(x, k1="auto", camids=np.arange(50) % 2, intra_camera_k1=2)
    for bad in ([], [0, 10], [10.5], [True]):
        with pytest.raises(ValueError, match="k1 candidates"):
            pseudo_labels(x, k1="auto", k1_candidates=bad)
    with pytest.raises(ValueError, match="k1 candidates"):
        check_k1_candidates([])
    with pytest.raises(ValueError, match="k1 must be a positive integer or 'auto'"):
        ClusteringLabeller(0.6, 4, "large", 3)


def test_config_k1_auto_and_its_rules():
    cfg = load_config("configs/synthperson.yaml", ["cluster.k1=auto", "cluster.eps=auto"])
    assert cfg.cluster.k1 == "auto" and cfg.cluster.k2 <= min(K1_CANDIDATES)
    assert load_config("configs/synthperson.yaml", ["cluster.k1=20"]).cluster.k1 == 20
    with pytest.raises(ConfigError, match="cluster.k1"):
        load_config("configs/synthperson.yaml", ["cluster.k1=many"])
    with pytest.raises(ConfigError, match="cluster.k1=auto compares DBSCAN"):
        load_config("configs/synthperson.yaml", ["cluster.k1=auto", "cluster.method=infomap"])
    with pytest.raises(ConfigError, match="cluster.intra_camera_k1"):
        load_config("configs/synthperson.yaml", ["cluster.k1=auto",
                                                 "cluster.intra_camera_k1=2"])
    with pytest.raises(ConfigError, match=f"cluster.k2=11 must be <= {min(K1_CANDIDATES)}"):
        load_config("configs/synthperson.yaml", ["cluster.k1=auto", "cluster.k2=11"])


# ----------------------------------------------------------------- tiny training runs
def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("single_thread")
def test_tiny_run_with_k1_auto_records_the_choice_and_resumes_exactly(tiny_data, tmp_path,
                                                                       caplog):
    data = dataclasses.replace(tiny_data, query=[], gallery=[])
    extra = ("train.epochs=3", "train.select_by=label_free", "cluster.k1=auto")
    with caplog.at_level("INFO", logger="robustreid"):
        full = make_trainer(tiny_config(tmp_path / "full", *extra), data)
        full.fit()
    recs = records(tmp_path / "full")
    n = len(data.train)
    for rec in recs:
        assert rec["k1_criterion"] == "cosine silhouette"
        # candidates above N are clipped to N (the tiny set has fewer images than 30)
        assert set(rec["k1_scores"]) == {str(min(k, n)) for k in K1_CANDIDATES}
        assert str(rec["k1"]) in rec["k1_scores"] and "eps" not in rec  # eps fixed here
        assert rec["time_k1_auto"] < rec["time_cluster"]
    assert f"k1 auto: chose {recs[0]['k1']}" in caplog.text
    resumed = killed_at_epoch_2_then_resumed(tiny_config(tmp_path / "killed", *extra), data)

    def strip(history):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]

    assert strip(resumed.state.history) == strip(full.state.history)
    for key, value in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[key].numpy(), value.numpy())


def test_auto_on_the_approximate_path_reads_the_renumbered_rows():
    # the approximate search renumbers the rows by kNN locality: the silhouette must read
    # each label's own feature row (row_ids), and the labels come back in the input's order
    x, y = identities(0)
    options = {"nlist": 8, "nprobe": 8, "reduce_dim": 0}
    labels, info = pseudo_labels(x, eps="auto", min_samples=4, k1="auto", k2=3,
                                 knn_method="ivf", knn_options=options, return_info=True)
    exact, exact_info = pseudo_labels(x, eps="auto", min_samples=4, k1="auto", k2=3,
                                      return_info=True)
    assert info["k1"] == exact_info["k1"] >= 20  # every cell probed: the exact neighbours
    assert info["k1_scores"] == pytest.approx(exact_info["k1_scores"], abs=1e-4)
    assert adjusted_rand_score(singletons(exact), singletons(labels)) > 0.99
    assert adjusted_rand_score(y, singletons(labels)) > 0.95
