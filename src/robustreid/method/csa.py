"""CSA: cluster sample aggregation - train SAA on an epoch's features, initialise the memory.

Loss (backbone frozen; features are detached tensors). For a member ``x_j`` of cluster ``c``
(``n_c >= 2``)::

    l_j = -log( exp(cos(x_j, p_{c,-j}) / tau) /
                (exp(cos(x_j, p_{c,-j}) / tau) + sum_{k in N(c)} exp(x_j . b_k / tau)) )

``p_{c,-j}`` is the leave-one-out SAA prototype of ``c`` (with gradient), ``b_k`` a bank of SAA
prototypes of all clusters computed once at the start of the call (no gradient) and ``N(c)``
the ``num_negatives`` clusters whose bank prototypes are nearest to ``b_c`` (all other clusters
when ``num_negatives >= C - 1``). With ``tau = 0.05`` a cluster whose prototype is further
away adds ``exp(-(Delta cos) / 0.05)``, negligible, so the nearest clusters stand for "all". The
only way to lower the loss is to give weight to the members that agree with the others of their
cluster (and, through the softmax weighting, to care most about members that other clusters
could claim).

Cost: everything that touches ``d`` more than once (packing, Gram matrices of the clusters,
bank, negative logits) is computed once per call; a step only projects its clusters' members
(``m x d`` by ``d x 2 H d_h``) and works on ``n x n`` matrices.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from robustreid.method.saa import SAA, cluster_index


def _param_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _chunks(sizes: Tensor, max_rows: int) -> list[Tensor]:
    """Split clusters into chunks of similar size with ``len(chunk) * max(size) <= max_rows``.

    ``sizes``: ``C`` member counts. Returns lists of cluster indices (sorted by size)."""
    order = torch.argsort(sizes.cpu(), stable=True)
    sorted_sizes = sizes.cpu()[order].tolist()
    chunks, start = [], 0
    for i in range(1, len(sorted_sizes) + 1):
        if i == len(sorted_sizes) or (i + 1 - start) * sorted_sizes[i] > max_rows:
            chunks.append(order[start:i])
            start = i
    return chunks


@torch.no_grad()
def csa_prototypes(
    saa: SAA,
    features: Tensor,
    labels: Tensor,
    num_clusters: int,
    max_rows: int = 8192,
    mix: float = 0.5,
) -> Tensor:
    """Memory initialisation with SAA prototypes of all members (no subsampling).

    Args:
        saa: the (trained) aggregator.
        features: ``N x d`` L2-normalised features.
        labels: ``N`` pseudo-labels in ``[0, num_clusters)``, ``-1`` = outlier.
        num_clusters: number of rows of the result.
        max_rows: padded member rows per chunk (bounds memory: ``max_rows x d`` features and
            ``H x max_rows x n_max`` attention entries).
        mix: ``lambda`` in ``[0, 1]``; the prototype is
            ``normalise((1 - lambda) * normalise(mean) + lambda * p_SAA)``: 1 = the SAA prototype
            alone, 0 = the plain normalised mean, in between a shrinkage of the SAA aggregate
            towards the mean (default 0.5; see ``docs/method.md``).

    Returns:
        ``num_clusters x d`` L2-normalised prototypes (zero rows for labels without members).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    device = _param_device(saa)
    features = features.detach().to(device=device, dtype=torch.float32)
    labels = labels.to(device)
    protos = features.new_zeros(num_clusters, features.shape[1])
    index, mask = cluster_index(labels)
    if index.numel() == 0:
        return protos
    sizes = mask.sum(1)
    for chunk in _chunks(sizes, max_rows):
        chunk = chunk.to(device)
        n = int(sizes[chunk].max())
        idx, msk = index[chunk, :n], mask[chunk, :n]
        x = features[idx.clamp(min=0)] * msk.unsqueeze(-1)
        proto = saa(x, msk).prototypes
        if mix < 1.0:
            mean = nn.functional.normalize(x.sum(1), dim=-1)
            proto = nn.functional.normalize((1.0 - mix) * mean + mix * proto, dim=-1)
        protos[labels[idx[:, 0]]] = proto
    return protos


def train_saa(
    saa: SAA,
    features: Tensor,
    labels: Tensor,
    steps: int = 200,
    clusters_per_step: int = 64,
    lr: float = 1e-3,
    temperature: float = 0.05,
    max_members: int = 32,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num_negatives: int = 32,
    robust_q: float = 0.7,
    agreement_temperature: float = 0.02,
) -> dict[str, float]:
    """Train ``saa`` in place with the cluster-level leave-one-out contrastive loss.

    Args:
        saa: the aggregator (kept across epochs by the caller).
        features: ``N x d`` L2-normalised features of the epoch (detached inside).
        labels: ``N`` pseudo-labels, ``-1`` = outlier.
        steps: optimiser steps (Adam).
        clusters_per_step: clusters per step. Clusters are visited in windows of a random
            permutation (fixed for the call; every cluster equally often).
        lr: Adam learning rate.
        temperature: contrastive temperature ``tau``.
        max_members: clusters are subsampled to this many members (once per call).
        generator: randomness of subsampling and cluster order.
        device: where to train (default: the device of ``saa``'s parameters).
        num_negatives: nearest other clusters used as negatives (see module docstring).
        robust_q: 0 = cross-entropy; ``q > 0`` (default 0.7) = generalised cross-entropy
            ``(1 - p^q) / q`` of the same softmax (noise-robust; ``q = 1`` is MAE). Plain CE let
            the mislabeled members dominate the gradient (see ``docs/method.md``).
        agreement_temperature: ``T > 0`` (default 0.02) weights member ``j``'s loss by
            ``n_c * softmax_j(cos(x_j, p_{c,-j}) / T)`` (detached), so the members that agree
            with the rest of their cluster drive the training (self-paced); 0 = every member
            weighs the same (plain loss). With the plain loss SAA learns to lean towards the
            mislabeled members (``docs/method.md``).

    Returns:
        Stats: ``initial_loss`` / ``final_loss`` (mean loss over the first / last pass over the
        clusters), ``steps``, ``clusters``, ``members``, ``seconds``.
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else _param_device(saa)
    saa.to(device)
    features = features.detach().to(device=device, dtype=torch.float32)
    labels = labels.to(device)
    stats = {"initial_loss": float("nan"), "final_loss": float("nan"), "steps": 0.0}
    index, mask = cluster_index(labels, max_members, generator)
    sizes = mask.sum(1)
    trainable = sizes >= 2
    if steps <= 0 or int(trainable.sum()) == 0:
        stats["seconds"] = time.perf_counter() - start
        return stats
    # random cluster order, trainable clusters first: a window of the order is one step
    perm = torch.randperm(index.shape[0], generator=generator, device="cpu").to(device)
    perm = perm[torch.argsort((~trainable[perm]).to(torch.int8), stable=True)]
    index, mask, sizes = index[perm], mask[perm], sizes[perm]
    num_c, n_max = mask.shape
    rows = features[index[mask]]  # M x d, contiguous per cluster in the new order
    row_end = torch.cumsum(sizes, 0).tolist()
    slots = torch.nonzero(mask.reshape(-1)).squeeze(1)
    row_start = [0, *row_end[:-1]]

    gram = features.new_zeros(num_c, n_max, n_max)
    bank = features.new_zeros(num_c, features.shape[1])

    def padded(c0: int, c1: int) -> Tensor:
        x = features.new_zeros((c1 - c0) * n_max, features.shape[1])
        x[slots[row_start[c0] : row_end[c1 - 1]] - c0 * n_max] = rows[
            row_start[c0] : row_end[c1 - 1]
        ]
        return x.view(c1 - c0, n_max, -1)

    windows = [
        (c0, min(c0 + clusters_per_step, num_c)) for c0 in range(0, num_c, clusters_per_step)
    ]
    with torch.no_grad():
        for c0, c1 in windows:
            x = padded(c0, c1)
            gram[c0:c1] = x @ x.transpose(-1, -2)
            attn, _ = saa.attention(x, mask[c0:c1], True, gram[c0:c1])
            weights = saa.membership(attn, mask[c0:c1])
            bank[c0:c1] = nn.functional.normalize((weights.unsqueeze(1) @ x).squeeze(1), dim=-1)
        k = min(num_negatives, num_c - 1)
        neg = features.new_full((num_c, n_max, max(k, 1)), -1.0)
        if k > 0:
            sims = bank @ bank.T
            sims.fill_diagonal_(-float("inf"))
            nbrs = sims.topk(k, dim=1).indices  # C x k
            for c0, c1 in windows:
                neg[c0:c1] = padded(c0, c1) @ bank[nbrs[c0:c1]].transpose(-1, -2)

    train_windows = [(c0, c1) for c0, c1 in windows if bool(trainable[c0])]
    train_windows = [(c0, min(c1, int(trainable.sum()))) for c0, c1 in train_windows]
    # fused Adam on CUDA (one kernel); the CPU keeps the default implementation
    optimizer = torch.optim.Adam(saa.parameters(), lr=lr, fused=device.type == "cuda")
    heads, head_dim = saa.heads, saa.head_dim
    # flat positions of each window's real members, found once: ``x.flatten()[sel]`` equals
    # ``x[mask]`` element for element, without the host sync of boolean indexing on a GPU
    member_pos = {w: torch.nonzero(mask[w[0] : w[1]].reshape(-1)).squeeze(1)
                  for w in train_windows}
    losses = []
    saa.train()
    for step in range(steps):
        c0, c1 = train_windows[step % len(train_windows)]
        m = mask[c0:c1]
        proj = saa.project(rows[row_start[c0] : row_end[c1 - 1]])
        qk = proj.new_zeros((c1 - c0) * n_max, 2, heads, head_dim)
        qk = qk.index_copy(0, slots[row_start[c0] : row_end[c1 - 1]] - c0 * n_max, proj)
        g = gram[c0:c1]
        attn = saa.attend(saa.logits(qk.view(c1 - c0, n_max, 2, heads, head_dim), g), m)
        pos = saa.loo_cosine(saa.loo_weights(attn, m), g)
        logits = torch.cat([pos.unsqueeze(-1), neg[c0:c1]], dim=-1) / temperature
        log_p = logits[..., 0] - torch.logsumexp(logits, dim=-1)
        if robust_q > 0:  # generalised cross-entropy (1 - p^q) / q
            per_member = (1.0 - torch.exp(robust_q * log_p)) / robust_q
        else:
            per_member = -log_p
        if agreement_temperature > 0:
            # self-paced: members that agree with the rest of their cluster weigh more
            w = (pos.detach() / agreement_temperature).masked_fill(~m, -float("inf"))
            w = torch.softmax(w, dim=-1) * m.sum(-1, keepdim=True)
            loss = (per_member * w).flatten()[member_pos[c0, c1]].mean()
        else:
            loss = per_member.flatten()[member_pos[c0, c1]].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # read once at the end: no host sync per step
    saa.eval()
    losses = torch.stack(losses).tolist()
    per_pass = len(train_windows)
    stats["initial_loss"] = sum(losses[:per_pass]) / len(losses[:per_pass])
    stats["final_loss"] = sum(losses[-per_pass:]) / len(losses[-per_pass:])
    stats["steps"] = float(steps)
    stats["clusters"] = float(num_c)
    stats["members"] = float(rows.shape[0])
    stats["seconds"] = time.perf_counter() - start
    return stats
