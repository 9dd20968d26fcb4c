"""How the memory's prototypes start and move: small strategy objects the trainer is given.

Initialisation (once per epoch, after pseudo-labelling):

* :class:`MeanInit` - the normalised mean of each cluster's members;
* :class:`CSAInit` - cluster sample aggregation: SAA's attention-weighted aggregate.

Update (after every optimiser step, on the batch):

* :class:`MeanUpdate` - every sample, one after another (cluster-contrast);
* :class:`HardUpdate` - per cluster the sample least similar to its prototype;
* :class:`HPSUpdate` - hard positive sampling: per cluster the hardest sample SAA still
  accepts as a member;
* :class:`InBatchCSA` - the other reading of CSA: self-attention over the K instances of
  each pseudo-identity in the batch, trained jointly with the backbone; its aggregate adds a
  loss term and is the sample of the momentum update.

CSA and HPS share one :class:`Aggregator`, which owns the SAA module, trains it once per
epoch on the epoch's features and carries its weights over to the next epoch. Every
strategy reports its statistics as a flat ``{name: float}`` dict, so the trainer can log
them without knowing which strategy ran.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from robustreid.memory.cluster_memory import ClusterMemory, cluster_means
from robustreid.method import (
    SAA,
    csa_prototypes,
    pack_clusters,
    select_hard_positive_indices,
    train_saa,
)


class Aggregator:
    """The SAA module of CSA/HPS, built on first use (its size is the feature dimension) and
    trained on each epoch's features with the cluster-level leave-one-out loss.

    Args:
        heads, head_dim, temperature: SAA's shape and attention temperature.
        steps, clusters_per_step, lr, max_members, agreement_temperature: passed to
            :func:`robustreid.method.train_saa`.
        loss_temperature: temperature of the SAA training loss (the memory's).
        device: where SAA lives.
    """

    def __init__(self, heads: int = 2, head_dim: int = 16, temperature: float = 0.1,
                 steps: int = 200, clusters_per_step: int = 64, lr: float = 1e-3,
                 max_members: int = 32, agreement_temperature: float = 0.02,
                 loss_temperature: float = 0.05,
                 device: torch.device | str = "cpu") -> None:
        self.heads, self.head_dim, self.temperature = heads, head_dim, temperature
        self.steps, self.clusters_per_step, self.lr = steps, clusters_per_step, lr
        self.max_members, self.agreement_temperature = max_members, agreement_temperature
        self.loss_temperature = loss_temperature
        self.device = torch.device(device)
        self.saa: SAA | None = None

    def _build(self, dim: int) -> SAA:
        if self.saa is None:
            self.saa = SAA(dim, heads=self.heads, head_dim=self.head_dim,
                           temperature=self.temperature).to(self.device)
        return self.saa

    def fit(self, features: Tensor, labels: Tensor,
            generator: torch.Generator | None = None) -> dict[str, float]:
        """Train SAA on ``features`` (N, D) grouped by ``labels`` (N,, -1 = outlier).

        Returns ``saa_initial_loss`` / ``saa_final_loss`` (mean loss over the first / last
        pass over the clusters) and ``saa_seconds``.
        """
        saa = self._build(features.shape[1])
        stats = train_saa(
            saa, features.to(self.device), labels.to(self.device), steps=self.steps,
            clusters_per_step=self.clusters_per_step, lr=self.lr,
            temperature=self.loss_temperature, max_members=self.max_members,
            agreement_temperature=self.agreement_temperature, generator=generator,
            device=self.device,
        )
        return {"saa_initial_loss": stats["initial_loss"], "saa_final_loss": stats["final_loss"],
                "saa_seconds": stats["seconds"]}

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.saa is None else self.saa.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore SAA from :meth:`state_dict` (``None``: not built yet)."""
        if state is None:
            self.saa = None
            return
        self.saa = None
        self._build(state["qk"].shape[0]).load_state_dict(state)


# ---------------------------------------------------------------------- initialisation
class PrototypeInit(Protocol):
    """``(features (N, D), labels (N,), num_clusters) -> (prototypes (C, D), stats)``."""

    name: str
    needs_saa: bool

    def __call__(self, features: Tensor, labels: Tensor,
                 num_clusters: int) -> tuple[Tensor, dict[str, float]]: ...


class MeanInit:
    """Prototype = normalised mean of the cluster's members."""

    name = "mean"
    needs_saa = False

    def __call__(self, features: Tensor, labels: Tensor,
                 num_clusters: int) -> tuple[Tensor, dict[str, float]]:
        return cluster_means(features, labels, num_clusters), {}


class CSAInit:
    """Prototype = ``normalise((1 - mix) * mean + mix * SAA aggregate)`` (CSA).

    Args:
        aggregator: the trained SAA holder (trained by the trainer before this runs).
        mix: shrinkage towards the mean, in [0, 1] (1 = SAA alone).
    """

    name = "csa"
    needs_saa = True

    def __init__(self, aggregator: Aggregator, mix: float = 0.5) -> None:
        self.aggregator, self.mix = aggregator, mix

    def __call__(self, features: Tensor, labels: Tensor,
                 num_clusters: int) -> tuple[Tensor, dict[str, float]]:
        saa = self.aggregator.saa
        if saa is None:
            raise RuntimeError("CSAInit needs a trained aggregator: call Aggregator.fit first")
        device = self.aggregator.device
        protos = csa_prototypes(saa, features.to(device), labels.to(device), num_clusters,
                                mix=self.mix)
        return protos, {}


# ---------------------------------------------------------------------- update
class MemoryUpdate(Protocol):
    """After each optimiser step: move the prototypes of the batch's clusters.

    ``begin_epoch`` receives the epoch's features (N, D) and labels (N,) and resets the
    statistics; ``__call__`` updates ``memory`` from the batch features (B, D), their
    cluster targets (B,) and their indices into N (B,), and returns the batch positions of
    the samples that updated a prototype; ``epoch_stats`` summarises the epoch.
    """

    name: str
    needs_saa: bool
    memory_mode: str

    def begin_epoch(self, features: Tensor, labels: Tensor) -> None: ...

    def __call__(self, memory: ClusterMemory, feats: Tensor, targets: Tensor,
                 indices: Tensor) -> Tensor: ...

    def epoch_stats(self) -> dict[str, float]: ...


class MeanUpdate:
    """Every sample updates its cluster, in batch order (``ClusterMemory`` mode ``mean``)."""

    name = "mean"
    needs_saa = False
    memory_mode = "mean"

    def begin_epoch(self, features: Tensor, labels: Tensor) -> None:
        pass

    def __call__(self, memory: ClusterMemory, feats: Tensor, targets: Tensor,
                 indices: Tensor) -> Tensor:
        return memory.update(feats, targets, indices)

    def epoch_stats(self) -> dict[str, float]:
        return {}


class HardUpdate(MeanUpdate):
    """Per cluster, the batch sample least similar to its prototype (mode ``hard``)."""

    name = "hard"
    memory_mode = "hard"


class HPSUpdate:
    """Hard positive sampling: per pseudo-identity of the batch, the sample with the largest
    SAA dispersion among those SAA accepts as members (membership >= ``accept_ratio / n``).

    Args:
        aggregator: the trained SAA holder.
        accept_ratio, mode, temperature: see :func:`robustreid.method.select_hard_positives`.

    Statistics per epoch (means over the steps): ``hps_accepted_fraction`` (batch samples
    accepted as members), ``hps_fallback_fraction`` (clusters with no accepted sample, which
    fall back to their most accepted one) and ``hps_dispersion`` (of the chosen samples).
    """

    name = "hps"
    needs_saa = True
    memory_mode = "mean"

    def __init__(self, aggregator: Aggregator, accept_ratio: float = 1.0,
                 mode: str = "hardest", temperature: float = 0.1) -> None:
        self.aggregator = aggregator
        self.accept_ratio, self.mode, self.temperature = accept_ratio, mode, temperature
        self._features: Tensor | None = None
        self._labels: Tensor | None = None
        self._sums: dict[str, float] = {}
        self._steps = 0

    def begin_epoch(self, features: Tensor, labels: Tensor) -> None:
        device = self.aggregator.device
        self._features, self._labels = features.to(device), labels.to(device)
        self._sums = {"accepted_fraction": 0.0, "fallback_fraction": 0.0,
                      "mean_dispersion": 0.0}
        self._steps = 0

    def __call__(self, memory: ClusterMemory, feats: Tensor, targets: Tensor,
                 indices: Tensor) -> Tensor:
        if self._features is None or self.aggregator.saa is None:
            raise RuntimeError("HPSUpdate needs begin_epoch and a trained aggregator first")
        idx, stats = select_hard_positive_indices(
            self.aggregator.saa, feats, targets, self._features, self._labels,
            accept_ratio=self.accept_ratio, mode=self.mode, temperature=self.temperature,
            batch_indices=indices,
        )
        memory.momentum_update(feats[idx], targets[idx])
        for key in self._sums:
            self._sums[key] += stats[key]
        self._steps += 1
        return idx

    def epoch_stats(self) -> dict[str, float]:
        if not self._steps:
            return {}
        s = self._sums
        return {"hps_accepted_fraction": s["accepted_fraction"] / self._steps,
                "hps_fallback_fraction": s["fallback_fraction"] / self._steps,
                "hps_dispersion": s["mean_dispersion"] / self._steps}


class InBatchCSA(nn.Module):
    """CSA as a self-attention block over the K instances of each pseudo-identity in the
    batch, trained jointly with the backbone (the other reading of the published method).

    For each cluster ``c`` of the batch, SAA aggregates its batch features (with gradients)
    into ``z_c``. The step's loss gains ``weight * InfoNCE(z_c, prototypes, c)`` (so the
    attention and the backbone learn together), and after the step ``z_c`` (detached) makes
    the cluster's one momentum update. An untrained SAA attends uniformly, i.e. ``z_c`` starts
    as the batch mean of the cluster.

    Args:
        dim: feature dimension D.
        heads, head_dim, temperature: SAA's shape and attention temperature.
        weight: weight of the aggregate's loss term.

    Statistics per epoch: ``joint_loss`` (mean aggregate loss, unweighted) and
    ``joint_peak_weight`` (mean over clusters of the largest membership weight times the
    cluster's batch size: 1 = uniform attention).
    """

    name = "joint_csa"
    needs_saa = False
    memory_mode = "mean"

    def __init__(self, dim: int, heads: int = 2, head_dim: int = 16, temperature: float = 0.1,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.saa = SAA(dim, heads=heads, head_dim=head_dim, temperature=temperature)
        self.weight = weight
        self._pending: tuple[Tensor, Tensor] | None = None
        self._sums = [0.0, 0.0]
        self._steps = 0

    def begin_epoch(self, features: Tensor, labels: Tensor) -> None:
        self._sums, self._steps = [0.0, 0.0], 0

    def loss(self, memory: ClusterMemory, feats: Tensor, targets: Tensor) -> Tensor:
        """The aggregate loss of a batch: ``feats`` (B, D) with gradients, ``targets`` (B,)."""
        x, mask, index = pack_clusters(feats.float(), targets)
        out = self.saa(x, mask)
        classes = targets[index[:, 0]]
        loss = memory(out.prototypes, classes)
        peak = (out.weights.max(1).values * mask.sum(1)).mean()
        self._pending = (out.prototypes.detach(), classes)
        self._sums[0] += float(loss.detach())
        self._sums[1] += float(peak.detach())
        self._steps += 1
        return self.weight * loss

    def __call__(self, memory: ClusterMemory, feats: Tensor, targets: Tensor,
                 indices: Tensor) -> Tensor:
        if self._pending is None:
            raise RuntimeError("InBatchCSA: loss() must run in the step before the update")
        aggregates, classes = self._pending
        self._pending = None
        memory.momentum_update(aggregates, classes)
        # every batch sample is part of its cluster's aggregate
        return torch.arange(feats.shape[0], device=feats.device)

    def epoch_stats(self) -> dict[str, float]:
        if not self._steps:
            return {}
        return {"joint_loss": self._sums[0] / self._steps,
                "joint_peak_weight": self._sums[1] / self._steps}


class TrimmedHardUpdate(MeanUpdate):
    """Per cluster of the batch, the hardest sample of its more typical half: its batch
    samples ranked by cosine to the cluster's mean in the epoch's extraction, the one at rank
    ``n // 2`` from the least similar (n = the cluster's batch samples; the lower median).

    ``hard`` takes rank 0, the sample most likely to be mislabeled; HPS asks SAA which
    samples to trust, but inside training SAA's weights barely separate the members
    clustering got wrong (docs/method.md). This asks the plain cosine to the mean instead.
    """

    name = "trimmed_hard"
    memory_mode = "mean"

    def __init__(self) -> None:
        self._means: Tensor | None = None

    def begin_epoch(self, features: Tensor, labels: Tensor) -> None:
        self._means = cluster_means(features, labels, int(labels.max()) + 1, allow_empty=True)

    def __call__(self, memory: ClusterMemory, feats: Tensor, targets: Tensor,
                 indices: Tensor) -> Tensor:
        if self._means is None:
            raise RuntimeError("TrimmedHardUpdate needs begin_epoch first")
        idx = trimmed_hard_indices(feats, targets, self._means.to(feats.device))
        memory.momentum_update(feats[idx], targets[idx])
        return idx


def trimmed_hard_indices(feats: Tensor, targets: Tensor, means: Tensor) -> Tensor:
    """Per distinct target, the batch position of the sample at rank ``n // 2`` (ascending
    cosine to ``means[target]``; ties by batch order).

    Args:
        feats: (B, D) features; targets: (B,) cluster indices; means: (C, D) unit-norm.

    Returns:
        (P,) int64 positions, one per distinct target, in increasing target order.
    """
    sims = (torch.nn.functional.normalize(feats.float(), dim=1) * means[targets]).sum(1)
    by_sim = torch.argsort(sims, stable=True)
    order = by_sim[torch.argsort(targets[by_sim], stable=True)]  # by target, then similarity
    _, counts = torch.unique_consecutive(targets[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return order[starts + counts // 2]
