"""The memory stage of an epoch: the labels' refinement and the prototypes' initialisation
from the epoch's features.

The parts are given (built from the configuration by :mod:`robustreid.build`): a memory
factory, the prototype initialisation and update strategies, the SAA aggregator they may
share, and optionally a pseudo-label refiner. Instance warm-up epochs (one class per image)
always use the plain mean and are not refined: single-member classes have nothing to
aggregate, rank or vote on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustreid.clustering.labellers import EpochLabels
from robustreid.distributed import is_main_process, run_on_main
from robustreid.engine.state import epoch_seed
from robustreid.memory.refinement import RefinedTargets
from robustreid.memory.strategies import (
    Aggregator,
    MeanInit,
    MeanUpdate,
    MemoryUpdate,
    PrototypeInit,
)

#: ``(num_features D, num_clusters C, update mode) -> memory`` (an ``nn.Module`` with
#: ``prototypes`` (C, D), ``init_prototypes``, a loss ``forward(feats, targets)`` and
#: ``update(feats, targets)``; see :class:`robustreid.memory.ClusterMemory`).
MemoryFactory = Callable[[int, int, str], nn.Module]

#: ``(features (N, D) float32, labels (N,) int64, -1 = outlier) -> RefinedTargets`` (soft
#: targets and corrected hard labels; see :class:`robustreid.memory.NeighbourRefiner`).
Refiner = Callable[[torch.Tensor, torch.Tensor], RefinedTargets]


class MemoryStage:
    """Builds each epoch's memory.

    Args:
        make_memory: the memory factory (:data:`MemoryFactory`).
        init, update: the configured prototype initialisation and update strategies.
        aggregator: the SAA holder that CSA/HPS share (trained here whenever a strategy
            needs it, on rank 0, and handed to every process).
        seed: the run's seed (SAA's training draws from ``(seed, epoch)``).
        device: where the memory lives.
        camids: (N,) camera of every training sample, for memories with a ``begin_epoch``.
        refiner: refines each clustered epoch's labels into soft targets (:data:`Refiner`;
            None: no refinement).
    """

    def __init__(self, make_memory: MemoryFactory, init: PrototypeInit, update: MemoryUpdate,
                 aggregator: Aggregator, seed: int, device: torch.device,
                 camids: torch.Tensor | None = None, refiner: Refiner | None = None) -> None:
        self.make_memory, self.init, self.update = make_memory, init, update
        self.aggregator, self.seed, self.device = aggregator, seed, device
        self.camids, self.refiner = camids, refiner

    def refine(self, features: torch.Tensor, labels: EpochLabels, record: dict[str, Any]
               ) -> tuple[EpochLabels, RefinedTargets | None]:
        """The labels to train on: ``labels`` refined by the refiner (run on rank 0, on the
        stage's device, handed to every process; its statistics go into ``record``), or
        ``labels`` themselves (and None) without a refiner and in instance epochs.
        ``features``: (N, D) float32 of the epoch."""
        if self.refiner is None or labels.instance:
            return labels, None
        refiner = self.refiner

        def run() -> RefinedTargets:
            out = refiner(features.to(self.device), torch.as_tensor(labels.labels))
            return dataclasses.replace(out, labels=out.labels.cpu(),
                                       clusters=out.clusters.cpu(), weights=out.weights.cpu())

        refined = run_on_main(run, "pseudo-label refinement")
        record.update(refined.stats)
        return EpochLabels.from_labels(refined.labels.numpy()), refined

    def strategies(self, labels: EpochLabels) -> tuple[PrototypeInit, MemoryUpdate]:
        """(init, update) for an epoch with ``labels``: the configured ones, or the mean in
        an instance warm-up epoch."""
        if labels.instance:
            return MeanInit(), MeanUpdate()
        return self.init, self.update

    def __call__(self, features: torch.Tensor, labels: EpochLabels, epoch: int,
                 record: dict[str, Any], soft: RefinedTargets | None = None
                 ) -> tuple[nn.Module, MemoryUpdate]:
        """The epoch's memory, initialised from ``features`` (N, D) float32 and ``labels``
        (with ``soft``, the refined labels of :meth:`refine`, whose soft targets the memory
        then trains against), and the update strategy to use with it; the strategies'
        statistics go into ``record``."""
        init, update = self.strategies(labels)
        memory = self.make_memory(features.shape[1], labels.num_clusters,
                                  update.memory_mode).to(self.device)
        targets = torch.as_tensor(labels.labels)
        needs_saa = init.needs_saa or update.needs_saa

        def initial_prototypes() -> tuple[torch.Tensor, dict[str, Any], Any]:
            stats: dict[str, Any] = {}
            if needs_saa:
                generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch - 1))
                stats.update(self.aggregator.fit(features, targets, generator))
            prototypes, init_stats = init(features, targets, labels.num_clusters)
            stats.update(init_stats)
            return prototypes, stats, self.aggregator.state_dict() if needs_saa else None

        # SAA trained and the prototypes computed once (rank 0), handed to every process
        prototypes, stats, saa_state = run_on_main(initial_prototypes, "memory initialisation")
        if needs_saa and not is_main_process():
            self.aggregator.load_state_dict(saa_state)
        record.update(stats)
        memory.init_prototypes(prototypes)
        if soft is not None:  # refine() gives none in instance epochs
            memory.set_soft_targets(soft.clusters, soft.weights)
        begin_epoch = getattr(memory, "begin_epoch", None)
        if begin_epoch is not None:  # e.g. per-camera proxies
            begin_epoch(features, targets, self.camids)
        update.begin_epoch(features, targets)
        return memory, update
