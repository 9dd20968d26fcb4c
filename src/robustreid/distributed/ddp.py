"""The model under several processes: :func:`wrap_model` (cross-process BatchNorm and
``DistributedDataParallel``), :func:`unwrap_model`, :func:`broadcast_buffers` and
:func:`convert_batchnorm`."""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustreid.distributed.batchnorm import GlobalBatchNorm
from robustreid.distributed.collectives import collective, comm_device
from robustreid.distributed.ranks import get_world_size


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else
    ``model``: its ``state_dict`` keys carry no ``module.`` prefix."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """Prepare ``model`` (already on ``device``) for training over the process group.

    With ``sync_bn`` every BatchNorm layer normalises over the whole batch of all processes (NVIDIA
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
    comm = comm_device()
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
    normalises over the whole batch: ``nn.SyncBatchNorm`` with ``cuda``, else
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

