"""``cluster.eps: auto`` and the label-free selection signal, on planted data of known scale,
in the configuration and in tiny training runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from robustreid.checkpoint import load_checkpoint
from robustreid.clustering import pseudo_labels
from robustreid.clustering.eps_auto import EPS_CANDIDATES, choose_eps, sparse_silhouette
from robustreid.clustering.label_free import (
    cross_camera_fraction,
    label_free_signals,
    partition_agreement,
)
from robustreid.clustering.pseudo_labels import dbscan_sparse
from robustreid.config import load_config
from robustreid.errors import ConfigError
from robustreid.viz.curves import plot_training_curves, training_curves
from tests.conftest import make_trainer, tiny_config
from tests.test_trainer import killed_at_epoch_2_then_resumed


def singletons(labels: np.ndarray) -> np.ndarray:
    """Outliers as clusters of their own, for the adjusted Rand index."""
    return np.where(labels < 0, -1 - np.arange(len(labels)), labels)


def blobs_on_sphere(seed: int, ids: int = 40, per_id: int = 6, dim: int = 32,
                    spread: float = 0.2, noise: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` well separated identities of ``per_id`` unit vectors around random centres,
    plus ``noise`` uniform unit vectors (each its own id, negative)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per_id, 0) + spread * rng.standard_normal((ids * per_id, dim)) \
        / np.sqrt(dim)
    x = np.concatenate([x, rng.standard_normal((noise, dim))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.concatenate([np.repeat(np.arange(ids), per_id), -1 - np.arange(noise)])
    return x.astype(np.float32), y


def planted_distances(seed: int, radius: float, gap: float = 0.3, clusters: int = 30,
                      size: int = 6, noise: int = 15) -> tuple[sp.csr_matrix, np.ndarray]:
    """A sparse symmetric distance of known scale: pairs inside a cluster at distances in
    ``[0.02, radius]``, a few pairs between clusters and every noise sample's pairs at
    ``[radius + gap, 0.99]``, the rest unstored (distance 1). Any eps in
    ``[radius, radius + gap)`` recovers the clusters."""
    rng = np.random.default_rng(seed)
    n = clusters * size + noise
    y = np.concatenate([np.repeat(np.arange(clusters), size), -1 - np.arange(noise)])
    rows, cols, vals = [], [], []
    for c in range(clusters):
        members = np.arange(c * size, (c + 1) * size)
        i, j = np.triu_indices(size, 1)
        rows += list(members[i])
        cols += list(members[j])
        vals += list(rng.uniform(0.02, radius, len(i)))
    far = (radius + gap, 0.99)
    for _ in range(clusters * 3):  # near misses between clusters
        a, b = rng.choice(clusters * size, 2, replace=False)
        if y[a] != y[b]:
            rows.append(a)
            cols.append(b)
            vals.append(rng.uniform(*far))
    for k in range(noise):  # noise: a few far links each
        a = clusters * size + k
        for b in rng.choice(clusters * size, 4, replace=False):
            rows.append(a)
            cols.append(b)
            vals.append(rng.uniform(*far))
    upper = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    upper.sum_duplicates()
    dist = (upper + upper.T).tocsr().astype(np.float32)
    return dist, y


# ----------------------------------------------------------------- the radius, on planted data
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_recovers_planted_blobs(seed):
    x, y = blobs_on_sphere(seed)
    labels, info = pseudo_labels(x, eps="auto", min_samples=3, k1=8, k2=2, return_info=True)
    assert adjusted_rand_score(y, singletons(labels)) >= 0.9
    assert 0 < info["eps"] < 1 and info["eps_criterion"] == "silhouette"
    assert set(info["eps_scores"]) == {f"{e:.2f}" for e in EPS_CANDIDATES}
    assert info["eps_scores"][f"{info['eps']:.2f}"] == max(info["eps_scores"].values())
    # the same partition as DBSCAN at the chosen radius
    fixed = pseudo_labels(x, eps=info["eps"], min_samples=3, k1=8, k2=2)
    np.testing.assert_array_equal(labels, fixed)


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_recovers_the_planted_radius_and_follows_the_scale(seed):
    chosen = {}
    for radius in (0.2, 0.5):
        dist, y = planted_distances(seed, radius)
        choice = choose_eps(dist, min_samples=3)
        assert radius <= choice.eps < radius + 0.3, (radius, choice.eps, choice.scores)
        assert adjusted_rand_score(y, singletons(choice.labels)) == 1.0
        np.testing.assert_array_equal(choice.labels, dbscan_sparse(dist, choice.eps, 3))
        chosen[radius] = choice.eps
    assert chosen[0.5] > chosen[0.2]


def test_sparse_silhouette_matches_the_dense_definition():
    from sklearn.metrics import silhouette_samples

    dist, _ = planted_distances(3, 0.4, clusters=6, size=4, noise=3)
    labels = dbscan_sparse(dist, 0.55, 2)
    labels[[0, 5]] = -1  # two outliers inside clusters, too
    dense = np.ones(dist.shape)
    dense[dist.nonzero()] = dist.data
    np.fill_diagonal(dense, 0.0)
    keep = labels >= 0
    per_sample = silhouette_samples(dense[np.ix_(keep, keep)], labels[keep],
                                    metric="precomputed")
    expected = per_sample.sum() / len(labels)  # outliers count 0
    assert sparse_silhouette(dist, labels) == pytest.approx(expected, abs=1e-6)
    assert sparse_silhouette(dist, np.zeros(len(labels), dtype=np.int64)) == -1.0


def test_eps_auto_refusals():
    x, _ = blobs_on_sphere(0, ids=5, noise=0)
    with pytest.raises(ValueError, match="eps must be a radius in \\(0, 1\\) or 'auto'"):
        pseudo_labels(x, eps="fast", k1=4, k2=2)
    with pytest.raises(ValueError, match="method='infomap' has none"):
        pseudo_labels(x, eps="auto", method="infomap", k1=4, k2=2)
    with pytest.raises(ValueError, match="eps_candidates"):
        pseudo_labels(x, eps="auto", k1=4, k2=2, eps_candidates=[0.5, 1.0])


# ----------------------------------------------------------------- the configuration
def test_config_accepts_auto_and_refuses_other_strings():
    assert load_config(None, ["cluster.eps=auto"]).cluster.eps == "auto"
    assert load_config(None, ["cluster.eps=0.45"]).cluster.eps == 0.45
    with pytest.raises(ConfigError, match=r"cluster\.eps: expected a float in \(0, 1\) or "
                                          r"'auto', got str 'fast'"):
        load_config(None, ["cluster.eps=fast"])
    with pytest.raises(ConfigError, match=r"cluster\.eps.*cluster\.method=infomap"):
        load_config(None, ["cluster.eps=auto", "cluster.method=infomap"])
    with pytest.raises(ConfigError, match=r"train\.select_by: expected one of"):
        load_config(None, ["train.select_by=best"])


# ----------------------------------------------------------------- the label-free signal
def test_agreement_of_planted_sequences():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), 6)
    labels[rng.choice(len(labels), 20, replace=False)] = -1
    renamed = np.where(labels >= 0, (labels * 7 + 3) % 50, -1)  # the same partition
    assert partition_agreement(labels, labels) == 1.0
    assert partition_agreement(renamed, labels) == pytest.approx(1.0)
    shuffled = rng.permutation(labels)
    assert abs(partition_agreement(shuffled, labels)) < 0.05
    # only samples clustered in both count: new outliers do not lower the agreement
    fewer = labels.copy()
    fewer[:60] = -1
    assert partition_agreement(fewer, labels) == pytest.approx(1.0)
    assert partition_agreement(np.full(5, -1), np.arange(5)) == 0.0


def test_cross_camera_fraction_and_score():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    camids = np.array([0, 1, 0, 0, 2, 3, 1])
    assert cross_camera_fraction(labels, camids) == pytest.approx(4 / 6)
    values = label_free_signals(labels, labels, camids)
    assert values == pytest.approx({"lf_cross_camera": 4 / 6, "lf_agreement": 1.0,
                                    "label_free_score": 4 / 6})
    assert label_free_signals(labels, None, camids) == {"lf_cross_camera": pytest.approx(4 / 6)}
    one_camera = label_free_signals(labels, labels, np.zeros(7, dtype=np.int64))
    assert one_camera == {"lf_agreement": 1.0, "label_free_score": 1.0}


# ----------------------------------------------------------------- tiny training runs
def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("single_thread")
def test_tiny_run_with_eps_auto_records_the_choice(tiny_data, tmp_path, caplog):
    cfg = tiny_config(tmp_path / "run", "cluster.eps=auto", "train.epochs=1")
    with caplog.at_level("INFO", logger="robustreid"):
        make_trainer(cfg, tiny_data).fit()
    rec = records(tmp_path / "run")[1]
    assert 0 < rec["eps"] < 1 and rec["eps_criterion"] == "silhouette"
    assert rec["eps_scores"][f"{rec['eps']:.2f}"] == max(rec["eps_scores"].values())
    assert rec["time_eps_auto"] < rec["time_cluster"]
    assert f"eps auto: chose {rec['eps']:.2f}" in caplog.text
    assert "label_free_score" not in rec and "lf_agreement" not in rec  # select_by=map


@pytest.mark.usefixtures("single_thread")
def test_unevaluated_run_keeps_best_by_the_label_free_score(tiny_data, tmp_path):
    data = dataclasses.replace(tiny_data, query=[], gallery=[])
    cfg = tiny_config(tmp_path / "run", "train.epochs=3", "train.select_by=auto")
    trainer = make_trainer(cfg, data)
    assert trainer.evaluator is None and trainer.checkpointer.metric == "label_free_score"
    trainer.fit()
    recs = records(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert "label_free_score" not in recs[0]  # no previous epoch to agree with
    for r in recs[1:]:
        assert 0 <= r["lf_cross_camera"] <= 1 and -1 <= r["lf_agreement"] <= 1
        assert r["label_free_score"] == pytest.approx(r["lf_agreement"] * r["lf_cross_camera"])
    # the score of epoch e's record is the model after epoch e - 1; the last model's is final
    scored = {r["epoch"] - 1: r["label_free_score"] for r in recs[1:]}
    scored[3] = recs[-1]["label_free_score_final"]
    best_epoch = max(scored, key=lambda e: (scored[e], -e))  # the first of equal scores
    best = load_checkpoint(tmp_path / "run/best.pth")
    assert best["epoch"] == best_epoch
    assert best["metrics"]["label_free_score"] == scored[best_epoch] or \
        best["metrics"]["label_free_score_final"] == scored[best_epoch]
    said = [r for r in recs if "best_model_epoch" in r]
    assert said and said[-1]["best_model_epoch"] == best_epoch
    assert load_checkpoint(tmp_path / "run/last.pth")["best_map"] == scored[best_epoch]
    # the curves draw the signal against the model it scores
    curves = training_curves(recs)
    assert curves.label_free_epochs == sorted(scored)
    assert plot_training_curves(tmp_path / "run").is_file()


@pytest.mark.usefixtures("single_thread")
def test_label_free_selection_resumes_exactly(tiny_data, tmp_path):
    data = dataclasses.replace(tiny_data, query=[], gallery=[])
    extra = ("train.epochs=3", "train.select_by=label_free", "cluster.eps=auto")
    full = make_trainer(tiny_config(tmp_path / "full", *extra), data)
    full.fit()
    resumed = killed_at_epoch_2_then_resumed(tiny_config(tmp_path / "killed", *extra), data)

    def strip(history):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]

    assert strip(resumed.state.history) == strip(full.state.history)
    assert resumed.state.best_map == full.state.best_map
    assert load_checkpoint(tmp_path / "killed/best.pth")["epoch"] == \
        load_checkpoint(tmp_path / "full/best.pth")["epoch"]
    for key, value in full.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[key].numpy(), value.numpy())


@pytest.mark.usefixtures("single_thread")
def test_default_run_records_nothing_new(tiny_data, tmp_path):
    trainer = make_trainer(tiny_config(tmp_path / "run", "train.epochs=1"), tiny_data)
    assert trainer.label_free is False and trainer.checkpointer.metric == "mAP"
    trainer.fit()
    # (lf_cross_camera is a diagnostic every run on several cameras records: CameraSpread)
    new = {"eps", "eps_scores", "eps_criterion", "time_eps_auto", "label_free_score",
           "lf_agreement", "label_free_score_final", "best_model_epoch"}
    assert not new & {k for r in records(tmp_path / "run") for k in r}
    assert "previous_labels" not in load_checkpoint(tmp_path / "run/last.pth")
