"""Global pooling layers that turn a B x C x h x w feature map into B x C vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GeneralizedMeanPooling(nn.Module):
    """Generalized-mean (GeM) pooling with a learnable exponent.

    ``y_c = (mean_{h,w} clamp(x_c, eps) ** p) ** (1 / p)``. ``p = 1`` is average pooling,
    ``p -> inf`` tends to max pooling.

    Args:
        p: initial exponent (a learnable ``nn.Parameter`` of shape ``(1,)``).
        eps: lower clamp applied before the power, so negative / zero inputs stay finite.

    Shapes:
        input ``B x C x h x w`` -> output ``B x C``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p}")
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``x``: B x C x h x w -> B x C."""
        p = self.p
        pooled = x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().item():.4f}, eps={self.eps}"


class GlobalAvgPooling(nn.Module):
    """Spatial average: B x C x h x w -> B x C."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


class GlobalMaxPooling(nn.Module):
    """Spatial maximum: B x C x h x w -> B x C."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(-2, -1))


def build_pooling(name: str = "gem", p: float = 3.0) -> nn.Module:
    """Build a spatial pooling layer mapping B x C x h x w to B x C.

    Args:
        name: ``"gem"`` (learnable generalized mean), ``"avg"`` or ``"max"``.
        p: initial GeM exponent; ignored by ``avg`` and ``max``.
    """
    key = name.lower()
    if key == "gem":
        return GeneralizedMeanPooling(p=p)
    if key in ("avg", "mean"):
        return GlobalAvgPooling()
    if key == "max":
        return GlobalMaxPooling()
    raise ValueError(f"unknown pooling {name!r}; choose one of: gem, avg, max")
