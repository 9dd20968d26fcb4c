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
