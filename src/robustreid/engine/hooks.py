"""Observers of the training loop: metrics, logging, diagnostics (after fast-reid's hooks).

The loop (:class:`robustreid.engine.loop.Trainer`) reads like the method (extract ->
pseudo-label -> memory -> train -> evaluate -> checkpoint); everything that only watches lives
here, as hooks it calls at fixed points. A hook gets what it needs as arguments (the
:class:`EpochContext`, the :class:`StepContext`, the finished record), may add keys to the
epoch's ``record`` (the epoch's line of ``metrics.jsonl``), and never calls back into the loop,
dispatches hooks or runs a collective: evaluation and checkpoints are stages of the loop, not
hooks. Hooks must not draw from the shared random generators of random, numpy and torch
(exact resume depends on their state).

Under a process group every process runs every hook (every process holds the same labels,
memory and records); only the main process writes files and logs epochs.

Order of the calls in :meth:`robustreid.engine.loop.Trainer.fit`::

    on_record (the epoch-0 evaluation, on a fresh start), before_train
    per epoch: after_pseudo_labels, after_memory_init, after_step (per step),
               after_epoch_train, after_epoch, then on_record (the finished record)
    after_train
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustreid.clustering.label_free import cross_camera_fraction
from robustreid.clustering.labellers import EpochLabels
from robustreid.clustering.quality import (
    identity_centres,
    majority_identities,
    mean_angle_degrees,
    pseudo_label_quality,
)
from robustreid.distributed import is_main_process
from robustreid.io import atomic_write_text
from robustreid.memory import ClusterMemory, cluster_means
from robustreid.metric_names import RAW_QUALITY_OF

logger = logging.getLogger(__name__)


@dataclass
class EpochContext:
    """What one epoch has produced so far.

    Attributes:
        epoch: 1-based epoch.
        record: the epoch's metrics (hooks add keys).
        features: (N, D) features of the training split extracted at the epoch's start.
        labels: the epoch's pseudo-labels (refined, when a refiner runs: the labels trained
            on).
        memory: the epoch's memory (None before its initialisation).
        raw_labels: the clustering's labels before refinement (None when not refined).
    """

    epoch: int
    record: dict[str, Any]
    features: torch.Tensor
    labels: EpochLabels
    memory: ClusterMemory | None = None
    raw_labels: EpochLabels | None = None


@dataclass
class StepContext:
    """One training step: ``iteration`` (1-based), ``indices`` (B,) of the batch samples in
    the training split, ``targets`` (B,) their clusters, ``updated`` the batch positions of the
    samples that moved a prototype, ``loss`` the step's loss."""

    iteration: int
    indices: torch.Tensor
    targets: torch.Tensor
    updated: torch.Tensor
    loss: float


class HookBase:
    """A callback of the training loop; override what you need."""

    def before_train(self) -> None:
        pass

    def after_pseudo_labels(self, ctx: EpochContext) -> None:
        pass

    def after_memory_init(self, ctx: EpochContext) -> None:
        pass

    def after_step(self, ctx: EpochContext, step: StepContext) -> None:
        pass

    def after_epoch_train(self, ctx: EpochContext) -> None:
        pass

    def after_epoch(self, record: dict[str, Any]) -> None:
        """The epoch is trained (and evaluated when scheduled); ``record`` may still grow."""

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``record`` is final and the last item of ``history`` (every record so far)."""

    def after_train(self) -> None:
        pass


class MetricsWriter(HookBase):
    """Every record to ``out_dir/metrics.jsonl`` (rewritten atomically) and TensorBoard."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._writer: Any = None

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not is_main_process():
            return
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        atomic_write_text(self.out_dir / "metrics.jsonl", lines)
        writer = self._tensorboard(record["epoch"])
        if writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()

    def after_train(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    def _tensorboard(self, epoch: int) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but keep training without it
                logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
                self._writer = False
                return None
            self._writer = SummaryWriter(self.out_dir / "tensorboard", purge_step=epoch)
        return self._writer or None


class CameraSpread(HookBase):
    """How many cameras the pseudo-identities link: adds ``lf_cross_camera`` (the fraction of
    the clustered samples whose cluster holds images of at least two cameras, see
    :func:`robustreid.clustering.label_free.cross_camera_fraction`) of the clustering's labels
    (before any refinement) to the record of every clustered epoch. Needs no identities.

    Args:
        camids: (N,) camera of every training image (at least two cameras).
    """

    def __init__(self, camids: np.ndarray) -> None:
        self.camids = np.asarray(camids, dtype=np.int64)

    def after_pseudo_labels(self, ctx: EpochContext) -> None:
        # the loop's label-free signal (train.select_by) has already recorded the same value
        if not ctx.labels.instance and "lf_cross_camera" not in ctx.record:
            labels = (ctx.raw_labels if ctx.raw_labels is not None else ctx.labels).labels
            ctx.record["lf_cross_camera"] = cross_camera_fraction(labels, self.camids)


class EpochLogger(HookBase):
    """One log line per epoch: clusters, loss, the chosen eps and the label-free score (when
    recorded), test metrics, phase times."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if record["epoch"] == 0 or not is_main_process():
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        if record.get("skipped"):
            parts.append("skipped")
        else:
            parts.append(f"clusters {record['clusters']} outliers {record['outliers']} "
                         f"loss {record['loss']:.3f}")
        if "eps" in record:  # cluster.eps: auto
            parts.append(f"eps {record['eps']:.2f}")
        if "k1" in record:  # cluster.k1: auto
            parts.append(f"k1 {record['k1']}")
        if "label_free_score" in record:
            parts.append(f"label-free score {record['label_free_score']:.3f} (model after "
                         f"epoch {record['epoch'] - 1})")
        if "mAP" in record:
            parts.append(f"mAP {100 * record['mAP']:.2f}% rank-1 {100 * record['rank1']:.2f}%")
        times = " ".join(f"{k[5:]} {record[k]:.1f}s" for k in
                         ("time_extract", "time_cluster", "time_train", "time_eval")
                         if k in record)
        logger.info("%s | %s", " | ".join(parts), times)


class IterationCallback(HookBase):
    """Calls ``fn(epoch, iteration)`` after every training step (tests interrupt runs)."""

    def __init__(self, fn: Callable[[int, int], None]) -> None:
        self.fn = fn

    def after_step(self, ctx: EpochContext, step: StepContext) -> None:
        self.fn(ctx.epoch, step.iteration)


class MechanismDiagnostics(HookBase):
    """What the clustering and the memory did, measured against the true identities.

    The identities are only read here, never trained on. Per epoch (not in instance warm-up
    epochs) it adds to the record: the pseudo-label quality (``pl_*``, see
    :func:`robustreid.clustering.quality.pseudo_label_quality`) of the labels trained on
    (refined, when a refiner runs; then also ``pl_raw_*``, the clustering's own, see
    :data:`robustreid.metric_names.RAW_QUALITY_KEYS`), and the memory diagnostics of
    :data:`robustreid.metric_names.MEMORY_DIAGNOSTICS`. Identity centres are the
    normalised means of each identity's features in the epoch's extraction; a cluster's
    majority identity is its most frequent true identity. Its own cost is
    ``time_diagnostics`` (seconds).

    Args:
        identities: (N,) true identity of every training image.
    """

    def __init__(self, identities: np.ndarray) -> None:
        self.identities = np.asarray(identities, dtype=np.int64)
        self._ids = torch.as_tensor(self.identities)
        self._seconds = 0.0
        self._active = False

    def after_pseudo_labels(self, ctx: EpochContext) -> None:
        self._seconds, self._active = 0.0, not ctx.labels.instance
        if not self._active:
            return
        start = time.perf_counter()
        labels = ctx.labels
        ctx.record.update(pseudo_label_quality(labels.labels, self.identities))
        if ctx.raw_labels is not None:  # the clustering's labels, before refinement
            raw = pseudo_label_quality(ctx.raw_labels.labels, self.identities)
            ctx.record.update({f"pl_raw_{key[3:]}": raw[key] for key in RAW_QUALITY_OF})
        majority = majority_identities(labels.labels, self.identities, labels.num_clusters)
        ids, centres = identity_centres(ctx.features, self.identities)
        # per cluster, the row of its majority identity's centre (-1: empty cluster)
        rows = np.where(majority >= 0, np.searchsorted(ids, majority), -1)
        self._majority = torch.as_tensor(majority)
        self._centre_rows = torch.as_tensor(rows)
        self._centres = centres
        self._updates = self._mislabeled = self._batch = self._batch_mislabeled = 0
        self._seconds += time.perf_counter() - start

    def _angle(self, prototypes: torch.Tensor) -> float:
        keep = self._centre_rows >= 0
        return mean_angle_degrees(prototypes.detach().cpu()[keep],
                                  self._centres.cpu()[self._centre_rows[keep]])

    def after_memory_init(self, ctx: EpochContext) -> None:
        if not self._active or ctx.memory is None:
            return
        start = time.perf_counter()
        ctx.record["mem_init_angle"] = self._angle(ctx.memory.prototypes)
        labels = torch.as_tensor(ctx.labels.labels)
        means = cluster_means(ctx.features.cpu(), labels, ctx.labels.num_clusters,
                              allow_empty=True)
        ctx.record["mem_init_angle_mean"] = self._angle(means)
        self._seconds += time.perf_counter() - start

    def after_step(self, ctx: EpochContext, step: StepContext) -> None:
        if not self._active:
            return
        start = time.perf_counter()
        indices, targets = step.indices.cpu(), step.targets.cpu()
        wrong = self._ids[indices] != self._majority[targets]
        used = step.updated.cpu()
        self._batch += len(indices)
        self._batch_mislabeled += int(wrong.sum())
        self._updates += len(used)
        self._mislabeled += int(wrong[used].sum())
        self._seconds += time.perf_counter() - start

    def after_epoch_train(self, ctx: EpochContext) -> None:
        if not self._active or ctx.memory is None:
            return
        start = time.perf_counter()
        ctx.record["mem_end_angle"] = self._angle(ctx.memory.prototypes)
        ctx.record["upd_count"] = self._updates
        ctx.record["upd_mislabeled_fraction"] = self._mislabeled / max(1, self._updates)
        ctx.record["upd_batch_mislabeled_fraction"] = self._batch_mislabeled / max(1, self._batch)
        self._seconds += time.perf_counter() - start

    def after_epoch(self, record: dict[str, Any]) -> None:
        if self._active:
            record["time_diagnostics"] = self._seconds
        self._active = False
