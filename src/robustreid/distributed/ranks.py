"""Who am I: rank and world queries, torchrun detection, this process's device, and joining
the process group. All valid, and trivial, without a process group."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A collective failed: another process crashed, hangs past the collective timeout
    (``train.dist_timeout``), or the processes disagree."""


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    """Rank of this process in the process group (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (``LOCAL_RANK`` set by torchrun; else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0: the only process that writes logs, metrics and checkpoints."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``)
    is present."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def local_device(device: torch.device) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when ``device`` is a CUDA device and
    this process was started by torchrun, else ``device`` unchanged.

    Raises:
        DistributedError: ``LOCAL_RANK`` names a GPU this machine does not have.
    """
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    local = get_local_rank()
    count = torch.cuda.device_count()
    if local >= count:
        raise DistributedError(
            f"LOCAL_RANK={local} but only {count} CUDA device(s) are visible: start at most "
            f"{count} process(es) per machine (torchrun --nproc_per_node) or set device=cpu")
    return torch.device("cuda", local)


# ----------------------------------------------------------------------------- process group
@contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[torch.device]:
    """Join the process group of torchrun for the duration of the block; yield this
    process's device (:func:`local_device`).

    Outside torchrun (no ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``) nothing happens and
    ``device`` is yielded unchanged. NCCL on GPUs, gloo on the CPU; every collective waits at
    most ``timeout_s`` seconds, after which it fails with :class:`DistributedError` (gloo)
    or the NCCL watchdog ends the process, so a crashed or hung peer never leaves the others
    waiting for ever.
    """
    if not launched_by_torchrun() or is_initialized():
        yield local_device(device)
        return
    device = local_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    options: dict[str, Any] = {}
    if device.type == "cuda" and "device_id" in inspect.signature(
            dist.init_process_group).parameters:
        options["device_id"] = device  # torch >= 2.3: bind the NCCL communicator to it
    dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)), **options)
    try:
        yield device
    finally:
        dist.destroy_process_group()

