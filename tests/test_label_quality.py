"""Pseudo-label diagnostics against planted labellings with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from robustreid.clustering.quality import pseudo_label_quality


def test_perfect_labelling():
    ids = np.repeat(np.arange(5), 4)
    q = pseudo_label_quality(ids + 10, ids)
    assert q["pl_clusters"] == 5 and q["pl_identities"] == 5
    assert q["pl_precision"] == q["pl_recall"] == q["pl_fscore"] == 1.0
    assert q["pl_ari"] == pytest.approx(1.0) and q["pl_nmi"] == pytest.approx(1.0)
    assert q["pl_outlier_fraction"] == 0.0


def test_planted_merge_split_and_outliers_by_hand():
    # ids: A A A A B B B B; clusters: A and B merged except one B that is an outlier,
    # and A split in two: [0 0 1 1 1 1 1 -1]
    ids = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    labels = np.array([0, 0, 1, 1, 1, 1, 1, -1])
    q = pseudo_label_quality(labels, ids)
    # same-cluster pairs: C(2,2) + C(5,2) = 1 + 10 = 11; of them same-id: 1 + (1 + 3) = 5
    assert q["pl_precision"] == pytest.approx(5 / 11)
    # same-id pairs: 6 + 6 = 12
    assert q["pl_recall"] == pytest.approx(5 / 12)
    assert q["pl_fscore"] == pytest.approx(2 * (5 / 11) * (5 / 12) / (5 / 11 + 5 / 12))
    assert q["pl_outlier_fraction"] == pytest.approx(1 / 8)
    assert q["pl_clusters"] == 2


def test_ari_and_nmi_equal_sklearn_with_outliers_as_singletons():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, 500)
    labels = np.where(rng.random(500) < 0.7, ids // 2, rng.integers(-1, 40, 500))
    singletons = np.where(labels >= 0, labels, 1000 + np.arange(500))
    q = pseudo_label_quality(labels, ids)
    assert q["pl_ari"] == pytest.approx(adjusted_rand_score(ids, singletons))
    assert q["pl_nmi"] == pytest.approx(normalized_mutual_info_score(ids, singletons))


def test_all_outliers_and_bad_shapes():
    q = pseudo_label_quality(np.full(6, -1), np.array([0, 0, 1, 1, 2, 2]))
    assert q["pl_clusters"] == 0 and q["pl_outlier_fraction"] == 1.0
    assert q["pl_precision"] == 0.0 and q["pl_recall"] == 0.0
    with pytest.raises(ValueError, match="one length"):
        pseudo_label_quality(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------- memory diagnostics
def test_majority_identities_with_ties_and_empty_clusters():
    from robustreid.clustering.quality import majority_identities

    labels = np.array([0, 0, 0, 1, 1, 2, 2, -1, 0])
    ids = np.array([7, 7, 3, 5, 4, 9, 9, 7, 3])
    # cluster 0: 7 x2, 3 x2 -> tie, smallest id; cluster 1: 5/4 tie -> 4; 3: empty
    assert majority_identities(labels, ids, 4).tolist() == [3, 4, 9, -1]
    assert majority_identities(np.full(3, -1), np.arange(3), 2).tolist() == [-1, -1]


def test_identity_centres_and_angles():
    import torch

    from robustreid.clustering.quality import identity_centres, mean_angle_degrees

    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    ids, centres = identity_centres(feats, np.array([5, 5, 2, 2]))
    assert ids.tolist() == [2, 5]
    torch.testing.assert_close(centres, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert mean_angle_degrees(centres, centres) == pytest.approx(0.0, abs=1e-3)
    assert mean_angle_degrees(centres, centres.flip(0)) == pytest.approx(90.0)
    diag = torch.tensor([[1.0, 1.0]])
    assert mean_angle_degrees(diag, torch.tensor([[1.0, 0.0]])) == pytest.approx(45.0)


def test_mechanism_diagnostics_on_a_planted_labelling():
    """Four identities of three images on orthogonal axes; cluster 0 holds identity 0 plus
    one image of identity 1 (mislabeled); the answers are known in closed form."""
    import math

    import torch

    from robustreid.clustering.labellers import EpochLabels
    from robustreid.engine.hooks import EpochContext, MechanismDiagnostics, StepContext
    from robustreid.memory import ClusterMemory

    ids = np.repeat(np.arange(4), 3)  # images 0-2: id 0, 3-5: id 1, ...
    feats = torch.eye(4)[torch.as_tensor(ids)]
    labels = ids.copy()
    labels[3] = 0  # image 3 (identity 1) sits in cluster 0
    hook = MechanismDiagnostics(ids)
    record: dict = {}
    ctx = EpochContext(1, record, feats, EpochLabels.from_labels(labels))
    hook.after_pseudo_labels(ctx)
    assert record["pl_clusters"] == 4 and record["pl_precision"] < 1.0
    memory = ClusterMemory(4, 4)
    memory.init_prototypes(torch.eye(4))  # exactly the identity centres
    ctx.memory = memory
    hook.after_memory_init(ctx)
    assert record["mem_init_angle"] == pytest.approx(0.0, abs=1e-3)
    # the mean of cluster 0 is (3, 1, 0, 0) / norm: atan(1/3) from identity 0's centre
    assert record["mem_init_angle_mean"] == pytest.approx(
        math.degrees(math.atan(1 / 3)) / 4, rel=1e-4)
    # a batch of images 0, 3, 6, 7 (clusters 0, 0, 2, 2); two of them update
    step = StepContext(1, torch.tensor([0, 3, 6, 7]), torch.tensor([0, 0, 2, 2]),
                       updated=torch.tensor([1, 2]), loss=1.0)
    hook.after_step(ctx, step)
    memory.init_prototypes(torch.eye(4).roll(1, dims=1))  # every prototype off by 90 degrees
    hook.after_epoch_train(ctx)
    hook.after_epoch(record)
    assert record["upd_batch_mislabeled_fraction"] == pytest.approx(1 / 4)
    assert record["upd_mislabeled_fraction"] == pytest.approx(1 / 2)  # image 3 updated
    assert record["upd_count"] == 2
    assert record["mem_end_angle"] == pytest.approx(90.0)
    assert record["time_diagnostics"] >= 0.0



def test_camera_spread_hook_scores_the_clustering_before_refinement():
    import torch

    from robustreid.clustering.labellers import EpochLabels
    from robustreid.engine.hooks import CameraSpread, EpochContext

    camids = np.array([0, 1, 0, 0, 1, 1])
    raw = EpochLabels.from_labels(np.array([0, 0, 1, 1, -1, 2]))  # cluster 0 spans 2 cameras
    refined = EpochLabels.from_labels(np.array([0, 0, 0, 0, -1, 1]))
    hook = CameraSpread(camids)
    ctx = EpochContext(1, {}, torch.zeros(6, 2), raw)
    hook.after_pseudo_labels(ctx)
    assert ctx.record["lf_cross_camera"] == pytest.approx(2 / 5)
    ctx = EpochContext(1, {}, torch.zeros(6, 2), refined, raw_labels=raw)
    hook.after_pseudo_labels(ctx)
    assert ctx.record["lf_cross_camera"] == pytest.approx(2 / 5)
    ctx = EpochContext(1, {}, torch.zeros(6, 2), refined)
    hook.after_pseudo_labels(ctx)
    assert ctx.record["lf_cross_camera"] == pytest.approx(4 / 5)
