"""The unsupervised training loop: extract -> cluster -> memory -> train, every epoch.

Cluster-level contrastive learning (cluster-contrast): each epoch the current model embeds
every training image, the embeddings are clustered into pseudo-identities (k-reciprocal
Jaccard distance + DBSCAN; outliers sit the epoch out), a memory is initialised with one
prototype per cluster, and the model is trained for a fixed number of P x K iterations with
an InfoNCE loss of each sample against all prototypes, the prototypes following the samples
by momentum.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from robustreid.clustering import pseudo_labels
from robustreid.clustering.camera import camera_normalize
from robustreid.clustering.quality import pseudo_label_quality
from robustreid.config import Config, config_to_dict
from robustreid.data.base import ReIDData
from robustreid.data.decoded import BatchAugment, DecodedImages
from robustreid.data.sampler import PseudoIdentitySampler
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from robustreid.engine.checkpoint import load_checkpoint, model_meta, save_checkpoint
from robustreid.evaluation.evaluate import evaluate_features
from robustreid.evaluation.features import embed_decoded
from robustreid.evaluation.ranking import RankingResult
from robustreid.io import atomic_write_text
from robustreid.memory import ClusterMemory, cluster_means
from robustreid.method import SAA, csa_prototypes, select_hard_positives, train_saa

logger = logging.getLogger(__name__)

_SCHEDULER_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before")


@dataclass
class EpochLabels:
    """Pseudo-labels of one epoch: (N,) int64 with -1 for outliers."""

    labels: np.ndarray
    num_clusters: int
    num_outliers: int
    # True in an instance-discrimination warm-up epoch: every sample is its own class, so
    # the memory is plain (mean initialisation and update; CSA/HPS need real clusters).
    instance: bool = False


@dataclass
class TrainState:
    """Everything that must survive a restart besides model/optimiser/scheduler weights."""

    epoch: int = 0  # number of completed epochs
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs unsupervised (or, with ``cfg.train.supervised``, supervised) training.

    Args:
        cfg: the resolved configuration (the trainer reads its sections and hands plain
            values to the algorithms).
        model: the embedding network, (B, 3, H, W) -> (B, D) L2-normalised.
        data: train/query/gallery samples.
        device: where the model runs.
        on_iteration: optional callback ``(epoch, iteration)`` after every training step (used
            by tests to interrupt a run).
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        data: ReIDData,
        device: torch.device,
        on_iteration: Callable[[int, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.device = device
        self.out_dir = Path(cfg.output_dir)
        self.on_iteration = on_iteration
        self.cuda = device.type == "cuda"
        self.model = model.to(device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        )
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
        # True identities of the training split, for diagnostics only (never trained on);
        # None when the split does not carry them (all images share one pid).
        pids = np.array([s.pid for s in data.train], dtype=np.int64)
        self._identities = pids if len(np.unique(pids)) > 1 else None
        self.state = TrainState()
        self._writer = None
        # The self-attention aggregator of CSA/HPS, built at the first epoch that needs it
        # (its size is the feature dimension) and carried over from epoch to epoch.
        self.saa: SAA | None = None

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> TrainState:
        """Train for ``cfg.train.epochs`` epochs; with ``resume``, continue from the last
        checkpoint in the output folder (a fresh start if there is none)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and (self.out_dir / "last.pth").is_file():
            self._restore(self.out_dir / "last.pth")
            logger.info("resumed from %s after epoch %d", self.out_dir / "last.pth",
                        self.state.epoch)
        elif not self.state.history:
            result = self.evaluate()
            self._record({"epoch": 0, **_ranking_metrics(result)})
            logger.info("before training: mAP %.2f%% rank-1 %.2f%%",
                        100 * result.mAP, 100 * result.cmc[0])
        total = self.cfg.train.epochs
        for epoch in range(self.state.epoch + 1, total + 1):
            self._seed_epoch(epoch)
            record = self.train_one_epoch(epoch)
            with warnings.catch_warnings():
                # a skipped epoch made no optimiser step; the schedule still follows epochs
                warnings.filterwarnings("ignore", _SCHEDULER_ORDER_WARNING)
                self.scheduler.step()
            last = epoch == total
            every = self.cfg.train.eval_every
            if last or (every and epoch % every == 0):
                start = time.perf_counter()
                result = self.evaluate()
                record.update(_ranking_metrics(result), time_eval=time.perf_counter() - start)
            self.state.epoch = epoch
            self._record(record)
            self._log_epoch(record)
            self._save(record)
        if self._writer:
            self._writer.close()
        self._writer = None
        return self.state

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of the method: extract, pseudo-label, initialise memory, train."""
        record: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        start = time.perf_counter()
        features = self.extract_train_features()
        record["time_extract"] = time.perf_counter() - start

        start = time.perf_counter()
        epoch_labels = self.assign_labels(features, epoch)
        record.update(time_cluster=time.perf_counter() - start,
                      clusters=epoch_labels.num_clusters, outliers=epoch_labels.num_outliers)
        if self._identities is not None and not epoch_labels.instance:
            start = time.perf_counter()
            record.update(pseudo_label_quality(epoch_labels.labels, self._identities))
            record["time_diagnostics"] = time.perf_counter() - start
        if epoch_labels.num_clusters < 2:
            logger.warning(
                "epoch %d skipped: clustering (eps=%s, min_samples=%d) found %d cluster(s) and "
                "%d outlier(s) among %d samples; at least 2 clusters are needed. If this "
                "persists, change cluster.eps", epoch, self.cfg.cluster.eps,
                self.cfg.cluster.min_samples, epoch_labels.num_clusters,
                epoch_labels.num_outliers, len(epoch_labels.labels),
            )
            record["skipped"] = True
            return record

        start = time.perf_counter()
        memory = self.build_memory(features, epoch_labels)
        record["time_memory"] = time.perf_counter() - start
        start = time.perf_counter()
        record["loss"] = self.train_iterations(epoch, epoch_labels, memory, features)
        record["time_train"] = time.perf_counter() - start
        return record

    # ------------------------------------------------------------------ stages
    def images(self, split: str) -> DecodedImages:
        """The decoded images of ``split`` (train, query or gallery), decoded on first use."""
        if split not in self._decoded:
            self._decoded[split] = DecodedImages(
                getattr(self.data, split), self.cfg.data.height, self.cfg.data.width,
                num_workers=self.cfg.data.num_workers, desc=f"decode {split}")
        return self._decoded[split]

    def _embed(self, split: str) -> torch.Tensor:
        return embed_decoded(
            self.model, self.images(split), batch_size=self.cfg.data.test_batch_size,
            device=self.device, flip=split != "train" and self.cfg.eval.flip,
            channels_last=self.cfg.train.channels_last, desc=f"extract {split}")

    def extract_train_features(self) -> torch.Tensor:
        """(N, D) L2-normalised features of every training image (eval mode, test transform)."""
        return self._embed("train")

    def assign_labels(self, features: torch.Tensor, epoch: int) -> EpochLabels:
        """Pseudo-labels of the training images for ``epoch`` (1-based): the true ids when
        supervised, one class per image during the instance warm-up, else the clustering."""
        if not self.cfg.train.supervised and epoch <= self.cfg.cluster.warmup_epochs:
            n = len(features)
            return EpochLabels(np.arange(n, dtype=np.int64), n, 0, instance=True)
        if self.cfg.train.supervised:
            labels = np.array([s.pid for s in self.data.train], dtype=np.int64)
        else:
            cl = self.cfg.cluster
            if cl.camera_normalize:
                camids = torch.tensor([s.camid for s in self.data.train])
                features = camera_normalize(features, camids)
            labels = pseudo_labels(
                features, eps=cl.eps, min_samples=cl.min_samples, k1=cl.k1, k2=cl.k2,
                knn_method=cl.knn, device=self.device,
            )
        num_clusters = int(labels.max()) + 1 if (labels >= 0).any() else 0
        return EpochLabels(labels, num_clusters, int((labels < 0).sum()))

    def build_memory(self, features: torch.Tensor, epoch_labels: EpochLabels) -> ClusterMemory:
        """A memory with one prototype per cluster, initialised from the cluster members:
        their mean (``memory.init=mean``) or their SAA aggregate (``csa``). SAA is trained on
        this epoch's features first whenever CSA or HPS needs it."""
        mem_cfg = self.cfg.memory
        init, update = self._memory_modes(epoch_labels)
        memory = ClusterMemory(
            features.shape[1], epoch_labels.num_clusters, temperature=mem_cfg.temperature,
            momentum=mem_cfg.momentum, update="hard" if update == "hard" else "mean",
        ).to(self.device)
        labels = torch.as_tensor(epoch_labels.labels)
        if init == "csa" or update == "hps":
            self.train_aggregator(features, labels)
        if init == "csa":
            prototypes = csa_prototypes(self.saa, features.to(self.device),
                                        labels.to(self.device), epoch_labels.num_clusters,
                                        mix=self.cfg.method.csa_mix)
        else:
            prototypes = cluster_means(features, labels, epoch_labels.num_clusters)
        memory.init_prototypes(prototypes)
        return memory

    def train_aggregator(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """CSA: train SAA on the epoch's (frozen) features with the cluster-level
        leave-one-out contrastive loss; SAA's weights carry over between epochs."""
        mc = self.cfg.method
        if self.saa is None:
            self.saa = SAA(features.shape[1], heads=mc.saa_heads, head_dim=mc.saa_head_dim,
                           temperature=mc.saa_temperature).to(self.device)
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.state.epoch)
        return train_saa(
            self.saa, features.to(self.device), labels.to(self.device), steps=mc.csa_steps,
            clusters_per_step=mc.csa_clusters_per_step, lr=mc.csa_lr,
            temperature=self.cfg.memory.temperature, max_members=mc.csa_max_members,
            agreement_temperature=mc.csa_agreement_temperature,
            generator=generator, device=self.device,
        )

    def _memory_modes(self, epoch_labels: EpochLabels) -> tuple[str, str]:
        """(init, update) modes for this epoch: the configured ones, plain ``mean`` in an
        instance warm-up epoch (single-member classes have nothing to aggregate or rank)."""
        if epoch_labels.instance:
            return "mean", "mean"
        return self.cfg.memory.init, self.cfg.memory.update

    def update_memory(self, memory: ClusterMemory, feats: torch.Tensor, targets: torch.Tensor,
                      indices: torch.Tensor, features: torch.Tensor,
                      labels: torch.Tensor, mode: str = "mean") -> None:
        """Momentum update after a step with ``mode``: ``mean``/``hard`` inside the memory
        (its own mode); ``hps``: per pseudo-identity, the hardest positive that SAA still
        accepts as a member."""
        if mode != "hps":
            memory.update(feats, targets)
            return
        mc = self.cfg.method
        chosen, chosen_labels, _ = select_hard_positives(
            self.saa, feats, targets, features, labels, accept_ratio=mc.hps_accept_ratio,
            mode=mc.hps_mode, temperature=mc.hps_temperature, batch_indices=indices,
        )
        memory.momentum_update(chosen, chosen_labels)

    def train_iterations(self, epoch: int, epoch_labels: EpochLabels, memory: ClusterMemory,
                         features: torch.Tensor) -> float:
        """``cfg.train.iters`` P x K steps on the clustered samples; returns the mean loss.

        ``features`` (N, D) are the epoch's extracted features (used by HPS to score batch
        samples against their cluster's members)."""
        tc = self.cfg.train
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
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        train_images = self.images("train")
        _, update_mode = self._memory_modes(epoch_labels)
        keep_t = torch.as_tensor(keep)
        all_features = features.to(self.device)
        labels_t = torch.as_tensor(epoch_labels.labels)
        all_labels = labels_t.to(self.device)
        self.model.train()
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch} train", leave=False,
                   disable=not sys.stderr.isatty())
        for it, index in enumerate(bar, start=1):
            rows = keep_t[index]
            images = train_images.batch(rows).to(self.device, non_blocking=True)
            images = self.augment(images, generator)
            targets = labels_t[rows].to(self.device, non_blocking=True)
            if tc.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            feats, loss = contrastive_step(self.model, memory, images, targets,
                                           self.optimizer, self.scaler, self.amp)
            self.update_memory(memory, feats, targets, rows.to(self.device), all_features,
                               all_labels, mode=update_mode)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if it % tc.log_every == 0 or it == len(batches):
                logger.info("epoch %d iter %d/%d loss %.3f", epoch, it, len(batches),
                            float(np.mean(losses[-tc.log_every:])))
            if self.on_iteration is not None:
                self.on_iteration(epoch, it)
        return float(np.mean(losses))

    def evaluate(self) -> RankingResult:
        """Test mAP/CMC of the current model on the query/gallery split."""
        ev = self.cfg.eval
        return evaluate_features(
            self._embed("query"), self._embed("gallery"), self.data.query, self.data.gallery,
            rerank=ev.rerank, k1=ev.k1, k2=ev.k2, lambda_value=ev.lambda_value,
            max_rank=ev.max_rank,
        )

    # ------------------------------------------------------------------ bookkeeping
    def _seed_epoch(self, epoch: int) -> None:
        """Every random draw of an epoch depends on (seed, epoch) only, so a resumed run
        repeats the uninterrupted one."""
        seed = self.cfg.seed * 100_003 + epoch
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _record(self, record: dict[str, Any]) -> None:
        self.state.history.append(record)
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.state.history)
        atomic_write_text(self.out_dir / "metrics.jsonl", lines)
        writer = self._tensorboard()
        if writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but keep training without it
                logger.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
                self._writer = False
                return None
            self._writer = SummaryWriter(self.out_dir / "tensorboard",
                                         purge_step=self.state.epoch)
        return self._writer or None

    def _log_epoch(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']}/{self.cfg.train.epochs}"]
        if record.get("skipped"):
            parts.append("skipped")
        else:
            parts.append(f"clusters {record['clusters']} outliers {record['outliers']} "
                         f"loss {record['loss']:.3f}")
        if "mAP" in record:
            parts.append(f"mAP {100 * record['mAP']:.2f}% rank-1 {100 * record['rank1']:.2f}%")
        times = " ".join(f"{k[5:]} {record[k]:.1f}s" for k in
                         ("time_extract", "time_cluster", "time_train", "time_eval")
                         if k in record)
        logger.info("%s | %s", " | ".join(parts), times)

    def _save(self, record: dict[str, Any]) -> None:
        config = config_to_dict(self.cfg)
        payload = {
            "epoch": self.state.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_map": self.state.best_map,
            "history": self.state.history,
            "config": config,
            "rng": _rng_state(),
            "saa": None if self.saa is None else self.saa.state_dict(),
            # self-description of the saved model (architecture, input, normalisation, D)
            "meta": model_meta(config["model"], self.cfg.data.height, self.cfg.data.width,
                               getattr(self.model, "feature_dim", 0), IMAGENET_MEAN,
                               IMAGENET_STD),
        }
        if "mAP" in record and record["mAP"] > self.state.best_map:
            self.state.best_map = record["mAP"]
            payload["best_map"] = self.state.best_map
            save_checkpoint(self.out_dir / "best.pth", {
                "epoch": self.state.epoch, "model": payload["model"],
                "metrics": record, "config": payload["config"], "meta": payload["meta"],
            })
            logger.info("new best mAP %.2f%% at epoch %d, saved %s", 100 * record["mAP"],
                        self.state.epoch, self.out_dir / "best.pth")
        save_checkpoint(self.out_dir / "last.pth", payload)

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(epoch=ckpt["epoch"], best_map=ckpt["best_map"],
                                history=list(ckpt["history"]))
        if ckpt.get("saa") is not None:
            mc = self.cfg.method
            self.saa = SAA(ckpt["saa"]["qk"].shape[0], heads=mc.saa_heads,
                           head_dim=mc.saa_head_dim, temperature=mc.saa_temperature)
            self.saa.load_state_dict(ckpt["saa"])
            self.saa.to(self.device)
        _set_rng_state(ckpt["rng"])


def contrastive_step(
    model: nn.Module,
    memory: ClusterMemory,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: bool,
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

    Returns:
        The batch features (``B x D`` float32, detached) for the momentum update, and the loss
        (a detached 0-d tensor).
    """
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        feats = model(images)
    loss = memory(feats.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return feats.detach().float(), loss.detach()


def _ranking_metrics(result: RankingResult) -> dict[str, float]:
    return {"mAP": result.mAP, "rank1": float(result.cmc[0]),
            "rank5": float(result.cmc[min(4, len(result.cmc) - 1)]), "mINP": result.mINP}


def _rng_state() -> dict[str, Any]:
    """Random-generator states as tensors and plain values (safe to load)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
