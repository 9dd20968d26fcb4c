"""``last.pth`` after every epoch and ``best.pth`` at every new best: what a run saves, and
how it comes back.

The checkpointer holds references to the stateful parts of a run (model, optimiser, schedule,
gradient scaler, SAA aggregator, a trained update strategy) and the run's description (its
configuration as a plain dict and the saved model's meta). It tracks the best value of
``metric``; only the main process writes.

``metric="label_free_score"`` (``train.select_by``): the label-free signal of an epoch is
measured on the clustering at the epoch's start, so it scores the model that *began* the
epoch; :meth:`Checkpointer.save_best_before_epoch` keeps that model as ``best.pth`` right
then, and :meth:`Checkpointer.save` compares ``label_free_score_final`` (the model after the
last epoch, scored once more at the end) instead of the epoch's own value.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
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

#: The metric of ``train.select_by: label_free``, and the key of its closing value.
LABEL_FREE_METRIC = "label_free_score"
LABEL_FREE_FINAL = "label_free_score_final"


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
        metric: the record key ``best.pth`` follows (higher is better): ``mAP``, or
            :data:`LABEL_FREE_METRIC` (module docstring).
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
        if state.previous_labels is not None:  # only with the label-free signal on
            payload["previous_labels"] = torch.from_numpy(state.previous_labels.copy())
        if get_world_size() > 1:  # every process's generators (restored at the same size)
            payload["rng_ranks"] = all_gather_object(rng_state(self._cuda),
                                                     "gathering the random states")
        return payload

    def save(self, state: TrainState, record: dict[str, Any]) -> None:
        """After the epoch ``record``: ``best.pth`` if its metric beats every earlier one
        (``state.best_map`` follows), then ``last.pth`` (verified; the one it replaces is
        kept as ``last.prev.pth``). Every process calls it."""
        payload = self.payload(state)
        label_free = self.metric == LABEL_FREE_METRIC
        value = record.get(LABEL_FREE_FINAL if label_free else self.metric)
        if value is not None and value > state.best_map:
            state.best_map = value
            payload["best_map"] = value
            if label_free:
                record["best_model_epoch"] = state.epoch
            if is_main_process():
                save_checkpoint(self.out_dir / "best.pth", {
                    "epoch": state.epoch, "model": payload["model"], "metrics": record,
                    "config": payload["config"], "meta": payload["meta"],
                })
                if label_free:
                    logger.info("new best %s %.4f: the model after epoch %d (scored after "
                                "training), saved %s", self.metric, value, state.epoch,
                                self.out_dir / "best.pth")
                else:
                    logger.info("new best %s %.2f%% at epoch %d, saved %s", self.metric,
                                100 * value, state.epoch, self.out_dir / "best.pth")
        if is_main_process():
            save_checkpoint(self.last, payload, keep_previous=True)

    def save_best_before_epoch(self, state: TrainState, value: float,
                               record: dict[str, Any]) -> bool:
        """With ``metric="label_free_score"``: ``value`` scores the model as it is now, after
        epoch ``state.epoch`` (measured on the clustering at the start of epoch
        ``record["epoch"]``); if it beats every earlier value, that model becomes
        ``best.pth`` (``metrics``: the model's own epoch record, when there is one, with
        ``label_free_score``, ``scored_at_epoch`` and ``selected_by``). Every process calls
        it; returns whether it was a new best."""
        if self.metric != LABEL_FREE_METRIC or not value > state.best_map:
            return False
        state.best_map = value
        if is_main_process():
            own = next((dict(r) for r in state.history if r["epoch"] == state.epoch), {})
            own.update({"epoch": state.epoch, LABEL_FREE_METRIC: value,
                        "scored_at_epoch": record["epoch"], "selected_by": LABEL_FREE_METRIC})
            save_checkpoint(self.out_dir / "best.pth", {
                "epoch": state.epoch, "model": self.model.state_dict(), "metrics": own,
                "config": self.config, "meta": self.meta,
            })
            logger.info("new best %s %.4f: the model after epoch %d (scored at the start of "
                        "epoch %d), saved %s", LABEL_FREE_METRIC, value, state.epoch,
                        record["epoch"], self.out_dir / "best.pth")
        return True

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
        previous = ckpt.get("previous_labels")
        return TrainState(epoch=ckpt["epoch"], best_map=ckpt["best_map"],
                          history=list(ckpt["history"]),
                          previous_labels=None if previous is None
                          else np.asarray(previous.numpy(), dtype=np.int64))
