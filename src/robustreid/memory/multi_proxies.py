"""Multi-proxies: two discrepant proxy sets per cluster and instance-level hard negatives.

One prototype per cluster is easily biased by the cluster's variance and confused with
similar clusters. DCMIP (Zou et al., "Discrepant and Multi-Instance Proxies for Unsupervised
Person Re-Identification", ICCV 2023) keeps several proxies per cluster, each updated by its
own rule so that they carry different information, and mines the hardest negatives among
instance-level proxies of other clusters. This memory is written from the paper's abstract
and a reading of that scheme (no code copied); what was chosen where the description leaves
it open is said below.

Terms, for a batch sample ``x`` (unit norm) of cluster ``y``:

* **first set** (``prototypes``): :class:`~robustreid.memory.ClusterMemory`'s prototypes,
  loss and update (``mean`` or ``hard`` as configured), unchanged;
* **second set** (``hard_prototypes``, weight ``hard_weight``): ``C`` more proxies, starting
  equal to the first set each epoch and moved after every step by the batch's hardest
  positive of each cluster only (the member with the lowest cosine to this proxy), one
  momentum step per cluster per step; the same cluster-level InfoNCE at ``temperature``;
* **instance term** (weight ``instance_weight``): an instance memory holds one unit-norm
  feature per training image (the epoch's extracted features, then momentum-updated by every
  batch sample with ``instance_momentum``); for each sample the ``instance_negatives``
  instances of OTHER clusters most similar to it are its negatives and its cluster's
  first-set prototype ``p_y`` the positive:
  ``-log(exp(x.p_y / T) / (exp(x.p_y / T) + sum_j exp(x.m_j / T)))`` with
  ``T = instance_temperature``. Outliers (label -1) are never negatives: they belong to no
  cluster, so nothing says they are another identity.

Shapes: ``D`` feature dimensions, ``C`` clusters, ``N`` training samples, ``B`` batch samples.
The instance term costs one ``B x N`` matmul per step (and its ``B x N`` mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustreid.distributed import all_gather_padded, get_world_size
from robustreid.memory.camera_proxies import CameraProxyMemory
from robustreid.memory.cluster_memory import (
    ClusterMemory,
    UpdateMode,
    _check_labels,
    _occurrence_index,
)


class MultiProxyMemory(ClusterMemory):
    """Cluster prototypes, a second hardest-positive proxy set and an instance memory.

    Args:
        num_features, num_clusters, temperature, momentum, update, distributed: as for
            :class:`~robustreid.memory.ClusterMemory` (the first proxy set).
        hard_weight: weight of the second (hardest-positive-updated) set's loss; 1.0, the
            two sets weighed equally as in DCMIP's sum of its two cluster terms.
        instance_weight: weight of the instance hard-negative term (1.0).
        instance_temperature: softmax temperature of the instance term (0.05, the
            temperature DCMIP and cluster-contrast use for every term).
        instance_negatives: hardest other-cluster instances per sample (50).
        instance_momentum: ``m`` of the instance update ``m_i <- m m_i + (1 - m) x``
            (0.2: the new feature dominates, as in SpCL's instance memory).

    Buffers:
        hard_prototypes: ``C x D`` unit-norm second proxy set.
        instances: ``N x D`` unit-norm instance memory (set by :meth:`begin_epoch`).
        sample_label: ``N`` cluster of every training sample (-1: outlier).
    """

    #: the builder refuses this memory with an update strategy that bypasses :meth:`update`
    #: (hps, joint_csa, trimmed_hard): the second set and the instances would never move
    needs_own_update = True

    hard_prototypes: Tensor
    instances: Tensor
    sample_label: Tensor

    def __init__(self, num_features: int, num_clusters: int, temperature: float = 0.05,
                 momentum: float = 0.1, update: UpdateMode = "mean", distributed: bool = False,
                 hard_weight: float = 1.0, instance_weight: float = 1.0,
                 instance_temperature: float = 0.05, instance_negatives: int = 50,
                 instance_momentum: float = 0.2) -> None:
        super().__init__(num_features, num_clusters, temperature=temperature,
                         momentum=momentum, update=update, distributed=distributed)
        self._init_multi_proxies(hard_weight, instance_weight, instance_temperature,
                                 instance_negatives, instance_momentum)

    def _init_multi_proxies(self, hard_weight: float, instance_weight: float,
                            instance_temperature: float, instance_negatives: int,
                            instance_momentum: float) -> None:
        """Check and store the options, register the buffers (zeros until an epoch begins)."""
        for name, value in (("hard_weight", hard_weight), ("instance_weight", instance_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not instance_temperature > 0:
            raise ValueError(f"instance_temperature must be > 0, got {instance_temperature}")
        if int(instance_negatives) != instance_negatives or instance_negatives < 1:
            raise ValueError("instance_negatives must be a positive integer, got "
                             f"{instance_negatives}")
        if not 0.0 <= instance_momentum <= 1.0:
            raise ValueError(f"instance_momentum must be in [0, 1], got {instance_momentum}")
        self.hard_weight, self.instance_weight = float(hard_weight), float(instance_weight)
        self.instance_temperature = float(instance_temperature)
        self.instance_negatives = int(instance_negatives)
        self.instance_momentum = float(instance_momentum)
        self.register_buffer("hard_prototypes", torch.zeros_like(self.prototypes))
        self.register_buffer("instances", torch.zeros(0, self.num_features))
        self.register_buffer("sample_label", torch.zeros(0, dtype=torch.long))

    # ------------------------------------------------------------------ epoch state
    @torch.no_grad()
    def init_prototypes(self, prototypes: Tensor) -> None:
        """Set both proxy sets to the rows of ``prototypes`` (``C x D``), L2-normalised."""
        super().init_prototypes(prototypes)
        self.hard_prototypes.copy_(self.prototypes)

    @torch.no_grad()
    def begin_epoch(self, features: Tensor, labels: Tensor,
                    camids: Tensor | None = None) -> None:
        """Fill the instance memory with the epoch's ``features`` (N, D), L2-normalised, and
        keep ``labels`` (N,) (-1: outlier). ``camids`` (N,) is handed on to a parent class
        that uses it (e.g. camera-aware proxies) and unused here."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be N x {self.num_features} (N x num_features), "
                             f"got shape {tuple(features.shape)}")
        _check_labels(labels, features.shape[0], self.num_clusters, "labels",
                      allow_outliers=True)
        device = self.prototypes.device
        self.instances = F.normalize(features.detach().to(device=device, dtype=torch.float32),
                                     dim=1)
        self.sample_label = labels.to(device=device, dtype=torch.long).clone()
        parent = getattr(super(), "begin_epoch", None)
        if parent is not None:
            parent(features, labels, camids)

    # ------------------------------------------------------------------ loss
    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """The parent's loss (the first set's) + ``hard_weight`` x the second set's
        cluster-level InfoNCE + ``instance_weight`` x the instance hard-negative term
        (scalars, batch means; a term with weight 0 is not computed). ``inputs`` (B, D)
        unit-norm, ``targets`` (B,) clusters, ``indices`` (B,) training-split rows (checked
        against the epoch's labels when given)."""
        loss = super().forward(inputs, targets, indices)
        x = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
        t = targets.to(device=x.device, dtype=torch.long)
        if self.hard_weight:
            logits = x @ self.hard_prototypes.to(x.dtype).t() / self.temperature
            loss = loss + self.hard_weight * F.cross_entropy(logits, t)
        if self.instance_weight:
            self._check_epoch(t, indices)
            loss = loss + self.instance_weight * self._instance_term(x, t)
        return loss

    def _check_epoch(self, targets: Tensor, indices: Tensor | None) -> None:
        if self.instances.shape[0] == 0:
            raise ValueError("MultiProxyMemory's instance term needs the epoch's features: "
                             "call begin_epoch(features, labels) first")
        if indices is not None:
            _check_labels(indices, targets.shape[0], self.instances.shape[0], "indices",
                          allow_outliers=False)
            if not torch.equal(self.sample_label[indices.to(self.sample_label.device)],
                               targets.to(self.sample_label.device)):
                raise ValueError("targets differ from the labels begin_epoch was given for "
                                 "the samples' indices")

    def _instance_term(self, x: Tensor, targets: Tensor) -> Tensor:
        """Mean over the batch of ``logsumexp([s_pos, hardest negatives]) - s_pos`` with
        ``s = cosine / instance_temperature``; ``x`` (B, D), ``targets`` (B,)."""
        scale = 1.0 / self.instance_temperature
        positive = (x * self.prototypes.to(x.dtype)[targets]).sum(dim=1) * scale  # (B,)
        sims = x @ self.instances.to(x.dtype).t() * scale  # (B, N)
        labels = self.sample_label.to(x.device)
        excluded = (labels[None, :] == targets[:, None]) | (labels < 0)[None, :]
        k = min(self.instance_negatives, sims.shape[1])
        hardest = sims.masked_fill(excluded, float("-inf")).topk(k, dim=1).values  # (B, k)
        # -inf where fewer negatives exist: they add nothing to the denominator
        denominator = torch.logsumexp(torch.cat([positive[:, None], hardest], dim=1), dim=1)
        return (denominator - positive).mean()

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """The parent's update (the first set's, :meth:`ClusterMemory.update`), then per
        cluster of the batch its hardest positive (lowest cosine to the second-set proxy,
        ties: first row) moves the second-set proxy by one momentum step, then every sample's
        instance moves towards it with ``instance_momentum``, in batch order (a row sampled
        twice moves twice). ``indices`` (B,) is required once :meth:`begin_epoch` has filled
        the instance memory. Under ``distributed`` the batch (indices too) is gathered from
        every rank first. Returns the parent's updated positions."""
        with_instances = self.instances.shape[0] > 0
        if with_instances:  # checked before anything moves
            if indices is None:
                raise ValueError("MultiProxyMemory.update needs the samples' indices in the "
                                 "training split (update(inputs, targets, indices))")
            _check_labels(indices, inputs.shape[0], self.instances.shape[0], "indices",
                          allow_outliers=False)
        rows = super().update(inputs, targets, indices)
        x, t = self._gather(inputs, targets)
        if x.shape[0] == 0:
            return rows
        hardest = self._hardest_rows(x, t, self.hard_prototypes)
        self._apply_momentum(x[hardest], t[hardest], self.hard_prototypes)
        if with_instances and indices is not None:
            idx = indices.to(device=x.device, dtype=torch.long)
            if self.distributed and get_world_size() > 1:
                idx = all_gather_padded(idx, "memory update (indices)")
            self._update_instances(x, idx)
        return rows

    def _update_instances(self, x: Tensor, idx: Tensor) -> None:
        """``m_i <- normalise(instance_momentum m_i + (1 - instance_momentum) x)`` for every
        row, in order; ``x`` (B, D), ``idx`` (B,) rows of the instance memory."""
        bank = self.instances
        x = x.to(device=bank.device, dtype=bank.dtype)
        idx = idx.to(bank.device)
        occurrence = _occurrence_index(idx)
        m = self.instance_momentum
        for j in range(int(occurrence.max()) + 1):
            step = occurrence == j
            rows = idx[step]
            bank[rows] = F.normalize(m * bank[rows] + (1.0 - m) * x[step], dim=1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, hard_weight={self.hard_weight}, "
                f"instance_weight={self.instance_weight}, "
                f"instance_temperature={self.instance_temperature}, "
                f"instance_negatives={self.instance_negatives}, "
                f"instance_momentum={self.instance_momentum}, "
                f"instances={self.instances.shape[0]}")


class CameraMultiProxyMemory(MultiProxyMemory, CameraProxyMemory):
    """Camera-aware proxies (:class:`~robustreid.memory.CameraProxyMemory`) and multi-proxies
    together: the loss is the camera memory's (``cluster_weight`` x the first set's, intra-
    and inter-camera terms) plus the second set's and the instance term; each update and
    :meth:`begin_epoch` runs both parts. Options: the union of the two classes' (all
    defaults as there)."""

    def __init__(self, num_features: int, num_clusters: int, temperature: float = 0.05,
                 momentum: float = 0.1, update: UpdateMode = "mean", distributed: bool = False,
                 proxy_temperature: float = 0.07, cluster_weight: float = 1.0,
                 intra_weight: float = 1.0, inter_weight: float = 0.5,
                 hard_negatives: int = 50, hard_weight: float = 1.0,
                 instance_weight: float = 1.0, instance_temperature: float = 0.05,
                 instance_negatives: int = 50, instance_momentum: float = 0.2) -> None:
        CameraProxyMemory.__init__(
            self, num_features, num_clusters, temperature=temperature, momentum=momentum,
            update=update, distributed=distributed, proxy_temperature=proxy_temperature,
            cluster_weight=cluster_weight, intra_weight=intra_weight,
            inter_weight=inter_weight, hard_negatives=hard_negatives)
        self._init_multi_proxies(hard_weight, instance_weight, instance_temperature,
                                 instance_negatives, instance_momentum)
