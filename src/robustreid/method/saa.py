"""SAA: self-attention aggregation of the member features of a cluster.

One cluster holds ``n`` L2-normalised member features ``X`` (``n x d``). Clusters of different
sizes are batched by padding to ``x`` (``C x n_max x d``) with a boolean ``mask``
(``C x n_max``, True = real member). Per head ``h``::

    L_h[i, j] = (q_i . k_j / sqrt(d_h) + g_h * x_i . x_j) / temperature
    A_h[i, :] = softmax over the real keys j (j != i when exclude_self) of L_h[i, :]

with ``q = x Wq_h``, ``k = x Wk_h`` and ``g_h`` a learnable per-head gain on the cosine Gram of
the inputs (``similarity_bias=True``; initialised at 0, so with small ``Wq/Wk`` an untrained
SAA gives uniform attention, i.e. the plain mean). From the attention:

* membership weight ``a_j = 1 / (n H) sum_h sum_i A_h[i, j]``: attention received by ``j``
  averaged over heads and queries; sums to 1 over the real members (uniform = ``1 / n``);
  a singleton's weight is 1;
* prototype ``p = normalise(sum_j a_j x_j)``;
* leave-one-out prototype ``p_{-j}``: the same aggregation on the cluster with ``j`` removed
  both as a query and as a key. Removing key ``j`` only renormalises each query's softmax, so
  ``A^{(-j)}_h[i, k] = A_h[i, k] / (1 - A_h[i, j])`` (``i, k != j``) and the weights are
  ``w_{jk} = mean_h (sum_{i != j} A^{(-j)}_h[i, k]) / (sum_k ...)``: exact, ``O(n^3)`` per
  cluster, no recomputation of the logits. When the others cannot attend to anyone
  (``n = 2`` with exclude_self) the weights are uniform over the others. A singleton has no
  leave-one-out prototype (zero vector);
* dispersion ``delta_j = 1 - cos(x_j, p_{-j})``, 0 on padding and for singletons.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

_EPS = 1e-12


class SAAOutput(NamedTuple):
    """Per-cluster SAA outputs.

    Attributes:
        prototypes: ``C x d`` aggregated, L2-normalised prototypes.
        weights: ``C x n_max`` membership weights (sum to 1 over real members, 0 on padding).
        dispersion: ``C x n_max`` ``1 - cos(x_j, p_{-j})`` (0 on padding and for singletons).
    """

    prototypes: Tensor
    weights: Tensor
    dispersion: Tensor


def pack_clusters(
    features: Tensor,
    labels: Tensor,
    max_members: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Group ``features`` by label into a padded batch of clusters (vectorised, no Python loop).

    Args:
        features: ``N x d``.
        labels: ``N`` long pseudo-labels; ``-1`` (any negative) = outlier, skipped.
        max_members: clusters larger than this are subsampled uniformly at random.
        generator: random generator for the subsampling.

    Returns:
        ``x`` (``C x n_max x d``, zeros on padding), ``mask`` (``C x n_max`` bool) and
        ``index`` (``C x n_max`` long into ``N``, -1 on padding). Clusters come in increasing
        label order; cluster ``c``'s label is ``labels[index[c, 0]]``.
    """
    index, mask = cluster_index(labels, max_members, generator)
    x = features.new_zeros(*index.shape, features.shape[-1])
    x[mask] = features[index[mask]]
    return x, mask, index


def cluster_index(
    labels: Tensor, max_members: int | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Index-only part of :func:`pack_clusters`: ``index`` (``C x n_max`` long into ``N``, -1 on
    padding) and ``mask`` (``C x n_max`` bool), clusters in increasing label order."""
    labels = labels.reshape(-1).long()
    keep = torch.nonzero(labels >= 0).squeeze(1)
    if keep.numel() == 0:
        empty = torch.empty(0, 0, dtype=torch.long, device=labels.device)
        return empty, empty.bool()
    if max_members is not None:  # random order within each cluster, then keep the first ones
        perm = torch.randperm(keep.numel(), generator=generator, device="cpu").to(keep.device)
        keep = keep[perm]
    order = keep[torch.sort(labels[keep], stable=True).indices]
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    cluster = torch.repeat_interleave(torch.arange(counts.numel(), device=labels.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(order.numel(), device=labels.device) - starts[cluster]
    if max_members is not None:
        sel = pos < max_members
        order, cluster, pos = order[sel], cluster[sel], pos[sel]
        counts = counts.clamp(max=max_members)
    n_max = int(counts.max())
    index = torch.full((counts.numel(), n_max), -1, dtype=torch.long, device=labels.device)
    index[cluster, pos] = order
    return index, index >= 0


class SAA(nn.Module):
    """Multi-head self-attention aggregation over the members of each cluster.

    Args:
        dim: feature dimension ``d``.
        heads: number of heads ``H``.
        head_dim: per-head query/key dimension ``d_h``.
        temperature: attention temperature (logits are divided by it).
        similarity_bias: add ``g_h * cos(x_i, x_j)`` (learnable ``g_h``, init 0) to the logits.
        init_std: std of the ``Wq``/``Wk`` initialisation (small: untrained SAA ~ plain mean).

    Shapes:
        ``forward(x (C x n_max x d), mask (C x n_max))`` -> :class:`SAAOutput`.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        head_dim: int = 64,
        temperature: float = 0.1,
        similarity_bias: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.temperature = temperature
        # one matrix for queries and keys: columns [q_0 .. q_{H-1} | k_0 .. k_{H-1}]
        self.qk = nn.Parameter(torch.randn(dim, 2 * heads * head_dim) * init_std)
        self.gain = nn.Parameter(torch.zeros(heads)) if similarity_bias else None

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, "
            f"temperature={self.temperature}, similarity_bias={self.gain is not None}"
        )

    # ----------------------------------------------------------------- building blocks
    def project(self, rows: Tensor) -> Tensor:
        """``rows`` (``... x d``) -> queries and keys ``... x 2 x H x d_h``."""
        out = rows @ self.qk
        return out.view(*rows.shape[:-1], 2, self.heads, self.head_dim)

    def logits(self, qk: Tensor, gram: Tensor | None) -> Tensor:
        """Attention logits ``C x H x n x n`` from projections ``C x n x 2 x H x d_h`` and the
        cosine Gram ``C x n x n`` (needed when ``similarity_bias``)."""
        q, k = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)  # C x H x n x d_h
        out = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if self.gain is not None:
            if gram is None:
                raise ValueError("similarity_bias needs the Gram matrix")
            out = out + self.gain.view(1, -1, 1, 1) * gram.unsqueeze(1)
        return out / self.temperature

    @staticmethod
    def attend(logits: Tensor, mask: Tensor, exclude_self: bool = True) -> Tensor:
        """Masked softmax over keys: ``C x H x n x n`` -> attention (0 for padded queries or
        keys, excluded self pairs and queries without any valid key; never NaN)."""
        n = mask.shape[-1]
        valid = mask[:, None, :, None] & mask[:, None, None, :]
        if exclude_self:
            valid = valid & ~torch.eye(n, dtype=torch.bool, device=mask.device)
        filled = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
        return torch.softmax(filled, dim=-1) * valid

    @staticmethod
    def membership(attn: Tensor, mask: Tensor) -> Tensor:
        """Attention received, averaged over heads and queries: ``C x n`` (sums to 1 over real
        members; 1 for singletons; 0 on padding)."""
        size = mask.sum(-1, keepdim=True).clamp(min=1).to(attn.dtype)
        weights = attn.sum(dim=-2).mean(dim=1) / size
        single = (size == 1) & mask
        return torch.where(single, torch.ones_like(weights), weights)

    @staticmethod
    def loo_weights(attn: Tensor, mask: Tensor) -> Tensor:
        """Leave-one-out aggregation weights ``W`` (``C x n x n``): row ``j`` holds the weights of
        the other members when ``j`` is removed as query and key (rows sum to 1; zero row for
        singletons and padding)."""
        ratio = 1.0 / (1.0 - attn).clamp(min=1e-6)  # R[i, j] = 1 / (1 - A[i, j])
        diag_r = torch.diagonal(ratio, dim1=-2, dim2=-1).unsqueeze(-1)  # R[j, j]
        s = ratio.transpose(-1, -2) @ attn - diag_r * attn  # sum over i != j
        n = mask.shape[-1]
        off = mask.unsqueeze(-1) & mask.unsqueeze(-2)
        off = off & ~torch.eye(n, dtype=torch.bool, device=mask.device)
        s = s.clamp(min=0) * off.unsqueeze(1)
        total = s.sum(-1, keepdim=True)
        uniform = off.unsqueeze(1).to(s.dtype)
        uniform = uniform / uniform.sum(-1, keepdim=True).clamp(min=1)
        per_head = torch.where(total > 1e-8, s / total.clamp(min=1e-30), uniform)
        return per_head.mean(dim=1)

    @staticmethod
    def loo_cosine(loo: Tensor, gram: Tensor) -> Tensor:
        """``cos(x_j, p_{-j})`` from the leave-one-out weights and Gram (``C x n``; 0 where
        ``p_{-j}`` is undefined)."""
        wg = loo @ gram  # row j: sum_k w_jk x_k . x_l
        num = torch.diagonal(wg, dim1=-2, dim2=-1)
        sq = (wg * loo).sum(-1)
        return num * torch.rsqrt(sq.clamp(min=_EPS)) * (sq > _EPS)

    # ------------------------------------------------------------------------ forward
    def attention(
        self, x: Tensor, mask: Tensor, exclude_self: bool = True, gram: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention ``C x H x n x n`` and Gram ``C x n x n`` for padded clusters."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        if gram is None:
            gram = x @ x.transpose(-1, -2)
        qk = x.new_zeros(*mask.shape, 2, self.heads, self.head_dim)
        qk[mask] = self.project(x[mask])  # project only the real members
        return self.attend(self.logits(qk, gram), mask, exclude_self), gram

    def forward(self, x: Tensor, mask: Tensor, exclude_self: bool = True) -> SAAOutput:
        """``x``: ``C x n_max x d`` (L2-normalised rows), ``mask``: ``C x n_max`` bool."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        attn, gram = self.attention(x, mask, exclude_self)
        weights = self.membership(attn, mask)
        protos = nn.functional.normalize((weights.unsqueeze(1) @ x).squeeze(1), dim=-1)
        cos = self.loo_cosine(self.loo_weights(attn, mask), gram)
        size = mask.sum(-1, keepdim=True)
        dispersion = (1.0 - cos) * (mask & (size > 1))
        return SAAOutput(protos, weights, dispersion)

    def forward_leave_one_out(self, x: Tensor, mask: Tensor, exclude_self: bool = True) -> Tensor:
        """Leave-one-out prototypes ``C x n_max x d``: row ``j`` is the cluster's prototype
        computed without member ``j`` (L2-normalised; zero on padding and for singletons)."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        attn, _ = self.attention(x, mask, exclude_self)
        return nn.functional.normalize(self.loo_weights(attn, mask) @ x, dim=-1)
