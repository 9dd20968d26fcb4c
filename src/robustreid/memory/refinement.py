"""Pseudo-label refinement by neighbour consistency: soft targets from the k nearest neighbours.

Clustering labels are noisy: a sample may sit among the members of one cluster while DBSCAN
put it in another. Neighbour-consistency refinement (after NCPLR, Cheng et al., 2022, "a
transductive form of label propagation": a sample's target should agree with its nearest
neighbours') replaces the one-hot cluster target of every clustered sample by a soft target
over clusters, mixing its own label with the labels of its ``k`` nearest neighbours in
feature space, weighted by similarity. Written from the paper's description; the neighbours
vote with their cluster labels (no classifier predictions are used).

For a clustered sample ``i`` with one-hot label ``y_i`` and neighbours ``j`` (clustered
samples only; outliers neither vote nor get a target), with weights
``a_ij = softmax_j(cos(x_i, x_j) / temperature)`` over its ``k`` neighbours:

    ``t_i^0 = y_i``,   ``t_i^{s+1} = (1 - alpha) y_i + alpha * sum_j a_ij t_j^s``

run ``iterations`` times (one step is the plain similarity-weighted vote; more steps propagate
labels along the kNN graph). The result is kept SPARSE: at most ``k + 1`` clusters per
sample (the own label always among them; with more than one iteration the lightest entries
beyond that are dropped and the row renormalised).

Relabelling rule: a sample moves to another cluster ``c`` when ``c`` holds MORE than
``relabel`` (default 0.5) of its refined target; otherwise it keeps its clustering label.
With ``relabel >= 0.5`` such a ``c`` is the unique argmax. After one step the target's weight
on a cluster is ``(1 - alpha) [own] + alpha * (its share of the neighbour vote)``, so with the
defaults (``alpha=0.7``) a sample moves when more than ``0.5 / 0.7 = 71 %`` of its
similarity-weighted neighbours sit in one other cluster - a sample whose neighbours all lie in
cluster B while it is labelled A ends with 70 % of its target on B and hard label B; a
sample on a boundary with a mixed neighbourhood keeps its label and gets a mixed target.
``relabel=1`` never moves a sample (soft targets only). A cluster that loses every member
is dropped: the clusters are renumbered ``0..C'-1`` in their old order and target weight on a
dropped cluster is removed (rows renormalised).

Defaults (``k=10``, ``alpha=0.7``, ``temperature=0.1``, ``iterations=1``, ``relabel=0.5``):
``k`` below the size of a typical identity (about 16-20 images on Market-1501, 4 per batch);
``alpha`` above 0.5 so that a unanimous neighbourhood can overrule the clustering;
``temperature`` 0.1 so that closer neighbours count more without one neighbour deciding;
one propagation step, the paper's single neighbour ensemble.

Neighbours are exact (cosine, by blocked matrix products: memory ``O(block x N + N k)``,
never a dense ``N x N`` matrix for large ``N``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from robustreid.registry import Registry

#: similarities held at once while searching neighbours (block rows x clustered samples)
_BLOCK_ELEMENTS = 1 << 24


@dataclass
class RefinedTargets:
    """The refined labels of one epoch (``N`` samples, ``K`` target entries per sample).

    Attributes:
        labels: ``(N,)`` int64 hard labels after refinement in ``[0, num_clusters)``, ``-1``
            for the outliers (unchanged).
        clusters: ``(N, K)`` int64 clusters of each sample's soft target (renumbered like
            ``labels``; padding entries have weight 0 and name a valid cluster).
        weights: ``(N, K)`` float32 target weights; each clustered sample's row sums to 1,
            an outlier's row is all zeros.
        num_clusters: ``C'``, the clusters left (fewer than before when relabelling emptied
            some).
        stats: ``refine_relabelled`` (samples whose hard label changed),
            ``refine_own_weight`` (mean target weight on the clustering's own label, over the
            clustered samples), ``refine_emptied`` (clusters dropped).
    """

    labels: Tensor
    clusters: Tensor
    weights: Tensor
    num_clusters: int
    stats: dict[str, float] = field(default_factory=dict)


class NeighbourRefiner:
    """Soft targets and corrected hard labels from the k nearest neighbours (module doc).

    Args:
        k: neighbours per sample (fewer when there are fewer other clustered samples).
        alpha: weight of the neighbours' vote, in ``[0, 1)`` (the own label keeps
            ``1 - alpha`` of the step).
        temperature: softmax temperature of the neighbour weights over cosine similarities.
        iterations: propagation steps (``>= 1``).
        relabel: a sample moves to the cluster holding more than this share of its target,
            in ``[0.5, 1]`` (1: never).
    """

    def __init__(self, k: int = 10, alpha: float = 0.7, temperature: float = 0.1,
                 iterations: int = 1, relabel: float = 0.5) -> None:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        if not 0.5 <= relabel <= 1.0:
            raise ValueError(f"relabel must be in [0.5, 1] (a majority of the target), "
                             f"got {relabel!r}")
        self.k, self.alpha, self.temperature = int(k), float(alpha), float(temperature)
        self.iterations, self.relabel = int(iterations), float(relabel)

    def __repr__(self) -> str:
        return (f"NeighbourRefiner(k={self.k}, alpha={self.alpha}, "
                f"temperature={self.temperature}, iterations={self.iterations}, "
                f"relabel={self.relabel})")

    def __call__(self, features: Tensor, labels: Tensor) -> RefinedTargets:
        """Refine ``labels`` (``(N,)`` int, ``-1`` = outlier) by the neighbours of
        ``features`` (``(N, D)`` floating, unit-norm rows; normalised here anyway).
        Everything runs on ``features``' device; the results live there too."""
        if features.dim() != 2:
            raise ValueError(f"features must be N x D (2-D), got shape {tuple(features.shape)}")
        if not features.dtype.is_floating_point:
            raise ValueError(f"features must be a floating tensor, got dtype {features.dtype}")
        n = features.shape[0]
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(f"labels must be a 1-D tensor of length {n} (one per feature "
                             f"row), got shape {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        device = features.device
        labels = labels.to(device=device, dtype=torch.long)
        if n and int(labels.min()) < -1:
            raise ValueError(f"labels must be -1 (outlier) or >= 0, got {int(labels.min())}")
        kept = (labels >= 0).nonzero().flatten()
        num_clusters = int(labels.max()) + 1 if kept.numel() else 0
        own = labels[kept]
        m = kept.numel()
        k = min(self.k, m - 1)
        if k >= 1:
            feats = F.normalize(features[kept].to(torch.float32), dim=1)
            sims, neighbours = nearest_neighbours(feats, k)
            votes = torch.softmax(sims / self.temperature, dim=1)  # (M, k)
            clusters, weights = own[:, None], torch.ones(m, 1, device=device)
            for _ in range(self.iterations):
                clusters, weights = self._step(own, neighbours, votes, clusters, weights, k + 1)
        else:  # one clustered sample (or none): nothing to vote
            clusters, weights = own[:, None], torch.ones(m, 1, device=device)
        own_weight = (weights * (clusters == own[:, None])).sum(dim=1)
        best_weight, best = weights.max(dim=1)
        best_cluster = clusters.gather(1, best[:, None]).squeeze(1)
        moved = (best_weight > self.relabel) & (best_cluster != own)
        hard = torch.where(moved, best_cluster, own)
        clusters, weights, hard, left = _drop_empty(clusters, weights, hard, num_clusters)
        width = max(1, int((weights > 0).sum(dim=0).nonzero().max()) + 1) if m else 1
        out_labels = torch.full((n,), -1, dtype=torch.long, device=device)
        out_labels[kept] = hard
        out_clusters = torch.zeros(n, width, dtype=torch.long, device=device)
        out_weights = torch.zeros(n, width, dtype=torch.float32, device=device)
        out_clusters[kept] = clusters[:, :width]
        out_weights[kept] = weights[:, :width].to(torch.float32)
        stats = {"refine_relabelled": int(moved.sum()),
                 "refine_own_weight": float(own_weight.mean()) if m else 1.0,
                 "refine_emptied": num_clusters - left}
        return RefinedTargets(out_labels, out_clusters, out_weights, left, stats)

    def _step(self, own: Tensor, neighbours: Tensor, votes: Tensor, clusters: Tensor,
              weights: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """One propagation step on sparse targets: ``(1 - alpha) y_i + alpha sum_j a_ij
        t_j``; ``(M, K)`` in, ``(M, <= width)`` out (own label first, then by weight)."""
        m = own.shape[0]
        their_clusters = clusters[neighbours].reshape(m, -1)  # (M, k K)
        their_weights = (votes[:, :, None] * weights[neighbours]).reshape(m, -1)
        candidates = torch.cat([own[:, None], their_clusters], dim=1)
        mass = torch.cat([torch.full((m, 1), 1.0 - self.alpha, device=own.device),
                          self.alpha * their_weights], dim=1)
        return _merge(own, candidates, mass, width)


def _merge(own: Tensor, candidates: Tensor, mass: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Per row, the summed ``mass`` of every distinct cluster in ``candidates`` (both
    ``(M, L)``), the own cluster first, then by decreasing weight (ties: lower cluster
    first), cut to ``width`` columns and renormalised. Deterministic (sorts and prefix sums,
    no atomic adds)."""
    cluster_sorted, order = torch.sort(candidates, dim=1, stable=True)
    mass = mass.gather(1, order)
    first = torch.ones_like(cluster_sorted, dtype=torch.bool)
    first[:, 1:] = cluster_sorted[:, 1:] != cluster_sorted[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    positions = torch.arange(cluster_sorted.shape[1], device=own.device).expand_as(first)
    start = torch.where(first, positions, torch.zeros_like(positions)).cummax(dim=1).values
    running = mass.cumsum(dim=1)
    before = (running - mass).gather(1, start)
    total = running - before  # at the last position of a run: the run's sum
    is_own = cluster_sorted == own[:, None]
    key = torch.where(last, total + 2.0 * is_own, torch.full_like(total, -1.0))
    rank = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :width]
    clusters = cluster_sorted.gather(1, rank)
    weights = total.gather(1, rank)
    valid = last.gather(1, rank)
    clusters = torch.where(valid, clusters, own[:, None].expand_as(clusters))
    weights = torch.where(valid, weights, torch.zeros_like(weights)).clamp(min=0)
    return clusters, weights / weights.sum(dim=1, keepdim=True)


def _drop_empty(clusters: Tensor, weights: Tensor, hard: Tensor, num_clusters: int
                ) -> tuple[Tensor, Tensor, Tensor, int]:
    """Renumber the clusters that still have a member (``hard``) to ``0..C'-1`` in their old
    order; target weight on a dropped cluster is removed and rows renormalised."""
    if hard.numel() == 0:
        return clusters, weights, hard, 0
    present = torch.bincount(hard, minlength=num_clusters) > 0
    left = int(present.sum())
    if left == num_clusters:
        return clusters, weights, hard, left
    new_id = present.long().cumsum(0) - 1
    hard = new_id[hard]
    alive = present[clusters]
    clusters = torch.where(alive, new_id[clusters], hard[:, None].expand_as(clusters))
    weights = torch.where(alive, weights, torch.zeros_like(weights))
    return clusters, weights / weights.sum(dim=1, keepdim=True), hard, left


def nearest_neighbours(features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact ``k`` nearest neighbours by inner product, the sample itself excluded.

    Args:
        features: ``(M, D)`` float rows (unit-norm: the inner product is the cosine).
        k: neighbours per row, ``1 <= k < M``.

    Returns:
        ``(M, k)`` similarities (decreasing along each row) and ``(M, k)`` int64 row indices.
        Blocks of rows are compared with every row at a time (about 16 M similarities held).
    """
    m = features.shape[0]
    if not 1 <= k < m:
        raise ValueError(f"k must be in [1, {m - 1}] for {m} rows, got {k}")
    rows = max(1, min(m, _BLOCK_ELEMENTS // m))
    sims, index = [], []
    for begin in range(0, m, rows):
        end = min(m, begin + rows)
        block = features[begin:end] @ features.t()  # (b, M)
        diagonal = torch.arange(end - begin, device=features.device)
        block[diagonal, diagonal + begin] = float("-inf")
        top = block.topk(k, dim=1)
        sims.append(top.values)
        index.append(top.indices)
    return torch.cat(sims), torch.cat(index)


#: Refiners by name (``refine.kind`` in the configuration; ``"none"`` is no refinement).
#: A refiner is constructed as ``cls(**refine.options)`` and called as
#: ``refiner(features (N, D), labels (N,)) -> RefinedTargets``.
REFINERS: Registry = Registry("refiner")
register_refiner = REFINERS.register
register_refiner("neighbours")(NeighbourRefiner)
