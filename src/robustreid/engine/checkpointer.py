"""``last.pth`` after every epoch and ``best.pth`` at every new best: what a run saves, and
how it comes back.

The checkpointer holds references to the stateful parts of a run (model, optimiser, schedule,
gradient scaler, SAA aggregator, a trained update strategy) and the run's description (its
configuration as a plain dict and the saved model's meta). It tracks the best value of
``metric``; only the main process writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustreid.checkpoint import save_checkpoint
from robustreid.distributed import (
    all_gather_object,
    get_rank,
    get_world_size,
    is_initialized,
    is_main_process,
)
from robustreid.engine.rundir import ConfigUpgrade
from robustreid.engine.state import TrainState, rng_state, set_rng_state
from robustreid.memory.strategies import Aggregator

logger = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores a run.

    Args:
        out_dir: the run's folder.
        model: the plain model (saved without a ``module.`` prefix).
        optimizer, scheduler, scaler: the optimisation state.
        aggregator: the SAA holder of CSA/HPS (its weights, None before first use).
        update: the memory update strategy (saved when it is an ``nn.Module``).
        config: the run's configuration as a plain dict (saved in both files).
        meta: the saved model's self-description (:func:`~robustreid.checkpoint.model_meta`).
        device: the process's device (its CUDA generator is saved under a process group).
        metric: the record key ``best.pth`` follows (higher is better).
        upgrade: brings an older run's saved configuration to the current layout before a
            resume compares it with ``config`` (:class:`~robustreid.engine.rundir.RunDirectory`).
    """

    def __init__(self, out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, aggregator: Aggregator,
                 update: Any, config: dict[str, Any], meta: dict[str, Any],
                 device: torch.device, metric: str = "mAP",
                 upgrade: ConfigUpgrade | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.model, self.optimizer, self.scheduler, self.scaler = (model, optimizer,
                                                                   scheduler, scaler)
        self.aggregator, self.update = aggregator, update
        self.config, self.meta, self.metric, self.upgrade = config, meta, metric, upgrade
        self._cuda = device if is_initialized() and device.type == "cuda" else None

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pth"

    def payload(self, state: TrainState) -> dict[str, Any]:
        """Everything ``last.pth`` holds: weights, optimiser, schedule, history, RNG, SAA.
        Under a process group every process must call it (it gathers their random states)."""
        payload: dict[str, Any] = {
            "epoch": state.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_map": state.best_map,
            "history": state.history,
            "config": self.config,
            "rng": rng_state(self._cuda),
            "saa": self.aggregator.state_dict(),
            "update": (self.update.state_dict() if isinstance(self.update, nn.Module)
                       else None),
            "meta": self.meta,
        }
        if get_world_size() > 1:  # every process's generators (restored at the same size)
            payload["rng_ranks"] = all_gather_object(rng_state(self._cuda),
                                                     "gathering the random states")
        return payload

    def save(self, state: TrainState, record: dict[str, Any]) -> None:
        """After the epoch ``record``: ``best.pth`` if its metric beats every earlier one
        (``state.best_map`` follows), then ``last.pth`` (verified; the one it replaces is
        kept as ``last.prev.pth``). Every process calls it."""
        payload = self.payload(state)
        value = record.get(self.metric)
        if value is not None and value > state.best_map:
            state.best_map = value
            payload["best_map"] = value
            if is_main_process():
                save_checkpoint(self.out_dir / "best.pth", {
                    "epoch": state.epoch, "model": payload["model"], "metrics": record,
                    "config": payload["config"], "meta": payload["meta"],
                })
                logger.info("new best %s %.2f%% at epoch %d, saved %s", self.metric,
                            100 * value, state.epoch, self.out_dir / "best.pth")
        if is_main_process():
            save_checkpoint(self.last, payload, keep_previous=True)

    def restore(self, ckpt: dict[str, Any]) -> TrainState:
        """Load a payload written by :meth:`payload`; returns the run's state."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.aggregator.load_state_dict(ckpt.get("saa"))
        if isinstance(self.update, nn.Module) and ckpt.get("update") is not None:
            self.update.load_state_dict(ckpt["update"])
        own = ckpt.get("rng_ranks")
        world = get_world_size()
        set_rng_state(own[get_rank()] if own and len(own) == world else ckpt["rng"],
                      self._cuda)
        return TrainState(epoch=ckpt["epoch"], best_map=ckpt["best_map"],
                          history=list(ckpt["history"]))
