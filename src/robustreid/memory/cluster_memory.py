"""Cluster-level memory: one L2-normalised prototype per pseudo-identity.

The memory holds a ``C x D`` matrix of unit-norm cluster prototypes (``C`` clusters, ``D``
feature dimensions) as a registered buffer. The training loss is the cluster-level contrastive
(InfoNCE) loss of a batch of unit-norm features against all prototypes; after each optimiser
step the trainer calls :meth:`ClusterMemory.update` to move the prototypes of the batch's
clusters towards the batch features with the momentum rule

    ``c <- m * c + (1 - m) * x``, then ``c <- c / ||c||``.

The update is explicit (it is not hidden inside an autograd ``backward``), runs under
``torch.no_grad()`` and, with ``distributed=True``, first gathers the batch from every rank so
all ranks keep identical prototypes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustreid.distributed import all_gather_padded, get_world_size, is_initialized

UpdateMode = Literal["mean", "hard"]
_UPDATE_MODES: tuple[str, ...] = ("mean", "hard")


def _check_labels(labels: Tensor, length: int, num_clusters: int, name: str,
                  allow_outliers: bool) -> None:
    """Raise ``ValueError`` unless ``labels`` is an integer vector of ``length`` in range."""
    if labels.dim() != 1 or labels.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D tensor of length {length}, got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if length == 0:
        return
    low = -1 if allow_outliers else 0
    bad = (labels < low) | (labels >= num_clusters)
    if bool(bad.any()):
        first = labels[bad][0].item()
        allowed = "-1 (outlier) or " if allow_outliers else ""
        raise ValueError(
            f"{name} must be {allowed}in [0, {num_clusters}) (num_clusters={num_clusters}), "
            f"got {int(bad.sum())} value(s) out of range, e.g. {first}"
        )


def cluster_means(features: Tensor, labels: Tensor, num_clusters: int,
                  allow_empty: bool = False) -> Tensor:
    """L2-normalised mean feature of each cluster.

    Vectorised with ``index_add_`` (no Python loop over clusters).

    Args:
        features: ``N x D`` features (any floating dtype; accumulated in at least float32).
        labels: ``N`` integer cluster labels in ``[0, num_clusters)``; ``-1`` marks an outlier,
            which is ignored.
        num_clusters: ``C``, the number of clusters.
        allow_empty: if ``False`` (default) a cluster without any member raises ``ValueError``;
            if ``True`` its row is all zeros.

    Returns:
        ``C x D`` tensor (dtype ``float32``, or ``float64`` for float64 input) of unit-norm
        cluster means, on the device of ``features``.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be N x D (2-D), got shape {tuple(features.shape)}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    _check_labels(labels, features.shape[0], num_clusters, "labels", allow_outliers=True)
    dtype = torch.promote_types(features.dtype, torch.float32)
    labels = labels.to(device=features.device, dtype=torch.long)
    keep = labels >= 0
    feats = features[keep].to(dtype)
    members = labels[keep]
    sums = torch.zeros(num_clusters, features.shape[1], dtype=dtype, device=features.device)
    sums.index_add_(0, members, feats)
    counts = torch.bincount(members, minlength=num_clusters)
    if not allow_empty:
        empty = (counts == 0).nonzero().flatten()
        if empty.numel() > 0:
            shown = empty[:10].tolist()
            raise ValueError(
                f"{empty.numel()} of {num_clusters} clusters have no member (e.g. {shown}); "
                "pass allow_empty=True to give them zero prototypes"
            )
    means = sums / counts.clamp(min=1).unsqueeze(1).to(dtype)
    return F.normalize(means, dim=1)


class ClusterMemory(nn.Module):
    """Memory of ``C`` unit-norm cluster prototypes with a cluster-level contrastive loss.

    Args:
        num_features: ``D``, feature dimension.
        num_clusters: ``C``, number of clusters (pseudo-identities).
        temperature: softmax temperature ``tau`` of the loss (logits are cosine / tau).
        momentum: ``m`` of the update ``c <- m c + (1 - m) x``; ``0.1`` lets the new sample
            dominate, as in cluster-contrast.
        update: ``"mean"``: every sample of a batch updates its cluster, one after another in
            batch order; ``"hard"``: per cluster only the batch sample least similar to its
            prototype updates it, once.
        distributed: if ``True``, :meth:`update` and :meth:`momentum_update` first all-gather
            inputs and targets across ranks (``torch.distributed`` must be initialised), so
            every rank applies the same updates in the same order (rank 0's rows first).

    Buffers:
        prototypes: ``C x D`` float32, unit-norm rows (zeros until :meth:`init_prototypes`).
        soft_clusters, soft_weights: ``N x K`` int64 / float32 sparse soft targets of the
            ``N`` training samples (empty until :meth:`set_soft_targets`; see there).
    """

    prototypes: Tensor
    soft_clusters: Tensor
    soft_weights: Tensor

    def __init__(self, num_features: int, num_clusters: int, temperature: float = 0.05,
                 momentum: float = 0.1, update: UpdateMode = "mean",
                 distributed: bool = False) -> None:
        super().__init__()
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features}")
        if int(num_clusters) != num_clusters or num_clusters < 1:
            raise ValueError(f"num_clusters must be a positive integer, got {num_clusters}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if update not in _UPDATE_MODES:
            raise ValueError(f"update must be one of {_UPDATE_MODES}, got {update!r}")
        self.num_features = int(num_features)
        self.num_clusters = int(num_clusters)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        # Stored as ``mode``: ``self.update`` is the update method.
        self.mode: UpdateMode = update
        self.distributed = bool(distributed)
        self.register_buffer(
            "prototypes", torch.zeros(self.num_clusters, self.num_features, dtype=torch.float32)
        )
        self.register_buffer("soft_clusters", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("soft_weights", torch.zeros(0, 0, dtype=torch.float32))

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_prototypes(self, prototypes: Tensor) -> None:
        """Set the prototypes to the rows of ``prototypes`` (``C x D``), L2-normalised.

        Raises:
            ValueError: if the shape is not ``(num_clusters, num_features)``.
        """
        expected = (self.num_clusters, self.num_features)
        if tuple(prototypes.shape) != expected:
            raise ValueError(
                f"prototypes must have shape (num_clusters, num_features) = {expected}, "
                f"got {tuple(prototypes.shape)}"
            )
        if not prototypes.dtype.is_floating_point:
            raise ValueError(f"prototypes must be a floating tensor, got dtype {prototypes.dtype}")
        normed = F.normalize(prototypes.detach().to(torch.float32), dim=1)
        self.prototypes.copy_(normed)

    @torch.no_grad()
    def set_soft_targets(self, clusters: Tensor, weights: Tensor) -> None:
        """Train against sparse soft targets instead of one-hot clusters (label refinement).

        Sample ``i`` of the training split gets the target distribution with weight
        ``weights[i, j]`` on cluster ``clusters[i, j]``; :meth:`forward` then computes
        ``-sum_j w_ij log softmax(x_i . p / T)[c_ij]`` for the batch rows ``indices``.

        Args:
            clusters: ``N x K`` integer clusters in ``[0, num_clusters)``.
            weights: ``N x K`` non-negative floats; a row sums to 1, or to 0 for a sample
                that has no target (an outlier: such a sample in a batch is refused).

        Raises:
            ValueError: on shapes, dtypes or values out of range.
        """
        if clusters.dim() != 2 or tuple(weights.shape) != tuple(clusters.shape):
            raise ValueError(f"clusters and weights must both be N x K, got shapes "
                             f"{tuple(clusters.shape)} and {tuple(weights.shape)}")
        if clusters.dtype.is_floating_point or clusters.dtype == torch.bool:
            raise ValueError(f"clusters must be an integer tensor, got dtype {clusters.dtype}")
        if not weights.dtype.is_floating_point:
            raise ValueError(f"weights must be a floating tensor, got dtype {weights.dtype}")
        _check_labels(clusters.flatten(), clusters.numel(), self.num_clusters, "clusters",
                      allow_outliers=False)
        if clusters.numel() and bool((weights < 0).any()):
            raise ValueError("weights must be non-negative")
        sums = weights.to(torch.float64).sum(dim=1)
        bad = ((sums - 1).abs() > 1e-4) & (sums != 0)
        if bool(bad.any()):
            raise ValueError(f"every row of weights must sum to 1 (or 0 for no target), got "
                             f"{int(bad.sum())} row(s) that do not, e.g. {float(sums[bad][0])}")
        device = self.prototypes.device
        self.soft_clusters = clusters.to(device=device, dtype=torch.long).clone()
        self.soft_weights = weights.to(device=device, dtype=torch.float32).clone()

    @property
    def has_soft_targets(self) -> bool:
        """Whether :meth:`set_soft_targets` gave targets that :meth:`forward` uses."""
        return self.soft_weights.numel() > 0

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        # the soft targets' N x K is known only once set: take the saved shape
        for name in ("soft_clusters", "soft_weights"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=current.dtype,
                                                device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ loss
    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """Cluster-level contrastive loss.

        Args:
            inputs: ``B x D`` L2-normalised features (any floating dtype; under autocast the
                matmul runs in the autocast dtype).
            targets: ``B`` int64 cluster indices in ``[0, num_clusters)``.
            indices: ``B`` rows of the samples in the epoch's training split; with soft
                targets set (:meth:`set_soft_targets`) the loss uses their targets (memories
                that keep per-sample state, e.g. per-camera proxies, read them too).

        Returns:
            Scalar: mean over the batch of the cross-entropy of
            ``inputs @ prototypes.T / temperature`` against ``targets`` (float32 for
            float32/fp16/bf16 inputs), or against the soft targets of ``indices`` when set.
            Gradients flow into ``inputs`` only.
        """
        self._check_inputs(inputs, targets)
        if inputs.shape[0] == 0:
            raise ValueError("forward needs a non-empty batch, got 0 rows")
        # float32 at least; under autocast the matmul itself runs in the autocast dtype and
        # its output is cast back up before the temperature scaling and the softmax.
        dtype = torch.promote_types(inputs.dtype, self.prototypes.dtype)
        logits = (inputs.to(dtype) @ self.prototypes.to(dtype).t()).to(dtype)
        logits = logits / self.temperature
        if indices is not None and self.has_soft_targets:
            return self._soft_cross_entropy(logits, indices)
        return F.cross_entropy(logits, targets.to(device=logits.device, dtype=torch.long))

    def _soft_cross_entropy(self, logits: Tensor, indices: Tensor) -> Tensor:
        """Mean over the batch of ``-sum_j w_ij log softmax(logits_i)[c_ij]``."""
        rows = indices.to(device=self.soft_weights.device, dtype=torch.long)
        if rows.shape != (logits.shape[0],):
            raise ValueError(f"indices must be a 1-D tensor of the batch's {logits.shape[0]} "
                             f"rows, got shape {tuple(indices.shape)}")
        if bool(((rows < 0) | (rows >= self.soft_weights.shape[0])).any()):
            raise ValueError(f"indices must be rows of the {self.soft_weights.shape[0]} soft "
                             "targets (the training split)")
        weights = self.soft_weights[rows].to(device=logits.device, dtype=logits.dtype)
        if bool((weights.sum(dim=1) == 0).any()):
            raise ValueError("a batch sample has no soft target (an outlier, or the targets "
                             "were set for other labels)")
        clusters = self.soft_clusters[rows].to(logits.device)
        log_probs = F.log_softmax(logits, dim=1).gather(1, clusters)
        return -(weights * log_probs).sum(dim=1).mean()

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """Momentum-update the prototypes of the batch's clusters (mode ``self.mode``).

        Call after the optimiser step. ``mean``: every row updates its cluster, in batch order
        (identical to a per-sample loop, but vectorised over clusters: one step per occurrence
        index, at most K steps for K samples per cluster). ``hard``: per cluster only the row
        with the lowest cosine similarity to the current prototype updates it (ties: first
        row).

        Args:
            inputs: ``B x D`` features (normally L2-normalised), any floating dtype.
            targets: ``B`` integer cluster indices in ``[0, num_clusters)``.
            indices: ``B`` training-split rows of the samples (unused here, see
                :meth:`forward`).

        Returns:
            The positions of the rows that updated a prototype (int64, in the gathered batch
            when ``distributed``): every row for ``mean``, one per cluster for ``hard``.
        """
        self._check_inputs(inputs, targets)
        inputs, targets = self._gather(inputs, targets)
        if inputs.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=inputs.device)
        if self.mode == "mean":
            occurrence = _occurrence_index(targets)
            for j in range(int(occurrence.max()) + 1):
                rows = occurrence == j
                self._apply_momentum(inputs[rows], targets[rows])
            return torch.arange(inputs.shape[0], device=inputs.device)
        rows = self._hardest_rows(inputs, targets)
        self._apply_momentum(inputs[rows], targets[rows])
        return rows

    @torch.no_grad()
    def momentum_update(self, inputs: Tensor, targets: Tensor) -> None:
        """Apply one momentum step per row: ``c_t <- normalise(m c_t + (1 - m) x)``.

        The primitive behind :meth:`update`; also used by callers that pick their own sample per
        cluster (e.g. hard positive sampling).

        Args:
            inputs: ``n x D`` features, one per cluster to update.
            targets: ``n`` distinct integer cluster indices in ``[0, num_clusters)``.

        Raises:
            ValueError: on bad shapes, out-of-range or repeated targets (repeated targets are
                checked after the distributed gather, i.e. across ranks too).
        """
        self._check_inputs(inputs, targets)
        inputs, targets = self._gather(inputs, targets)
        if targets.numel() != torch.unique(targets).numel():
            raise ValueError(
                "momentum_update needs distinct targets (one row per cluster), got "
                f"{targets.numel()} rows for {torch.unique(targets).numel()} distinct clusters"
            )
        self._apply_momentum(inputs, targets)

    def _apply_momentum(self, inputs: Tensor, targets: Tensor, bank: Tensor | None = None) -> None:
        """Unchecked momentum step; ``targets`` must be distinct. Math in float32 (or wider).

        ``bank``: the ``C x D`` rows to update in place (default: ``self.prototypes``;
        subclasses with a second proxy set pass theirs)."""
        if targets.numel() == 0:
            return
        protos = self.prototypes if bank is None else bank
        dtype = torch.promote_types(protos.dtype, torch.float32)
        idx = targets.to(device=protos.device, dtype=torch.long)
        x = inputs.to(device=protos.device, dtype=dtype)
        c = protos.index_select(0, idx).to(dtype)
        c = self.momentum * c + (1.0 - self.momentum) * x
        c = c / c.norm(dim=1, keepdim=True)
        protos.index_copy_(0, idx, c.to(protos.dtype))

    def _hardest_rows(self, inputs: Tensor, targets: Tensor, bank: Tensor | None = None
                      ) -> Tensor:
        """Per distinct target, the index of the row with the lowest cosine to its prototype
        (its row of ``bank``, default ``self.prototypes``)."""
        protos = self.prototypes if bank is None else bank
        idx = targets.to(device=protos.device, dtype=torch.long)
        x = F.normalize(inputs.to(device=protos.device, dtype=torch.float32), dim=1)
        sims = (x * protos.index_select(0, idx).float()).sum(dim=1)
        lowest = torch.full((self.num_clusters,), float("inf"), device=protos.device)
        lowest.scatter_reduce_(0, idx, sims, reduce="amin")
        n = idx.numel()
        positions = torch.arange(n, device=protos.device)
        candidates = torch.where(sims == lowest[idx], positions, torch.full_like(positions, n))
        first = torch.full((self.num_clusters,), n, dtype=torch.long, device=protos.device)
        first.scatter_reduce_(0, idx, candidates, reduce="amin")
        return first[first < n].to(inputs.device)

    def _gather(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """All-gather ``inputs``/``targets`` over ranks (rank order) if ``distributed``."""
        inputs = inputs.detach()
        targets = targets.to(device=inputs.device, dtype=torch.long)
        if not self.distributed:
            return inputs, targets
        if not is_initialized():
            raise RuntimeError(
                "ClusterMemory(distributed=True) needs torch.distributed to be initialised "
                "(call torch.distributed.init_process_group first), or use distributed=False"
            )
        # batch sizes may differ between ranks (robustreid.distributed pads and trims)
        if get_world_size() > 1:
            inputs = all_gather_padded(inputs.to(torch.float32), "memory update (inputs)")
            targets = all_gather_padded(targets, "memory update (targets)")
        return inputs, targets

    # ------------------------------------------------------------------ checks / repr
    def _check_inputs(self, inputs: Tensor, targets: Tensor) -> None:
        if inputs.dim() != 2 or inputs.shape[1] != self.num_features:
            raise ValueError(
                f"inputs must be B x {self.num_features} (B x num_features), "
                f"got shape {tuple(inputs.shape)}"
            )
        if not inputs.dtype.is_floating_point:
            raise ValueError(f"inputs must be a floating tensor, got dtype {inputs.dtype}")
        _check_labels(targets, inputs.shape[0], self.num_clusters, "targets",
                      allow_outliers=False)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_clusters={self.num_clusters}, "
            f"temperature={self.temperature}, momentum={self.momentum}, update={self.mode!r}, "
            f"distributed={self.distributed}"
            + (f", soft_targets={tuple(self.soft_weights.shape)}" if self.has_soft_targets
               else "")
        )


def _occurrence_index(targets: Tensor) -> Tensor:
    """For each row, how many earlier rows share its target (0 for the first occurrence).

    ``targets``: ``B`` integers -> ``B`` int64. Rows with the same occurrence index have
    distinct targets, and processing occurrence 0, 1, ... reproduces batch order per cluster.
    """
    n = targets.numel()
    sorted_targets, order = torch.sort(targets, stable=True)
    _, counts = torch.unique_consecutive(sorted_targets, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    ranks = torch.arange(n, device=targets.device) - torch.repeat_interleave(starts, counts)
    occurrence = torch.empty_like(ranks)
    occurrence[order] = ranks
    return occurrence
