"""BatchNorm over the whole batch of every rank, on any device: the autograd function and
the :class:`GlobalBatchNorm` module (PyTorch's ``SyncBatchNorm`` takes GPU tensors only)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from robustreid.distributed.collectives import collective
from robustreid.distributed.ranks import get_world_size


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
    """BatchNorm over the whole batch of every rank, on any device (PyTorch's
    ``SyncBatchNorm`` accepts GPU tensors only): the CPU path of :func:`wrap_model`.

    In training mode with more than one process, the mean and the (biased) variance are
    those of the concatenated batches of all ranks (two all-reduces forward: the sums, then
    the squared deviations from the mean over every rank; one backward), and the running statistics
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

