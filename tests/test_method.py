"""Tests for SAA / CSA / HPS (robustreid.method)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import normalize

from robustreid.memory import cluster_means
from robustreid.method import (
    SAA,
    csa_prototypes,
    pack_clusters,
    score_batch,
    select_hard_positives,
    train_saa,
)

D = 16


def _saa(gain: float = 2.0, seed: int = 0) -> SAA:
    torch.manual_seed(seed)
    saa = SAA(D, heads=3, head_dim=4, temperature=0.1, init_std=0.3)
    with torch.no_grad():
        saa.gain.fill_(gain)
    return saa


def _clustered(
    num: int, size: int, spread: float, gen: torch.Generator, dim: int = D
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    centres = normalize(torch.randn(num, dim, generator=gen), dim=1)
    labels = torch.arange(num).repeat_interleave(size)
    feats = normalize(
        centres[labels] + spread * torch.randn(labels.numel(), dim, generator=gen), dim=1
    )
    return feats, labels, centres


def test_pack_clusters_layout() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 4, generator=gen)
    labels = torch.tensor([3, 0, -1, 3, 3, 0, 7, 7, 7, 7, -1, 3])
    x, mask, index = pack_clusters(feats, labels)
    assert x.shape == (3, 4, 4) and mask.sum(1).tolist() == [2, 4, 4]
    for c, lab in enumerate([0, 3, 7]):
        got = sorted(index[c][mask[c]].tolist())
        assert got == torch.nonzero(labels == lab).squeeze(1).tolist()
        assert torch.equal(x[c][mask[c]], feats[index[c][mask[c]]])
    assert bool((index[~mask] == -1).all()) and bool((x[~mask] == 0).all())
    _, mask2, index2 = pack_clusters(feats, labels, max_members=3, generator=gen)
    assert mask2.sum(1).tolist() == [2, 3, 3]
    assert bool((labels[index2[mask2]] >= 0).all())


def test_permutation_invariance() -> None:
    saa = _saa()
    gen = torch.Generator().manual_seed(1)
    x = normalize(torch.randn(2, 7, D, generator=gen), dim=-1)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    perm = torch.tensor([4, 2, 0, 6, 1, 3, 5])
    perm1 = torch.tensor([3, 0, 4, 1, 2, 5, 6])  # keeps padding at the end for cluster 1
    xp = torch.stack([x[0, perm], x[1, perm1]])
    with torch.no_grad():
        out, outp = saa(x, mask), saa(xp, mask)
        loo, loop = saa.forward_leave_one_out(x, mask), saa.forward_leave_one_out(xp, mask)
    torch.testing.assert_close(out.prototypes, outp.prototypes, atol=1e-5, rtol=1e-5)
    for c, p in ((0, perm), (1, perm1)):
        torch.testing.assert_close(out.weights[c, p], outp.weights[c], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.dispersion[c, p], outp.dispersion[c], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loo[c, p], loop[c], atol=1e-5, rtol=1e-5)


def test_masking_equals_unpadded_and_no_nan() -> None:
    saa = _saa()
    gen = torch.Generator().manual_seed(2)
    sizes = [5, 3, 1, 2]
    n_max = 8
    x = torch.randn(len(sizes), n_max, D, generator=gen) * 50  # garbage on padding
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for c, n in enumerate(sizes):
        mask[c, :n] = True
        x[c, :n] = normalize(x[c, :n], dim=-1)
    x[0, 6] = float("nan")  # even NaN padding must not leak
    with torch.no_grad():
        out = saa(x, mask)
        loo = saa.forward_leave_one_out(x, mask)
        for c, n in enumerate(sizes):
            alone = saa(x[c : c + 1, :n], mask[c : c + 1, :n])
            torch.testing.assert_close(out.prototypes[c], alone.prototypes[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.weights[c, :n], alone.weights[0], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(
                out.dispersion[c, :n], alone.dispersion[0], atol=1e-5, rtol=1e-4
            )
            alone_loo = saa.forward_leave_one_out(x[c : c + 1, :n], mask[c : c + 1, :n])
            torch.testing.assert_close(loo[c, :n], alone_loo[0], atol=1e-5, rtol=1e-5)
    for t in (out.prototypes, out.weights, out.dispersion, loo):
        assert torch.isfinite(t).all()
    assert bool((out.weights[~mask] == 0).all()) and bool((out.dispersion[~mask] == 0).all())
    torch.testing.assert_close(out.weights.sum(1), torch.ones(len(sizes)))
    assert float(out.weights[2, 0]) == 1.0 and float(out.dispersion[2, 0]) == 0.0  # singleton
    torch.testing.assert_close(out.prototypes[2], x[2, 0])
    torch.testing.assert_close(loo[3, 0], x[3, 1])  # pair: leave-one-out = the other member


def test_leave_one_out_is_exact() -> None:
    saa = _saa()
    gen = torch.Generator().manual_seed(3)
    x = normalize(torch.randn(1, 6, D, generator=gen), dim=-1)
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        out, loo = saa(x, mask), saa.forward_leave_one_out(x, mask)
        for j in range(6):
            keep = [k for k in range(6) if k != j]
            ref = saa(x[:, keep], mask[:, keep]).prototypes[0]
            torch.testing.assert_close(loo[0, j], ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                out.dispersion[0, j], 1 - x[0, j] @ ref, atol=1e-4, rtol=1e-4
            )


def test_untrained_saa_is_close_to_mean() -> None:
    torch.manual_seed(0)
    saa = SAA(D, heads=2, head_dim=8)
    gen = torch.Generator().manual_seed(4)
    x = normalize(torch.randn(3, 9, D, generator=gen), dim=-1)
    mask = torch.ones(3, 9, dtype=torch.bool)
    with torch.no_grad():
        out = saa(x, mask)
    torch.testing.assert_close(out.prototypes, normalize(x.mean(1), dim=-1), atol=5e-3, rtol=0)
    torch.testing.assert_close(out.weights, torch.full((3, 9), 1 / 9), atol=1e-3, rtol=0)


def test_planted_outlier_low_weight_high_dispersion() -> None:
    saa = _saa(gain=2.0)
    gen = torch.Generator().manual_seed(5)
    centre = normalize(torch.randn(D, generator=gen), dim=0)
    core = normalize(centre + 0.15 * torch.randn(9, D, generator=gen), dim=1)
    outlier = normalize(torch.randn(1, D, generator=gen), dim=1)
    x = torch.cat([core[:4], outlier, core[4:]]).unsqueeze(0)
    mask = torch.ones(1, 10, dtype=torch.bool)
    with torch.no_grad():
        out = saa(x, mask)
    others = torch.arange(10) != 4
    assert float(out.dispersion[0, 4]) > float(out.dispersion[0, others].max())
    assert float(out.weights[0, 4]) < float(out.weights[0, others].min())


def test_csa_gradients_only_reach_saa() -> None:
    torch.manual_seed(0)
    backbone = nn.Linear(8, D)
    gen = torch.Generator().manual_seed(6)
    inputs = torch.randn(60, 8, generator=gen)
    feats = normalize(backbone(inputs), dim=1)  # carries a graph to the backbone
    assert feats.requires_grad
    labels = torch.arange(6).repeat_interleave(10)
    saa = SAA(D, heads=2, head_dim=4)
    before = [p.detach().clone() for p in saa.parameters()]
    train_saa(saa, feats, labels, steps=5, clusters_per_step=3, generator=gen)
    assert backbone.weight.grad is None and backbone.bias.grad is None
    assert all(p.grad is None or p.requires_grad for p in backbone.parameters())
    changed = [not torch.equal(b, p) for b, p in zip(before, saa.parameters(), strict=True)]
    assert all(changed)


def _noisy_problem(
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """30 tight clusters of 12, 2 planted mislabeled samples per cluster from other clusters."""
    feats, pids, centres = _clustered(30, 12, 0.1, gen)
    labels = pids.clone()
    for c in range(30):
        rows = torch.nonzero(pids == c).squeeze(1)[:2]
        labels[rows] = (c + 1 + torch.randint(29, (2,), generator=gen)) % 30
    return feats, labels, pids, centres


def _train_on_noisy_problem(seed: int, **kwargs) -> tuple[SAA, dict[str, float], float]:
    """Train an SAA on one noisy problem; returns it, its stats and the ratio of the CSA
    prototypes' mean distance (1 - cos) to the true centres over the plain means'."""
    gen = torch.Generator().manual_seed(seed)
    feats, labels, _, centres = _noisy_problem(gen)
    torch.manual_seed(0)
    saa = SAA(D, heads=2, head_dim=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: 2 threads only add contention on a shared CPU
    try:
        stats = train_saa(saa, feats, labels, steps=150, clusters_per_step=8, generator=gen,
                          **kwargs)
        protos = csa_prototypes(saa, feats, labels, 30, mix=1.0)
    finally:
        torch.set_num_threads(threads)
    means = normalize(torch.zeros(30, D).index_add_(0, labels, feats), dim=1)
    ratio = float((1 - (protos * centres).sum(1)).mean() / (1 - (means * centres).sum(1)).mean())
    return saa, stats, ratio


def test_train_saa_lowers_loss() -> None:
    # unweighted loss, so the objective is the same at the start and at the end; most of it
    # is the planted intruders' (irreducible), so the decrease is small but must be there
    _, stats, _ = _train_on_noisy_problem(0, agreement_temperature=0.0, lr=1e-2)
    assert stats["final_loss"] < stats["initial_loss"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csa_prototypes_beat_means_under_label_noise(seed: int) -> None:
    saa, _, ratio = _train_on_noisy_problem(seed)  # default settings
    assert bool((saa.gain.detach() > 0).all())  # learned to favour similar members
    assert ratio < 0.8  # CSA's prototypes at least 20 % closer to the true centres


def test_csa_prototypes_chunking_and_empty_rows() -> None:
    gen = torch.Generator().manual_seed(8)
    feats, labels, _ = _clustered(7, 5, 0.3, gen)
    labels[::4] = -1
    labels[labels == 3] = 9  # label 3 empty, 9 used
    saa = _saa()
    small = csa_prototypes(saa, feats, labels, 10, max_rows=6, mix=1.0)
    big = csa_prototypes(saa, feats, labels, 10, max_rows=1 << 16, mix=1.0)
    torch.testing.assert_close(small, big, atol=1e-5, rtol=1e-5)
    assert float(big[3].abs().sum()) == 0.0 and float(big[9].norm()) == pytest.approx(1.0)
    x, mask, index = pack_clusters(feats, labels)
    with torch.no_grad():
        ref = saa(x, mask).prototypes
    torch.testing.assert_close(big[labels[index[:, 0]]], ref, atol=1e-5, rtol=1e-5)


def test_csa_prototypes_mix_shrinks_towards_the_mean() -> None:
    gen = torch.Generator().manual_seed(8)
    feats, labels, _ = _clustered(6, 7, 0.4, gen)
    saa = _saa(gain=3.0)
    means = normalize(cluster_means(feats, labels, 6), dim=1)
    full = csa_prototypes(saa, feats, labels, 6, mix=1.0)
    torch.testing.assert_close(csa_prototypes(saa, feats, labels, 6, mix=0.0), means,
                               atol=1e-5, rtol=1e-5)
    half = csa_prototypes(saa, feats, labels, 6, mix=0.5)
    expected = normalize(means + full, dim=1)  # equal weights of two unit vectors
    torch.testing.assert_close(half, expected, atol=1e-5, rtol=1e-5)
    assert float((full - means).norm(dim=1).min()) > 1e-3  # the gain does move the prototype
    with pytest.raises(ValueError, match="mix"):
        csa_prototypes(saa, feats, labels, 6, mix=1.5)


def test_hps_avoids_mislabeled_where_hard_picks_it() -> None:
    saa = _saa(gain=2.0)
    gen = torch.Generator().manual_seed(9)
    feats, labels, centres = _clustered(4, 10, 0.2, gen)
    # batch: 4 genuine samples of cluster 0 and 1 sample of identity 2 labelled 0
    intruder = normalize(centres[2] + 0.2 * torch.randn(D, generator=gen), dim=0)
    feats = torch.cat([feats, intruder[None]])
    labels = torch.cat([labels, torch.tensor([0])])
    batch_idx = torch.tensor([0, 1, 2, 3, 40])
    bx, by = feats[batch_idx], labels[batch_idx]
    with torch.no_grad():
        chosen, chosen_y, stats = select_hard_positives(saa, bx, by, feats, labels)
        ratio, disp, size = score_batch(saa, bx, by, feats, labels, batch_indices=batch_idx)
    assert chosen_y.tolist() == [0]
    assert not torch.equal(chosen[0], intruder)
    assert bool((disp[4] > disp[:4]).all()) and bool((ratio[4] < 0.5) & (ratio[:4] >= 0.5).all())
    assert size.tolist() == [11] * 5
    # hard: least similar to the (mean) prototype picks the intruder
    proto = normalize(feats[labels == 0].mean(0), dim=0)
    assert int(torch.argmin(bx @ proto)) == 4
    # softmax mode only samples accepted ones
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        picked, _, st = select_hard_positives(
            saa, bx, by, feats, labels, mode="softmax", generator=g, batch_indices=batch_idx
        )
        assert not torch.equal(picked[0], intruder)
    assert st["fallback_fraction"] == 0.0 and 0 < stats["accepted_fraction"] < 1


def test_hps_fallback_and_outliers() -> None:
    saa = _saa(gain=2.0)
    gen = torch.Generator().manual_seed(10)
    feats, labels, _ = _clustered(3, 6, 0.2, gen)
    bx = torch.cat([feats[[0, 6]], feats[[12]]])
    by = torch.tensor([0, 1, -1])
    chosen, chosen_y, stats = select_hard_positives(saa, bx, by, feats, labels, accept_ratio=10.0)
    assert chosen_y.tolist() == [0, 1] and stats["fallback_fraction"] == 1.0
    with pytest.raises(ValueError):
        select_hard_positives(saa, bx, by, feats, labels, mode="nope")


def _select_reference(
    ratio: torch.Tensor, disp: torch.Tensor, labels: torch.Tensor, accept_ratio: float
) -> list[int]:
    """Per-class loop: hardest accepted sample, else the most accepted one."""
    picks = []
    for c in sorted({int(v) for v in labels.tolist() if v >= 0}):
        rows = [i for i in range(len(labels)) if int(labels[i]) == c]
        acc = [i for i in rows if float(ratio[i]) >= accept_ratio]
        if acc:
            picks.append(max(acc, key=lambda i: (float(disp[i]), -i)))
        else:
            picks.append(max(rows, key=lambda i: (float(ratio[i]), -i)))
    return picks


def test_hps_selection_matches_per_class_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustreid.method import hps

    gen = torch.Generator().manual_seed(11)
    for trial in range(20):
        bsz = 24
        labels = torch.randint(-1, 6, (bsz,), generator=gen)
        ratio = torch.rand(bsz, generator=gen) * 2
        disp = torch.rand(bsz, generator=gen).round(decimals=1)  # ties: first row wins
        monkeypatch.setattr(hps, "score_batch", lambda *a, r=ratio, d=disp, **k: (r, d, None))
        idx, stats = hps.select_hard_positive_indices(
            _saa(), torch.randn(bsz, D), labels, torch.randn(4, D), torch.zeros(4), 1.0
        )
        assert idx.tolist() == _select_reference(ratio, disp, labels, 1.0), trial
        classes = sorted({int(v) for v in labels.tolist() if v >= 0})
        no_acc = sum(all(float(ratio[i]) < 1.0 for i in range(bsz) if labels[i] == c)
                     for c in classes)
        assert stats["fallback_fraction"] == pytest.approx(no_acc / max(1, len(classes)))


def test_hps_softmax_mode_draws_from_softmax_of_dispersion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from robustreid.method import hps

    labels = torch.tensor([0, 0, 0, 0])
    ratio = torch.tensor([1.5, 1.5, 1.5, 0.2])  # row 3 is not accepted
    disp = torch.tensor([0.10, 0.20, 0.30, 0.90])
    monkeypatch.setattr(hps, "score_batch", lambda *a, **k: (ratio, disp, None))
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    draws = 4000
    for _ in range(draws):
        idx, _ = hps.select_hard_positive_indices(
            _saa(), torch.randn(4, D), labels, torch.randn(4, D), torch.zeros(4), 1.0,
            mode="softmax", temperature=0.1, generator=g,
        )
        counts[idx] += 1
    expected = torch.softmax(disp[:3] / 0.1, dim=0)
    assert counts[3] == 0
    torch.testing.assert_close(counts[:3] / draws, expected, atol=0.03, rtol=0)
