"""Collectives that fail with a clear :class:`DistributedError` when a peer fails or hangs
(:func:`collective`), and that return their input without a process group (or with one
process): gather, broadcast, all-reduce, :func:`run_on_main`, :func:`replicas_agree`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from robustreid.distributed.ranks import (
    DistributedError,
    get_rank,
    get_world_size,
    is_main_process,
)

T = TypeVar("T")


def comm_device() -> torch.device:
    """Where tensors must be for the default group's collectives (NCCL: this GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn an error inside the block (a failed or timed-out collective) into a
    :class:`DistributedError` that names the step of the run and what to look for.

    Without a process group, or with one process, errors pass through unchanged.
    """
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:  # DistBackendError and gloo/NCCL timeouts are RuntimeErrors
        if get_world_size() == 1:
            raise
        raise DistributedError(
            f"rank {get_rank()} of {get_world_size()}: {what} failed: {err}. If this is a "
            "timeout or a closed connection, another process has failed or hangs (its own "
            "message says why); a collective waits at most train.dist_timeout seconds"
        ) from err


def barrier(what: str = "barrier") -> None:
    """Wait for every process (no-op without a process group)."""
    if get_world_size() == 1:
        return
    with collective(what):
        dist.barrier()


def all_gather_padded(tensor: Tensor, what: str = "all-gather",
                      sizes: list[int] | None = None) -> Tensor:
    """Concatenate the ``(n_r, ...)`` tensors of every rank ``r`` along dim 0, in rank order.

    The row counts may differ between ranks: they are exchanged first (or given as
    ``sizes``, one per rank, when every rank knows them), every tensor is padded to the
    largest, gathered and trimmed. The result is on ``tensor``'s device, with its dtype.
    Without a process group (or with one process) ``tensor`` itself is returned.
    """
    world = get_world_size()
    if world == 1:
        return tensor
    comm = comm_device()
    local = tensor.detach().to(comm).contiguous()
    with collective(what):
        if sizes is None:
            size = torch.tensor([local.shape[0]], dtype=torch.long, device=comm)
            all_sizes = [torch.zeros_like(size) for _ in range(world)]
            dist.all_gather(all_sizes, size)
            sizes = [int(s.item()) for s in all_sizes]
        largest = max(sizes)
        if local.shape[0] < largest:
            pad = local.new_zeros((largest - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(tensor.device)

def all_reduce_max(value: int, what: str = "all-reduce") -> int:
    """The largest of every rank's integer ``value`` (``value`` itself without a process
    group): e.g. a stop flag that any rank may have raised."""
    if get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=comm_device())
    with collective(what):
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to the CPU, so that it
    unpickles on any rank (a pickled CUDA tensor would land on the sender's GPU)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: T, src: int = 0, what: str = "broadcast") -> T:
    """Rank ``src``'s picklable ``obj`` on every rank (tensors inside arrive on the CPU);
    the other ranks' ``obj`` is ignored. Without a process group: ``obj`` itself."""
    if get_world_size() == 1:
        return obj
    box = [_to_cpu(obj) if get_rank() == src else None]
    with collective(what):
        dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]  # type: ignore[return-value]


def all_gather_object(obj: T, what: str = "all-gather") -> list[T]:
    """Every rank's picklable ``obj``, in rank order (tensors on the CPU)."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    with collective(what):
        dist.all_gather_object(out, _to_cpu(obj))
    return out


def run_on_main(fn: Callable[[], T], what: str) -> T:
    """``fn()`` computed on rank 0 only and its result handed to every rank.

    For work that must give one answer for all (clustering, SAA training, ranking). If
    ``fn`` raises on rank 0 the error is re-raised there, and the other ranks raise a
    :class:`DistributedError` quoting it instead of waiting. Without a process group it
    is just ``fn()``.
    """
    if get_world_size() == 1:
        return fn()
    if is_main_process():
        try:
            result = fn()
        except Exception as err:
            broadcast_object(("error", f"{type(err).__name__}: {err}"), what=what)
            raise
        broadcast_object(("ok", result), what=what)
        return result
    status, value = broadcast_object(None, what=what)
    if status == "error":
        raise DistributedError(f"rank 0 failed during {what}: {value}")
    return value  # type: ignore[no-any-return]


def checksum(tensors: list[Tensor]) -> bytes:
    """SHA-256 of the exact bytes of ``tensors`` (in order): equal iff bit-identical."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.digest()


def replicas_agree(tensors: list[Tensor], what: str) -> None:
    """Check that every rank holds bit-identical ``tensors`` (e.g. the model's state and the
    memory), by gathering one checksum per rank.

    Raises:
        DistributedError: naming the ranks whose copy differs from rank 0's.
    """
    if get_world_size() == 1:
        return
    sums = all_gather_object(checksum(tensors), what=f"checksum of {what}")
    differ = [rank for rank, value in enumerate(sums) if value != sums[0]]
    if differ:
        raise DistributedError(f"{what} differ between ranks: rank(s) {differ} disagree "
                               "with rank 0")

