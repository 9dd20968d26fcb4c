"""Robustness of cluster prototypes to pseudo-label noise: mean vs CSA init, mean/hard/HPS updates.

Usage: python benchmarks/prototype_robustness.py [--features file.npz] [--dim 128] [--seed 0]
                                                 [--momentum 0.1]

Features with known identities (synthetic by default; or ``features`` / ``pids`` arrays of an
``.npz``) get pseudo-labels corrupted the way clustering errs: look-alike identities (closest
centres) are merged, then boundary samples (largest margin towards another identity's centre)
are moved to that identity's cluster, until the requested fraction of samples carries a wrong
pseudo-label (wrong = not the majority identity of its cluster). Per noise rate it prints the
mean angle (degrees) between each method's prototypes and the true centre of the cluster's
majority identity (synthetic: the generating centre; ``.npz``: the L2-normalised mean of a
held-out half of the identity's samples, see :func:`held_out_split`), and for ``hard`` / HPS
the fraction
of momentum updates made with a mislabeled sample.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import normalize

from robustreid.clustering.quality import identity_centres, majority_identities, mean_angle_degrees
from robustreid.memory import ClusterMemory, cluster_means
from robustreid.method import SAA, csa_prototypes, select_hard_positive_indices, train_saa

RATES = (0.0, 0.1, 0.2, 0.3)


def synthetic(num_ids: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Identities with uneven sizes (8-40), cos(sample, centre) ~ 0.8 (uneven spread), and
    look-alike pairs (40 % of the identities have a partner whose centre is at cos ~ 0.7).

    Returns features (``N x d``), pids (``N``) and the generating centres (``I x d``)."""
    centres = normalize(torch.randn(num_ids, dim, generator=gen), dim=1)
    num_pairs, spread = int(0.2 * num_ids), 1.0
    for p in range(num_pairs):
        a, b = 2 * p, 2 * p + 1
        centres[b] = normalize(
            centres[a] + spread * normalize(torch.randn(dim, generator=gen), dim=0), dim=0
        )
    sizes = torch.randint(8, 41, (num_ids,), generator=gen)
    pids = torch.repeat_interleave(torch.arange(num_ids), sizes)
    noise = torch.randn(pids.numel(), dim, generator=gen) / dim**0.5
    scale = 0.55 + 0.35 * torch.rand(pids.numel(), 1, generator=gen)  # uneven spread
    return normalize(centres[pids] + scale * noise, dim=1), pids, centres


def held_out_split(features: Tensor, pids: Tensor,
                   gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Split every identity's samples at random into two halves (identities with fewer than
    two samples are dropped): the prototypes are built from the first half, and the target is
    the L2-normalised mean of the second, an estimate of the true centre that no method saw
    (the mean of the very samples a prototype is built from would favour the plain mean).

    Returns features (``N_a x d``) and pids (``N_a``, renamed ``0..I-1``) of the first half,
    and the ``I x d`` centres of the second."""
    order = torch.randperm(len(pids), generator=gen)
    order = order[torch.argsort(pids[order], stable=True)]  # random order within identity
    sorted_pids = pids[order]
    counts = torch.bincount(sorted_pids)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(pids)) - starts[sorted_pids]
    first = rank < counts[sorted_pids] // 2
    keep = counts[sorted_pids] >= 2
    a, b = order[first & keep], order[~first & keep]
    _, pids_a = torch.unique(pids[a], return_inverse=True)
    _, pids_b = torch.unique(pids[b], return_inverse=True)
    return features[a], pids_a, identity_centres(features[b], pids_b.numpy())[1]


def corrupt(features: Tensor, pids: Tensor, centres: Tensor, rate: float) -> Tensor:
    """Pseudo-labels with a fraction ``rate`` of wrong samples: half by merging look-alikes,
    the rest by moving boundary samples to the nearest wrong cluster."""
    labels = pids.clone()
    target = int(round(rate * pids.numel()))
    if target == 0:
        return labels
    counts = torch.bincount(pids)
    sims = centres @ centres.T
    sims.fill_diagonal_(-2.0)
    wrong = 0
    merged: set[int] = set()
    for flat in torch.argsort(sims.flatten(), descending=True).tolist():
        if wrong >= target // 2:
            break
        a, b = divmod(flat, sims.shape[0])
        if a in merged or b in merged:
            continue
        small, big = (a, b) if counts[a] < counts[b] else (b, a)
        labels[pids == small] = big
        merged.update((a, b))
        wrong += int(counts[small])
    own = (features * centres[pids]).sum(1)
    other = features @ centres.T
    other[torch.arange(pids.numel()), pids] = -2.0
    best_other, nearest = other.max(1)
    margin = best_other - own
    clean = labels == pids
    for i in torch.argsort(margin, descending=True).tolist():
        if wrong >= target:
            break
        if clean[i]:
            labels[i] = labels[pids == nearest[i]][0]  # the cluster now holding that identity
            wrong += 1
    return labels


def epoch_batches(labels: Tensor, p: int, k: int, gen: torch.Generator) -> list[Tensor]:
    """P x K batches over a random order of the clusters (K drawn per cluster, with
    replacement only when the cluster is smaller than K).

    A simpler draw than the trainer's :func:`robustreid.data.sampler.epoch_batches` (no
    cameras, one pass over the clusters), kept so that the figures stay comparable."""
    clusters = torch.unique(labels)
    members = [torch.nonzero(labels == c).squeeze(1) for c in clusters.tolist()]
    order = torch.randperm(clusters.numel(), generator=gen).tolist()
    batches = []
    for s in range(0, len(order) - p + 1, p):
        rows = []
        for c in order[s : s + p]:
            m = members[c]
            if m.numel() >= k:
                rows.append(m[torch.randperm(m.numel(), generator=gen)[:k]])
            else:
                rows.append(m[torch.randint(m.numel(), (k,), generator=gen)])
        batches.append(torch.cat(rows))
    return batches


def run_rate(
    features: Tensor, pids: Tensor, centres: Tensor, rate: float, args: argparse.Namespace
) -> str:
    """One output line; ``centres``: ``I x d`` true identity centres."""
    gen = torch.Generator().manual_seed(args.seed)
    raw = corrupt(features, pids, centres, rate)
    _, labels = torch.unique(raw, return_inverse=True)
    num_c = int(labels.max()) + 1
    majority = torch.as_tensor(majority_identities(labels.numpy(), pids.numpy(), num_c))
    target = centres[majority]  # true centre per cluster
    mislabeled = pids != majority[labels]
    init_mean = cluster_means(features, labels, num_c)
    saa = SAA(features.shape[1], heads=args.heads, head_dim=args.head_dim)
    train_saa(saa, features, labels, steps=args.steps, lr=args.lr, generator=gen,
              clusters_per_step=args.clusters_per_step,
              agreement_temperature=args.agreement_temperature)
    init_csa = csa_prototypes(saa, features, labels, num_c, mix=args.csa_mix)
    # mean: every sample, in batch order; hard: per class the sample least similar to its
    # prototype; hps: the sample HPS picks per class (one momentum step each)
    memories = {name: ClusterMemory(features.shape[1], num_c, momentum=args.momentum,
                                    update="hard" if name == "hard" else "mean")
                for name in ("mean", "hard", "hps")}
    for memory in memories.values():
        memory.init_prototypes(init_mean)
    noisy = {"hard": [0, 0], "hps": [0, 0]}
    for _ in range(args.epochs):
        for batch in epoch_batches(labels, args.p, args.k, gen):
            x, y = features[batch], labels[batch]
            memories["mean"].update(x, y)
            hard = memories["hard"].update(x, y)
            hps, _ = select_hard_positive_indices(
                saa, x, y, features, labels, batch_indices=batch, generator=gen,
                accept_ratio=args.accept_ratio, mode=args.hps_mode,
                temperature=args.hps_temperature,
            )
            memories["hps"].momentum_update(x[hps], y[hps])
            for name, idx in (("hard", hard), ("hps", hps)):
                noisy[name][0] += int(mislabeled[batch[idx]].sum())
                noisy[name][1] += idx.numel()
    angle = {name: mean_angle_degrees(memory.prototypes, target)
             for name, memory in memories.items()}
    return (
        f"noise={rate:.2f} init_mean={mean_angle_degrees(init_mean, target):.2f} "
        f"init_csa={mean_angle_degrees(init_csa, target):.2f} "
        f"update_mean={angle['mean']:.2f} update_hard={angle['hard']:.2f} "
        f"update_hps={angle['hps']:.2f} "
        f"noisy_updates_hard={noisy['hard'][0] / max(1, noisy['hard'][1]):.3f} "
        f"noisy_updates_hps={noisy['hps'][0] / max(1, noisy['hps'][1]):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", help=".npz with arrays 'features' (N x d) and 'pids' (N)")
    parser.add_argument("--target", choices=("heldout", "insample"), default="heldout",
                        help="with --features: true centre = mean of a held-out half of each "
                        "identity (default) or of all its samples")
    parser.add_argument("--ids", type=int, default=200)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no contention)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--clusters-per-step", type=int, default=64)
    parser.add_argument("--agreement-temperature", type=float, default=0.02,
                        help="self-paced CSA loss (0 = every member weighs the same)")
    parser.add_argument("--csa-mix", type=float, default=0.5,
                        help="CSA prototype = normalise((1 - mix) mean + mix SAA prototype)")
    parser.add_argument("--accept-ratio", type=float, default=1.0,
                        help="HPS: accepted member = weight >= ratio x 1/n")
    parser.add_argument("--hps-mode", choices=("hardest", "softmax"), default="hardest")
    parser.add_argument("--hps-temperature", type=float, default=0.1,
                        help="softmax mode: temperature on the dispersion (large = uniform)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--momentum", type=float, default=0.1,
                        help="m of the updates c <- m c + (1 - m) x (memory.momentum)")
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.features:
        data = np.load(args.features)
        features = normalize(torch.as_tensor(data["features"], dtype=torch.float32), dim=1)
        _, pids = torch.unique(torch.as_tensor(data["pids"]), return_inverse=True)
        if args.target == "heldout":
            gen = torch.Generator().manual_seed(args.seed)
            features, pids, centres = held_out_split(features, pids, gen)
        else:
            # favours the plain mean by construction
            centres = identity_centres(features, pids.numpy())[1]
    else:
        gen = torch.Generator().manual_seed(args.seed)
        features, pids, centres = synthetic(args.ids, args.dim, gen)
    start = time.perf_counter()
    for rate in RATES:
        print(run_rate(features, pids, centres, rate, args), flush=True)
    print(
        f"# {features.shape[0]} samples, d={features.shape[1]}, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
