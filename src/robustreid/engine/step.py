"""One training step: the loss of a batch against the memory, the optimiser step, and the
memory update from the whole batch.

A new loss or memory is a new memory class (its ``forward`` is the loss) or update strategy
(its ``loss``, if it has one, is added); this step does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from robustreid.distributed import all_gather_padded, batch_share
from robustreid.memory.strategies import MemoryUpdate


@dataclass
class StepOutput:
    """The whole batch of one step, in its order, on the model's device: ``feats`` (B, D)
    float32, ``targets`` (B,) clusters, ``rows`` (B,) training-split rows, ``updated``
    (positions of the samples that moved a prototype) and ``loss`` (the whole batch's mean
    loss)."""

    feats: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    updated: torch.Tensor
    loss: float


class TrainStep:
    """The step of :func:`contrastive_step` followed by the memory update.

    Under a process group (``world_size`` > 1) each process holds a contiguous share of the
    whole batch; the loss is scaled so that DDP's average of the gradients is the gradient
    of the whole batch's mean loss, and every process updates its memory from the whole
    gathered batch in the order of the whole batch (so all keep the same prototypes).

    Args:
        model: what the step runs through (the DDP wrapper, or the model itself).
        optimizer: over the model's (and a trained update strategy's) parameters.
        scaler: gradient scaler (enabled exactly when ``amp``).
        amp: float16 autocast of the forward pass (CUDA).
        world_size, rank: this process's place in the process group (1, 0 without one).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, amp: bool, world_size: int = 1,
                 rank: int = 0) -> None:
        self.model, self.optimizer, self.scaler, self.amp = model, optimizer, scaler, amp
        self.world_size, self.rank = world_size, rank

    def share(self, batch_size: int) -> slice:
        """This process's positions in a whole batch of ``batch_size``."""
        return batch_share(batch_size, self.rank, self.world_size)

    def __call__(self, memory: nn.Module, update: MemoryUpdate, images: torch.Tensor,
                 targets: torch.Tensor, rows: torch.Tensor, batch_size: int) -> StepOutput:
        """One step on this process's share: ``images`` (b, 3, H, W) on the model's device,
        ``targets`` (b,) clusters, ``rows`` (b,) training-split rows, of a whole batch of
        ``batch_size``."""
        loss_scale = self.world_size * images.shape[0] / batch_size
        rows = rows.to(images.device)
        feats, loss = contrastive_step(self.model, memory, images, targets, self.optimizer,
                                       self.scaler, self.amp,
                                       extra_loss=getattr(update, "loss", None),
                                       loss_scale=loss_scale, indices=rows)
        feats, targets, rows, loss_value = self.global_batch(feats, targets, rows, loss,
                                                             batch_size)
        updated = update(memory, feats, targets, rows)
        return StepOutput(feats, targets, rows, updated, loss_value)

    def global_batch(self, feats: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                     loss: torch.Tensor, batch_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """The step's features (B, D), targets (B,), rows (B,) of the batch of all processes,
        in its order, and its mean loss, from this process's share (one all-gather; the inputs
        themselves with one process)."""
        if self.world_size == 1:
            return feats, targets, rows, loss.item()
        n = feats.shape[0]
        packed = torch.cat([feats.double(), targets.double()[:, None],
                            rows.double()[:, None],
                            (loss.double() / batch_size).expand(n)[:, None]], dim=1)
        shares = [batch_share(batch_size, r, self.world_size) for r in range(self.world_size)]
        sizes = [share.stop - share.start for share in shares]
        packed = all_gather_padded(packed, "gathering the batch for the memory update", sizes)
        d = feats.shape[1]
        return (packed[:, :d].float(), packed[:, d].long(), packed[:, d + 1].long(),
                float(packed[:, d + 2].sum()))


def contrastive_step(
    model: nn.Module,
    memory: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: bool,
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    loss_scale: float = 1.0,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step of the backbone: the memory's loss (InfoNCE against the cluster
    prototypes for :class:`~robustreid.memory.ClusterMemory`) of the batch.

    Args:
        model: the backbone (in train mode).
        memory: the epoch's memory (its prototypes are not updated here).
        images: ``B x 3 x H x W`` batch, on the model's device and in its memory format.
        targets: ``B`` cluster indices.
        optimizer: the backbone's optimiser.
        scaler: gradient scaler (enabled exactly when ``amp``).
        amp: float16 autocast of the forward pass (CUDA).
        extra_loss: optional ``(memory, feats (B, D), targets) -> loss`` added to the
            memory's loss (a memory strategy trained with the backbone, e.g. in-batch CSA).
        loss_scale: factor of the loss that is backpropagated (not of the one returned);
            under DDP ``world * B_local / B_global``, so that the averaged gradients are
            those of the whole batch's mean loss when the shares differ in size.
        indices: ``B`` training-split rows of the batch, handed to the memory's loss.

    Returns:
        The batch features (``B x D`` float32, detached) for the momentum update, and the loss
        (a detached 0-d tensor).
    """
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        feats = model(images)
    loss = memory(feats.float(), targets, indices)
    if extra_loss is not None:
        loss = loss + extra_loss(memory, feats.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss if loss_scale == 1.0 else loss * loss_scale).backward()
    scaler.step(optimizer)
    scaler.update()
    return feats.detach().float(), loss.detach()
