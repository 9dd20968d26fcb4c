"""Everything distributed, in one place: process group, ranks, collectives, DDP, SyncBN.

robustreid trains on any number of processes started by ``torchrun`` (one per GPU, or
several on the CPU with gloo) and gives the same result at every world size for a fixed
batch over all processes. The rest of the library asks this module, and only this module:

* who am I: :func:`get_rank`, :func:`get_local_rank`, :func:`get_world_size`,
  :func:`is_main_process` (valid, and trivial, without a process group);
* the process group: :func:`process_group` (a no-op outside torchrun), :func:`local_device`;
* collectives that fail with a clear :class:`DistributedError` when a peer fails or hangs
  (:func:`collective`): :func:`all_gather_padded` (every rank's rows, in rank order),
  :func:`gather_round_robin` (blocks embedded round-robin, back in data set order),
  :func:`broadcast_object`, :func:`all_gather_object`, :func:`all_reduce_max`,
  :func:`run_on_main` (computed once on rank 0, handed to every rank), :func:`barrier`,
  :func:`replicas_agree` (checksums of every rank's copy);
* the model: :func:`wrap_model` (SyncBatchNorm and ``DistributedDataParallel``),
  :func:`unwrap_model`, :func:`broadcast_buffers`, and :class:`GlobalBatchNorm`, BatchNorm
  over the batch of every rank on any device (PyTorch's ``SyncBatchNorm`` takes GPU tensors
  only);
* the split of the batch over the processes: :func:`batch_share`.

Without a process group every collective returns its input, so a single-process run neither
pays for nor depends on any of this.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed: another process crashed, hangs past the collective timeout
    (``train.dist_timeout``), or the processes disagree."""


# ----------------------------------------------------------------------------- who am I
def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (``LOCAL_RANK`` set by torchrun; else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on global rank 0: the only process that writes logs, metrics and checkpoints."""
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


def _comm_device() -> torch.device:
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


# ----------------------------------------------------------------------------- collectives
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
    comm = _comm_device()
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


def round_robin_blocks(total: int, block: int, rank: int, world: int) -> list[range]:
    """The row ranges of the blocks ``rank, rank + world, ...`` of ``range(total)`` cut into
    blocks of ``block`` rows (the last may be shorter)."""
    starts = range(rank * block, total, world * block)
    return [range(s, min(s + block, total)) for s in starts]


def gather_round_robin(local: Tensor, total: int, block: int, what: str = "gather") -> Tensor:
    """Reassemble ``(total, ...)`` rows embedded block by block, round-robin over ranks.

    Rank ``r`` computed the rows of blocks ``r, r + W, ...`` (:func:`round_robin_blocks`)
    and passes them as ``local``, concatenated. Every rank gets all rows in their original
    order. A block is computed exactly as a single process computes it (same rows, same
    batch), so the result does not depend on the number of processes.
    """
    world = get_world_size()
    if world == 1:
        return local
    # a rank with no block may not know the row shape: take rank 0's (it has block 0)
    row_shape = broadcast_object(tuple(local.shape[1:]), what=what)
    if local.shape[0] == 0:
        local = local.new_zeros((0, *row_shape))
    sizes = [sum(len(r) for r in round_robin_blocks(total, block, k, world))
             for k in range(world)]
    gathered = all_gather_padded(local, what, sizes=sizes)
    order = torch.tensor([i for k in range(world)
                          for r in round_robin_blocks(total, block, k, world) for i in r])
    out = torch.empty_like(gathered)
    out[order.to(gathered.device)] = gathered
    return out


def all_reduce_max(value: int, what: str = "all-reduce") -> int:
    """The largest of every rank's integer ``value`` (``value`` itself without a process
    group): e.g. a stop flag that any rank may have raised."""
    if get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=_comm_device())
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
        dist.broadcast_object_list(box, src=src, device=_comm_device())
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


# ----------------------------------------------------------------------------- global batch
def batch_share(batch_size: int, rank: int, world: int) -> slice:
    """The rows of a global batch of ``batch_size`` that ``rank`` of ``world`` processes:
    contiguous, in rank order, sizes differing by at most one (the first ``batch_size %
    world`` ranks take one more).

    Raises:
        DistributedError: fewer rows than processes (a rank would have nothing to train on).
    """
    if batch_size < world:
        raise DistributedError(
            f"a global batch of {batch_size} samples cannot be split over {world} processes "
            "(every process needs at least one): raise train.batch_size or use fewer "
            "processes")
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# ----------------------------------------------------------------------------- the model
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else
    ``model``: its ``state_dict`` keys carry no ``module.`` prefix."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """Prepare ``model`` (already on ``device``) for training over the process group.

    With ``sync_bn`` every BatchNorm layer normalises over the whole global batch (NVIDIA
    GPUs: PyTorch's ``SyncBatchNorm``; any other device: :class:`GlobalBatchNorm`), in
    place, keeping the parameter and buffer objects (so an optimiser built later, or
    earlier, sees the same tensors). The model is then wrapped in
    ``DistributedDataParallel`` (gradients averaged over ranks; rank 0's weights and
    buffers copied to every rank). Without SyncBN each rank's BatchNorm statistics follow
    its own share of the batch: call :func:`broadcast_buffers` after every step to keep the
    replicas identical.

    Returns the wrapper; train through it, save :func:`unwrap_model` of it.
    """
    if sync_bn:
        convert_batchnorm(model, cuda=device.type == "cuda")
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # no buffer copy before every forward (newer torch names the switch
    # forward_sync_buffers); the copy at construction happens either way
    option = ("forward_sync_buffers" if "forward_sync_buffers"
              in inspect.signature(ddp.__init__).parameters else "broadcast_buffers")
    return ddp(model, device_ids=ids, **{option: False})


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) of ``model`` to every rank, in
    place (no-op with one process)."""
    if get_world_size() == 1:
        return
    comm = _comm_device()
    with collective("copying the BatchNorm statistics"):
        for buffer in unwrap_model(model).buffers():
            if buffer.device == comm:
                dist.broadcast(buffer, src)
            else:
                moved = buffer.to(comm)
                dist.broadcast(moved, src)
                buffer.copy_(moved)


def convert_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place, recursively) by one that
    normalises over the global batch: ``nn.SyncBatchNorm`` with ``cuda``, else
    :class:`GlobalBatchNorm`. Returns ``module`` (or its replacement if it is itself one).
    """
    sync_cls: type[_BatchNorm] = nn.SyncBatchNorm if cuda else GlobalBatchNorm

    def convert(layer: nn.Module) -> nn.Module:
        if isinstance(layer, _BatchNorm) and not isinstance(layer, nn.SyncBatchNorm
                                                            | GlobalBatchNorm):
            new = sync_cls(layer.num_features, layer.eps, layer.momentum, layer.affine,
                           layer.track_running_stats)
            if layer.affine:
                new.weight, new.bias = layer.weight, layer.bias
            if layer.track_running_stats:
                new.running_mean, new.running_var = layer.running_mean, layer.running_var
                new.num_batches_tracked = layer.num_batches_tracked
            new.train(layer.training)
            return new
        for name, child in layer.named_children():
            setattr(layer, name, convert(child))
        return layer

    return convert(module)


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation with the statistics of every rank's batch (training mode)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        channels = x.shape[1]
        count = x.numel() // max(channels, 1)
        stats = torch.cat([x.sum(dims), x.new_tensor([float(count)])])
        dist.all_reduce(stats)
        total = stats[-1]
        mean = stats[:-1] / total
        xmu = x - mean.view(shape)
        sq = (xmu * xmu).sum(dims)
        dist.all_reduce(sq)
        var = sq / total
        invstd = torch.rsqrt(var + eps)
        y = xmu * (invstd * weight).view(shape) + bias.view(shape)
        ctx.save_for_backward(xmu, invstd, weight, total)
        unbiased = sq / (total - 1).clamp(min=1)
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased

    @staticmethod
    def backward(ctx: Any, dy: Tensor, _mean: Tensor, _var: Tensor
                 ) -> tuple[Tensor, Tensor | None, Tensor | None, None]:
        xmu, invstd, weight, total = ctx.saved_tensors
        dims = [0, *range(2, dy.dim())]
        shape = [1, -1] + [1] * (dy.dim() - 2)
        sum_dy = dy.sum(dims)
        sum_dy_xmu = (dy * xmu).sum(dims)
        # this rank's share of the parameter gradients (DDP averages them over ranks)
        grad_weight = sum_dy_xmu * invstd if ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        both = torch.cat([sum_dy, sum_dy_xmu])
        dist.all_reduce(both)
        mean_dy, mean_dy_xmu = (both / total).chunk(2)
        dx = (dy - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) \
            * (invstd * weight).view(shape)
        return dx, grad_weight, grad_bias, None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of every rank, on any device (PyTorch's
    ``SyncBatchNorm`` accepts GPU tensors only): the CPU path of :func:`wrap_model`.

    In training mode with more than one process, the mean and the (biased) variance are
    those of the concatenated batches of all ranks (two all-reduces forward: the sums, then
    the squared deviations from the global mean; one backward), and the running statistics
    follow them as in ``nn.BatchNorm*d`` (unbiased variance, ``momentum``). Otherwise (eval
    mode, one process, no process group) it is exactly ``nn.BatchNorm*d``. Any input of at
    least 2 dimensions ``(B, C, ...)``; same parameters, buffers and state-dict keys as
    ``nn.BatchNorm*d``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        channels = input.shape[1]
        weight = self.weight if self.weight is not None else input.new_ones(channels)
        bias = self.bias if self.bias is not None else input.new_zeros(channels)
        with collective("SyncBatchNorm statistics"):
            y, mean, var = _GlobalBatchNormFn.apply(input, weight, bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var, alpha=momentum)
        return y

