"""What a run carries from epoch to epoch, and the random state a resume restores.

An epoch's random draws depend on (seed, epoch) only (:func:`epoch_seed`), so a resumed run
repeats the uninterrupted one; the generators' states are saved anyway (hooks and user code
may draw from them between epochs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Everything that must survive a restart besides the weights of the model, optimiser,
    schedule and memory strategies: ``epoch`` (completed epochs), ``best_map`` (the best
    value of the checkpointer's metric so far, -1 before any) and ``history`` (one record per
    finished epoch, the lines of ``metrics.jsonl``). ``previous_labels``: the (N,)
    pseudo-labels of the last clustered epoch, kept only while the label-free signal is on
    (its agreement compares each epoch with the one before)."""

    epoch: int = 0
    best_map: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    previous_labels: np.ndarray | None = None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of every random draw in ``epoch`` of a run with ``seed``: an epoch depends on
    (seed, epoch) only, so a resumed run repeats the uninterrupted one."""
    return seed * 100_003 + epoch


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed Python's, NumPy's and torch's process-wide generators for ``epoch``."""
    value = epoch_seed(seed, epoch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """Random-generator states as tensors and plain values (safe to load); CUDA: every
    device's, or ``cuda_device``'s only (under a process group, so that no process creates a
    context on the others' GPUs)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if cuda_device is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if cuda_device is not None and "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], cuda_device)
    elif "cuda" in state and torch.cuda.is_available() and cuda_device is None:
        torch.cuda.set_rng_state_all(state["cuda"])
