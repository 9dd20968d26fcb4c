"""P x K sampling of pseudo-identities for one training epoch of a fixed number of iterations.

Every batch holds ``P = batch_size // num_instances`` distinct pseudo-identities with
``K = num_instances`` samples each, consecutive in the index stream, so a ``DataLoader`` with
``batch_size=P*K`` and this sampler (and ``drop_last`` irrelevant: the stream length is an exact
multiple) yields P x K batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class PseudoIdentitySampler(Sampler[int]):
    """Identity-balanced P x K sampler over pseudo-labels, preferring cross-camera instances.

    Identities are taken from consecutive random permutations of all identities (so each is
    used once per cycle, i.e. equally often up to one), reordered at cycle boundaries so that no
    batch repeats an identity. For each identity slot, ``K`` instances are drawn:

    * ``prefer_cross_camera=True``: first one sample per distinct camera of the identity (the
      cameras in random order, a random sample within each camera), then the identity's
      remaining samples in random order;
    * ``prefer_cross_camera=False``: the identity's samples in random order.

    The first ``K`` of that order are used (no repeats); an identity with fewer than ``K``
    samples contributes all of them once, then the shortfall is drawn uniformly with
    replacement from its samples.

    The draw is a pure function of ``(seed, epoch)``: call :meth:`set_epoch` at the start of
    every epoch; iterating twice in the same epoch gives the same stream, and a resumed run that
    sets the same epoch reproduces the same batches. The epoch's generator is seeded with the
    entropy ``[seed, epoch]`` (NumPy ``SeedSequence``), so distinct ``(seed, epoch)`` pairs
    never share a stream.

    Args:
        labels: ``N`` pseudo-labels (any integers); a negative label (``-1``) marks an outlier,
            which is never sampled. Yielded indices index this array.
        camids: ``N`` camera ids (any integers).
        num_instances: ``K``, instances per identity in a batch.
        batch_size: ``P * K``; must be a multiple of ``num_instances``.
        num_iterations: batches per epoch.
        seed: non-negative base seed.
        prefer_cross_camera: draw one instance per camera first (see above).

    Raises:
        ValueError: on mismatched lengths, non-integer labels, ``batch_size`` not divisible by
            ``num_instances``, non-positive sizes, or fewer than ``P`` non-outlier identities.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray,
                 num_instances: int = 16, batch_size: int = 256, num_iterations: int = 200,
                 seed: int = 0, prefer_cross_camera: bool = True) -> None:
        labels_arr = _as_int_vector(labels, "labels")
        cams_arr = _as_int_vector(camids, "camids")
        if labels_arr.shape[0] != cams_arr.shape[0]:
            raise ValueError(
                f"labels and camids must have the same length, got {labels_arr.shape[0]} and "
                f"{cams_arr.shape[0]}"
            )
        for name, value in (("num_instances", num_instances), ("batch_size", batch_size),
                            ("num_iterations", num_iterations)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if batch_size % num_instances != 0:
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of num_instances "
                f"({num_instances})"
            )
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")

        self.num_instances = int(num_instances)
        self.batch_size = int(batch_size)
        self.num_identities_per_batch = self.batch_size // self.num_instances
        self.num_iterations = int(num_iterations)
        self.seed = int(seed)
        self.prefer_cross_camera = bool(prefer_cross_camera)
        self.epoch = 0

        # Non-outlier samples grouped by identity: ``_members`` holds dataset indices sorted by
        # (identity, index); identity ``i`` owns ``_members[_starts[i]:_starts[i] + _sizes[i]]``.
        valid = np.flatnonzero(labels_arr >= 0)
        identities, dense = np.unique(labels_arr[valid], return_inverse=True)
        order = np.argsort(dense, kind="stable")
        self._members = valid[order]
        self._member_identity = dense[order].astype(np.int64)
        # Camera ids made dense per sample, used only to find each (identity, camera) group.
        _, cam_dense = np.unique(cams_arr[self._members], return_inverse=True)
        self._member_camera = cam_dense.astype(np.int64)
        self._num_cameras = int(cam_dense.max()) + 1 if cam_dense.size else 1
        self.num_identities = int(identities.shape[0])
        self._sizes = np.bincount(self._member_identity, minlength=self.num_identities)
        self._starts = np.cumsum(self._sizes) - self._sizes
        if self.num_identities < self.num_identities_per_batch:
            raise ValueError(
                f"need at least P = batch_size // num_instances = {self.batch_size} // "
                f"{self.num_instances} = {self.num_identities_per_batch} non-outlier "
                f"identities, got {self.num_identities} (from {labels_arr.shape[0]} samples, "
                f"{labels_arr.shape[0] - valid.shape[0]} outliers)"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw :meth:`__iter__` yields (non-negative integer)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of indices per epoch: ``num_iterations * batch_size``."""
        return self.num_iterations * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def epoch_indices(self) -> np.ndarray:
        """The epoch's index stream as an int64 array of length ``len(self)``.

        Reshaped to ``(num_iterations, P, K)`` it gives, per batch, ``P`` distinct identities
        times ``K`` instances.
        """
        rng = np.random.default_rng([self.seed, self.epoch])
        n_ids = self.num_identities
        p = self.num_identities_per_batch
        slots = self.num_iterations * p
        n_cycles = -(-slots // n_ids)
        identity_stream = self._identity_stream(rng, n_cycles, slots)
        draws = np.empty((n_cycles, n_ids, self.num_instances), dtype=np.int64)
        for cycle in range(n_cycles):
            draws[cycle] = self._draw_instances(rng)
        # Slot s belongs to cycle s // n_ids and uses that cycle's draw for its identity.
        cycle_of_slot = np.arange(slots) // n_ids
        stream = draws[cycle_of_slot, identity_stream]
        return stream.reshape(-1)

    def _identity_stream(self, rng: np.random.Generator, n_cycles: int, slots: int) -> np.ndarray:
        """``slots`` identity ids: concatenated permutations, no repeat within any batch.

        Where a batch straddles two permutations, the identities of the earlier permutation's
        tail are moved (stably) to the end of the next one; since there are at least ``P``
        identities, the head of the next permutation then avoids them.
        """
        n_ids = self.num_identities
        p = self.num_identities_per_batch
        perms = np.argsort(rng.random((n_cycles, n_ids)), axis=1)
        for cycle in range(1, n_cycles):
            tail = (cycle * n_ids) % p  # identities of the previous cycle in the open batch
            if tail == 0:
                continue
            used = np.zeros(n_ids, dtype=bool)
            used[perms[cycle - 1, n_ids - tail:]] = True
            nxt = perms[cycle]
            perms[cycle] = np.concatenate([nxt[~used[nxt]], nxt[used[nxt]]])
        return perms.reshape(-1)[:slots]

    def _draw_instances(self, rng: np.random.Generator) -> np.ndarray:
        """One draw of ``K`` dataset indices for every identity: ``num_identities x K``."""
        k = self.num_instances
        n = self._members.shape[0]
        ident = self._member_identity
        # Sorting by "integer group key + 0.5 * uniform" orders by group, then randomly within
        # it; the 0.5 factor keeps rounding from ever carrying a sample into the next group.
        if self.prefer_cross_camera:
            # The first sample (by a random key) of each (identity, camera) group comes first.
            group = ident * self._num_cameras + self._member_camera
            by_group = np.argsort(group + 0.5 * rng.random(n))
            group_sorted = group[by_group]
            later = np.empty(n, dtype=bool)
            later[by_group[0]] = False
            later[by_group[1:]] = group_sorted[1:] == group_sorted[:-1]
            order = np.argsort(2 * ident + later + 0.5 * rng.random(n))
        else:
            order = np.argsort(ident + 0.5 * rng.random(n))
        ranked = self._members[order]  # per identity: contiguous block in preferred order
        sizes = self._sizes[:, None]
        position = np.arange(k)[None, :]
        # Short identities: all members once, then uniform draws with replacement.
        extra = rng.integers(0, sizes, size=(self.num_identities, k))
        offset = np.where(position < sizes, position, extra)
        return ranked[self._starts[:, None] + offset]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(identities={self.num_identities}, "
            f"samples={self._members.shape[0]}, P={self.num_identities_per_batch}, "
            f"K={self.num_instances}, num_iterations={self.num_iterations}, seed={self.seed}, "
            f"epoch={self.epoch}, prefer_cross_camera={self.prefer_cross_camera})"
        )


def _as_int_vector(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; ``ValueError`` if not 1-D integers."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def epoch_batches(labels: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray,
                  batch_size: int, num_instances: int, num_iterations: int, seed: int,
                  epoch: int, prefer_cross_camera: bool = True) -> torch.Tensor:
    """The P x K batches of one epoch, as rows into ``labels``: ``(S, batch_size)`` int64
    with ``S`` the number of whole batches the :class:`PseudoIdentitySampler` of
    ``(seed, epoch)`` yields (``num_iterations``). Arguments as for the sampler."""
    sampler = PseudoIdentitySampler(
        np.asarray(labels).tolist(), camids, num_instances=num_instances,
        batch_size=batch_size, num_iterations=num_iterations, seed=seed,
        prefer_cross_camera=prefer_cross_camera)
    sampler.set_epoch(epoch)
    order = torch.as_tensor(list(sampler), dtype=torch.long)
    return order[: len(order) // batch_size * batch_size].view(-1, batch_size)
