"""Everything distributed, in one package: process group, ranks, collectives, DDP, SyncBN.

robustreid trains on any number of processes started by ``torchrun`` (one per GPU, or
several on the CPU with gloo) and gives the same result at every world size for a fixed
batch over all processes. The rest of the library asks this package, and only this package
(``from robustreid.distributed import ...``; the modules below are its parts):

* who am I (:mod:`.ranks`): :func:`get_rank`, :func:`get_local_rank`, :func:`get_world_size`,
  :func:`is_main_process` (valid, and trivial, without a process group); the process group:
  :func:`process_group` (a no-op outside torchrun), :func:`local_device`;
* collectives (:mod:`.collectives`) that fail with a clear :class:`DistributedError` when a
  peer fails or hangs (:func:`collective`): :func:`all_gather_padded` (every rank's rows, in
  rank order), :func:`broadcast_object`, :func:`all_gather_object`, :func:`all_reduce_max`,
  :func:`run_on_main` (computed once on rank 0, handed to every rank), :func:`barrier`,
  :func:`replicas_agree` (checksums of every rank's copy);
* the split of the work over the processes (:mod:`.sharding`): :func:`batch_share`,
  :func:`round_robin_blocks`, :func:`gather_round_robin` (blocks embedded round-robin, back
  in data set order);
* the model (:mod:`.ddp`): :func:`wrap_model` (SyncBatchNorm and
  ``DistributedDataParallel``), :func:`unwrap_model`, :func:`broadcast_buffers`,
  :func:`convert_batchnorm`, and (:mod:`.batchnorm`) :class:`GlobalBatchNorm`, BatchNorm
  over the batch of every rank on any device (PyTorch's ``SyncBatchNorm`` takes GPU tensors
  only).

Without a process group every collective returns its input, so a single-process run neither
pays for nor depends on any of this.
"""

from robustreid.distributed.batchnorm import GlobalBatchNorm
from robustreid.distributed.collectives import (
    all_gather_object,
    all_gather_padded,
    all_reduce_max,
    barrier,
    broadcast_object,
    checksum,
    collective,
    replicas_agree,
    run_on_main,
)
from robustreid.distributed.ddp import (
    broadcast_buffers,
    convert_batchnorm,
    unwrap_model,
    wrap_model,
)
from robustreid.distributed.ranks import (
    DistributedError,
    get_local_rank,
    get_rank,
    get_world_size,
    is_initialized,
    is_main_process,
    launched_by_torchrun,
    local_device,
    process_group,
)
from robustreid.distributed.sharding import batch_share, gather_round_robin, round_robin_blocks

__all__ = [
    "DistributedError",
    "GlobalBatchNorm",
    "all_gather_object",
    "all_gather_padded",
    "all_reduce_max",
    "barrier",
    "batch_share",
    "broadcast_buffers",
    "broadcast_object",
    "checksum",
    "collective",
    "convert_batchnorm",
    "gather_round_robin",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "local_device",
    "process_group",
    "replicas_agree",
    "round_robin_blocks",
    "run_on_main",
    "unwrap_model",
    "wrap_model",
]
