"""The unsupervised training loop: extract -> cluster -> memory -> train, every epoch.

Cluster-level contrastive learning (cluster-contrast): each epoch the current model embeds
every training image, the embeddings are clustered into pseudo-identities (k-reciprocal
Jaccard distance + DBSCAN; outliers sit the epoch out), a memory is initialised with one
prototype per cluster, and the model is trained for a fixed number of P x K iterations with
an InfoNCE loss of each sample against all prototypes, the prototypes following the samples
by momentum.
"""

from __future__ import annotations

import logging
import math
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robustreid.clustering.labellers import (
    ClusteringLabeller,
    EpochLabels,
    InstanceWarmup,
    PseudoLabeller,
    SupervisedLabeller,
)
from robustreid.config import Config, check_config, config_to_dict
from robustreid.data.base import ReIDData
from robustreid.data.decoded import BatchAugment, DecodedImages, sample_keys
from robustreid.data.sampler import PseudoIdentitySampler
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from robustreid.distributed import (
    all_gather_object,
    all_gather_padded,
    all_reduce_max,
    batch_share,
    broadcast_buffers,
    gather_round_robin,
    get_rank,
    get_world_size,
    is_initialized,
    is_main_process,
    run_on_main,
    wrap_model,
)
from robustreid.engine.checkpoint import model_meta
from robustreid.engine.hooks import (
    CheckpointHook,
    EpochContext,
    EpochLogger,
    EvaluationHook,
    HookBase,
    IterationCallback,
    MechanismDiagnostics,
    MetricsWriter,
    StepContext,
)
from robustreid.engine.rundir import RunDirectory
from robustreid.errors import RunInterrupted, TrainingDiverged, UserError
from robustreid.evaluation.evaluate import evaluate_features
from robustreid.evaluation.features import embed_decoded
from robustreid.evaluation.ranking import RankingResult
from robustreid.memory import ClusterMemory
from robustreid.memory.strategies import (
    Aggregator,
    CSAInit,
    HardUpdate,
    HPSUpdate,
    InBatchCSA,
    MeanInit,
    MeanUpdate,
    MemoryUpdate,
    PrototypeInit,
    TrimmedHardUpdate,
)
from robustreid.method import SAA

logger = logging.getLogger(__name__)

_SCHEDULER_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before")


@dataclass
class TrainState:
    """Everything that must survive a restart besides model/optimiser/scheduler weights."""

    epoch: int = 0  # number of completed epochs
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in ``epoch`` of a run with ``seed``: an epoch depends on
    (seed, epoch) only, so a resumed run repeats the uninterrupted one."""
    return seed * 100_003 + epoch


def labeller_from_config(cfg: Config, data: ReIDData, device: torch.device) -> PseudoLabeller:
    """The pseudo-labeller ``cfg`` asks for: the true ids (``train.supervised``), else DBSCAN
    on the Jaccard distance (or InfoMap, ``cluster.method``), after ``cluster.warmup_epochs``
    instance epochs. ``cluster.knn=approx`` (the older name) selects ``ivf``."""
    if cfg.train.supervised:
        if not data.labelled:
            raise UserError(f"train.supervised=true needs the true identities, but data set "
                             f"{data.name!r} has images of unknown identity")
        return SupervisedLabeller([s.pid for s in data.train])
    cl = cfg.cluster
    labeller: PseudoLabeller = ClusteringLabeller(
        cl.eps, cl.min_samples, cl.k1, cl.k2,
        knn_method="ivf" if cl.knn == "approx" else cl.knn,
        camids=[s.camid for s in data.train] if cl.camera_normalize else None, device=device,
        method=cl.method, feature_dtype=cl.feature_dtype,
        knn_options={"reduce_dim": cl.knn_dim, "projection": cl.knn_projection,
                     "candidates": cl.knn_candidates},
        infomap_min_sim=cl.infomap_min_sim, infomap_min_size=cl.infomap_min_size)
    if cl.warmup_epochs:
        labeller = InstanceWarmup(cl.warmup_epochs, labeller)
    return labeller


def aggregator_from_config(cfg: Config, device: torch.device | str = "cpu") -> Aggregator:
    """The SAA holder of CSA/HPS with the ``method`` section's settings (untrained)."""
    saa, csa = cfg.method.saa, cfg.method.csa
    return Aggregator(
        heads=saa.heads, head_dim=saa.head_dim, temperature=saa.temperature,
        steps=csa.steps, clusters_per_step=csa.clusters_per_step, lr=csa.lr,
        max_members=csa.max_members, agreement_temperature=csa.agreement_temperature,
        loss_temperature=saa.loss_temperature, device=device)


def strategies_from_config(cfg: Config, aggregator: Aggregator, feature_dim: int
                           ) -> tuple[PrototypeInit, MemoryUpdate]:
    """The prototype initialisation and update ``cfg.memory`` names (``feature_dim``: D of
    the model, for the in-batch CSA block)."""
    mc = cfg.method
    init: PrototypeInit = (CSAInit(aggregator, mix=mc.csa.mix) if cfg.memory.init == "csa"
                           else MeanInit())
    update: MemoryUpdate
    if cfg.memory.update == "hps":
        update = HPSUpdate(aggregator, accept_ratio=mc.hps.accept_ratio, mode=mc.hps.mode,
                           temperature=mc.hps.temperature)
    elif cfg.memory.update == "joint_csa":
        update = InBatchCSA(feature_dim, heads=mc.saa.heads, head_dim=mc.saa.head_dim,
                            temperature=mc.saa.temperature, weight=mc.joint_csa.weight)
    else:
        update = {"hard": HardUpdate, "trimmed_hard": TrimmedHardUpdate}.get(
            cfg.memory.update, MeanUpdate)()
    return init, update


class Trainer:
    """Runs unsupervised (or, with ``cfg.train.supervised``, supervised) training.

    The epoch is the method (:meth:`train_one_epoch`); evaluation, metrics, logging,
    checkpoints and diagnostics are hooks (:mod:`robustreid.engine.hooks`); pseudo-labelling
    and the memory's initialisation and update are objects passed in (or built from ``cfg``).

    Args:
        cfg: the resolved configuration (the trainer reads its sections and hands plain
            values to the algorithms).
        model: the embedding network, (B, 3, H, W) -> (B, D) L2-normalised.
        data: train/query/gallery samples.
        device: where the model runs (under torchrun: this process's device,
            :func:`robustreid.distributed.local_device`).
        on_iteration: optional callback ``(epoch, iteration)`` after every training step (used
            by tests to interrupt a run).
        labeller: the pseudo-labeller (default: :func:`labeller_from_config`).
        init, update: prototype initialisation and update strategies (default:
            :func:`strategies_from_config`); instance warm-up epochs always use the mean.
        hooks: extra hooks, called after the default ones.

    Under a process group (torchrun; :mod:`robustreid.distributed`) the same code trains
    on every process, with a result that does not depend on their number: each process
    embeds a share of the images (gathered back in data set order), rank 0 pseudo-labels and
    initialises the memory (SAA included) and hands the result to all, every step's global
    P x K batch (drawn from (seed, epoch)) is split in contiguous shares, each image
    augmented from (seed, epoch, step, position in the global batch), BatchNorm normalises
    over the global batch (``train.sync_bn``), gradients are averaged by
    ``DistributedDataParallel`` and every process applies the same memory update to the
    gathered batch, in global batch order. Only rank 0 writes files. ``self.model`` is always
    the plain model (saved without a ``module.`` prefix); ``self.train_model`` is what the
    steps run through (the DDP wrapper, or the model itself).
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        data: ReIDData,
        device: torch.device,
        on_iteration: Callable[[int, int], None] | None = None,
        labeller: PseudoLabeller | None = None,
        init: PrototypeInit | None = None,
        update: MemoryUpdate | None = None,
        hooks: list[HookBase] | None = None,
    ) -> None:
        check_config(cfg)  # rules between fields, before any expensive work
        self.world_size, self.rank = get_world_size(), get_rank()
        if cfg.train.batch_size < self.world_size:
            raise UserError(f"train.batch_size={cfg.train.batch_size} is split over "
                            f"{self.world_size} processes: it must be at least their number")
        if cfg.cluster.features_on_disk and self.world_size > 1:
            raise UserError("cluster.features_on_disk=true streams one process's features to "
                            f"disk; with {self.world_size} processes every process gathers "
                            "them in memory: set cluster.features_on_disk=false")
        self.cfg = cfg
        self.data = data
        self.device = device
        self.out_dir = Path(cfg.output_dir)
        self.cuda = device.type == "cuda"
        self.model = model.to(device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.labeller = labeller if labeller is not None else labeller_from_config(
            cfg, data, device)
        # The self-attention aggregator of CSA/HPS: built at the first epoch that needs it
        # and carried over from epoch to epoch.
        self.aggregator = aggregator_from_config(cfg, device)
        default_init, default_update = strategies_from_config(
            cfg, self.aggregator, getattr(self.model, "feature_dim", 0))
        self.init = init if init is not None else default_init
        self.update = update if update is not None else default_update
        if self.world_size > 1 and isinstance(self.update, nn.Module):
            raise UserError(f"memory.update={self.update.name} trains a module with the "
                            "backbone on each process's share of the batch, which is not "
                            "supported with more than one process: use mean, hard, hps or "
                            "trimmed_hard, or one process")
        # Under a process group: SyncBN + DDP (one process included, so that the code path
        # is the same at every world size); the parameters stay the model's own.
        self.train_model: nn.Module = self.model
        if is_initialized():
            self.train_model = wrap_model(self.model, device, sync_bn=cfg.train.sync_bn)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if isinstance(self.update, nn.Module):  # a strategy trained with the backbone
            self.update.to(device)
            params += list(self.update.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.train.step_size, gamma=cfg.train.gamma
        )
        self.amp = self.cuda and cfg.train.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.test_transform = build_test_transform(cfg.data.height, cfg.data.width)
        self.augment = BatchAugment(flip_p=cfg.train.flip_p, padding=cfg.train.padding,
                                    erasing_p=cfg.train.erasing_p)
        # Every split is decoded and resized once per run, on first use.
        self._decoded: dict[str, DecodedImages] = {}
        self.state = TrainState()
        self._stop_signal: int | None = None  # set by SIGINT/SIGTERM during fit
        self.hooks: list[HookBase] = []
        # Without query/gallery there is nothing to measure: no mAP, no best.pth; last.pth
        # (the last epoch) is the trained model.
        if data.has_test_split:
            self.hooks.append(EvaluationHook(cfg.train.eval_every, cfg.train.epochs))
        else:
            logger.info("data set %r has no query/gallery and no data.eval_dataset is set: "
                        "training is not evaluated; %s is the model of the last epoch",
                        data.name, self.out_dir / "last.pth")
        # True identities of the training split, for diagnostics only (never trained on);
        # skipped when the split does not carry them (unknown or all images share one pid).
        pids = np.array([s.pid for s in data.train], dtype=np.int64)
        if data.labelled and len(np.unique(pids)) > 1:
            self.hooks.append(MechanismDiagnostics(pids))
        self.hooks += [MetricsWriter(self.out_dir), EpochLogger(cfg.train.epochs),
                       CheckpointHook(self.out_dir)]
        if on_iteration is not None:
            self.hooks.append(IterationCallback(on_iteration))
        self.hooks += hooks or []

    @property
    def saa(self) -> SAA | None:
        """The aggregator's SAA module (None until CSA or HPS first needed it)."""
        return self.aggregator.saa

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, overwrite: bool = False,
            run: RunDirectory | None = None) -> TrainState:
        """Train for ``cfg.train.epochs`` epochs.

        The output folder is owned for the whole run (:class:`RunDirectory`: a lock; a
        folder holding a run is refused unless ``resume`` or ``overwrite``). With
        ``resume``, training continues from the folder's checkpoint (``last.pth``, or the
        previous one if it is damaged; a fresh start if there is none), after checking that
        no setting defining the run has changed.

        SIGINT and SIGTERM (when called from the main thread) stop the run after the
        current step with :class:`~robustreid.errors.RunInterrupted`: ``last.pth`` holds
        the last finished epoch and ``resume`` repeats the interrupted one exactly. A NaN
        or infinite loss stops it with :class:`~robustreid.errors.TrainingDiverged`,
        keeping the last good checkpoint.

        Under a process group only rank 0 holds the folder and reads the checkpoint, which
        it hands to every process; a refusal there stops every process; a signal to any
        process stops all of them after the same step.

        Args:
            resume, overwrite: see :class:`RunDirectory`.
            run: an already started :class:`RunDirectory` (the command line starts it
                before loading data, so a refused start costs nothing); its checkpoint is
                restored, and it stays open. Rank 0's only, under a process group.
        """
        owned = run is None
        held = [run]

        def start_on_main() -> tuple[dict[str, Any] | None, Path | None]:
            if held[0] is None:
                held[0] = RunDirectory.open(self.out_dir, config_to_dict(self.cfg),
                                            resume=resume, overwrite=overwrite)
            return held[0].checkpoint, held[0].resume_path

        checkpoint, resume_path = run_on_main(start_on_main, "opening the output folder")
        run = held[0]  # None on the other ranks
        try:
            if checkpoint is not None:
                self._restore(checkpoint)
                logger.info("resumed from %s after epoch %d", resume_path, self.state.epoch)
            with self._stop_on_signals():
                self._decode_splits()
                self._call("before_train")
                for epoch in range(self.state.epoch + 1, self.cfg.train.epochs + 1):
                    self._check_stop(epoch, "before the epoch")
                    self._seed_epoch(epoch)
                    record = self.train_one_epoch(epoch)
                    with warnings.catch_warnings():
                        # a skipped epoch made no optimiser step; the schedule still
                        # follows epochs
                        warnings.filterwarnings("ignore", _SCHEDULER_ORDER_WARNING)
                        self.scheduler.step()
                    self.state.epoch = epoch
                    self._call("after_epoch", record)
                    self.record(record)
                self._call("after_train")
        finally:
            if owned and run is not None:
                run.close()
        return self.state

    # ------------------------------------------------------------------ stopping
    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM set a flag that the loop checks after every step and phase; a
        second signal stops at once (KeyboardInterrupt). Only from the main thread (where
        Python delivers signals); elsewhere the process's handlers stay as they are."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            logger.warning("%s received: stopping after the current step (send it again to "
                           "stop at once)", signal.Signals(signum).name)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _check_stop(self, epoch: int, where: str) -> None:
        """Raise :class:`RunInterrupted` if a stop signal arrived."""
        signum = self._stop_signal
        if self.world_size > 1:  # every process stops at the same point, or none does
            signum = all_reduce_max(signum or 0, "agreeing on a stop signal") or None
        if signum is None:
            return
        last = self.out_dir / "last.pth"
        kept = (f"{last} holds epoch {self.state.epoch}" if self.state.epoch else
                "no epoch had finished, so there is no checkpoint yet")
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} in epoch {epoch} ({where}); {kept}. "
            "Rerun with --resume to continue: the interrupted epoch is repeated exactly",
            signum)

    def _decode_splits(self) -> None:
        """Decode every split up front, so that an unreadable image stops the run before
        the first evaluation or epoch (decoding is needed by both anyway)."""
        for split in ("train", "query", "gallery"):
            if getattr(self.data, split):
                self.images(split)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of the method: extract, pseudo-label, initialise memory, train."""
        record: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        start = time.perf_counter()
        features = self.extract_train_features()
        record["time_extract"] = time.perf_counter() - start

        start = time.perf_counter()
        # one clustering (rank 0), the same labels on every process
        epoch_labels = run_on_main(lambda: self.assign_labels(features, epoch),
                                   f"pseudo-labelling of epoch {epoch}")
        # the memory stage works in float32 (a no-op for float32 features, also on disk)
        features = features.float()
        record.update(time_cluster=time.perf_counter() - start,
                      clusters=epoch_labels.num_clusters, outliers=epoch_labels.num_outliers)
        self._check_stop(epoch, "after pseudo-labelling")
        ctx = EpochContext(epoch, record, features, epoch_labels)
        self._call("after_pseudo_labels", ctx)
        if epoch_labels.num_clusters < 2:
            describe = getattr(self.labeller, "describe", None)
            logger.warning(
                "epoch %d skipped: clustering (%s) found %d cluster(s) and %d outlier(s) "
                "among %d samples; at least 2 clusters are needed. If this persists, change "
                "cluster.eps", epoch, describe() if describe else type(self.labeller).__name__,
                epoch_labels.num_clusters, epoch_labels.num_outliers, len(epoch_labels.labels),
            )
            record["skipped"] = True
            return record

        start = time.perf_counter()
        init, update = self.memory_strategies(epoch_labels)
        ctx.memory = self.build_memory(features, epoch_labels, init, update, record)
        record["time_memory"] = time.perf_counter() - start
        self._call("after_memory_init", ctx)
        start = time.perf_counter()
        record["loss"] = self.train_iterations(ctx, update)
        record.update(update.epoch_stats())
        record["time_train"] = time.perf_counter() - start
        self._call("after_epoch_train", ctx)
        return record

    # ------------------------------------------------------------------ stages
    def images(self, split: str) -> DecodedImages:
        """The decoded images of ``split`` (train, query or gallery), decoded on first use."""
        if split not in self._decoded:
            self._decoded[split] = DecodedImages(
                getattr(self.data, split), self.cfg.data.height, self.cfg.data.width,
                num_workers=self.cfg.data.num_workers, desc=f"decode {split}")
            if self.cfg.data.images_on_device:
                self._decoded[split].to(self.device)
        return self._decoded[split]

    def _embed(self, split: str) -> torch.Tensor:
        """(N, D) features of ``split``; under a process group each process embeds every
        ``world``-th batch and all get every row, in data set order."""
        images, batch_size = self.images(split), self.cfg.data.test_batch_size
        features = embed_decoded(
            self.model, images, batch_size=batch_size,
            device=self.device, flip=split != "train" and self.cfg.eval.flip,
            channels_last=self.cfg.train.channels_last, desc=f"extract {split}",
            shard=(self.rank, self.world_size),
            progress=sys.stderr.isatty() and is_main_process())
        return gather_round_robin(features, len(images), batch_size,
                                  what=f"gathering the {split} features")

    def extract_train_features(self) -> torch.Tensor:
        """(N, D) L2-normalised features of every training image (eval mode, test transform).

        With ``cluster.features_on_disk`` they are streamed batch by batch into
        ``<output_dir>/train_features.npy`` (``cluster.feature_dtype``) and returned as a
        tensor over that memory map."""
        cl = self.cfg.cluster
        if not cl.features_on_disk:
            return self._embed("train")
        return embed_decoded(
            self.model, self.images("train"), batch_size=self.cfg.data.test_batch_size,
            device=self.device, flip=False, channels_last=self.cfg.train.channels_last,
            desc="extract train", out=self.out_dir / "train_features.npy",
            out_dtype=np.float16 if cl.feature_dtype == "float16" else np.float32)

    def assign_labels(self, features: torch.Tensor, epoch: int) -> EpochLabels:
        """Pseudo-labels of the training images for ``epoch`` (1-based), by the labeller."""
        return self.labeller(features, epoch)

    def memory_strategies(self, epoch_labels: EpochLabels) -> tuple[PrototypeInit, MemoryUpdate]:
        """(init, update) strategies for this epoch: the configured ones, plain mean in an
        instance warm-up epoch (single-member classes have nothing to aggregate or rank)."""
        if epoch_labels.instance:
            return MeanInit(), MeanUpdate()
        return self.init, self.update

    def build_memory(self, features: torch.Tensor, epoch_labels: EpochLabels,
                     init: PrototypeInit, update: MemoryUpdate,
                     record: dict[str, Any]) -> ClusterMemory:
        """A memory with one prototype per cluster, initialised by ``init``; SAA is trained
        on this epoch's features first whenever ``init`` or ``update`` needs it. The
        strategies' statistics go into ``record``."""
        mem_cfg = self.cfg.memory
        memory = ClusterMemory(
            features.shape[1], epoch_labels.num_clusters, temperature=mem_cfg.temperature,
            momentum=mem_cfg.momentum, update=update.memory_mode,
        ).to(self.device)
        labels = torch.as_tensor(epoch_labels.labels)
        needs_saa = init.needs_saa or update.needs_saa

        def initial_prototypes() -> tuple[torch.Tensor, dict[str, Any], Any]:
            stats: dict[str, Any] = {}
            if needs_saa:
                generator = torch.Generator().manual_seed(
                    epoch_seed(self.cfg.seed, self.state.epoch))
                stats.update(self.aggregator.fit(features, labels, generator))
            prototypes, init_stats = init(features, labels, epoch_labels.num_clusters)
            stats.update(init_stats)
            return prototypes, stats, self.aggregator.state_dict() if needs_saa else None

        # SAA trained and the prototypes computed once (rank 0), handed to every process
        prototypes, stats, saa_state = run_on_main(initial_prototypes,
                                                   "memory initialisation")
        if needs_saa and not is_main_process():
            self.aggregator.load_state_dict(saa_state)
        record.update(stats)
        memory.init_prototypes(prototypes)
        update.begin_epoch(features, labels)
        return memory

    def train_iterations(self, ctx: EpochContext, update: MemoryUpdate) -> float:
        """``cfg.train.iters`` P x K steps on the clustered samples, each followed by the
        memory update; returns the mean loss."""
        tc = self.cfg.train
        epoch, epoch_labels, memory = ctx.epoch, ctx.labels, ctx.memory
        assert memory is not None
        keep = np.flatnonzero(epoch_labels.labels >= 0)
        camids = [self.data.train[i].camid for i in keep]
        per_batch = min(tc.batch_size // tc.num_instances, epoch_labels.num_clusters)
        batch_size = per_batch * tc.num_instances
        if batch_size < tc.batch_size:
            logger.warning("epoch %d: only %d clusters, batches of %d x %d = %d instead of %d",
                           epoch, epoch_labels.num_clusters, per_batch, tc.num_instances,
                           batch_size, tc.batch_size)
        sampler = PseudoIdentitySampler(
            epoch_labels.labels[keep].tolist(), camids,
            num_instances=tc.num_instances, batch_size=batch_size, num_iterations=tc.iters,
            seed=self.cfg.seed, prefer_cross_camera=tc.prefer_cross_camera,
        )
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler), dtype=torch.long)
        batches = order[: len(order) // batch_size * batch_size].view(-1, batch_size)
        # this process's rows of every global batch, and the loss weight that makes DDP's
        # average of the processes' gradients the gradient of the global batch's mean loss
        share = batch_share(batch_size, self.rank, self.world_size)
        positions = np.arange(share.start, share.stop)
        loss_scale = self.world_size * len(positions) / batch_size
        train_images = self.images("train")
        keep_t = torch.as_tensor(keep)
        labels_t = torch.as_tensor(epoch_labels.labels)
        self.train_model.train()
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch} train", leave=False,
                   disable=not (sys.stderr.isatty() and is_main_process()))
        for it, index in enumerate(bar, start=1):
            rows = keep_t[index[share]]
            images = train_images.batch(rows).to(self.device, non_blocking=True)
            # each image's augmentation from (seed, epoch, step, position in the batch)
            images = self.augment(images, sample_keys(self.cfg.seed, epoch, it, positions))
            targets = labels_t[rows].to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            feats, loss = contrastive_step(self.train_model, memory, images, targets,
                                           self.optimizer, self.scaler, self.amp,
                                           extra_loss=getattr(update, "loss", None),
                                           loss_scale=loss_scale)
            # every process updates its memory from the whole batch, in global batch order
            feats, targets, rows, loss_value = self._global_batch(feats, targets, rows, loss,
                                                                  batch_size)
            updated = update(memory, feats, targets, rows.to(self.device))
            if self.world_size > 1 and not tc.sync_bn:  # BatchNorm statistics of rank 0
                broadcast_buffers(self.model)
            losses.append(loss_value)  # the global batch's: the same on every process
            if not math.isfinite(losses[-1]):
                kept = (f"{self.out_dir / 'last.pth'} (epoch {self.state.epoch}) is kept as "
                        "the last good checkpoint" if self.state.epoch else
                        "no checkpoint had been written yet")
                raise TrainingDiverged(
                    f"epoch {epoch} step {it}: the loss is {losses[-1]}; the run is stopped "
                    f"and {kept}. Lower train.lr (now {tc.lr}) or check the data")
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if it % tc.log_every == 0 or it == len(batches):
                logger.info("epoch %d iter %d/%d loss %.3f", epoch, it, len(batches),
                            float(np.mean(losses[-tc.log_every:])))
            self._call("after_step", ctx, StepContext(it, rows, targets, updated, losses[-1]))
            self._check_stop(epoch, f"after step {it}/{len(batches)}")
        return float(np.mean(losses))

    def _global_batch(self, feats: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                      loss: torch.Tensor, batch_size: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """The step's features (B, D), cluster targets (B,), training-split rows (B,) of the
        whole global batch, in its order, and its mean loss, from this process's share
        (one all-gather; the inputs themselves with one process)."""
        if self.world_size == 1:
            return feats, targets, rows, loss.item()
        n = feats.shape[0]
        packed = torch.cat([feats.double(), targets.double()[:, None],
                            rows.to(feats.device).double()[:, None],
                            (loss.double() / batch_size).expand(n)[:, None]], dim=1)
        shares = [batch_share(batch_size, r, self.world_size) for r in range(self.world_size)]
        sizes = [share.stop - share.start for share in shares]
        packed = all_gather_padded(packed, "gathering the batch for the memory update", sizes)
        d = feats.shape[1]
        return (packed[:, :d].float(), packed[:, d].long(), packed[:, d + 1].long(),
                float(packed[:, d + 2].sum()))

    def evaluate(self) -> RankingResult:
        """Test mAP/CMC of the current model on the query/gallery split.

        Raises:
            ValueError: the data has no query/gallery split.
        """
        if not self.data.has_test_split:
            raise UserError(f"data set {self.data.name!r} has no query/gallery to evaluate "
                             "on: set data.eval_dataset")
        ev = self.cfg.eval
        query, gallery = self._embed("query"), self._embed("gallery")
        return run_on_main(lambda: evaluate_features(
            query, gallery, self.data.query, self.data.gallery,
            rerank=ev.rerank, k1=ev.k1, k2=ev.k2, lambda_value=ev.lambda_value,
            max_rank=ev.max_rank,
        ), "ranking")

    def evaluate_metrics(self) -> dict[str, float]:
        """:meth:`evaluate` as the record's ranking keys (fractions in [0, 1])."""
        return _ranking_metrics(self.evaluate())

    # ------------------------------------------------------------------ bookkeeping
    def record(self, record: dict[str, Any]) -> None:
        """Append a finished epoch record to the history and hand it to every hook."""
        self.state.history.append(record)
        self._call("on_record", record)

    def _seed_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg.seed, epoch)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything ``last.pth`` holds: weights, optimiser, schedule, history, RNG, SAA."""
        config = config_to_dict(self.cfg)
        payload: dict[str, Any] = {
            "epoch": self.state.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_map": self.state.best_map,
            "history": self.state.history,
            "config": config,
            "rng": self._rng_state(),
            "saa": self.aggregator.state_dict(),
            "update": (self.update.state_dict() if isinstance(self.update, nn.Module)
                       else None),
            # self-description of the saved model (architecture, input, normalisation, D)
            "meta": model_meta(config["model"], self.cfg.data.height, self.cfg.data.width,
                               getattr(self.model, "feature_dim", 0), IMAGENET_MEAN,
                               IMAGENET_STD),
        }
        if self.world_size > 1:  # every process's generators (restored at the same size)
            payload["rng_ranks"] = all_gather_object(self._rng_state(), "gathering the "
                                                     "random states")
        return payload

    def _rng_state(self) -> dict[str, Any]:
        # under a process group only this process's GPU (touching the others would create
        # a CUDA context on each of them in every process)
        return _rng_state(self.device if is_initialized() and self.cuda else None)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Load a checkpoint payload written by :meth:`checkpoint_payload`."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(epoch=ckpt["epoch"], best_map=ckpt["best_map"],
                                history=list(ckpt["history"]))
        self.aggregator.load_state_dict(ckpt.get("saa"))
        if isinstance(self.update, nn.Module) and ckpt.get("update") is not None:
            self.update.load_state_dict(ckpt["update"])
        own = ckpt.get("rng_ranks")
        _set_rng_state(own[self.rank] if own and len(own) == self.world_size else ckpt["rng"],
                       self.device if is_initialized() and self.cuda else None)


def contrastive_step(
    model: nn.Module,
    memory: ClusterMemory,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: bool,
    extra_loss: Callable[[ClusterMemory, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    loss_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of the backbone: InfoNCE of the batch against the cluster memory.

    Args:
        model: the backbone (in train mode).
        memory: the epoch's cluster memory (its prototypes are not updated here).
        images: ``B x 3 x H x W`` batch, on the model's device and in its memory format.
        targets: ``B`` cluster indices.
        optimizer: the backbone's optimiser.
        scaler: gradient scaler (enabled exactly when ``amp``).
        amp: float16 autocast of the forward pass (CUDA).
        extra_loss: optional ``(memory, feats (B, D), targets) -> loss`` added to the
            InfoNCE loss (a memory strategy trained with the backbone, e.g. in-batch CSA).
        loss_scale: factor of the loss that is backpropagated (not of the one returned);
            under DDP ``world * B_local / B_global``, so that the averaged gradients are
            those of the global batch's mean loss when the shares differ in size.

    Returns:
        The batch features (``B x D`` float32, detached) for the momentum update, and the loss
        (a detached 0-d tensor).
    """
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        feats = model(images)
    loss = memory(feats.float(), targets)
    if extra_loss is not None:
        loss = loss + extra_loss(memory, feats.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss if loss_scale == 1.0 else loss * loss_scale).backward()
    scaler.step(optimizer)
    scaler.update()
    return feats.detach().float(), loss.detach()


def _ranking_metrics(result: RankingResult) -> dict[str, float]:
    return {"mAP": result.mAP, "rank1": float(result.cmc[0]),
            "rank5": float(result.cmc[min(4, len(result.cmc) - 1)]), "mINP": result.mINP}


def _rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """Random-generator states as tensors and plain values (safe to load); CUDA: every
    device's, or ``cuda_device``'s only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if cuda_device is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if cuda_device is not None and "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], cuda_device)
    elif "cuda" in state and torch.cuda.is_available() and cuda_device is None:
        torch.cuda.set_rng_state_all(state["cuda"])
