"""The one place that turns a :class:`~robustreid.config.Config` into objects.

Every ``build_*`` function reads the configuration and hands plain values to the library's
classes and functions; nothing below this module (the loop in :mod:`robustreid.engine`, the
algorithms) reads a configuration. Override a builder to change one part (fast-reid's
``DefaultTrainer.build_*``), or pass the part to :func:`build_trainer`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustreid.checkpoint import model_meta
from robustreid.clustering.labellers import (
    ClusteringLabeller,
    InstanceWarmup,
    PseudoLabeller,
    SupervisedLabeller,
)
from robustreid.config import Config, check_config, config_to_dict, upgrade_config_dict
from robustreid.data.base import (
    DatasetError,
    ReIDData,
    build_dataset,
    check_image_headers,
    with_test_split,
)
from robustreid.data.decoded import BatchAugment
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from robustreid.distributed import get_rank, get_world_size, is_initialized, wrap_model
from robustreid.engine.checkpointer import LABEL_FREE_METRIC, Checkpointer
from robustreid.engine.extraction import Evaluator, Extractor, SplitImages
from robustreid.engine.hooks import (
    CameraSpread,
    EpochLogger,
    HookBase,
    IterationCallback,
    MechanismDiagnostics,
    MetricsWriter,
)
from robustreid.engine.loop import LoopSettings, Trainer
from robustreid.engine.memory_stage import MemoryFactory, MemoryStage, Refiner
from robustreid.engine.step import TrainStep
from robustreid.errors import UserError
from robustreid.memory import MEMORIES, REFINERS
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
from robustreid.models import build_model_from_spec

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------- data and model
def build_data(cfg: Config) -> ReIDData:
    """The data set ``cfg.data`` names, with the query and gallery of ``data.eval_dataset``
    (read from ``data.eval_root``, default ``data.root``, with ``data.eval_options``) when
    that is set; image headers (or whole images) checked as ``data.check_images`` asks.

    Raises:
        DatasetError: as :func:`~robustreid.data.build_dataset`, or ``eval_options`` without
            ``eval_dataset``, or an image that does not read.
    """
    dc = cfg.data
    full = dc.check_images == "full"
    data = build_dataset(dc.dataset, dc.root, verify_images=full, **dc.options)
    if dc.eval_dataset:
        test = build_dataset(dc.eval_dataset, dc.eval_root or dc.root, verify_images=full,
                             **dc.eval_options)
        data = with_test_split(data, test)
    elif dc.eval_options or dc.eval_root:
        raise DatasetError("data.eval_root/data.eval_options are set but data.eval_dataset "
                           "is empty: expected the name of the evaluation data set")
    if dc.check_images == "header":
        for split in ("train", "query", "gallery"):
            check_image_headers(getattr(data, split), split, workers=max(4, dc.num_workers))
    return data


def build_model(cfg: Config, state_dict: dict[str, Any] | None = None) -> nn.Module:
    """The model ``cfg.model`` describes, with ``state_dict`` (trained weights) if given
    (then no pretrained weights are read)."""
    pretrained = "none" if state_dict is not None else None
    model = build_model_from_spec(config_to_dict(cfg)["model"], pretrained=pretrained)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


# ------------------------------------------------------------------------- the method's parts
def build_labeller(cfg: Config, data: ReIDData, device: torch.device) -> PseudoLabeller:
    """The true ids (``train.supervised``), else DBSCAN on the Jaccard distance (or InfoMap,
    ``cluster.method``), after ``cluster.warmup_epochs`` instance epochs."""
    if cfg.train.supervised:
        if not data.labelled:
            raise UserError(f"train.supervised=true needs the true identities, but data set "
                            f"{data.name!r} has images of unknown identity")
        return SupervisedLabeller([s.pid for s in data.train])
    cl = cfg.cluster
    cameras = [s.camid for s in data.train]
    if cl.intra_camera_k1 is not None and len(set(cameras)) < 2:
        raise UserError(f"cluster.intra_camera_k1={cl.intra_camera_k1} (camera-aware ranking "
                        f"lists) needs images from several cameras, but the training split of "
                        f"{data.name!r} has {len(set(cameras))} camera(s): use "
                        "cluster.intra_camera_k1=null, or give the images their camera ids "
                        "(README, 'Your own images')")
    labeller: PseudoLabeller = ClusteringLabeller(
        cl.eps, cl.min_samples, cl.k1, cl.k2, knn_method=cl.knn,
        camids=cameras, camera_normalize=cl.camera_normalize,
        intra_camera_k1=cl.intra_camera_k1, device=device, method=cl.method,
        feature_dtype=cl.feature_dtype,
        knn_options={"reduce_dim": cl.knn_dim, "projection": cl.knn_projection,
                     "candidates": cl.knn_candidates},
        infomap_min_sim=cl.infomap_min_sim, infomap_min_size=cl.infomap_min_size)
    if cl.warmup_epochs:
        labeller = InstanceWarmup(cl.warmup_epochs, labeller)
    return labeller


def build_aggregator(cfg: Config, device: torch.device | str = "cpu") -> Aggregator:
    """The SAA holder of CSA/HPS with the ``method`` section's settings (untrained)."""
    saa, csa = cfg.method.saa, cfg.method.csa
    return Aggregator(
        heads=saa.heads, head_dim=saa.head_dim, temperature=saa.temperature,
        steps=csa.steps, clusters_per_step=csa.clusters_per_step, lr=csa.lr,
        max_members=csa.max_members, agreement_temperature=csa.agreement_temperature,
        loss_temperature=saa.loss_temperature, device=device)


def build_strategies(cfg: Config, aggregator: Aggregator, feature_dim: int
                     ) -> tuple[PrototypeInit, MemoryUpdate]:
    """The prototype initialisation and update ``memory.init`` / ``memory.update`` name
    (``feature_dim``: D of the model, for the in-batch CSA block)."""
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


def build_memory_factory(cfg: Config, data: ReIDData) -> MemoryFactory:
    """``(D, C, update mode) -> memory``: the ``memory.kind`` class (a
    :data:`~robustreid.memory.MEMORIES` entry) with ``memory.temperature``,
    ``memory.momentum`` and ``memory.options``, checked now: options the class does not take,
    a memory that needs cameras on data with one camera, and a memory that needs its own
    update with an update strategy that bypasses it, are refused."""
    mc = cfg.memory
    cls = MEMORIES.get(mc.kind)
    try:
        inspect.signature(cls).bind(1, 1, temperature=mc.temperature, momentum=mc.momentum,
                                    update="mean", **mc.options)
    except TypeError as err:
        raise UserError(f"memory.options={mc.options!r} do not fit memory.kind={mc.kind} "
                        f"({cls.__name__}): {err}") from None
    if getattr(cls, "needs_own_update", False) and mc.update not in ("mean", "hard"):
        raise UserError(f"memory.kind={mc.kind} keeps state that only its own update moves, "
                        f"but memory.update={mc.update} bypasses it: use memory.update=mean "
                        "or hard")
    cameras = {s.camid for s in data.train}
    if getattr(cls, "needs_cameras", False) and len(cameras) < 2:
        raise UserError(f"memory.kind={mc.kind} needs images from several cameras, but the "
                        f"training split of {data.name!r} has {len(cameras)} camera(s): use "
                        "memory.kind=cluster, or give the images their camera ids (README, "
                        "'Your own images')")

    def make(num_features: int, num_clusters: int, mode: str) -> nn.Module:
        return cls(num_features, num_clusters, temperature=mc.temperature,
                   momentum=mc.momentum, update=mode, **mc.options)

    return make


def build_refiner(cfg: Config) -> Refiner | None:
    """The pseudo-label refiner ``refine.kind`` names (a :data:`~robustreid.memory.REFINERS`
    entry, ``refine.options`` its keyword arguments), or None for ``none`` and in supervised
    runs (the true identities need no refinement; a warning says so). Options the class does
    not take, or values it refuses, and a ``memory.kind`` without soft targets
    (``set_soft_targets``) raise a :class:`UserError`."""
    rc = cfg.refine
    if rc.kind.lower() == "none":
        if rc.options:
            raise UserError(f"refine.options={rc.options!r} are set but refine.kind=none: set "
                            f"refine.kind (one of {', '.join(REFINERS.names())}) or remove "
                            "refine.options")
        return None
    cls = REFINERS.get(rc.kind)
    try:
        inspect.signature(cls).bind(**rc.options)
    except TypeError as err:
        raise UserError(f"refine.options={rc.options!r} do not fit refine.kind={rc.kind} "
                        f"({cls.__name__}): {err}") from None
    try:
        refiner = cls(**rc.options)
    except (TypeError, ValueError) as err:
        raise UserError(f"refine.options={rc.options!r} are refused by refine.kind={rc.kind} "
                        f"({cls.__name__}): {err}") from None
    memory = MEMORIES.get(cfg.memory.kind)
    if not hasattr(memory, "set_soft_targets"):
        raise UserError(f"refine.kind={rc.kind} trains against soft targets, which "
                        f"memory.kind={cfg.memory.kind} ({memory.__name__}) does not take (it "
                        "has no set_soft_targets): use refine.kind=none or a memory derived "
                        "from ClusterMemory")
    if cfg.train.supervised:
        logger.warning("refine.kind=%s is ignored: train.supervised=true trains on the true "
                       "identities", rc.kind)
        return None
    return refiner


# ------------------------------------------------------------------------- optimisation
def build_optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``train.optimizer`` (adam, adamw or sgd) over ``params`` with ``train.lr`` and
    ``train.weight_decay`` (sgd: ``train.sgd_momentum``, ``train.nesterov``)."""
    tc = cfg.train
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.sgd_momentum,
                               weight_decay=tc.weight_decay, nesterov=tc.nesterov)
    cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=tc.lr, weight_decay=tc.weight_decay)


def lr_factor(epoch: int, scheduler: str, epochs: int, step_size: int, gamma: float,
              warmup_epochs: int = 0, warmup_factor: float = 0.1,
              min_lr_ratio: float = 0.0) -> float:
    """The learning rate of ``epoch`` (0-based: the number of finished epochs) as a factor
    of the base rate: a linear warm-up from ``warmup_factor`` over ``warmup_epochs``, then
    ``step`` (x ``gamma`` every ``step_size`` epochs) or ``cosine`` (from 1 down to
    ``min_lr_ratio`` at ``epochs``)."""
    if epoch < warmup_epochs:
        return warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs
    if scheduler == "step":
        return gamma ** (epoch // step_size)
    span = max(1, epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer) -> Any:
    """The per-epoch learning-rate schedule ``train.scheduler`` names (``step``: StepLR with
    ``train.step_size`` / ``train.gamma``, as before; ``cosine``), with a linear warm-up
    over ``train.lr_warmup_epochs`` from ``train.lr_warmup_factor``."""
    tc = cfg.train
    if tc.scheduler == "step" and tc.lr_warmup_epochs == 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.step_size,
                                               gamma=tc.gamma)
    factor = functools.partial(lr_factor, scheduler=tc.scheduler, epochs=tc.epochs,
                               step_size=tc.step_size, gamma=tc.gamma,
                               warmup_epochs=tc.lr_warmup_epochs,
                               warmup_factor=tc.lr_warmup_factor,
                               min_lr_ratio=tc.min_lr / tc.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------- hooks and loop
def build_hooks(cfg: Config, data: ReIDData,
                on_iteration: Callable[[int, int], None] | None = None) -> list[HookBase]:
    """The default observers: pseudo-label and memory diagnostics (when the training split
    has true identities; they are never trained on), ``metrics.jsonl`` + TensorBoard, the
    epoch log line, and ``on_iteration(epoch, step)`` after every step if given."""
    hooks: list[HookBase] = []
    pids = np.array([s.pid for s in data.train], dtype=np.int64)
    if data.labelled and len(np.unique(pids)) > 1:
        hooks.append(MechanismDiagnostics(pids))
    camids = np.array([s.camid for s in data.train], dtype=np.int64)
    if len(np.unique(camids)) > 1:
        hooks.append(CameraSpread(camids))
    hooks += [MetricsWriter(Path(cfg.output_dir)), EpochLogger(cfg.train.epochs)]
    if on_iteration is not None:
        hooks.append(IterationCallback(on_iteration))
    return hooks


def build_settings(cfg: Config, check_replicas: bool = False) -> LoopSettings:
    """The loop's frozen settings from ``cfg.train`` (and ``seed``, ``output_dir``)."""
    tc = cfg.train
    return LoopSettings(
        epochs=tc.epochs, iters=tc.iters, batch_size=tc.batch_size,
        num_instances=tc.num_instances, seed=cfg.seed, out_dir=Path(cfg.output_dir),
        prefer_cross_camera=tc.prefer_cross_camera, eval_every=tc.eval_every,
        log_every=tc.log_every, channels_last=tc.channels_last, sync_bn=tc.sync_bn,
        check_replicas=check_replicas)


def _check_world(cfg: Config, world: int) -> None:
    """Rules between the configuration and the number of processes."""
    if cfg.train.batch_size < world:
        raise UserError(f"train.batch_size={cfg.train.batch_size} is split over {world} "
                        "processes: it must be at least their number")
    if cfg.cluster.features_on_disk and world > 1:
        raise UserError("cluster.features_on_disk=true streams one process's features to "
                        f"disk; with {world} processes every process gathers them in "
                        "memory: set cluster.features_on_disk=false")


def build_trainer(cfg: Config, model: nn.Module, data: ReIDData, device: torch.device, *,
                  labeller: PseudoLabeller | None = None, init: PrototypeInit | None = None,
                  update: MemoryUpdate | None = None, hooks: list[HookBase] | None = None,
                  on_iteration: Callable[[int, int], None] | None = None,
                  check_replicas: bool = False) -> Trainer:
    """The training loop for ``cfg`` with every part built here unless given.

    Args:
        cfg: the resolved configuration (its cross-field rules are checked first).
        model: the embedding network, (B, 3, H, W) -> (B, D) L2-normalised.
        data: train/query/gallery samples.
        device: this process's device (under torchrun:
            :func:`robustreid.distributed.local_device`).
        labeller, init, update: replace the configured pseudo-labeller or memory strategies.
        hooks: extra observers, called after the default ones (:func:`build_hooks`).
        on_iteration: ``(epoch, step)`` after every step (tests interrupt runs with it).
        check_replicas: compare every process's weights and memory after every step.

    Under a process group (torchrun) the model is wrapped in DDP (SyncBN with
    ``train.sync_bn``), also with one process, so the code path is the same at every size.
    """
    check_config(cfg)  # rules between fields, before any expensive work
    world, rank = get_world_size(), get_rank()
    _check_world(cfg, world)
    make_memory = build_memory_factory(cfg, data)  # its options checked before any work
    refiner = build_refiner(cfg)  # so are the refiner's
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    labeller = labeller if labeller is not None else build_labeller(cfg, data, device)
    aggregator = build_aggregator(cfg, device)
    default_init, default_update = build_strategies(cfg, aggregator,
                                                    getattr(model, "feature_dim", 0))
    init = init if init is not None else default_init
    update = update if update is not None else default_update
    if world > 1 and isinstance(update, nn.Module):
        raise UserError(f"memory.update={update.name} trains a module with the backbone on "
                        "each process's share of the batch, which is not supported with more "
                        "than one process: use mean, hard, hps or trimmed_hard, or one process")
    train_model = wrap_model(model, device, sync_bn=cfg.train.sync_bn) if is_initialized() \
        else model
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(update, nn.Module):  # a strategy trained with the backbone
        update.to(device)
        params += list(update.parameters())
    optimizer = build_optimizer(cfg, params)
    scheduler = build_scheduler(cfg, optimizer)
    amp = device.type == "cuda" and cfg.train.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images = SplitImages(data, cfg.data.height, cfg.data.width, cfg.data.num_workers, device,
                         cfg.data.images_on_device)
    cl = cfg.cluster
    extractor = Extractor(
        model, images, cfg.data.test_batch_size, device, cfg.eval.flip, cfg.train.channels_last,
        features_file=Path(cfg.output_dir) / "train_features.npy" if cl.features_on_disk
        else None, features_dtype=np.float16 if cl.feature_dtype == "float16" else np.float32)
    evaluator = build_evaluator(cfg, extractor, data)
    select_by = build_selection(cfg, evaluator is not None)
    config = config_to_dict(cfg)
    meta = model_meta(config["model"], cfg.data.height, cfg.data.width,
                      getattr(model, "feature_dim", 0), IMAGENET_MEAN, IMAGENET_STD)
    checkpointer = Checkpointer(Path(cfg.output_dir), model, optimizer, scheduler, scaler,
                                aggregator, update, config, meta, device,
                                metric="mAP" if select_by == "map" else LABEL_FREE_METRIC,
                                upgrade=upgrade_config_dict)
    camids = np.array([s.camid for s in data.train], dtype=np.int64)
    return Trainer(
        build_settings(cfg, check_replicas), model, device, camids, images, extractor, labeller,
        MemoryStage(make_memory, init, update, aggregator, cfg.seed, device,
                    torch.as_tensor(camids), refiner=refiner),
        TrainStep(train_model, optimizer, scaler, amp, world, rank),
        BatchAugment(flip_p=cfg.train.flip_p, padding=cfg.train.padding,
                     erasing_p=cfg.train.erasing_p),
        scheduler, checkpointer, evaluator,
        build_hooks(cfg, data, on_iteration) + list(hooks or []),
        label_free=cfg.train.select_by != "map")


def build_selection(cfg: Config, evaluated: bool) -> str:
    """What ``best.pth`` follows, ``"map"`` or ``"label_free"``: ``train.select_by``, with
    ``auto`` resolved by whether the run is ``evaluated`` (has a query/gallery)."""
    select_by = cfg.train.select_by
    if select_by == "auto":
        select_by = "map" if evaluated else "label_free"
    if select_by == "label_free":
        logger.info("best.pth follows the label-free score of the pseudo-labels "
                    "(train.select_by=%s; docs/method.md)", cfg.train.select_by)
    return select_by


def build_evaluator(cfg: Config, extractor: Extractor, data: ReIDData) -> Evaluator | None:
    """The test ranking with ``cfg.eval``'s settings, or None (with a log line) when the
    data has no query/gallery: then there is no mAP, and no ``best.pth`` unless
    ``train.select_by`` chooses it by the label-free score."""
    if not data.has_test_split:
        logger.info("data set %r has no query/gallery and no data.eval_dataset is set: "
                    "training is not evaluated; %s is the model of the last epoch",
                    data.name, Path(cfg.output_dir) / "last.pth")
        return None
    ev = cfg.eval
    return Evaluator(extractor, data, rerank=ev.rerank, k1=ev.k1, k2=ev.k2,
                     lambda_value=ev.lambda_value, max_rank=ev.max_rank)
