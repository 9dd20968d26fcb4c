"""HPS: hard positive sampling for the momentum update of the cluster memory.

For each pseudo-identity ``c`` in the batch and each of its batch samples ``b``, SAA scores
``b`` inside its cluster: the set is the cluster's members from the epoch's extraction with
``b``'s own stale copy removed (``batch_indices`` given; otherwise an exact duplicate of ``b``,
cosine > 1 - 1e-4, is removed) and ``b`` added. With attention ``A`` on that set
(self excluded):

* membership ``a_b`` = attention received by ``b`` (heads and queries averaged; the set's
  weights sum to 1), accepted when ``a_b >= accept_ratio / n`` (``n`` = set size);
* dispersion ``delta_b = 1 - cos(b, p_{-b})``, ``p_{-b}`` the SAA prototype of the members
  without ``b`` (the leave-one-out weights of :mod:`robustreid.method.saa`).

``hardest`` picks the accepted sample with the largest dispersion, ``softmax`` samples among the
accepted with probabilities ``softmax(delta / temperature)``; a class with no accepted sample
falls back to its most accepted one (largest ``a_b / (1 / n)``). One row per class is returned,
to be fed to ``ClusterMemory.momentum_update(inputs, targets)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustreid.method.saa import SAA, cluster_index

_MODES = ("hardest", "softmax")


@torch.no_grad()
def score_batch(
    saa: SAA,
    batch_features: Tensor,
    batch_labels: Tensor,
    features: Tensor,
    labels: Tensor,
    batch_indices: Tensor | None = None,
    max_entries: int = 1 << 22,
) -> tuple[Tensor, Tensor, Tensor]:
    """SAA membership ratio and dispersion of every batch sample inside its own cluster.

    Args:
        saa: trained aggregator.
        batch_features: ``B x d`` (L2-normalised, current backbone).
        batch_labels: ``B`` pseudo-labels (``-1`` = outlier: scored NaN).
        features: ``N x d`` epoch features; labels: ``N`` pseudo-labels.
        batch_indices: ``B`` indices into ``N`` of the batch samples (their stale copies are
            removed from the member set), or None.
        max_entries: bound on ``chunk x H x (n + 1)^2`` attention entries (memory).

    Returns:
        ``ratio`` (``B``: ``a_b * n``, 1 = uniform weight), ``dispersion`` (``B``) and ``size``
        (``B``: ``n``, the set size including ``b``).
    """
    dev = batch_features.device
    bsz = batch_features.shape[0]
    ratio = torch.full((bsz,), float("nan"), device=dev)
    disp, size = ratio.clone(), torch.zeros(bsz, dtype=torch.long, device=dev)
    classes = torch.unique(batch_labels[batch_labels >= 0])
    if classes.numel() == 0:
        return ratio, disp, size
    labels = labels.to(dev)
    sub = torch.where(torch.isin(labels, classes), labels, torch.full_like(labels, -1))
    index, mask = cluster_index(sub)  # U' x n, classes in increasing label order
    x_b = batch_features.float()
    if index.numel() == 0:  # no members known at all: every sample is its own set
        ratio[batch_labels >= 0], disp[batch_labels >= 0] = 1.0, 0.0
        size[batch_labels >= 0] = 1
        return ratio, disp, size
    packed_labels = labels[index[:, 0]]
    n_clusters = packed_labels.numel()
    n = mask.shape[1]
    members = features[index.clamp(min=0)].float() * mask.unsqueeze(-1)  # U x n x d
    qk_m = members.new_zeros(*mask.shape, 2, saa.heads, saa.head_dim)
    qk_m[mask] = saa.project(members[mask])
    qk_b = saa.project(x_b)  # B x 2 x H x dh
    gram_m = members @ members.transpose(-1, -2)
    valid_b = torch.nonzero(batch_labels >= 0).squeeze(1)
    pos = torch.searchsorted(packed_labels, batch_labels[valid_b]).clamp(max=n_clusters - 1)
    found = packed_labels[pos] == batch_labels[valid_b]
    orphans = valid_b[~found]  # a class with no members in ``labels``: alone, accepted
    ratio[orphans], disp[orphans], size[orphans] = 1.0, 0.0, 1
    valid_b, pos = valid_b[found], pos[found]
    chunk = max(1, max_entries // (saa.heads * (n + 1) ** 2))
    for s in range(0, valid_b.numel(), chunk):
        bi, ui = valid_b[s : s + chunk], pos[s : s + chunk]
        cross = torch.einsum("bd,bnd->bn", x_b[bi], members[ui])  # b . members
        keep = mask[ui].clone()
        if batch_indices is not None:
            keep &= index[ui] != batch_indices.to(dev)[bi].unsqueeze(1)
        else:
            keep &= cross < 1.0 - 1e-4
        m = torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1)  # slot n = b
        gram = members.new_zeros(bi.numel(), n + 1, n + 1)
        gram[:, :n, :n] = gram_m[ui]
        gram[:, n, :n], gram[:, :n, n] = cross, cross
        gram[:, n, n] = (x_b[bi] * x_b[bi]).sum(-1)
        qk = torch.cat([qk_m[ui], qk_b[bi].unsqueeze(1)], dim=1)
        attn = saa.attend(saa.logits(qk, gram), m, exclude_self=True)  # b' x H x n+1 x n+1
        set_size = m.sum(1)
        weight = SAA.membership(attn, m)[:, n]
        # leave-b-out weights of the others (only the row of b): A[i,k] / (1 - A[i,b]), i != b
        r = 1.0 / (1.0 - attn[..., :n, n]).clamp(min=1e-6)  # b' x H x n (queries i)
        w = (r.unsqueeze(-1) * attn[..., :n, :n]).sum(-2)  # b' x H x n (keys k)
        w = w * keep.unsqueeze(1)
        total = w.sum(-1, keepdim=True)
        uniform = keep.unsqueeze(1).float() / keep.sum(-1).clamp(min=1)[:, None, None]
        w = torch.where(total > 1e-8, w / total.clamp(min=1e-30), uniform).mean(1)  # b' x n
        num = (w * cross).sum(-1)
        sq = torch.einsum("bk,bkl,bl->b", w, gram_m[ui], w)
        cos = num * torch.rsqrt(sq.clamp(min=1e-12))
        ratio[bi] = weight * set_size
        disp[bi] = torch.where(set_size > 1, 1.0 - cos, torch.zeros_like(cos))
        size[bi] = set_size
    return ratio, disp, size


def select_hard_positives(
    saa: SAA,
    batch_features: Tensor,
    batch_labels: Tensor,
    features: Tensor,
    labels: Tensor,
    accept_ratio: float = 1.0,
    mode: str = "hardest",
    temperature: float = 0.1,
    generator: torch.Generator | None = None,
    batch_indices: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """One hard-but-trusted positive per pseudo-identity of the batch.

    Args:
        saa: trained aggregator.
        batch_features: ``B x d``; batch_labels: ``B`` (``-1`` rows are ignored).
        features: ``N x d`` epoch features; labels: ``N``.
        accept_ratio: accepted when membership weight ``>= accept_ratio / n``.
        mode: ``"hardest"`` or ``"softmax"``.
        temperature: softmax temperature on the dispersion (``softmax`` mode).
        generator: randomness of ``softmax`` mode.
        batch_indices: ``B`` indices into ``N`` of the batch samples (recommended: their stale
            copies are then removed exactly from the member sets).

    Returns:
        ``chosen_features`` (``P x d``, rows of ``batch_features``; keeps its autograd graph),
        ``chosen_labels`` (``P``, increasing) and stats: ``classes``, ``accepted_fraction``
        (over scored samples), ``fallback_fraction`` (classes without an accepted sample),
        ``mean_dispersion`` (of the chosen samples). :func:`select_hard_positive_indices` gives
        the chosen batch positions instead.
    """
    idx, stats = select_hard_positive_indices(
        saa,
        batch_features,
        batch_labels,
        features,
        labels,
        accept_ratio,
        mode,
        temperature,
        generator,
        batch_indices,
    )
    return batch_features[idx], batch_labels[idx], stats


def select_hard_positive_indices(
    saa: SAA,
    batch_features: Tensor,
    batch_labels: Tensor,
    features: Tensor,
    labels: Tensor,
    accept_ratio: float = 1.0,
    mode: str = "hardest",
    temperature: float = 0.1,
    generator: torch.Generator | None = None,
    batch_indices: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Like :func:`select_hard_positives` but returns the chosen batch positions (``P`` long)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    ratio, disp, _ = score_batch(
        saa, batch_features.detach(), batch_labels, features.detach(), labels, batch_indices
    )
    accepted = ratio >= accept_ratio
    # one vectorised argmax per class (no Python loop, no per-class host sync): the classes
    # with an accepted sample pick among the accepted by dispersion (softmax mode: by
    # dispersion / T + Gumbel noise, i.e. a draw from softmax(dispersion / T)); the others
    # fall back to their most accepted sample (largest ratio); ties go to the first row
    classes, inv = torch.unique(batch_labels, sorted=True, return_inverse=True)
    valid = batch_labels >= 0
    acc = accepted & valid
    has_acc = torch.zeros(classes.numel(), dtype=torch.long, device=acc.device)
    has_acc = has_acc.index_add(0, inv, acc.long()) > 0
    use_acc = has_acc[inv]
    key = disp
    if mode == "softmax":
        u = torch.rand(disp.shape, generator=generator, dtype=torch.float64).to(disp.device)
        key = disp / temperature - torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-12))).float()
    eligible = valid & (acc | ~use_acc)
    score = torch.where(use_acc, key, ratio).nan_to_num(nan=-float("inf"))
    score = score.masked_fill(~eligible, -float("inf"))
    best = score.new_full((classes.numel(),), -float("inf"))
    best = best.scatter_reduce(0, inv, score, reduce="amax")
    rows = torch.arange(score.numel(), device=score.device)
    cand = torch.where(eligible & (score == best[inv]), rows, score.numel())
    first = torch.full_like(best, score.numel(), dtype=torch.long)
    first = first.scatter_reduce(0, inv, cand, reduce="amin")
    real = classes >= 0
    idx = first[real].to(batch_features.device)
    classes = classes[real]
    fallbacks = int((~has_acc[real]).sum())
    stats = {
        "classes": float(classes.numel()),
        "accepted_fraction": float(accepted[valid].float().mean()) if bool(valid.any()) else 0.0,
        "fallback_fraction": fallbacks / max(1, classes.numel()),
        "mean_dispersion": float(disp[idx].mean()) if idx.numel() else 0.0,
    }
    return idx, stats
