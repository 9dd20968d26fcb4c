"""The unsupervised training loop: extract -> pseudo-label -> memory -> train, every epoch.

Cluster-level contrastive learning (cluster-contrast): each epoch the current model embeds
every training image, the embeddings are pseudo-labelled (outliers sit the epoch out), a
memory is initialised from the clusters, and the model is trained for a fixed number of
P x K steps against the memory, which follows the samples. The loop gets every part as an
object (built from the configuration by :func:`robustreid.build.build_trainer`) and a frozen
:class:`LoopSettings`; it never reads a configuration.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robustreid.clustering.label_free import label_free_signals
from robustreid.clustering.labellers import PseudoLabeller
from robustreid.data.decoded import BatchAugment, sample_keys
from robustreid.data.sampler import epoch_batches
from robustreid.distributed import broadcast_buffers, is_main_process, replicas_agree, run_on_main
from robustreid.engine.checkpointer import LABEL_FREE_FINAL, LABEL_FREE_METRIC, Checkpointer
from robustreid.engine.extraction import Evaluator, Extractor, SplitImages
from robustreid.engine.hooks import EpochContext, HookBase, StepContext
from robustreid.engine.memory_stage import MemoryStage
from robustreid.engine.rundir import RunDirectory
from robustreid.engine.state import TrainState, seed_epoch
from robustreid.engine.step import TrainStep
from robustreid.engine.stopping import StopFlag
from robustreid.errors import TrainingDiverged
from robustreid.memory.strategies import MemoryUpdate

logger = logging.getLogger(__name__)

_SCHEDULER_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before")


@dataclass(frozen=True)
class LoopSettings:
    """The plain values the loop runs by: ``epochs``; per epoch ``iters`` steps of
    ``batch_size`` = P x ``num_instances`` images (``prefer_cross_camera``: one instance per
    camera first); ``seed`` of every draw; evaluation every ``eval_every`` epochs and after the
    last (0: the last only); a log line every ``log_every`` steps; ``channels_last`` inputs;
    ``sync_bn`` (without it, rank 0's BatchNorm statistics are broadcast after each step);
    ``check_replicas`` (a debugging aid: after each step every process's weights and memory
    are compared by checksum); ``out_dir``, the run's folder."""

    epochs: int
    iters: int
    batch_size: int
    num_instances: int
    seed: int
    out_dir: Path
    prefer_cross_camera: bool = True
    eval_every: int = 10
    log_every: int = 50
    channels_last: bool = False
    sync_bn: bool = True
    check_replicas: bool = False


class Trainer:
    """Runs the epochs. ``model`` is the plain model (saved without a ``module.`` prefix);
    ``step.model`` is what the steps run through (the DDP wrapper, or the model itself).
    ``camids``: (N,) camera of every training image; ``evaluator``: None without a
    query/gallery split (then ``last.pth`` is the trained model). ``label_free``: compute the
    label-free signal (:func:`robustreid.clustering.label_free.label_free_signals`) after
    every clustering; with a checkpointer whose metric is ``label_free_score`` it also keeps
    ``best.pth`` by it, and scores the final model by one more extraction and clustering."""

    def __init__(self, settings: LoopSettings, model: torch.nn.Module, device: torch.device,
                 camids: np.ndarray, images: SplitImages, extractor: Extractor,
                 labeller: PseudoLabeller, memory_stage: MemoryStage, step: TrainStep,
                 augment: BatchAugment, scheduler: Any, checkpointer: Checkpointer,
                 evaluator: Evaluator | None = None, hooks: list[HookBase] | None = None,
                 label_free: bool = False) -> None:
        self.settings, self.model, self.device, self.camids = settings, model, device, camids
        self.images, self.extractor, self.labeller = images, extractor, labeller
        self.memory_stage, self.step, self.augment = memory_stage, step, augment
        self.scheduler, self.checkpointer, self.evaluator = scheduler, checkpointer, evaluator
        self.hooks = list(hooks or [])
        self.label_free = label_free
        self.state = TrainState()
        self.stop = StopFlag()
        self.replica_checks = 0

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def fit(self, resume: bool = False, overwrite: bool = False,
            run: RunDirectory | None = None) -> TrainState:
        """Train for ``settings.epochs`` epochs, owning the output folder for the whole run
        (:class:`RunDirectory`; ``resume``/``overwrite`` as there; ``run``: a folder already
        held, which stays open). SIGINT/SIGTERM stop after the current step with
        :class:`~robustreid.errors.RunInterrupted` (``last.pth`` holds the last finished
        epoch; ``resume`` repeats the interrupted one exactly); a NaN or infinite loss with
        :class:`~robustreid.errors.TrainingDiverged`. Under a process group rank 0 alone holds
        the folder and reads the checkpoint, which every process restores."""
        held = [run]

        def start_on_main() -> tuple[dict[str, Any] | None, Path | None]:
            if held[0] is None:
                held[0] = RunDirectory.open(self.settings.out_dir, self.checkpointer.config,
                                            resume=resume, overwrite=overwrite,
                                            upgrade=self.checkpointer.upgrade)
            return held[0].checkpoint, held[0].resume_path

        checkpoint, resume_path = run_on_main(start_on_main, "opening the output folder")
        try:
            if checkpoint is not None:
                self.state = self.checkpointer.restore(checkpoint)
                logger.info("resumed from %s after epoch %d", resume_path, self.state.epoch)
            with self.stop.watch():
                self.images.decode_all()
                if self.evaluator is not None and not self.state.history:
                    self._finish({"epoch": 0, **self.evaluator()})
                    logger.info("before training: mAP %.2f%% rank-1 %.2f%%",
                                100 * self.state.history[0]["mAP"],
                                100 * self.state.history[0]["rank1"])
                self._call("before_train")
                for epoch in range(self.state.epoch + 1, self.settings.epochs + 1):
                    self._check_stop(epoch, "before the epoch")
                    seed_epoch(self.settings.seed, epoch)
                    record = self.train_one_epoch(epoch)
                    with warnings.catch_warnings():
                        # a skipped epoch made no optimiser step; the schedule follows epochs
                        warnings.filterwarnings("ignore", _SCHEDULER_ORDER_WARNING)
                        self.scheduler.step()
                    self.state.epoch = epoch
                    self._evaluate(record)
                    if epoch == self.settings.epochs:
                        self._score_final_model(record)
                    self._call("after_epoch", record)
                    self._finish(record)
                self._call("after_train")
        finally:
            if run is None and held[0] is not None:
                held[0].close()
        return self.state

    def _evaluate(self, record: dict[str, Any]) -> None:
        epoch, every = record["epoch"], self.settings.eval_every
        if self.evaluator is not None and (epoch == self.settings.epochs
                                           or (every and epoch % every == 0)):
            start = time.perf_counter()
            record.update(self.evaluator(), time_eval=time.perf_counter() - start)

    def _finish(self, record: dict[str, Any]) -> None:
        """The record joins the history; a trained epoch is checkpointed; hooks see it."""
        self.state.history.append(record)
        if record["epoch"] > 0:
            self.checkpointer.save(self.state, record)
        self._call("on_record", record, self.state.history)

    def _check_stop(self, epoch: int, where: str) -> None:
        self.stop.check(epoch, where, self.state.epoch, self.checkpointer.last)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of the method: extract, pseudo-label, initialise memory, train."""
        record: dict[str, Any] = {"epoch": epoch,
                                  "lr": self.step.optimizer.param_groups[0]["lr"]}
        start = time.perf_counter()
        features = self.extractor.train_features()
        record["time_extract"] = time.perf_counter() - start
        start = time.perf_counter()
        # one clustering (rank 0), the same labels on every process
        raw = run_on_main(lambda: self.labeller(features, epoch),
                          f"pseudo-labelling of epoch {epoch}")
        features = features.float()  # the memory stage works in float32
        # the labels trained on: batches, prototypes, updates and loss all use them
        labels, soft = self.memory_stage.refine(features, raw, record)
        record.update(time_cluster=time.perf_counter() - start,
                      clusters=labels.num_clusters, outliers=labels.num_outliers)
        record.update(raw.info)  # what the labeller chose (eps="auto"), if anything
        if self.label_free and not raw.instance:  # scores the clustering, before refinement
            self._label_free(raw.labels, record)
        self._check_stop(epoch, "after pseudo-labelling")
        ctx = EpochContext(epoch, record, features, labels,
                           raw_labels=raw if soft is not None else None)
        self._call("after_pseudo_labels", ctx)
        if labels.num_clusters < 2:
            describe = getattr(self.labeller, "describe", None)
            logger.warning(
                "epoch %d skipped: clustering (%s) found %d cluster(s) and %d outlier(s) "
                "among %d samples; at least 2 clusters are needed. If this persists, change "
                "cluster.eps", epoch, describe() if describe else type(self.labeller).__name__,
                labels.num_clusters, labels.num_outliers, len(labels.labels))
            record["skipped"] = True
            return record
        start = time.perf_counter()
        ctx.memory, update = self.memory_stage(features, labels, epoch, record, soft)
        record["time_memory"] = time.perf_counter() - start
        self._call("after_memory_init", ctx)
        start = time.perf_counter()
        record["loss"] = self.train_iterations(ctx, update)
        record.update(update.epoch_stats())
        record["time_train"] = time.perf_counter() - start
        self._call("after_epoch_train", ctx)
        return record

    def _label_free(self, labels: np.ndarray, record: dict[str, Any]) -> None:
        """The label-free signal of the clustering at the start of ``record``'s epoch, which
        scores the model after the previous epoch; ``best.pth`` follows it when selected."""
        start = time.perf_counter()
        values = label_free_signals(labels, self.state.previous_labels, self.camids)
        self.state.previous_labels = np.array(labels, dtype=np.int64)
        record.update(values, time_label_free=time.perf_counter() - start)
        score = values.get(LABEL_FREE_METRIC)
        if score is not None and self.checkpointer.save_best_before_epoch(self.state, score,
                                                                          record):
            record["best_model_epoch"] = self.state.epoch

    def _score_final_model(self, record: dict[str, Any]) -> None:
        """When ``best.pth`` follows the label-free score: the model after the last epoch is
        scored too (one more extraction and clustering), as ``label_free_score_final``."""
        if not self.label_free or self.checkpointer.metric != LABEL_FREE_METRIC \
                or self.state.previous_labels is None:
            return
        start = time.perf_counter()
        features = self.extractor.train_features()
        epoch = self.settings.epochs + 1  # the clustering the next epoch would have used
        labels = run_on_main(lambda: self.labeller(features, epoch),
                             "pseudo-labelling of the final model")
        values = label_free_signals(labels.labels, self.state.previous_labels, self.camids)
        record[LABEL_FREE_FINAL] = values[LABEL_FREE_METRIC]
        record["time_label_free_final"] = time.perf_counter() - start

    def train_iterations(self, ctx: EpochContext, update: MemoryUpdate) -> float:
        """``settings.iters`` P x K steps on the clustered samples; returns the mean loss."""
        s, labels = self.settings, ctx.labels
        keep = np.flatnonzero(labels.labels >= 0)
        per_batch = min(s.batch_size // s.num_instances, labels.num_clusters)
        batch_size = per_batch * s.num_instances
        if batch_size < s.batch_size:
            logger.warning("epoch %d: only %d clusters, batches of %d x %d = %d instead of %d",
                           ctx.epoch, labels.num_clusters, per_batch, s.num_instances,
                           batch_size, s.batch_size)
        batches = epoch_batches(labels.labels[keep], self.camids[keep].tolist(), batch_size,
                                s.num_instances, s.iters, s.seed, ctx.epoch,
                                s.prefer_cross_camera)
        share = self.step.share(batch_size)
        positions = np.arange(share.start, share.stop)
        train_images, keep_t = self.images("train"), torch.as_tensor(keep)
        labels_t = torch.as_tensor(labels.labels)
        self.step.model.train()
        losses: list[float] = []
        bar = tqdm(batches, desc=f"epoch {ctx.epoch} train", leave=False,
                   disable=not (sys.stderr.isatty() and is_main_process()))
        for it, index in enumerate(bar, start=1):
            rows = keep_t[index[share]]
            images = train_images.batch(rows).to(self.device, non_blocking=True)
            # each image's augmentation from (seed, epoch, step, position in the batch)
            images = self.augment(images, sample_keys(s.seed, ctx.epoch, it, positions))
            targets = labels_t[rows].to(self.device, non_blocking=True)
            if s.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            out = self.step(ctx.memory, update, images, targets, rows, batch_size)
            if self.step.world_size > 1 and not s.sync_bn:  # BatchNorm statistics of rank 0
                broadcast_buffers(self.model)
            if s.check_replicas:
                self._check_replicas(ctx, it)
            losses.append(out.loss)  # the whole batch's: the same on every process
            self._check_finite(ctx.epoch, it, out.loss)
            bar.set_postfix(loss=f"{out.loss:.3f}", refresh=False)
            if it % s.log_every == 0 or it == len(batches):
                logger.info("epoch %d iter %d/%d loss %.3f", ctx.epoch, it, len(batches),
                            float(np.mean(losses[-s.log_every:])))
            self._call("after_step", ctx,
                       StepContext(it, out.rows, out.targets, out.updated, out.loss))
            self._check_stop(ctx.epoch, f"after step {it}/{len(batches)}")
        return float(np.mean(losses))

    def _check_finite(self, epoch: int, it: int, loss: float) -> None:
        if math.isfinite(loss):
            return
        kept = (f"{self.checkpointer.last} (epoch {self.state.epoch}) is kept as the last "
                "good checkpoint" if self.state.epoch else "no checkpoint had been written yet")
        group = self.step.optimizer.param_groups[0]
        lr = group.get("initial_lr", group["lr"])
        raise TrainingDiverged(f"epoch {epoch} step {it}: the loss is {loss}; the run is "
                               f"stopped and {kept}. Lower train.lr (now {lr}) or check the data")

    def _check_replicas(self, ctx: EpochContext, it: int) -> None:
        """Every process holds bit-identical weights, BatchNorm statistics and memory."""
        assert ctx.memory is not None
        tensors = [*self.model.state_dict().values(), ctx.memory.prototypes]
        replicas_agree(tensors, f"model and memory after epoch {ctx.epoch} step {it}")
        self.replica_checks += 1
