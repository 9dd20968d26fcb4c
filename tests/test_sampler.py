"""Tests for robustreid.data.sampler.PseudoIdentitySampler (P x K pseudo-identity batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from robustreid.data.sampler import PseudoIdentitySampler


def _toy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels/cameras of 12 identities with 2..20 samples, 1..6 cameras, and 15 outliers."""
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    cams: list[int] = []
    for identity in range(12):
        size = int(rng.integers(2, 21))
        num_cams = int(rng.integers(1, 7))
        labels += [identity] * size
        cams += rng.integers(0, num_cams, size).tolist()
    labels += [-1] * 15
    cams += rng.integers(0, 6, 15).tolist()
    order = rng.permutation(len(labels))
    return np.asarray(labels)[order], np.asarray(cams)[order]


def _batches(sampler: PseudoIdentitySampler) -> np.ndarray:
    """The epoch's stream as num_iterations x P x K."""
    p = sampler.batch_size // sampler.num_instances
    return np.asarray(list(sampler)).reshape(sampler.num_iterations, p, sampler.num_instances)


def test_batch_structure_and_balance() -> None:
    labels, cams = _toy()
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=20,
                                    num_iterations=37, seed=3)
    assert len(sampler) == 37 * 20
    batches = _batches(sampler)
    ids = labels[batches]  # iterations x P x K
    assert (ids == ids[:, :, :1]).all(), "each group of K must be one identity"
    for batch_ids in ids[:, :, 0]:
        assert len(set(batch_ids.tolist())) == 5, "P identities per batch must be distinct"
    # identities cycle through permutations: usage counts differ by at most one
    usage = np.bincount(ids[:, :, 0].ravel(), minlength=12)
    assert usage.max() - usage.min() <= 1


def test_outliers_never_drawn() -> None:
    labels, cams = _toy()
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=16,
                                    num_iterations=50)
    drawn = np.asarray(list(sampler))
    assert (labels[drawn] >= 0).all()
    assert drawn.min() >= 0 and drawn.max() < len(labels)


def test_cross_camera_preference() -> None:
    # identity 0: 3 samples in each of 4 cameras; identity 1: 10 samples in 6 cameras;
    # identity 2: 9 samples in camera 0 and 1 in camera 5; identities 3, 4: filler
    cams = [c for c in range(4) for _ in range(3)] + [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    cams += [0] * 9 + [5] + [0, 1, 2, 3] * 2
    labels = [0] * 12 + [1] * 10 + [2] * 10 + [3] * 4 + [4] * 4
    labels_arr, cams_arr = np.asarray(labels), np.asarray(cams)
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=8,
                                    num_iterations=40, seed=1)
    groups = _batches(sampler).reshape(-1, 4)
    seen = set()
    for group in groups:
        identity = int(labels_arr[group[0]])
        seen.add(identity)
        group_cams = set(cams_arr[group].tolist())
        assert len(set(group.tolist())) == 4, "no repeats when an identity has >= K samples"
        if identity in (0, 1):
            assert len(group_cams) == 4
        if identity == 2:
            assert group_cams == {0, 5}
    assert seen == {0, 1, 2, 3, 4}

    # without the preference identity 0 (3 per camera) often repeats a camera in a group
    plain = PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=8,
                                  num_iterations=40, seed=1, prefer_cross_camera=False)
    groups = _batches(plain).reshape(-1, 4)
    own = [g for g in groups if labels_arr[g[0]] == 0]
    assert any(len(set(cams_arr[g].tolist())) < 4 for g in own)
    assert (labels_arr[groups] == labels_arr[groups[:, :1]]).all()


def test_small_identities_sampled_with_replacement() -> None:
    # identity 0 has two samples (indices 0, 1); the others have plenty
    labels = [0, 0] + [1] * 8 + [2] * 8
    cams = [0, 1] + list(range(8)) + list(range(8))
    sampler = PseudoIdentitySampler(labels, cams, num_instances=6, batch_size=12,
                                    num_iterations=10)
    groups = _batches(sampler).reshape(-1, 6)
    small = [g for g in groups if labels[g[0]] == 0]
    assert small
    for group in small:
        assert set(group.tolist()) == {0, 1}  # both members, then repeats
    for group in groups:
        if labels[group[0]] != 0:
            assert len(set(group.tolist())) == 6


def test_determinism_per_seed_and_epoch() -> None:
    labels, cams = _toy()
    kwargs = {"num_instances": 4, "batch_size": 16, "num_iterations": 20, "seed": 7}
    a = PseudoIdentitySampler(labels, cams, **kwargs)
    b = PseudoIdentitySampler(labels.tolist(), cams.tolist(), **kwargs)
    epoch0 = list(a)
    assert epoch0 == list(a) == list(b)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0
    b.set_epoch(1)  # a resumed run at epoch 1 reproduces it
    assert list(b) == epoch1
    a.set_epoch(0)
    assert list(a) == epoch0
    other_seed = PseudoIdentitySampler(labels, cams, **{**kwargs, "seed": 8})
    assert list(other_seed) != epoch0
    assert all(isinstance(i, int) for i in epoch0[:5])


def test_dataloader_yields_pk_batches() -> None:
    labels, cams = _toy()
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=16,
                                    num_iterations=5)
    loader = DataLoader(torch.arange(len(labels)), batch_size=16, sampler=sampler)
    batches = [b.numpy() for b in loader]
    assert len(batches) == 5
    assert np.array_equal(np.concatenate(batches), np.asarray(list(sampler)))
    for batch in batches:
        ids = labels[batch].reshape(4, 4)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0].tolist())) == 4


def test_exactly_p_identities() -> None:
    # P == number of identities: every batch holds all of them, across permutation boundaries
    labels = np.repeat(np.arange(4), 5)
    sampler = PseudoIdentitySampler(labels, np.zeros(20, dtype=int), num_instances=2,
                                    batch_size=8, num_iterations=9)
    ids = labels[_batches(sampler)][:, :, 0]
    assert all(sorted(b.tolist()) == [0, 1, 2, 3] for b in ids)


def test_boundary_batches_have_distinct_identities() -> None:
    # 7 identities, P = 5: most batches straddle two permutations
    labels = np.repeat(np.arange(7), 3)
    sampler = PseudoIdentitySampler(labels, np.arange(21) % 3, num_instances=2,
                                    batch_size=10, num_iterations=60, seed=5)
    ids = labels[_batches(sampler)][:, :, 0]
    assert all(len(set(b.tolist())) == 5 for b in ids)
    usage = np.bincount(ids.ravel())
    assert usage.max() - usage.min() <= 1


def test_error_messages() -> None:
    labels = [0, 0, 1, 1, -1, -1]
    cams = [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"P = batch_size // num_instances = 8 // 2 = 4.*got 2"):
        PseudoIdentitySampler(labels, cams, num_instances=2, batch_size=8)
    with pytest.raises(ValueError, match=r"batch_size \(10\) must be a multiple of "
                                         r"num_instances \(4\)"):
        PseudoIdentitySampler(labels, cams, num_instances=4, batch_size=10)
    with pytest.raises(ValueError, match="same length, got 6 and 5"):
        PseudoIdentitySampler(labels, cams[:5], num_instances=2, batch_size=4)
    with pytest.raises(ValueError, match="labels must be integers"):
        PseudoIdentitySampler([0.0, 1.0], [0, 0], num_instances=1, batch_size=2)
    with pytest.raises(ValueError, match="num_iterations must be a positive integer"):
        PseudoIdentitySampler(labels, cams, num_instances=2, batch_size=4, num_iterations=0)
    sampler = PseudoIdentitySampler(labels, cams, num_instances=2, batch_size=4)
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
