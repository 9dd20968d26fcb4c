"""How the work is split over the processes: each rank's share of a whole batch
(:func:`batch_share`), and blocks of rows embedded round-robin over the ranks and gathered
back in data set order (:func:`round_robin_blocks`, :func:`gather_round_robin`)."""

from __future__ import annotations

import torch
from torch import Tensor

from robustreid.distributed.collectives import all_gather_padded, broadcast_object
from robustreid.distributed.ranks import DistributedError, get_world_size


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


def batch_share(batch_size: int, rank: int, world: int) -> slice:
    """The rows of a whole batch of ``batch_size`` that ``rank`` of ``world`` processes:
    contiguous, in rank order, sizes differing by at most one (the first ``batch_size %
    world`` ranks take one more).

    Raises:
        DistributedError: fewer rows than processes (a rank would have nothing to train on).
    """
    if batch_size < world:
        raise DistributedError(
            f"a whole batch of {batch_size} samples cannot be split over {world} processes "
            "(every process needs at least one): raise train.batch_size or use fewer "
            "processes")
    base, extra = divmod(batch_size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


